//! The regional endpoints: their shared state, the pick among them (power of two choices over
//! the ones whose breaker admits a call) and the one failover loop both call kinds use.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tiergate_router::health::LinkHealth;
use tonic::transport::Channel;

use super::Inner;
use crate::balance;
use crate::call::{Admission, Link};
use crate::error::{ErrorKind, UpstreamError};

/// Latency assumed for an endpoint before its first success when no endpoint has one yet.
const INITIAL_LATENCY: Duration = Duration::from_millis(50);

/// The state of one endpoint, shared with its health-watch task.
#[derive(Debug)]
pub(crate) struct EndpointState {
    pub(super) link: Arc<Link>,
    pub(super) in_flight: AtomicUsize,
}

impl EndpointState {
    pub(crate) fn uri(&self) -> &str {
        self.link.name()
    }

    pub(super) fn with_health<T>(&self, f: impl FnOnce(&mut LinkHealth) -> T) -> T {
        self.link.with_health(f)
    }

    pub(crate) fn set_health_check(&self, serving: bool) {
        self.with_health(|h| h.set_health_check(serving));
    }

    pub(crate) fn clear_health_check(&self) {
        self.with_health(|h| h.clear_health_check());
    }
}

/// Counts a call as in flight on its endpoint until dropped.
pub(super) struct InFlight(Arc<EndpointState>);

impl InFlight {
    pub(super) fn new(endpoint: Arc<EndpointState>) -> Self {
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(endpoint)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An endpoint picked for one call, with the call's duty to report to its link.
pub(super) struct Picked {
    index: usize,
    pub(super) endpoint: Arc<EndpointState>,
    pub(super) channel: Channel,
    pub(super) admission: Admission,
}

impl Inner {
    /// Runs `call` on a picked endpoint. A call that could not connect never reached a peer, so
    /// it is tried on the next endpoint while one is left and `deadline` has not passed; any
    /// other outcome is final. `call` reports to the endpoint's admission itself (a stream
    /// when it ends), so that the link hears of every attempt once.
    pub(super) async fn with_failover<T, F, Fut>(
        &self,
        deadline: Instant,
        mut call: F,
    ) -> Result<T, UpstreamError>
    where
        F: FnMut(Picked) -> Fut,
        Fut: Future<Output = Result<T, UpstreamError>>,
    {
        let mut tried = Vec::new();
        let mut last_error = None;
        loop {
            let picked = self.pick(&tried, last_error)?;
            let index = picked.index;
            match call(picked).await {
                Err(err) if self.may_retry(&err, &mut tried, index, deadline) => {
                    last_error = Some(err);
                }
                other => return other,
            }
        }
    }

    /// Power of two choices among the endpoints that admit a call, skipping `tried`; takes the
    /// chosen endpoint's admission (a probe slot when half-open). When none is left, a retry
    /// reports the error that made it retry.
    fn pick(
        &self,
        tried: &[usize],
        last_error: Option<UpstreamError>,
    ) -> Result<Picked, UpstreamError> {
        let now = Instant::now();
        let fallback = self
            .endpoints
            .iter()
            .filter_map(|(ep, _)| ep.with_health(|h| h.latency_ewma()))
            .min()
            .unwrap_or(INITIAL_LATENCY);
        let mut excluded = tried.to_vec();
        loop {
            let loads: Vec<Option<f64>> = self
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, (ep, _))| {
                    if excluded.contains(&i) {
                        return None;
                    }
                    ep.with_health(|h| {
                        h.is_available(now).then(|| {
                            let in_flight = ep.in_flight.load(Ordering::Relaxed);
                            balance::load_estimate(h.latency_ewma(), in_flight, fallback)
                        })
                    })
                })
                .collect();
            let Some(index) = balance::choose(&loads, &mut rand::rng()) else {
                if let Some(err) = last_error {
                    return Err(err);
                }
                return Err(UpstreamError::new(
                    ErrorKind::Unavailable,
                    format!("no regional endpoint is available ({})", self.describe(now)),
                ));
            };
            let (endpoint, channel) = &self.endpoints[index];
            if let Some(admission) = endpoint.link.admit(now) {
                return Ok(Picked {
                    index,
                    endpoint: endpoint.clone(),
                    channel: channel.clone(),
                    admission,
                });
            }
            // Another call took the last probe slot in the meantime.
            excluded.push(index);
        }
    }

    /// A call that could not connect never reached a peer: try another endpoint while one is
    /// left and time remains.
    fn may_retry(
        &self,
        err: &UpstreamError,
        tried: &mut Vec<usize>,
        index: usize,
        deadline: Instant,
    ) -> bool {
        tried.push(index);
        err.kind() == ErrorKind::Connect
            && tried.len() < self.endpoints.len()
            && Instant::now() < deadline
    }

    pub(super) fn describe(&self, now: Instant) -> String {
        self.endpoints
            .iter()
            .map(|(ep, _)| {
                let snap = ep.with_health(|h| h.snapshot(now));
                format!(
                    "{}: {:?}, health check {:?}",
                    ep.uri(),
                    snap.state,
                    snap.health_check
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}
