//! What both upstream clients share about one call: the limits the caller puts on it
//! ([`CallLimits`]), the tier's own timeouts ([`TierTimeouts`]), the timers they make, and the
//! link-health report every admitted call owes ([`Admission`], exactly one outcome per call).
//!
//! Which timeouts say something about the link: a timer of the tier's own (first token,
//! inter-token stall, total) that fires is a failure of the link. A timer of the caller's (the
//! client's deadline, the plan's commit point) that fires first says nothing about the link
//! unless the link was given at least its own first-token timeout: a client that asks for an
//! answer in 15 ms must not open a breaker.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tiergate_router::health::LinkHealth;

use crate::error::{ErrorKind, UpstreamError};

/// Limits the caller puts on one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallLimits {
    /// The request's own deadline: the call ends there whatever happens.
    pub deadline: Option<Instant>,
    /// The routing plan's commit point for this step: the first token of a stream, or the
    /// whole answer of a unary call, must have arrived by then, else the call fails and the
    /// plan moves on.
    pub commit_by: Option<Instant>,
}

impl From<Option<Instant>> for CallLimits {
    fn from(deadline: Option<Instant>) -> Self {
        CallLimits {
            deadline,
            commit_by: None,
        }
    }
}

/// A tier's own timeouts, from its config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TierTimeouts {
    pub first_token: Duration,
    pub stall: Duration,
    pub total: Duration,
}

/// Checks that every timeout of a tier is above zero; the message names the field.
pub(crate) fn check_timeouts(fields: &[(&str, Duration)]) -> Result<(), String> {
    match fields.iter().find(|(_, d)| d.is_zero()) {
        Some((name, _)) => Err(format!("{name} must be greater than zero")),
        None => Ok(()),
    }
}

/// One timer of a call: when it fires, and whether its firing counts against the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timer {
    pub at: Instant,
    pub counts: bool,
}

impl Timer {
    /// The earlier of the tier's own limit and the caller's. The caller's counts only when it
    /// gave the link at least `fair` (from `started`).
    fn earliest(own: Instant, caller: Option<Instant>, started: Instant, fair: Duration) -> Timer {
        match caller {
            Some(caller) if caller < own => Timer {
                at: caller,
                counts: caller.saturating_duration_since(started) >= fair,
            },
            _ => Timer {
                at: own,
                counts: true,
            },
        }
    }

    /// The timeout error of this timer.
    pub fn error(self, what: &str) -> UpstreamError {
        if self.counts {
            UpstreamError::timeout(what)
        } else {
            UpstreamError::caller_timeout(what)
        }
    }
}

/// The timers of one call, started now.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timers {
    pub started: Instant,
    timeouts: TierTimeouts,
    limits: CallLimits,
}

impl Timers {
    /// Fails at once when the caller's deadline has already passed.
    pub fn start(
        timeouts: TierTimeouts,
        limits: CallLimits,
        what: &str,
    ) -> Result<Self, UpstreamError> {
        let started = Instant::now();
        let first = limits.deadline.into_iter().chain(limits.commit_by).min();
        if first.is_some_and(|t| t <= started) {
            return Err(UpstreamError::caller_timeout(what));
        }
        Ok(Timers {
            started,
            timeouts,
            limits,
        })
    }

    /// The end of the whole call: the tier's total timeout or the client's deadline.
    pub fn end(&self) -> Timer {
        Timer::earliest(
            self.started + self.timeouts.total,
            self.limits.deadline,
            self.started,
            Duration::MAX,
        )
    }

    /// By when the first token of a stream must arrive (the response headers included).
    pub fn first_token(&self) -> Timer {
        let caller = self
            .limits
            .commit_by
            .into_iter()
            .chain(self.limits.deadline)
            .min();
        let own =
            (self.started + self.timeouts.first_token).min(self.started + self.timeouts.total);
        Timer::earliest(own, caller, self.started, self.timeouts.first_token)
    }

    /// By when a unary call's whole answer must arrive: the tier's total timeout, or the
    /// caller's commit point or deadline. The caller's counts when it gave the link at least
    /// its first-token timeout: a link that produced nothing in that time is failing.
    pub fn whole_answer(&self) -> Timer {
        let caller = self
            .limits
            .commit_by
            .into_iter()
            .chain(self.limits.deadline)
            .min();
        Timer::earliest(
            self.started + self.timeouts.total,
            caller,
            self.started,
            self.timeouts.first_token,
        )
    }

    /// By when the message after one received at `last` must arrive.
    pub fn next_message(&self, last: Instant) -> Timer {
        let own = (last + self.timeouts.stall).min(self.started + self.timeouts.total);
        Timer::earliest(own, self.limits.deadline, self.started, Duration::MAX)
    }

