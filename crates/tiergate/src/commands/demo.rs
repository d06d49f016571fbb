//! `tiergate demo`: three tiers on loopback, a mixed workload, a table of where each prompt went.

use std::io::Write;

use tiergate::demo::{DemoOptions, print_table, print_usage, run_workload, start_demo_nodes};

use super::serve::shutdown_signal;
use crate::cli::DemoArgs;

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let options = DemoOptions {
        models_dir: args.models.clone(),
        real_model: args.edge_model.clone(),
        edge_config: Some(args.edge_config.clone()),
        ort_library: args.ort_library.clone(),
        base_port: if args.exit { 0 } else { args.base_port },
    };
    let nodes = start_demo_nodes(&options).await?;
    let rows = run_workload(nodes.edge.grpc_addr, options.workload()).await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(err) => {
            nodes.shutdown().await;
            return Err(err);
        }
    };
    {
        let mut out = std::io::stdout().lock();
        if args.json {
            writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        } else {
            print_table(&mut out, &rows)?;
            if !args.exit {
                let repo = std::env::current_dir()?;
                print_usage(&mut out, &nodes, &repo)?;
            }
        }
        out.flush()?;
    }
    if !args.exit {
        shutdown_signal().await;
    }
    nodes.shutdown().await;
    Ok(())
}
