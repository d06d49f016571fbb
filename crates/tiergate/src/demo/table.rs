//! The demo's output: the table of where each prompt went, and how to call the nodes after.

use std::io::Write;
use std::path::Path;

use super::{DemoNodes, DemoRow};

fn clip(text: &str, width: usize) -> String {
    let one_line = text.replace('\n', " ");
    if one_line.chars().count() <= width {
        one_line
    } else {
        let cut: String = one_line.chars().take(width.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

/// Prints the table of where each prompt went.
pub fn print_table(out: &mut impl Write, rows: &[DemoRow]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<10} {:<40} {:<9} {:<20} {:>6} {:>6} {:>5} {:>8}  answer",
        "kind", "prompt", "tier", "reason", "cmplx", "conf", "degr", "ms"
    )?;
    for row in rows {
        writeln!(
            out,
            "{:<10} {:<40} {:<9} {:<20} {:>6.3} {:>6} {:>5} {:>8.1}  {}",
            row.kind,
            clip(&row.prompt, 40),
            row.tier,
            row.reason,
            row.complexity,
            row.local_confidence
                .map_or_else(|| "-".to_owned(), |c| format!("{c:.3}")),
            if row.degraded { "yes" } else { "no" },
            row.latency_ms,
            clip(&row.answer, 48),
        )?;
    }
    Ok(())
}

/// How to call the nodes while the demo keeps serving.
pub fn print_usage(out: &mut impl Write, nodes: &DemoNodes, repo: &Path) -> std::io::Result<()> {
    let http = nodes.edge.http_addr;
    let grpc = nodes.edge.grpc_addr;
    writeln!(out)?;
    writeln!(out, "The three nodes keep serving (Ctrl-C stops them):")?;
    writeln!(
        out,
        "  edge      gRPC {}  HTTP {}",
        nodes.edge.grpc_addr, nodes.edge.http_addr
    )?;
    writeln!(
        out,
        "  regional  gRPC {}  HTTP {}",
        nodes.regional.grpc_addr, nodes.regional.http_addr
    )?;
    writeln!(
        out,
        "  cloud     gRPC {}  HTTP {}  (stand-in for a real provider)",
        nodes.cloud.grpc_addr, nodes.cloud.http_addr
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "curl (OpenAI wire format; routing in x-tiergate-* headers and the `tiergate` field):"
    )?;
    writeln!(
        out,
        "  curl -si http://{http}/v1/chat/completions -H 'content-type: application/json' \\"
    )?;
    writeln!(
        out,
        "    -d '{{\"model\":\"tiergate\",\"messages\":[{{\"role\":\"user\",\"content\":\"turn on the kitchen lights\"}}]}}'"
    )?;
    writeln!(
        out,
        "  curl -s http://{http}/metrics | grep tiergate_requests_total"
    )?;
    writeln!(out)?;
    writeln!(out, "gRPC (grpcurl uses server reflection):")?;
    writeln!(
        out,
        "  grpcurl -plaintext -d '{{\"prompt\":\"what is 12 plus 7\"}}' {grpc} tiergate.v1.Inference/Generate"
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "OpenAI Python client (`pip install openai`, or .venv/test/bin/python after `make test`):"
    )?;
    writeln!(
        out,
        "  python3 -c 'from openai import OpenAI; c = OpenAI(base_url=\"http://{http}/v1\", api_key=\"unused\"); \\"
    )?;
    writeln!(
        out,
        "    print(c.chat.completions.create(model=\"tiergate\", messages=[{{\"role\":\"user\",\"content\":\"hello\"}}]).choices[0].message.content)'"
    )?;
    writeln!(out)?;
    writeln!(out, "The routing decision alone:")?;
    writeln!(
        out,
        "  {}/target/debug/tiergate route explain --json \"explain why the sky is blue\"",
        repo.display()
    )?;
    Ok(())
}