    /// The timer of a stream's next read: the first-token timer before any token, then the
    /// stall timer from the last one (`last_token`). When the caller gathers the whole answer
    /// (`whole`), the whole-answer timer wins where it comes first, as for a unary call.
    pub fn next_read(&self, last_token: Option<Instant>, whole: bool) -> (Timer, Awaiting) {
        let (timer, awaiting) = match last_token {
            None => (self.first_token(), Awaiting::FirstToken),
            Some(last) => (self.next_message(last), Awaiting::NextToken),
        };
        match whole.then(|| self.whole_answer()) {
            Some(whole_by) if whole_by.at < timer.at => (whole_by, Awaiting::RestOfAnswer),
            _ => (timer, awaiting),
        }
    }
}

/// What a stream's read waits for, to say in a timeout's error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Awaiting {
    FirstToken,
    NextToken,
    /// The rest of an answer the caller gathers whole.
    RestOfAnswer,
}

impl Awaiting {
    /// The timeout's error, naming the tier (`cloud`, `regional`).
    pub fn timed_out(self, timer: Timer, tier: &str) -> UpstreamError {
        timer.error(&match self {
            Awaiting::FirstToken => format!("waiting for the first {tier} token"),
            Awaiting::NextToken => format!("waiting for the next {tier} token (stalled)"),
            Awaiting::RestOfAnswer => format!("waiting for the rest of the {tier} answer"),
        })
    }
}

/// One link (an endpoint, or the cloud provider) and its health.
#[derive(Debug)]
pub(crate) struct Link {
    name: String,
    health: Mutex<LinkHealth>,
}

