#!/usr/bin/env bash
# Fuzzes every target in tests/fuzz (spec, settings, protocol) with AFL++ through cargo-afl, on
# stable Rust, for SECONDS each (default 1200: an hour in all), one after the other on one core.
#
# Each run starts from the saved corpus (tests/fuzz/corpus/<target>) with the target's dictionary.
# Afterwards the queue is minimised with afl-cmin and whatever adds coverage is copied into the
# saved corpus (named by its SHA-256): commit it, and `make test` replays it
# (tests/it/fuzz_replay.rs). A crash is copied there too, as crash-<sha>, and the script fails:
# fix it and keep the file as a regression case.
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]. FUZZ_OUT sets the work directory (default
# /tmp/vpsie-lb-fuzz).
set -euo pipefail

secs=${1:-1200}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(spec settings protocol)
here=$(cd "$(dirname "$0")/../tests/fuzz" && pwd)
out=${FUZZ_OUT:-/tmp/vpsie-lb-fuzz}
cargo_afl_version=0.18.2

if ! cargo afl --version 2>/dev/null | grep -q "$cargo_afl_version"; then
    cargo install --locked cargo-afl --version "$cargo_afl_version"
fi
# Builds AFL++'s runtime for this rustc; says so and fails when it is already built.
cargo afl config --build >/dev/null 2>&1 || true

afl_bin=$(ls -d "$HOME"/.local/share/afl.rs/rustc-*/afl.rs-"$cargo_afl_version"/afl/bin | tail -1)

cd "$here"
# Not --locked: the committed tests/fuzz/Cargo.lock pins every crate it knows, and cargo only adds
# the ones the agent has gained since (they are pinned in the agent's own Cargo.lock).
cargo afl build --release

export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1
crashed=0
for t in "${targets[@]}"; do
    rm -rf "${out:?}/$t"
    mkdir -p "$out"
    echo "fuzz: $t for ${secs}s"
    cargo afl fuzz -V "$secs" -i "corpus/$t" -o "$out/$t" -x "$t.dict" "target/release/$t" \
        >"$out/$t.log" 2>&1 || { tail -20 "$out/$t.log"; exit 1; }
    grep -E "execs_done|execs_per_sec|corpus_count|bitmap_cvg|saved_crashes|saved_hangs" \
        "$out/$t/default/fuzzer_stats" | sed "s/^/  /"

    # The shell afl-cmin: the Python one that `cargo afl cmin` runs found no coverage at all in
    # the settings target's queue (AFL++ 4.x), and so kept nothing.
    PATH="$afl_bin:$PATH" AFL_PATH="$afl_bin" "$afl_bin/afl-cmin.bash" -t 5000 \
        -i "$out/$t/default/queue" -o "$out/$t/min" -- "target/release/$t" \
        >"$out/$t.cmin.log" 2>&1 || { tail -c 2000 "$out/$t.cmin.log"; exit 1; }
    added=0
    for f in "$out/$t/min"/*; do
        [ -f "$f" ] || continue
        name=$(sha256sum "$f" | cut -c1-16)
        # Known under any prefix (seed-, regression-, crash-)? (A glob: `ls | grep -q` fails
        # under pipefail when grep stops early.)
        if ! compgen -G "corpus/$t/*$name" >/dev/null; then
            cp "$f" "corpus/$t/$name"
            added=$((added + 1))
        fi
    done
    echo "  corpus: $added new entries in tests/fuzz/corpus/$t"

    for f in "$out/$t/default/crashes"/id:*; do
        [ -f "$f" ] || continue
        name=crash-$(sha256sum "$f" | cut -c1-16)
        cp "$f" "corpus/$t/$name"
        echo "  CRASH: tests/fuzz/corpus/$t/$name"
        crashed=1
    done
done
if [ "$crashed" = 1 ]; then
    echo "fuzz: crashes found (above); replay one with: target/release/<target> < FILE (in tests/fuzz)"
    exit 1
fi
