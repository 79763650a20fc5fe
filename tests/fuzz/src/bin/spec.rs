//! AFL target `spec`: see `tests/fuzz/targets.rs`.

#[path = "../../targets.rs"]
mod targets;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        targets::spec_target(data);
    });
}
