//! The check that each service's settings table and the table in
//! `docs/CONFIGURATION.md` agree: every setting documented with its
//! default, nothing documented that is not read. Each binary's
//! `settings_match_docs` test calls it; nothing else does.

use common::config::Setting;

/// The rows of the settings table in `docs/CONFIGURATION.md` (`markdown`)
/// whose service column is `service`: `(variable, default)`, backticks
/// removed.
pub fn documented_settings(markdown: &str, service: &str) -> Vec<(String, String)> {
    markdown
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim().strip_prefix('|')?.split('|').map(str::trim).collect();
            let var = cells.first()?.strip_prefix('`')?.strip_suffix('`')?;
            let default = cells.get(1)?.replace('`', "");
            (cells.get(2)? == &service).then(|| (var.to_string(), default))
        })
        .collect()
}

/// Panics, listing every difference, unless `settings` (the table of
/// `service`) match the docs' table: what each binary's
/// `settings_match_docs` test calls.
pub fn assert_settings_match_docs(markdown: &str, service: &str, settings: &[Setting]) {
    let differences = settings_differences(markdown, service, settings);
    assert!(
        differences.is_empty(),
        "docs/CONFIGURATION.md and {service}'s settings disagree:\n{}",
        differences.join("\n")
    );
}

/// Checks a service's table against the docs: every setting documented
/// with its default, and nothing documented for it that it does not read.
/// Returns the differences, one line each.
pub fn settings_differences(markdown: &str, service: &str, settings: &[Setting]) -> Vec<String> {
    let documented = documented_settings(markdown, service);
    let mut differences = Vec::new();
    for setting in settings {
        match documented.iter().find(|(var, _)| var == setting.var) {
            None => differences.push(format!("{} is not documented for {service}", setting.var)),
            Some((_, default)) if default != setting.shown_default() => differences.push(format!(
                "{}: the docs say the default is {default:?}, the code {:?}",
                setting.var,
                setting.shown_default()
            )),
            Some(_) => {}
        }
    }
    for (var, _) in &documented {
        if !settings.iter().any(|s| s.var == var) {
            differences.push(format!("{var} is documented for {service} but not read by it"));
        }
    }
    differences
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC_X: Setting = Setting::new("SVC_X", "3", "how many");

    #[test]
    fn the_docs_check_finds_a_missing_a_wrong_and_an_extra_row() {
        let docs = "| setting | default | service | meaning |\n|---|---|---|---|\n\
                    | `SVC_X` | `4` | svc | how many |\n| `SVC_OLD` | `1` | svc | gone |\n| `REDIS_URL` | x | both | |\n";
        let differences = settings_differences(docs, "svc", &[SVC_X, Setting::new("SVC_Y", "", "")]);
        assert_eq!(
            differences,
            [
                "SVC_X: the docs say the default is \"4\", the code \"3\"",
                "SVC_Y is not documented for svc",
                "SVC_OLD is documented for svc but not read by it",
            ]
        );
        assert!(settings_differences(
            docs.replace("`4`", "3").as_str(),
            "svc",
            &[SVC_X, Setting::new("SVC_OLD", "1", "")]
        )
        .is_empty());
    }
}
