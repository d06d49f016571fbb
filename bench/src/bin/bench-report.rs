//! `bench-report DIR ID=LABEL...`: reads `DIR/ID.direct.json` and `DIR/ID.gateway.json`
//! (oha's JSON results) for each case and prints the Markdown table of the gateway's overhead.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;
use tiergate_bench::report::{CaseFigures, OhaResult, table};

#[derive(Debug, Parser)]
#[command(about = "Prints the gateway-overhead table from oha's JSON results")]
struct Args {
    /// Folder holding ID.direct.json and ID.gateway.json for each case.
    dir: PathBuf,
    /// Cases in table order, as ID=LABEL.
    #[arg(required = true)]
    cases: Vec<String>,
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
        });
    }
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(table(&rows).as_bytes())?;
    stdout.flush()?;
    Ok(())
}
