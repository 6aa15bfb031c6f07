//! `neurokernels`: the chain from the command line.
//!
//! * `neurokernels simulate` — the closed-loop simulation with ground truth (SPEC §7).
//! * `neurokernels process RECORDING` — a raw recording through band-pass → reference →
//!   threshold → bins, written as `.npy` while it streams.
//!
//! `neurokernels --help` and `neurokernels <command> --help` list every flag.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
