//! AFL target `protocol`: see `tests/fuzz/targets.rs`.

#[path = "../../targets.rs"]
mod targets;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        targets::protocol_target(data);
    });
}
