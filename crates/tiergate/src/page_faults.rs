//! The process's major page faults, read from `/proc/self/stat` at each scrape
//! (`tiergate_process_major_page_faults_total`). The prometheus crate's process collector leaves
//! them out, yet they are how a node squeezed by a memory limit shows: before an OOM kill, or
//! instead of one, the kernel keeps it alive by reading its code and weights back from disk, and
//! every answer slows to a crawl while its engine still moves (docs/operations.md, "Sizing a
//! memory limit").

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, Opts};

/// See the module's documentation.
#[derive(Debug)]
pub struct MajorFaults {
    counter: IntCounter,
}

impl MajorFaults {
    pub fn new() -> Result<MajorFaults, prometheus::Error> {
        let counter = IntCounter::with_opts(Opts::new(
            "process_major_page_faults_total",
            "Page faults of the process that had to read from disk (/proc/self/stat majflt).",
        ))?;
        Ok(MajorFaults { counter })
    }
}

impl Collector for MajorFaults {
    fn desc(&self) -> Vec<&Desc> {
        self.counter.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(faults) = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|stat| major_faults(&stat))
        else {
            // Not Linux, or no procfs: no series rather than a wrong one.
            return Vec::new();
        };
        // The kernel's count is cumulative; two scrapes at once must not count twice.
        self.counter
            .inc_by(faults.saturating_sub(self.counter.get()));
        self.counter.collect()
    }
}

/// `majflt`, the 12th field of a `/proc/PID/stat` line. The 2nd, the command name, may hold
/// spaces and parentheses, so the fields are counted after its closing parenthesis.
fn major_faults(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    // From the 3rd field (state) on: majflt is the 10th of these.
    after_name.split_whitespace().nth(9)?.parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn majflt_is_read_after_a_command_name_with_spaces_and_parentheses() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt ...
        let line =
            "4242 (tier gate) (x)) S 1 4242 4242 0 -1 4194560 18815 0 73 0 120 30 0 0 20 0 9";
        assert_eq!(major_faults(line), Some(73));
        assert_eq!(major_faults("4242 (broken"), None);
    }

    #[test]
    fn the_collector_reports_this_process_s_count() {
        let faults = MajorFaults::new().unwrap();
        let families = faults.collect();
        if !std::path::Path::new("/proc/self/stat").exists() {
            assert!(families.is_empty());
            return;
        }
        let counter = families[0].get_metric()[0].get_counter().get_value();
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(counter <= major_faults(&stat).unwrap() as f64);
        assert_eq!(families[0].name(), "process_major_page_faults_total");
    }
}
