//! How `diffit` ends: the exit code of each kind of failure, read from the error's chain.

use clap::error::ErrorKind;

use crate::train::{ConfigError, TrainError};

/// The request itself was wrong: a flag, a config file, a setting (clap's code for usage
/// errors, so a bad flag value and a bad config key end alike).
pub const USAGE: u8 = 2;
/// Stopped by Ctrl-C, as a shell reports a process ended by SIGINT (128 + 2).
pub const INTERRUPTED: u8 = 130;
/// Anything else: I/O, damaged files, divergence, bugs.
pub const FAILURE: u8 = 1;

/// The exit code for `error`: the first cause in its chain that says what kind of failure it
/// was decides; an error of no known kind is a [`FAILURE`].
pub fn exit_code(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if let Some(e) = cause.downcast_ref::<TrainError>() {
            return match e {
                TrainError::Interrupted => INTERRUPTED,
                TrainError::Usage(_) | TrainError::Config(_) => USAGE,
                _ => FAILURE,
            };
        }
        if cause.is::<ConfigError>() {
            return USAGE;
        }
        if let Some(e) = cause.downcast_ref::<clap::Error>() {
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => 0,
                _ => USAGE,
            };
        }
    }
    FAILURE
}

/// The message `diffit` prints for `error`: each cause in the chain once. Many errors already
/// quote their cause in their own message (`cannot write F: No space left on device`), so a
/// cause whose text the message so far already ends with is not repeated.
pub fn error_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if text.is_empty() {
            text = part;
        } else if !part.is_empty() && !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use anyhow::Context;
    use clap::Parser;

    use super::*;
    use crate::cli::Cli;

    #[test]
    fn a_cause_quoted_by_its_error_is_printed_once() {
        let full = TrainError::from(store::StoreError::io(
            "write",
            "run_001/metadata.json",
            std::io::Error::from_raw_os_error(28),
        ));
        let text = error_text(&anyhow::Error::from(full).context("saving epoch 6"));
        assert_eq!(text.matches("No space left on device").count(), 1, "{text}");
        assert!(text.starts_with("saving epoch 6: "), "{text}");
        assert!(text.contains("run_001/metadata.json"), "{text}");
        // Causes a message does not quote are kept.
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_text(&plain), "outer: inner");
    }

    #[test]
    fn each_kind_of_failure_has_its_exit_code() {
        let interrupted = anyhow::Error::from(TrainError::Interrupted);
        assert_eq!(exit_code(&interrupted), INTERRUPTED);
        // Context added on the way up does not hide the kind.
        let wrapped = Err::<(), _>(TrainError::Interrupted)
            .context("pretraining the tiny base")
            .unwrap_err();
        assert_eq!(exit_code(&wrapped), INTERRUPTED);
        let usage = anyhow::Error::from(TrainError::Usage("--data x: not a directory".into()));
        assert_eq!(exit_code(&usage), USAGE);
        let config = ConfigError::Invalid {
            key: "training.epochs",
            value: "0".into(),
            reason: "must be at least 1".into(),
        };
        assert_eq!(exit_code(&anyhow::Error::from(config)), USAGE);
        let in_train = TrainError::Config(ConfigError::Io {
            path: PathBuf::from("x.yaml"),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
        assert_eq!(exit_code(&anyhow::Error::from(in_train)), USAGE);
        let bad_flag = Cli::try_parse_from(["diffit", "train", "--epochs", "-3"]).unwrap_err();
        assert_eq!(exit_code(&anyhow::Error::from(bad_flag)), USAGE);
        let help = Cli::try_parse_from(["diffit", "--help"]).unwrap_err();
        assert_eq!(exit_code(&anyhow::Error::from(help)), 0);
        let io = TrainError::io(
            "read base model",
            "b.safetensors",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        assert_eq!(exit_code(&anyhow::Error::from(io)), FAILURE);
        let internal = anyhow::Error::from(TrainError::Internal("poisoned".into()));
        assert_eq!(exit_code(&internal), FAILURE);
        assert_eq!(exit_code(&anyhow::anyhow!("something else")), FAILURE);
    }
}
