//! `tiergate config validate FILE`: the shipped configs are valid, and each kind of mistake is
//! named by its path, with a non-zero exit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

fn validate(file: &Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tiergate"))
        .args(["config", "validate"])
        .arg(file)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn shipped_configs_are_valid() {
    let deploy = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy"));
    for name in ["edge.toml", "regional.toml", "cloud-standin.toml"] {
        let (ok, text) = validate(&deploy.join(name));
        assert!(ok, "{name}: {text}");
        assert!(text.contains("valid"), "{name}: {text}");
    }
}

#[test]
fn mistakes_are_named_by_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[server]\nhttp_listn = \"127.0.0.1:1\"\n", "http_listn"),
        ("[node]\ntier = \"moon\"\n", "node.tier"),
        (
            "[router]\nlocal_max_complexity = 2.0\n",
            "router.local_max_complexity",
        ),
        (
            "[router.confidence]\nmin_mean_top1 = -1.0\n",
            "router.confidence.min_mean_top1",
        ),
        (
            "[router.confidence_by_variant.int4-fast]\nmin_token_top1 = 2.0\n",
            "router.confidence_by_variant.int4-fast.min_token_top1",
        ),
        // A misspelt graph name would leave its gate unused.
        (
            "[router.confidence_by_variant.int4_fast]\nmin_token_top1 = 0.5\n",
            "router.confidence_by_variant.int4_fast",
        ),
        // Likewise a misspelt CPU kind, or graph under it; and its gate's thresholds.
        (
            "[router.confidence_by_cpu.x86-64-avx512vnni.int4-fast]\nmin_token_top1 = 0.5\n",
            "router.confidence_by_cpu.x86-64-avx512vnni",
        ),
        (
            "[router.confidence_by_cpu.x86-64-avx2.int4fast]\nmin_token_top1 = 0.5\n",
            "router.confidence_by_cpu.x86-64-avx2.int4fast",
        ),
        (
            "[router.confidence_by_cpu.x86-64-avx2.int4-fast]\nmin_mean_top1 = 1.5\n",
            "router.confidence_by_cpu.x86-64-avx2.int4-fast.min_mean_top1",
        ),
        (
            "[limits]\nmax_new_tokens = \"many\"\n",
            "limits.max_new_tokens",
        ),
        (
            "[limits]\ndefault_timeout = \"10 parsecs\"\n",
            "limits.default_timeout",
        ),
        (
            "[limits]\ndefault_max_new_tokens = 900\n",
            "limits.default_max_new_tokens",
        ),
        (
            "[node]\ntier = \"regional\"\n[upstreams.regional]\nendpoints = [\"http://127.0.0.1:1\"]\n",
            "upstreams.regional",
        ),
        (
            "[upstreams.regional]\nendpoints = []\n",
            "upstreams.regional.endpoints",
        ),
        ("[upstreams.cloud]\nbase_url = \"http://x\"\n", "model"),
        ("[engine]\nworkerz = 2\n", "workerz"),
        ("[retry]\nratio = -1.0\n", "retry"),
        ("[hedge]\ncloud = \"p99\"\n", "hedge.cloud"),
        ("not toml at all [", "not valid TOML"),
        ("[device]\nprofile = \"toaster\"\n", "device.profile"),
        ("[device]\nmemory_mb = 1\n", "memory_mb"),
        (
            "[device]\nstop_at_budget_share = 1.5\n",
            "stop_at_budget_share",
        ),
        ("[device]\ncheck_interval = \"1ms\"\n", "check_interval"),
        // A zero bound would refuse every request body.
        (
            "[server]\nbody_read_timeout = \"0s\"\n",
            "server.body_read_timeout",
        ),
        ("[server]\nsend_timeout = \"0s\"\n", "server.send_timeout"),
        // Zero would probe a pooled connection the moment it falls quiet.
        (
            "[upstreams.cloud]\nbase_url = \"http://x\"\nmodel = \"m\"\nkeepalive_interval = \"0s\"\n",
            "keepalive_interval",
        ),
        (
            "[upstreams.cloud]\nbase_url = \"http://x\"\nmodel = \"m\"\nkeepalive_timeout = \"0s\"\n",
            "keepalive_timeout",
        ),
    ];
    for (index, (text, needle)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("case{index}.toml"));
        std::fs::write(&file, text).unwrap();
        let (ok, output) = validate(&file);
        assert!(!ok, "case {index} was accepted: {text}");
        assert!(
            output.contains(needle),
            "case {index}: expected `{needle}` in: {output}"
        );
    }
    let (ok, output) = validate(&dir.path().join("missing.toml"));
    assert!(!ok);
    assert!(output.contains("cannot read config file"), "{output}");
}

#[test]
fn a_setting_that_is_not_utf8_is_named_and_other_such_variables_are_ignored() {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;

    let run = |var: &str| {
        Command::new(env!("CARGO_BIN_EXE_tiergate"))
            .args(["config", "validate", "deploy/edge.toml"])
            .env(var, OsString::from_vec(vec![b'a', 0xff, 0xfe]))
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
            .output()
            .unwrap()
    };
    let ours = run("TIERGATE__NODE__NAME");
    let stderr = String::from_utf8_lossy(&ours.stderr);
    assert!(!ours.status.success());
    assert!(
        stderr.contains("TIERGATE__NODE__NAME") && stderr.contains("UTF-8"),
        "{stderr}"
    );
    let theirs = run("SOME_OTHER_PROGRAMS_SETTING");
    assert!(
        theirs.status.success(),
        "{}",
        String::from_utf8_lossy(&theirs.stderr)
    );
}

#[test]
fn logs_written_to_a_pipe_carry_no_colour_codes() {
    // Loading the local model logs at info level; stderr is a pipe here, as under journald.
    let output = Command::new(env!("CARGO_BIN_EXE_tiergate"))
        .args(["--log", "info", "generate", "hello"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("INFO"), "{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "escape codes in piped logs: {stderr:?}"
    );
}
