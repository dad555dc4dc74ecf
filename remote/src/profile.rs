//! The AWS shared config files: the `AWS_PROFILE` (or `default`) section of
//! `~/.aws/credentials` and `~/.aws/config` (`AWS_SHARED_CREDENTIALS_FILE`, `AWS_CONFIG_FILE`
//! to move them), for the settings the environment leaves unset.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// The settings of one profile, by the files' key names (`aws_access_key_id`, `region`, …).
pub type Profile = BTreeMap<String, String>;

/// Reads section `name` of an INI-style AWS file; `prefixed` sections are written
/// `[profile name]` (the config file) except `default`.
fn section(text: &str, name: &str, prefixed: bool) -> Profile {
    let wanted = if prefixed && name != "default" {
        format!("profile {name}")
    } else {
        name.to_string()
    };
    let mut out = Profile::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = header.trim() == wanted;
            continue;
        }
        if inside {
            if let Some((k, v)) = line.split_once('=') {
                out.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
    }
    out
}

fn home_file(env: &str, default: &str) -> Option<PathBuf> {
    std::env::var_os(env)
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(default)))
}

/// The active profile's settings from both files (credentials win over config).
pub fn active_profile() -> Profile {
    let name = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    let mut out = Profile::new();
    if let Some(text) =
        home_file("AWS_CONFIG_FILE", ".aws/config").and_then(|p| std::fs::read_to_string(p).ok())
    {
        out.extend(section(&text, &name, true));
    }
    if let Some(text) = home_file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials")
        .and_then(|p| std::fs::read_to_string(p).ok())
    {
        out.extend(section(&text, &name, false));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_named_section_of_either_file() {
        let credentials = "[default]\naws_access_key_id = A\n\n[work]\naws_access_key_id=W\naws_secret_access_key = S\n";
        assert_eq!(
            section(credentials, "work", false)["aws_access_key_id"],
            "W"
        );
        assert_eq!(
            section(credentials, "default", false)["aws_access_key_id"],
            "A"
        );
        let config = "[default]\nregion = eu-west-1\n[profile work]\nregion = us-east-2\nendpoint_url = http://127.0.0.1:9000\n";
        assert_eq!(section(config, "work", true)["region"], "us-east-2");
        assert_eq!(section(config, "default", true)["region"], "eu-west-1");
        assert!(section(config, "nope", true).is_empty());
    }
}