impl Link {
    pub fn new(name: String, health: LinkHealth) -> Arc<Link> {
        Arc::new(Link {
            name,
            health: Mutex::new(health),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn with_health<T>(&self, f: impl FnOnce(&mut LinkHealth) -> T) -> T {
        f(&mut self.health.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Takes the breaker's admission for one call; the call then owes one report.
    pub fn admit(self: &Arc<Self>, now: Instant) -> Option<Admission> {
        self.with_health(|h| h.try_acquire(now)).then(|| Admission {
            link: Arc::clone(self),
            reported: false,
        })
    }
}

/// An admitted call's duty to report exactly one outcome to its link. Dropped without a
/// report (the caller went away), it releases the call: nothing is learnt about the link.
#[derive(Debug)]
pub(crate) struct Admission {
    link: Arc<Link>,
    reported: bool,
}

impl Admission {
    /// Reports the call's outcome; later reports of the same call are ignored.
    pub fn report(&mut self, outcome: Result<(), &UpstreamError>, latency: Duration) {
        if std::mem::replace(&mut self.reported, true) {
            return;
        }
        let now = Instant::now();
        let link = &self.link;
        match outcome {
            Ok(()) => link.with_health(|h| h.record_success(latency, now)),
            Err(err) => match err.link_verdict() {
                LinkVerdict::Healthy => link.with_health(|h| h.record_success(latency, now)),
                LinkVerdict::Failed => {
                    tracing::debug!(link = %link.name, error = %err, "upstream call failed");
                    link.with_health(|h| h.record_failure(now));
                }
                LinkVerdict::BackPressure => {
                    tracing::debug!(link = %link.name, retry_after = ?err.retry_after(), "upstream asks to slow down");
                    link.with_health(|h| h.record_rate_limited(err.retry_after(), now));
                }
                LinkVerdict::Nothing => link.with_health(|h| h.release(now)),
            },
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if !self.reported {
            self.link.with_health(|h| h.release(Instant::now()));
        }
    }
}

/// What a failed call says about its link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkVerdict {
    /// The link works; the request was refused (4xx, INVALID_ARGUMENT) or never sent.
    Healthy,
    /// The link failed (connect, the tier's own timeouts, 5xx, protocol, unavailable).
    Failed,
    /// The upstream asked to slow down (429, RESOURCE_EXHAUSTED).
    BackPressure,
    /// Nothing: the caller's own deadline was shorter than the link's timeouts.
    Nothing,
}

impl UpstreamError {
    pub(crate) fn link_verdict(&self) -> LinkVerdict {
        match self.kind() {
            ErrorKind::Rejected | ErrorKind::InvalidRequest => LinkVerdict::Healthy,
            ErrorKind::RateLimited => LinkVerdict::BackPressure,
            ErrorKind::Timeout if self.is_caller_timeout() => LinkVerdict::Nothing,
            ErrorKind::Connect
            | ErrorKind::Timeout
            | ErrorKind::ServerError
            | ErrorKind::Protocol
            | ErrorKind::Unavailable => LinkVerdict::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    const TIMEOUTS: TierTimeouts = TierTimeouts {
        first_token: Duration::from_millis(300),
        stall: Duration::from_millis(200),
        total: Duration::from_secs(10),
    };

    #[test]
    fn the_tiers_own_timers_count_and_a_short_client_deadline_does_not() {
        let now = Instant::now();
        let timers = Timers::start(TIMEOUTS, CallLimits::default(), "x").unwrap();
        assert!(timers.first_token().counts);
        assert_eq!(timers.first_token().at, timers.started + ms(300));
        assert_eq!(timers.next_message(now).at, now + ms(200));

        // A 15 ms client deadline: every timer is the client's, none counts.
        let limits = CallLimits::from(Some(now + ms(15)));
        let timers = Timers::start(TIMEOUTS, limits, "x").unwrap();
        for timer in [
            timers.first_token(),
            timers.whole_answer(),
            timers.end(),
            timers.next_message(now),
        ] {
            assert!(!timer.counts, "{timer:?}");
            assert_eq!(timer.at, now + ms(15));
        }
        assert_eq!(
            timers.first_token().error("x").link_verdict(),
            LinkVerdict::Nothing
        );
    }

    #[test]
    fn a_commit_point_that_gave_the_link_its_first_token_time_counts_for_unary_calls() {
        let now = Instant::now();
        let limits = CallLimits {
            deadline: Some(now + Duration::from_secs(8)),
            commit_by: Some(now + Duration::from_secs(5)),
        };
        let timers = Timers::start(TIMEOUTS, limits, "x").unwrap();
        let whole = timers.whole_answer();
        assert_eq!(whole.at, now + Duration::from_secs(5));
        assert!(whole.counts, "5 s with nothing is a failing link");
        assert_eq!(whole.error("x").link_verdict(), LinkVerdict::Failed);
        // Mid-stream, the client's deadline never counts; the tier's own total timeout does.
        assert!(!timers.end().counts);
        let own_total = Timers::start(
            TIMEOUTS,
            CallLimits::from(Some(now + Duration::from_secs(30))),
            "x",
        )
        .unwrap();
        assert!(own_total.end().counts);
    }

    #[test]
    fn a_streams_next_read_waits_for_its_first_token_then_its_stall_then_a_gathered_whole() {
        let now = Instant::now();
        let limits = CallLimits {
            deadline: Some(now + Duration::from_secs(8)),
            commit_by: Some(now + ms(450)),
        };
        let timers = Timers::start(TIMEOUTS, limits, "x").unwrap();
        let (first, awaiting) = timers.next_read(None, false);
        assert_eq!(
            (first.at, awaiting),
            (timers.started + ms(300), Awaiting::FirstToken)
        );
        let last = timers.started + ms(100);
        let (stall, awaiting) = timers.next_read(Some(last), false);
        assert_eq!((stall.at, awaiting), (last + ms(200), Awaiting::NextToken));
        // Gathered whole: the commit point comes before a stall timer from 400 ms.
        let late = timers.started + ms(400);
        let (whole, awaiting) = timers.next_read(Some(late), true);
        assert_eq!(
            (whole.at, awaiting),
            (now + ms(450), Awaiting::RestOfAnswer)
        );
        assert_eq!(timers.next_read(Some(last), true).1, Awaiting::NextToken);
        assert_eq!(timers.next_read(Some(late), false).1, Awaiting::NextToken);
        assert!(
            Awaiting::NextToken
                .timed_out(stall, "cloud")
                .message()
                .contains("next cloud token (stalled)")
        );
    }

    #[test]
    fn a_passed_deadline_fails_before_any_call() {
        let limits = CallLimits {
            deadline: None,
            commit_by: Some(Instant::now()),
        };
        let err = Timers::start(TIMEOUTS, limits, "x").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
        assert_eq!(err.link_verdict(), LinkVerdict::Nothing);
    }

    #[test]
    fn an_admission_reports_once_and_a_dropped_one_releases_its_probe() {
        use tiergate_router::health::{LinkHealthConfig, LinkState};
        let config = LinkHealthConfig {
            consecutive_failures: 1,
            open_duration: ms(1),
            ..LinkHealthConfig::default()
        };
        let link = Link::new("l".into(), LinkHealth::new(config));
        let mut call = link.admit(Instant::now()).unwrap();
        let err = UpstreamError::new(ErrorKind::ServerError, "boom");
        call.report(Err(&err), ms(1));
        call.report(Ok(()), ms(1));
        drop(call);
        std::thread::sleep(ms(2));
        let now = Instant::now();
        assert_eq!(link.with_health(|h| h.state(now)), LinkState::HalfOpen);
        // The probe's caller went away: the slot is free for the next one.
        let probe = link.admit(now).unwrap();
        assert!(link.admit(now).is_none());
        drop(probe);
        assert!(link.admit(now).is_some());
    }
}
