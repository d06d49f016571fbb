//! The active health check of one regional endpoint: a grpc.health.v1 `Watch` stream whose
//! answers feed the endpoint's link health, re-opened with backoff whenever it breaks.

use std::sync::Arc;
use std::time::Duration;

use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::regional::EndpointState;

/// The service name a tiergate node registers with its health service.
pub(crate) const INFERENCE_SERVICE: &str = "tiergate.v1.Inference";

/// The backoff between broken watches grows up to this many times the base interval.
const MAX_BACKOFF_FACTOR: u32 = 16;

/// Watches `endpoint` until the task is aborted.
pub(crate) async fn watch(endpoint: Arc<EndpointState>, channel: Channel, base_delay: Duration) {
    let mut delay = base_delay;
    loop {
        let mut client = HealthClient::new(channel.clone());
        let request = HealthCheckRequest {
            service: INFERENCE_SERVICE.to_owned(),
        };
        match client.watch(request).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(answer)) => {
                            delay = base_delay;
                            let serving = answer.status == ServingStatus::Serving as i32;
                            endpoint.set_health_check(serving);
                        }
                        // The peer ended the watch (shutting down): not serving until it
                        // answers again.
                        Ok(None) => {
                            endpoint.set_health_check(false);
                            break;
                        }
                        Err(status) => {
                            watch_failed(&endpoint, &status);
                            break;
                        }
                    }
                }
            }
            Err(status) => watch_failed(&endpoint, &status),
        }
        tokio::time::sleep(jittered(delay)).await;
        delay = (delay * 2).min(base_delay * MAX_BACKOFF_FACTOR);
    }
}

/// Half the delay plus a random share of the other half ("equal jitter"): the edges that lost
/// the same regional node do not all come back to it at the same instant.
fn jittered(delay: Duration) -> Duration {
    let half = delay / 2;
    half + half.mul_f64(rand::random::<f64>())
}

fn watch_failed(endpoint: &EndpointState, status: &tonic::Status) {
    if status.code() == Code::Unimplemented {
        // The peer has no health service: passive observation decides alone.
        endpoint.clear_health_check();
    } else {
        // Unreachable, or the peer does not serve tiergate.v1.Inference (NOT_FOUND).
        tracing::debug!(endpoint = endpoint.uri(), code = ?status.code(), message = status.message(), "health watch failed");
        endpoint.set_health_check(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delays_are_spread_over_the_upper_half() {
        let delay = Duration::from_millis(800);
        let samples: Vec<Duration> = (0..200).map(|_| jittered(delay)).collect();
        assert!(samples.iter().all(|d| *d >= delay / 2 && *d <= delay));
        let distinct: std::collections::HashSet<Duration> = samples.iter().copied().collect();
        assert!(
            distinct.len() > 100,
            "not spread: {} distinct",
            distinct.len()
        );
    }
}
