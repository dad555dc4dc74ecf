//! The `diffit` binary: a thin `main` over `trainer::cli`.

use std::process::ExitCode;

fn main() -> ExitCode {
    match trainer::cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
