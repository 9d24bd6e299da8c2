//! The command line: deliver answers `--help` and `--version` with exit 0, deliver's help lists every setting of its
//! table, and a bad command line is refused with exit 2 and a pointer to
//! the help.

use std::process::Command;

fn run(binary: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary).args(args).output().expect("the binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const DELIVER: &str = env!("CARGO_BIN_EXE_deliver");

#[test]
fn deliver_answers_help_and_version() {
    let (code, out, err) = run(DELIVER, &["--version"]);
    assert_eq!(code, 0, "deliver --version: {err}");
    assert_eq!(out.trim(), format!("deliver {}", env!("CARGO_PKG_VERSION")));
    let (code, out, err) = run(DELIVER, &["--help"]);
    assert_eq!(code, 0, "deliver --help: {err}");
    assert!(out.contains("Usage:"), "deliver --help: {out}");
}

#[test]
fn deliver_help_lists_every_setting_with_its_default() {
    let (_, help, _) = run(DELIVER, &["--help"]);
    for setting in common::config::SHARED_SETTINGS.iter().chain(deliver::config::SETTINGS) {
        let line = help
            .lines()
            .find(|l| l.split_whitespace().next() == Some(setting.var))
            .unwrap_or_else(|| panic!("{} missing from deliver --help:\n{help}", setting.var));
        assert!(line.contains(setting.shown_default()), "{line}");
    }
    assert!(help.contains("dead"), "the dead-letter command is listed: {help}");
}

#[test]
fn a_bad_command_line_is_refused_with_a_pointer_to_help() {
    for args in [&["dead", "replay"][..], &["dead", "list", "--limit", "x"], &["bogus"]] {
        let (code, _, err) = run(DELIVER, args);
        assert_eq!(code, 2, "deliver {args:?}: {err}");
        assert!(err.starts_with("error: "), "{err}");
        assert!(err.contains("try '--help'"), "{err}");
    }
}
