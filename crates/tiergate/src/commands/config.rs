//! `tiergate config validate FILE`: load a config as `serve` would and report the first problem.

use std::io::Write;

use tiergate::config::Config;

use crate::cli::ConfigValidateArgs;

pub fn validate(args: &ConfigValidateArgs) -> anyhow::Result<()> {
    let config = Config::load(Some(&args.file))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let summary = serde_json::json!({
            "valid": true,
            "node": config.node.name,
            "tier": config.node.tier,
            "grpc_listen": config.server.grpc_listen.to_string(),
            "http_listen": config.server.http_listen.to_string(),
            "model_dir": config.engine.model_dir,
            "regional": config.upstreams.regional.as_ref().map(|r| &r.endpoints),
            "cloud": config.upstreams.cloud.as_ref().map(|c| &c.base_url),
        });
        writeln!(out, "{summary}")?;
    } else {
        writeln!(
            out,
            "{}: valid ({} node `{}`, gRPC {}, HTTP {})",
            args.file.display(),
            config.node.tier,
            config.node.name,
            config.server.grpc_listen,
            config.server.http_listen
        )?;
    }
    Ok(())
}
