//! The `diffit` binary: a thin `main` over `trainer::cli`. It parses the flags, installs the log
//! subscriber and (for training) the Ctrl-C handler, and turns the outcome into an exit code.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use trainer::cli::exit::{error_text, exit_code, INTERRUPTED};
use trainer::cli::{run_cli, Cli};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap's own rendering (usage line, colours); its code is 2, or 0 for --help.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let trains = cli.command.trains();
    if trains {
        // Training splits each batch over the cores itself (see `trainer::train::parallel`);
        // this must run before any thread exists.
        trainer::train::parallel::prefer_data_parallel();
    }
    init_logging();
    let stop = Arc::new(AtomicBool::new(false));
    if trains {
        if let Err(e) = stop_on_ctrl_c(stop.clone()) {
            eprintln!("error: cannot install the Ctrl-C handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    match run_cli(cli, &stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = exit_code(&e);
            let text = error_text(&e);
            if code == INTERRUPTED {
                eprintln!("{text}");
            } else {
                eprintln!("error: {text}");
            }
            ExitCode::from(code)
        }
    }
}

/// Log events to stderr: warnings by default, `RUST_LOG` (e.g. `RUST_LOG=info`) to choose.
fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    // A second subscriber cannot exist in this process; ignoring the error is safe.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// The first Ctrl-C sets `stop` (training ends after the step or checkpoint in progress); a
/// second one quits at once, which loses nothing saved since every file write is atomic.
fn stop_on_ctrl_c(stop: Arc<AtomicBool>) -> Result<(), ctrlc::Error> {
    ctrlc::set_handler(move || {
        if stop.swap(true, Ordering::SeqCst) {
            eprintln!("\nquitting now");
            std::process::exit(i32::from(INTERRUPTED));
        }
        eprintln!(
            "\nstopping: finishing the step or checkpoint in progress (Ctrl-C again to quit now)"
        );
    })
}
