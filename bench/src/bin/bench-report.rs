//! `bench-report [--via NAME] DIR ID=LABEL...`: reads `DIR/ID.direct.json` and `DIR/ID.gateway.json`
//! (oha's JSON results) for each case, and `DIR/ID.gateway.cpu` (the gateway's CPU seconds in
//! that run) when present, and prints the Markdown table of the gateway's overhead.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Parser;
use tiergate_bench::report::{CaseFigures, OhaResult, table};

#[derive(Debug, Parser)]
#[command(about = "Prints the gateway-overhead table from oha's JSON results")]
struct Args {
    /// Folder holding ID.direct.json and ID.gateway.json for each case.
    dir: PathBuf,
    /// What stood between the load and the upstream, for the column names.
    #[arg(long, default_value = "tiergate")]
    via: String,
    /// Cases in table order, as ID=LABEL.
    #[arg(required = true)]
    cases: Vec<String>,
}

/// The gateway's CPU seconds of a run, written by the script; absent file: not measured.
fn cpu_seconds(path: &Path) -> anyhow::Result<Option<f64>> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .with_context(|| format!("{}: not a number of seconds", path.display())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rows = Vec::new();
    for case in &args.cases {
        let Some((id, label)) = case.split_once('=') else {
            bail!("case `{case}` is not ID=LABEL");
        };
        let figures = |side: &str| {
            OhaResult::read(&args.dir.join(format!("{id}.{side}.json")))?
                .figures()
                .with_context(|| format!("case {id}, {side}"))
        };
        rows.push(CaseFigures {
            case: label.to_owned(),
            direct: figures("direct")?,
            gateway: figures("gateway")?,
            gateway_cpu_seconds: cpu_seconds(&args.dir.join(format!("{id}.gateway.cpu")))?,
        });
    }
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(table(&args.via, &rows).as_bytes())?;
    stdout.flush()?;
    Ok(())
}
