//! The budget monitor: compares what the node measures (resident memory from
//! `/proc/self/status`, the p95 latency of recent requests) with the device's budgets, sets the
//! `tiergate_device_*` gauges, and logs one warning per breach: when a budget goes from met to
//! breached, not on every check while it stays breached; again only after it recovered.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus::{GaugeVec, IntGauge, Opts, Registry};
use serde::Serialize;

use super::performance::Performance;
use super::profile::EffectiveProfile;

/// Which budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Budget {
    Memory,
    Latency,
}

impl Budget {
    pub fn as_str(self) -> &'static str {
        match self {
            Budget::Memory => "memory",
            Budget::Latency => "latency",
        }
    }
}

/// What one check of a budget concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Met before and now.
    StillMet,
    /// Met before, breached now: the moment to warn.
    Breached,
    /// Breached before and now: already warned.
    StillBreached,
    /// Breached before, met now.
    Recovered,
}

/// One budget's state across checks: whether it is breached now. A pure state machine, so
/// that the once-per-breach rule is tested over a sequence of measurements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BreachState {
    breached: bool,
}

impl BreachState {
    /// Feeds one measurement against its limit; `None` (nothing measured yet, e.g. no request
    /// in the latency window) keeps the state.
    pub fn check(&mut self, measured: Option<f64>, limit: f64) -> Transition {
        let Some(measured) = measured else {
            return if self.breached {
                Transition::StillBreached
            } else {
                Transition::StillMet
            };
        };
        let now = measured > limit;
        let transition = match (self.breached, now) {
            (false, false) => Transition::StillMet,
            (false, true) => Transition::Breached,
            (true, true) => Transition::StillBreached,
            (true, false) => Transition::Recovered,
        };
        self.breached = now;
        transition
    }

    pub fn is_breached(self) -> bool {
        self.breached
    }
}

/// One budget's compliance, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Compliance {
    pub budget: Budget,
    /// The limit: bytes (memory) or seconds (latency).
    pub limit: f64,
    /// The last measurement compared with it; absent before the first one.
    pub measured: Option<f64>,
    pub breached: bool,
}

/// The `tiergate_device_*` gauges.
#[derive(Debug, Clone)]
struct DeviceGauges {
    breached: GaugeVec,
    budget: GaugeVec,
    rss_bytes: IntGauge,
}

impl DeviceGauges {
    fn register(registry: &Registry, node: &str) -> Result<Self, prometheus::Error> {
        let opts = |name: &str, help: &str| Opts::new(name, help).const_label("node", node);
        let breached = GaugeVec::new(
            opts(
                "device_budget_breached",
                "1 while the device budget is breached (memory: RSS over it; latency: p95 of recent requests over it).",
            ),
            &["budget"],
        )?;
        let budget = GaugeVec::new(
            opts(
                "device_budget",
                "The device budget's limit: bytes (memory) or seconds (latency).",
            ),
            &["budget"],
        )?;
        let rss_bytes = IntGauge::with_opts(opts(
            "device_rss_bytes",
            "Resident memory (VmRSS) at the budget monitor's last check.",
        ))?;
        registry.register(Box::new(breached.clone()))?;
        registry.register(Box::new(budget.clone()))?;
        registry.register(Box::new(rss_bytes.clone()))?;
        Ok(DeviceGauges {
            breached,
            budget,
            rss_bytes,
        })
    }
}

/// The monitor of one node: its budgets, their states and the last measurements.
#[derive(Debug)]
pub struct BudgetMonitor {
    profile: EffectiveProfile,
    performance: Arc<Performance>,
    gauges: DeviceGauges,
    state: Mutex<MonitorState>,
}

#[derive(Debug, Default)]
struct MonitorState {
    memory: BreachState,
    latency: BreachState,
    rss_bytes: Option<u64>,
    latency_p95: Option<f64>,
}

