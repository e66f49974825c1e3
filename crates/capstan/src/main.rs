//! The Capstan manager. Thin on purpose: parse arguments, build the client, wait for
//! the CRDs, start the admin server, take part in leader election, run the enabled
//! controllers while leading, and stop cleanly on SIGTERM or SIGINT.

use std::process::ExitCode;

use capstan::cli::{Cli, Command};
use clap::Parser;

fn main() -> ExitCode {
    // kube, reqwest and the AWS SDK each bring rustls; with more than one crypto
    // provider compiled in, rustls needs to be told which is the process default.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Crd { dir } => match capstan::crds::write(dir.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Version => {
            println!("{}", capstan::version_line());
            ExitCode::SUCCESS
        }
        Command::Run(args) => {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: starting the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(capstan::run(*args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "capstan stopped");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
