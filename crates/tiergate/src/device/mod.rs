//! Device awareness: the device profile a node runs under (`[device]`), the monitor that
//! compares measured memory and latency with its budgets, and the report (`GET /v1/report`).

mod monitor;
mod performance;
mod profile;
mod report;

pub use monitor::{Budget, BudgetMonitor, Compliance, Transition, resident_bytes};
pub use performance::{DEFAULT_WINDOW, Performance, PerformanceSnapshot};
pub use profile::{DeviceProfile, DeviceSection, EffectiveProfile, ProfileValues, apply_to_table};
pub use report::{DeviceReporter, ModelConstraints, Report};