impl BudgetMonitor {
    /// Registers the gauges (the limits are set at once; breached gauges start at 0).
    pub fn new(
        profile: EffectiveProfile,
        performance: Arc<Performance>,
        registry: &Registry,
        node: &str,
    ) -> Result<Arc<Self>, prometheus::Error> {
        let gauges = DeviceGauges::register(registry, node)?;
        let monitor = BudgetMonitor {
            profile,
            performance,
            gauges,
            state: Mutex::new(MonitorState::default()),
        };
        for (budget, limit) in monitor.limits() {
            monitor
                .gauges
                .budget
                .with_label_values(&[budget.as_str()])
                .set(limit);
            monitor
                .gauges
                .breached
                .with_label_values(&[budget.as_str()])
                .set(0.0);
        }
        Ok(Arc::new(monitor))
    }

    /// The budgets this node has, with their limits (bytes, seconds).
    fn limits(&self) -> Vec<(Budget, f64)> {
        let memory = (self.profile.memory_budget_bytes()).map(|b| (Budget::Memory, b as f64));
        let latency = (self.profile.latency_budget()).map(|d| (Budget::Latency, d.as_secs_f64()));
        memory.into_iter().chain(latency).collect()
    }

    /// Measures and compares once.
    pub fn check(&self) {
        let rss = resident_bytes();
        if let Some(rss) = rss {
            self.gauges
                .rss_bytes
                .set(i64::try_from(rss).unwrap_or(i64::MAX));
        }
        let p95 = self.performance.latency_percentile(0.95);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.rss_bytes = rss.or(state.rss_bytes);
        state.latency_p95 = p95.or(state.latency_p95);
        for (budget, limit) in self.limits() {
            let (breach, measured) = match budget {
                Budget::Memory => (&mut state.memory, rss.map(|b| b as f64)),
                Budget::Latency => (&mut state.latency, p95),
            };
            let transition = breach.check(measured, limit);
            let breached = breach.is_breached();
            self.gauges
                .breached
                .with_label_values(&[budget.as_str()])
                .set(if breached { 1.0 } else { 0.0 });
            match transition {
                Transition::Breached => tracing::warn!(
                    budget = budget.as_str(),
                    measured,
                    limit,
                    "device budget breached"
                ),
                Transition::Recovered => tracing::info!(
                    budget = budget.as_str(),
                    measured,
                    limit,
                    "device budget met again"
                ),
                Transition::StillMet | Transition::StillBreached => {}
            }
        }
    }

    /// Each budget's compliance as of the last check.
    pub fn compliance(&self) -> Vec<Compliance> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        self.limits()
            .into_iter()
            .map(|(budget, limit)| {
                let (breach, measured) = match budget {
                    Budget::Memory => (state.memory, state.rss_bytes.map(|b| b as f64)),
                    Budget::Latency => (state.latency, state.latency_p95),
                };
                Compliance {
                    budget,
                    limit,
                    measured,
                    breached: breach.is_breached(),
                }
            })
            .collect()
    }

    /// Checks every `interval` until the task is dropped (the first check at once).
    pub async fn run(self: Arc<Self>, interval: Duration) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.check();
        }
    }
}

/// The process's resident set (`VmRSS` of `/proc/self/status`), in bytes; `None` where there
/// is no procfs.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib.saturating_mul(1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_breach_and_again_after_recovery() {
        let mut state = BreachState::default();
        let limit = 100.0;
        let measurements = [
            Some(50.0),
            None,
            Some(150.0),
            Some(160.0),
            None,
            Some(170.0),
            Some(90.0),
            Some(95.0),
            Some(101.0),
            Some(100.0),
        ];
        let transitions: Vec<Transition> = measurements
            .iter()
            .map(|m| state.check(*m, limit))
            .collect();
        assert_eq!(
            transitions,
            [
                Transition::StillMet,
                Transition::StillMet,
                Transition::Breached,
                Transition::StillBreached,
                Transition::StillBreached,
                Transition::StillBreached,
                Transition::Recovered,
                Transition::StillMet,
                Transition::Breached,
                // At the limit is within it.
                Transition::Recovered,
            ]
        );
        let warnings = transitions
            .iter()
            .filter(|t| **t == Transition::Breached)
            .count();
        assert_eq!(warnings, 2);
    }

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\ttiergate\nVmPeak:\t  9000 kB\nVmRSS:\t  2048 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(2048 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert!(resident_bytes().is_some_and(|b| b > 0));
    }
}
