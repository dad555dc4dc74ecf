//! The `diffit` binary: a thin `main` over `trainer::cli`.

use std::process::ExitCode;

fn main() -> ExitCode {
    // Training splits each batch over the cores itself (see `trainer::train::parallel`).
    if matches!(
        std::env::args().nth(1).as_deref(),
        Some("train") | Some("pretrain")
    ) {
        trainer::train::parallel::prefer_data_parallel();
    }
    match trainer::cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
