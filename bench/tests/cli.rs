//! The lab's command lines: both tools answer `--help` and `--version`
//! with exit 0, and postback-load refuses a target off loopback.

use std::process::Command;

fn run(binary: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary).args(args).output().expect("the binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const SINK: &str = env!("CARGO_BIN_EXE_postback-sink");
const LOAD: &str = env!("CARGO_BIN_EXE_postback-load");

#[test]
fn every_binary_answers_help_and_version() {
    for (name, binary) in [("postback-sink", SINK), ("postback-load", LOAD)] {
        let (code, out, err) = run(binary, &["--version"]);
        assert_eq!(code, 0, "{name} --version: {err}");
        assert_eq!(out.trim(), format!("{name} {}", env!("CARGO_PKG_VERSION")));
        let (code, out, err) = run(binary, &["--help"]);
        assert_eq!(code, 0, "{name} --help: {err}");
        assert!(out.contains("Usage:"), "{name} --help: {out}");
    }
}

#[test]
fn the_load_generator_sends_to_loopback_only() {
    let (code, _, err) = run(
        LOAD,
        &["--url", "http://10.0.0.1/ingest", "--target", "x", "--jobs", "1"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("loopback"), "{err}");
}
