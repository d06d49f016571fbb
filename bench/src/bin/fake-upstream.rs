//! `fake-upstream`: an OpenAI-compatible provider that answers at once (see
//! `tiergate_bench::fake_upstream`). Prints `{"event":"listening","addr":"IP:PORT"}` on stdout
//! once it accepts connections, then serves until killed.

use std::io::Write;
use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use tiergate_bench::fake_upstream;

#[derive(Debug, Parser)]
#[command(about = "A fake OpenAI-compatible upstream that answers at once")]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 1)]
    workers: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers.max(1))
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        let (listener, addr) = fake_upstream::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, r#"{{"event":"listening","addr":"{addr}"}}"#)?;
        stdout.flush()?;
        drop(stdout);
        fake_upstream::serve(listener).await.context("accepting")
    })
}
