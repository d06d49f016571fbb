//! The `tiergate` binary: parse the command line, set up logging and the runtime, run the
//! command, and turn an error into one line on stderr and a non-zero exit code.

mod cli;
mod commands;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let filter = EnvFilter::try_new(&cli.log).unwrap_or_else(|_| EnvFilter::new("warn"));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&error.into()),
    };
    // Trace export (`serve` with `[telemetry] otlp_endpoint`) starts before logging, so that
    // its layer is part of the subscriber from the first span; it needs the runtime entered.
    let telemetry = {
        let _entered = runtime.enter();
        match commands::start_telemetry(&cli.command) {
            Ok(telemetry) => telemetry,
            Err(error) => return fail(&error),
        }
    };
    let (telemetry, otel_layer) = telemetry.unzip();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colour codes only where a person reads them: not in journald, files or pipes.
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(filter);
    tracing_subscriber::registry()
        .with(otel_layer)
        .with(fmt)
        .init();
    let result = runtime.block_on(commands::run(cli.command, telemetry));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

fn fail(error: &anyhow::Error) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "error: {error:#}");
    ExitCode::FAILURE
}
