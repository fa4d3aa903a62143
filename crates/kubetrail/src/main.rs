//! `kubetrail`: Kubernetes audit log → distributed traces.
//!
//! Subcommands share one pipeline (`kubetrail-pipeline`) and one exporter
//! (`kubetrail-export`); they differ in where events come from.

#![forbid(unsafe_code)]

mod cli;
mod config;
mod finish;
mod follow;
mod forward;
mod replay;
mod scaleout;
mod serve;
mod telemetry;
mod timeline;
mod url;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of the system allocator: the diff stage builds and drops many small JSON
/// values per request, and allocation is a large share of its time (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    telemetry::init_logging(&cli.global);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kubetrail: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            cli::Command::Replay(args) => replay::run(args).await,
            cli::Command::Serve(args) => serve::run(args).await,
            cli::Command::Timeline(args) => timeline::run(args).await,
            cli::Command::Url(args) => url::run(args).await,
            cli::Command::Receive(args) => scaleout::receive(args).await,
            cli::Command::Consume(args) => scaleout::consume(args).await,
            cli::Command::Follow(args) => follow::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kubetrail: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
