//! The systemd units (`systemd/`): `systemd-analyze verify` is clean and the exposure figures of
//! `systemd-analyze security` stay within target (agent <= 2.0). The figures are printed.

use std::path::PathBuf;
use std::process::Command;

fn analyze(args: &[&str], unit: &std::path::Path) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .expect("systemd-analyze is required for this test (Debian package systemd)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn exposure(text: &str) -> f64 {
    text.lines()
        .find(|l| l.contains("Overall exposure level"))
        .and_then(|l| l.split(':').nth(1)?.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure figure in:\n{text}"))
}

#[test]
fn the_units_verify_and_stay_within_their_exposure_targets() {
    let dir = tempfile::tempdir().unwrap();
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("systemd");
    for (unit, target) in [
        ("vpsie-lb-agent.service", 2.0),
        ("vpsie-lb-envoy.service", 2.0),
    ] {
        let text = std::fs::read_to_string(src.join(unit)).unwrap();
        // verify checks that ExecStart exists: point it at the binary this build made.
        let text = text.replace(
            "/usr/local/bin/vpsie-lb-agent",
            env!("CARGO_BIN_EXE_vpsie-lb-agent"),
        );
        let path = dir.path().join(unit);
        std::fs::write(&path, text).unwrap();
        let (ok, out) = analyze(&["verify"], &path);
        assert!(
            ok && out.trim().is_empty(),
            "{unit}: systemd-analyze verify:\n{out}"
        );
        let (_, out) = analyze(&["security", "--offline=true"], &path);
        let e = exposure(&out);
        println!("{unit}: systemd-analyze security exposure {e}");
        assert!(e <= target, "{unit}: exposure {e} above {target}\n{out}");
    }
}
