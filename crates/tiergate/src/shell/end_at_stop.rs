//! Answers still running when the node stops (its drain timeout ran out) end with an error the
//! client can read: 503 / UNAVAILABLE with `Retry-After` when nothing was sent yet, an SSE
//! `error` event or a gRPC status after streamed text. Without it they ran on while the
//! listeners closed and were cut when the process exited, seconds later: a connection that
//! closes mid-answer, with nothing to say why.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;

use super::{Lifecycle, Phase};
use crate::node::{
    Answer, AnswerStream, Explanation, Limits, ModelCard, NodeApi, NodeError, NodeRequest,
};

type Stopped = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A node's API whose answers end, with an error, when the lifecycle reaches `Stopped`.
pub struct EndAtStop {
    inner: Arc<dyn NodeApi>,
    phases: watch::Receiver<Phase>,
}

impl std::fmt::Debug for EndAtStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndAtStop")
            .field("node", &self.inner.name())
            .field("phase", &*self.phases.borrow())
            .finish()
    }
}

impl EndAtStop {
    pub fn new(inner: Arc<dyn NodeApi>, lifecycle: &Lifecycle) -> EndAtStop {
        EndAtStop {
            inner,
            phases: lifecycle.subscribe(),
        }
    }

    /// Resolves once the node has stopped; never when its lifecycle is gone without stopping.
    fn stopped(&self) -> Stopped {
        let mut phases = self.phases.clone();
        Box::pin(async move {
            if phases.wait_for(|p| *p == Phase::Stopped).await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }
}

/// The error an answer still running at the stop ends with; counted as the node's refusal.
fn cut(node: &dyn NodeApi) -> NodeError {
    let err = NodeError::Unavailable(
        "the node is shutting down: its drain timeout ended this answer before it was \
         complete; retry on another node"
            .to_owned(),
    );
    node.count_rejection(&err);
    tracing::warn!("an answer still running at the drain timeout was ended");
    err
}

impl NodeApi for EndAtStop {
    fn generate(&self, request: NodeRequest) -> BoxFuture<'_, Result<Answer, NodeError>> {
        let stopped = self.stopped();
        let answer = self.inner.generate(request);
        async move {
            tokio::select! {
                biased;
                answer = answer => answer,
                () = stopped => Err(cut(self.inner.as_ref())),
            }
        }
        .boxed()
    }

    fn generate_stream(
        &self,
        request: NodeRequest,
    ) -> BoxFuture<'_, Result<AnswerStream, NodeError>> {
        let mut stopped = self.stopped();
        let started = self.inner.generate_stream(request);
        async move {
            let events = tokio::select! {
                biased;
                events = started => events?,
                () = &mut stopped => return Err(cut(self.inner.as_ref())),
            };
            Ok(until_stopped(events, stopped, Arc::clone(&self.inner)))
        }
        .boxed()
    }

    fn explain(&self, request: NodeRequest) -> BoxFuture<'_, Result<Explanation, NodeError>> {
        self.inner.explain(request)
    }

    fn models(&self) -> Vec<ModelCard> {
        self.inner.models()
    }

    fn limits(&self) -> &Limits {
        self.inner.limits()
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn refresh_metrics(&self) {
        self.inner.refresh_metrics();
    }

    fn count_rejection(&self, err: &NodeError) {
        self.inner.count_rejection(err);
    }

    fn trusts_peer_key(&self, presented: Option<&str>) -> bool {
        self.inner.trusts_peer_key(presented)
    }
}

/// `events` until they end, or until `stopped`: then one last item, the stop's error.
fn until_stopped(events: AnswerStream, stopped: Stopped, node: Arc<dyn NodeApi>) -> AnswerStream {
    futures::stream::unfold(Some((events, stopped)), move |state| {
        let node = Arc::clone(&node);
        async move {
            let (mut events, mut stopped) = state?;
            tokio::select! {
                biased;
                event = events.next() => event.map(|event| (event, Some((events, stopped)))),
                () = &mut stopped => Some((Err(cut(node.as_ref())), None)),
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::{Duration, Instant};

    use prometheus::Gauge;

    use super::*;
    use crate::node::{Input, Sampling, StreamEvent};
    use crate::shell::ReadinessProbe;

    /// A node whose answers never finish: a stream sends one delta, then nothing.
    struct NeverFinishes {
        limits: Limits,
    }

    impl NodeApi for NeverFinishes {
        fn generate(&self, _request: NodeRequest) -> BoxFuture<'_, Result<Answer, NodeError>> {
            futures::future::pending().boxed()
        }

        fn generate_stream(
            &self,
            _request: NodeRequest,
        ) -> BoxFuture<'_, Result<AnswerStream, NodeError>> {
            let delta = StreamEvent::Delta {
                text: "partial".to_owned(),
                logprobs: Vec::new(),
            };
            let events = futures::stream::iter([Ok(delta)]).chain(futures::stream::pending());
            futures::future::ready(Ok(events.boxed())).boxed()
        }

        fn explain(&self, _request: NodeRequest) -> BoxFuture<'_, Result<Explanation, NodeError>> {
            futures::future::pending().boxed()
        }

        fn models(&self) -> Vec<ModelCard> {
            Vec::new()
        }

        fn limits(&self) -> &Limits {
            &self.limits
        }

        fn name(&self) -> &str {
            "never"
        }
    }

    fn request() -> NodeRequest {
        let deadline = Instant::now() + Duration::from_secs(60);
        NodeRequest::new(Input::Text("hi".into()), Sampling::default(), deadline)
    }

    #[tokio::test]
    async fn answers_running_when_the_node_stops_end_with_an_unavailable_error() {
        let probe: ReadinessProbe = Arc::new(|| true);
        let lifecycle = Lifecycle::new(probe, Gauge::new("ready", "ready").unwrap());
        lifecycle.set(Phase::Serving);
        let node = EndAtStop::new(
            Arc::new(NeverFinishes {
                limits: Limits::default(),
            }),
            &lifecycle,
        );
        let mut stream = node.generate_stream(request()).await.unwrap();
        assert!(matches!(
            stream.next().await,
            Some(Ok(StreamEvent::Delta { .. }))
        ));
        let whole = node.generate(request());
        // Nothing ends them but the stop (draining and closing still serve them).
        lifecycle.set(Phase::Draining);
        lifecycle.set(Phase::Closing);
        let waited = tokio::time::timeout(Duration::from_millis(50), stream.next()).await;
        assert!(waited.is_err(), "the stream ended before the stop");

        lifecycle.set(Phase::Stopped);
        let cut = tokio::time::timeout(Duration::from_secs(1), stream.next())
            .await
            .expect("the stop did not end the stream")
            .expect("the stream ends with an error");
        let err = cut.expect_err("an error, not an event");
        assert!(matches!(err, NodeError::Unavailable(_)), "{err:?}");
        assert!(err.to_string().contains("drain timeout"), "{err}");
        assert!(stream.next().await.is_none(), "nothing after the error");
        let err = tokio::time::timeout(Duration::from_secs(1), whole)
            .await
            .expect("the stop did not end the whole answer")
            .expect_err("the whole answer ends with an error");
        assert_eq!(err.http_status(), http::StatusCode::SERVICE_UNAVAILABLE);
        // Asked after the stop: refused at once.
        let late = tokio::time::timeout(Duration::from_secs(1), node.generate(request())).await;
        assert!(
            matches!(late, Ok(Err(NodeError::Unavailable(_)))),
            "{late:?}"
        );
    }
}
