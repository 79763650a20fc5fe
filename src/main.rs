//! The `vpsie-lb-agent` binary: flags, then the library's [`command::main`].

use clap::Parser;
use std::process::ExitCode;
use vpsie_lb_agent::command;

/// mimalloc rather than glibc's malloc: a spec of 10,000 backends builds and frees large JSON
/// and template trees on every change, and glibc's free list made that a fifth of the time
/// (`make bench`). The benchmark uses the same allocator, so it measures what ships.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // No transparent huge pages: mimalloc asks for them on its arenas, and each one made 2 MiB
    // resident for the few KiB an idle daemon uses (idle RSS 20 -> 16.6 MB, `make bench-idle`).
    // Envoy is started with the machine's setting again (envoy::process::spawn). Failing to set
    // it only costs memory.
    let _ = nix::sys::prctl::set_thp_disable(true);
    command::main(command::Cli::parse())
}
