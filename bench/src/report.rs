//! Turns oha's JSON results (`oha --output-format json`) of each case, run once against the
//! upstream directly and once through tiergate, into one Markdown table: latency p50/p99 of
//! both, what the gateway adds, achieved throughput and its ratio.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

/// The parts of one oha JSON result the report uses. Times are in seconds.
#[derive(Debug, Clone, Deserialize)]
pub struct OhaResult {
    pub summary: OhaSummary,
    #[serde(rename = "latencyPercentiles")]
    pub latency_percentiles: BTreeMap<String, Option<f64>>,
    #[serde(rename = "statusCodeDistribution", default)]
    pub status_codes: BTreeMap<String, u64>,
    #[serde(rename = "errorDistribution", default)]
    pub errors: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OhaSummary {
    /// Wall time of the run, seconds.
    pub total: f64,
}

/// What one run measured, in the units of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct RunFigures {
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// 2xx answers.
    pub ok: u64,
    /// 2xx answers per second of wall time.
    pub ok_per_sec: f64,
    /// Answers that were not 2xx plus requests that got no answer (connection errors,
    /// timeouts); requests cut off by the end of the run are counted by oha as errors too.
    pub failed: u64,
}

impl OhaResult {
    pub fn parse(json: &str) -> anyhow::Result<Self> {
        serde_json::from_str(json).context("not an oha JSON result")
    }

    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// The figures of the table; fails when a percentile is missing (a run with no answers).
    pub fn figures(&self) -> anyhow::Result<RunFigures> {
        let percentile_ms = |key: &str| {
            self.latency_percentiles
                .get(key)
                .copied()
                .flatten()
                .map(|seconds| seconds * 1000.0)
                .with_context(|| format!("no {key} latency in the result (no answers?)"))
        };
        let ok: u64 = self
            .status_codes
            .iter()
            .filter(|(code, _)| code.starts_with('2'))
            .map(|(_, count)| count)
            .sum();
        let not_ok: u64 = self
            .status_codes
            .iter()
            .filter(|(code, _)| !code.starts_with('2'))
            .map(|(_, count)| count)
            .sum();
        let failed = not_ok + self.errors.values().sum::<u64>();
        let ok_per_sec = if self.summary.total > 0.0 {
            ok as f64 / self.summary.total
        } else {
            0.0
        };
        Ok(RunFigures {
            p50_ms: percentile_ms("p50")?,
            p99_ms: percentile_ms("p99")?,
            ok,
            ok_per_sec,
            failed,
        })
    }
}

/// One row: a load case measured against the upstream directly and through the gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseFigures {
    pub case: String,
    pub direct: RunFigures,
    pub gateway: RunFigures,
    /// CPU time (user + system) the gateway process used during its run, when measured.
    pub gateway_cpu_seconds: Option<f64>,
}

impl CaseFigures {
    /// The gateway's CPU time per 2xx answer, in microseconds.
    pub fn gateway_cpu_us_per_answer(&self) -> Option<f64> {
        let cpu = self.gateway_cpu_seconds?;
        (self.gateway.ok > 0).then(|| cpu * 1e6 / self.gateway.ok as f64)
    }
}

/// The Markdown table of all cases, latencies in ms; `via` names what stood between the load
/// and the upstream (tiergate, or the plain proxy of the comparison).
pub fn table(via: &str, cases: &[CaseFigures]) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "| case | direct p50 | direct p99 | via {via} p50 | via {via} p99 \
         | added p50 | added p99 | direct ok/s | via {via} ok/s | throughput ratio \
         | failed (direct / via) | {via} CPU per answer |",
    );
    out.push_str("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
    for row in cases {
        let (d, g) = (&row.direct, &row.gateway);
        let ratio = if d.ok_per_sec > 0.0 {
            g.ok_per_sec / d.ok_per_sec
        } else {
            0.0
        };
        let cpu = row
            .gateway_cpu_us_per_answer()
            .map_or_else(|| "-".to_owned(), |us| format!("{us:.0} µs"));
        let _ = writeln!(
            out,
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:+.3} | {:+.3} | {:.0} | {:.0} | {:.2} | {} / {} | {} |",
            row.case,
            d.p50_ms,
            d.p99_ms,
            g.p50_ms,
            g.p99_ms,
            g.p50_ms - d.p50_ms,
            g.p99_ms - d.p99_ms,
            d.ok_per_sec,
            g.ok_per_sec,
            ratio,
            d.failed,
            g.failed,
            cpu,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// The shape oha 1.16 writes, trimmed to what matters plus a few fields we ignore.
    fn sample(p50: f64, p99: f64, ok: u64, not_found: u64, aborted: u64) -> String {
        serde_json::json!({
            "summary": {"successRate": 1.0, "total": 2.0, "slowest": 0.01, "fastest": 0.0001,
                        "average": 0.001, "requestsPerSec": 999.0},
            "latencyPercentiles": {"p10": 0.0001, "p50": p50, "p99": p99, "p99.9": 0.02},
            "statusCodeDistribution": {"200": ok, "404": not_found},
            "errorDistribution": {"aborted due to deadline": aborted},
            "rps": {"mean": 1.0}
        })
        .to_string()
    }

    #[test]
    fn figures_are_in_ms_and_count_only_2xx_as_throughput() {
        let result = OhaResult::parse(&sample(0.0002, 0.0015, 4000, 10, 3)).unwrap();
        let f = result.figures().unwrap();
        assert!((f.p50_ms - 0.2).abs() < 1e-9, "{f:?}");
        assert!((f.p99_ms - 1.5).abs() < 1e-9, "{f:?}");
        assert_eq!(f.ok, 4000);
        assert!((f.ok_per_sec - 2000.0).abs() < 1e-9, "{f:?}");
        assert_eq!(f.failed, 13);
    }

    #[test]
    fn a_run_without_answers_is_an_error_not_zero_latency() {
        let json = serde_json::json!({
            "summary": {"total": 1.0},
            "latencyPercentiles": {"p50": null, "p99": null},
            "statusCodeDistribution": {},
            "errorDistribution": {"connection refused": 5}
        })
        .to_string();
        let err = OhaResult::parse(&json).unwrap().figures().unwrap_err();
        assert!(err.to_string().contains("p50"), "{err}");
        assert!(OhaResult::parse("{\"not\": \"oha\"}").is_err());
    }

    #[test]
    fn table_shows_the_difference_and_the_ratio() {
        let direct = OhaResult::parse(&sample(0.0002, 0.0010, 4000, 0, 0))
            .unwrap()
            .figures()
            .unwrap();
        let gateway = OhaResult::parse(&sample(0.0005, 0.0018, 3000, 0, 2))
            .unwrap()
            .figures()
            .unwrap();
        let table = table(
            "tiergate",
            &[CaseFigures {
                case: "rate 2000".into(),
                direct,
                gateway,
                gateway_cpu_seconds: Some(0.24),
            }],
        );
        assert!(table.starts_with("| case | direct p50 | direct p99 | via tiergate p50 |"));
        let row = table.lines().nth(2).unwrap();
        assert_eq!(
            row,
            "| rate 2000 | 0.200 | 1.000 | 0.500 | 1.800 | +0.300 | +0.800 | 2000 | 1500 | 0.75 | 0 / 2 | 80 µs |"
        );
    }
}
