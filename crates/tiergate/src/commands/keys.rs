//! `tiergate keys new | hash`: tenants' API keys. Only the hash goes in the config
//! (`[[tenants]] key_sha256`); the key itself is printed once, to hand to the tenant.

use std::io::{BufRead, Write};

use anyhow::{Context, bail};
use tiergate::auth::keys::{check_key, digest_hex, new_key};

use crate::cli::{KeysHashArgs, KeysNewArgs};

pub fn new(args: &KeysNewArgs) -> anyhow::Result<()> {
    let tenant = args.tenant.trim();
    if tenant.is_empty() {
        bail!("--tenant must name the tenant");
    }
    let key = new_key().context("the operating system's random number generator failed")?;
    let hash = digest_hex(&key);
    let mut out = std::io::stdout().lock();
    if args.json {
        let summary = serde_json::json!({ "tenant": tenant, "key": key, "key_sha256": hash });
        writeln!(out, "{summary}")?;
    } else {
        writeln!(
            out,
            "# API key for tenant `{tenant}` (give it to the tenant; it is not stored):"
        )?;
        writeln!(out, "# {key}")?;
        writeln!(out, "[[tenants]]")?;
        writeln!(out, "name = {}", toml_string(tenant))?;
        writeln!(out, "key_sha256 = [\"{hash}\"]")?;
    }
    Ok(())
}

pub fn hash(args: &KeysHashArgs) -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the key from stdin")?;
    let key = line.trim_end_matches(['\r', '\n']);
    check_key(key).map_err(anyhow::Error::msg)?;
    let hash = digest_hex(key);
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::json!({ "key_sha256": hash }))?;
    } else {
        writeln!(out, "key_sha256 = [\"{hash}\"]")?;
    }
    Ok(())
}

fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}
