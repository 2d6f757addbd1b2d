//! The `yolo-store` command: a thin adapter from the command line to the
//! `yolo_store_core` library. Errors become messages and exit codes here
//! and nowhere else.

mod cli;
mod commands;
mod fuse;
mod human;
mod metrics;
mod qmp;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            // A closed pipe (`yolo-store ls | head`) is not a failure.
            if err
                .chain()
                .filter_map(|e| e.downcast_ref::<std::io::Error>())
                .any(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("yolo-store: error: {}", human::error_text(&err));
            ExitCode::FAILURE
        }
    }
}
