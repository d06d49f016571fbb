//! OpenTelemetry trace export over OTLP/gRPC (`[telemetry]`), off by default.
//!
//! When `otlp_endpoint` is set, the node's tracing spans (the request span of the serving stack
//! and every span inside it) are exported through `tracing-opentelemetry` and a batch
//! processor to an OTLP collector. The request span *is* the span the trace-context layer
//! made: it takes that layer's trace id and span id, and the caller's span as its parent, so
//! the spans the collector receives from an edge and a regional node join into one trace with
//! the same ids the `traceparent` headers carry. Off (the default), no provider, no batch
//! thread and no connection exist.

mod ids;

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
    TracerProvider as _,
};
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SamplingDecision, SdkTracerProvider, ShouldSample};
use serde::Deserialize;
use tiergate_upstream::TraceContext;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer as _;
use tracing_subscriber::Registry;
use tracing_subscriber::filter::LevelFilter;

pub use ids::NodeIds;

/// The exporting layer, put by `main.rs` beside the log layer (each with its own filter: the
/// spans exported do not depend on `--log`).
pub type BoxedLayer = Box<dyn tracing_subscriber::Layer<Registry> + Send + Sync>;

/// `[telemetry]`: trace export.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The OTLP/gRPC collector, e.g. `http://otel-collector:4317`; unset: no export.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// The share of new traces recorded (0.0 to 1.0); a request that came with a
    /// `traceparent` follows its caller's sampled flag instead.
    pub sampling_ratio: f64,
    /// How long one export call may take before it is given up.
    #[serde(with = "crate::config::duration")]
    pub export_timeout: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            service_name: "tiergate".to_owned(),
            sampling_ratio: 1.0,
            export_timeout: Duration::from_secs(10),
        }
    }
}

impl TelemetryConfig {
    /// Checks the fields; the error names the field.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(0.0..=1.0).contains(&self.sampling_ratio) {
            return Err((
                "telemetry.sampling_ratio",
                "must be between 0.0 and 1.0".to_owned(),
            ));
        }
        if self.service_name.trim().is_empty() {
            return Err(("telemetry.service_name", "must not be empty".to_owned()));
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            let uri: http::Uri = endpoint
                .parse()
                .map_err(|err| ("telemetry.otlp_endpoint", format!("not a URI: {err}")))?;
            let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
            if !scheme_ok || uri.host().is_none() {
                return Err((
                    "telemetry.otlp_endpoint",
                    "must be http://HOST:PORT or https://HOST:PORT".to_owned(),
                ));
            }
        }
        if self.export_timeout.is_zero() {
            return Err(("telemetry.export_timeout", "must be above 0".to_owned()));
        }
        Ok(())
    }
}

/// The running exporter; dropping it without [`Telemetry::shutdown`] loses unsent spans.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Flushes the spans not yet sent and stops the batch thread.
    pub fn shutdown(self) {
        if let Err(err) = self.provider.shutdown() {
            tracing::warn!(error = %err, "trace export shutdown");
        }
    }
}

/// The ratio sampler for new traces, set once when export starts (read by the trace-context
/// layer, which must flag a new trace sampled before the node forwards it).
static ROOT_SAMPLER: OnceLock<Sampler> = OnceLock::new();

/// Starts export when `[telemetry] otlp_endpoint` is set and returns the layer for the
/// subscriber; `None` (and nothing started) when it is unset. Must run inside the tokio
/// runtime (the gRPC channel's worker is spawned on it).
pub fn start(config: &TelemetryConfig) -> anyhow::Result<Option<(Telemetry, BoxedLayer)>> {
    let Some(endpoint) = &config.otlp_endpoint else {
        return Ok(None);
    };
    let exporter = SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .with_timeout(config.export_timeout)
        .build()?;
    let ratio = Sampler::TraceIdRatioBased(config.sampling_ratio);
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(ratio.clone())))
        .with_id_generator(NodeIds)
        .with_resource(
            Resource::builder()
                .with_service_name(config.service_name.clone())
                .build(),
        )
        .build();
    // INFO: the request span and the node's own spans, not the transport crates' debug spans.
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("tiergate"))
        .with_threads(false)
        .with_filter(LevelFilter::INFO);
    // A second start in one process (never in `serve`) keeps the first ratio.
    let _ = ROOT_SAMPLER.set(ratio);
    Ok(Some((Telemetry { provider }, Box::new(layer))))
}

/// Whether a new trace (no caller's `traceparent`) is to be recorded: the same deterministic
/// decision by trace id that the exporter's sampler makes. False while export is off.
pub fn sample_new_trace(trace_id_hex: &str) -> bool {
    let (Some(sampler), Ok(trace_id)) = (ROOT_SAMPLER.get(), TraceId::from_hex(trace_id_hex))
    else {
        return false;
    };
    let result = sampler.should_sample(None, trace_id, "request", &SpanKind::Server, &[], &[]);
    matches!(result.decision, SamplingDecision::RecordAndSample)
}

/// Makes `span` (the stack's request span) the OpenTelemetry span of `trace`: the trace's id
/// and this node's span id, the caller's span as the remote parent. Does nothing while export
/// is off (the span has no OpenTelemetry data then).
pub fn adopt(span: &tracing::Span, trace: &TraceContext) {
    // Export off (the default): skip the per-request id parsing and contexts entirely.
    if ROOT_SAMPLER.get().is_none() {
        return;
    }
    let (Ok(trace_id), Ok(span_id)) = (
        TraceId::from_hex(&trace.trace_id()),
        SpanId::from_hex(&trace.span_id()),
    ) else {
        return;
    };
    if let Some(parent) = trace.parent_id().and_then(|p| SpanId::from_hex(&p).ok()) {
        let flags = TraceFlags::new(trace.flags());
        let remote = SpanContext::new(trace_id, parent, flags, true, TraceState::default());
        let parent_cx = opentelemetry::Context::new().with_remote_span_context(remote);
        // Fails only when export is off (no layer) or the span is disabled: nothing to adopt.
        if span.set_parent(parent_cx).is_err() {
            return;
        }
    }
    // Starting the span now, on this thread, is what lets the id generator hand it these ids.
    ids::with_next(trace_id, span_id, || {
        let _ = span.context();
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn with(toml: &str) -> Result<(), &'static str> {
        let config: TelemetryConfig = toml::from_str(toml).map_err(|_| "parse")?;
        config.validate().map_err(|(path, _)| path)
    }

    #[test]
    fn the_default_exports_nothing_and_is_valid() {
        let config = TelemetryConfig::default();
        assert_eq!(config.otlp_endpoint, None);
        assert!(config.validate().is_ok());
        assert!(start(&config).unwrap().is_none());
    }

    #[test]
    fn bad_fields_are_named() {
        assert_eq!(
            with("sampling_ratio = 1.5"),
            Err("telemetry.sampling_ratio")
        );
        assert_eq!(
            with("sampling_ratio = -0.1"),
            Err("telemetry.sampling_ratio")
        );
        assert_eq!(with("service_name = \" \""), Err("telemetry.service_name"));
        assert_eq!(
            with("otlp_endpoint = \"collector:4317\""),
            Err("telemetry.otlp_endpoint")
        );
        assert_eq!(
            with("otlp_endpoint = \"ftp://c:4317\""),
            Err("telemetry.otlp_endpoint")
        );
        assert_eq!(
            with("export_timeout = \"0s\""),
            Err("telemetry.export_timeout")
        );
        assert_eq!(with("unknown = 1"), Err("parse"));
        assert_eq!(
            with("otlp_endpoint = \"http://127.0.0.1:4317\"\nsampling_ratio = 0.25"),
            Ok(())
        );
    }
}
