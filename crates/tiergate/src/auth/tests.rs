#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue};

use super::keys::digest_hex;
use super::*;
use crate::node::{Input, Sampling};

const KEY_A: &str = "tg_key-of-tenant-a-0123456789";
const KEY_B: &str = "tg_key-of-tenant-b-0123456789";

fn config(name: &str, key: &str) -> TenantConfig {
    TenantConfig {
        name: name.to_owned(),
        key_sha256: vec![digest_hex(key)],
        requests_per_second: None,
        burst: None,
        tokens_per_minute: None,
        allowed_tiers: None,
        allowed_models: None,
    }
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.insert(*name, HeaderValue::from_str(value).unwrap());
    }
    map
}

fn request(max_new_tokens: u32) -> NodeRequest {
    let sampling = Sampling {
        max_new_tokens,
        ..Sampling::default()
    };
    NodeRequest::new(
        Input::Text("hello".into()),
        sampling,
        Instant::now() + Duration::from_secs(5),
    )
}

#[test]
fn no_tenants_means_no_authentication() {
    let metrics = NodeMetrics::new("n").unwrap();
    assert!(
        Authenticator::new(&[], Tier::Edge, &metrics, None)
            .unwrap()
            .is_none()
    );
}

#[test]
fn keys_are_read_from_bearer_or_x_api_key_and_failures_counted() {
    let metrics = NodeMetrics::new("n").unwrap();
    let auth = Authenticator::new(
        &[config("a", KEY_A), config("b", KEY_B)],
        Tier::Edge,
        &metrics,
        None,
    )
    .unwrap()
    .unwrap();
    let bearer = format!("Bearer {KEY_A}");
    assert_eq!(
        auth.authenticate(&headers(&[("authorization", bearer.as_str())]))
            .unwrap()
            .name(),
        "a"
    );
    let lower = format!("bearer  {KEY_B} ");
    assert_eq!(
        auth.authenticate(&headers(&[("authorization", lower.as_str())]))
            .unwrap()
            .name(),
        "b"
    );
    assert_eq!(
        auth.authenticate(&headers(&[("x-api-key", KEY_B)]))
            .unwrap()
            .name(),
        "b"
    );
    let failures = [
        (headers(&[]), AuthFailure::Missing),
        (headers(&[("authorization", KEY_A)]), AuthFailure::Malformed),
        (
            headers(&[("authorization", format!("Basic {KEY_A}").as_str())]),
            AuthFailure::Malformed,
        ),
        (
            headers(&[("authorization", "Bearer ")]),
            AuthFailure::Malformed,
        ),
        (
            headers(&[("authorization", "Bearer tg_wrong-key-0123456789")]),
            AuthFailure::UnknownKey,
        ),
        (
            headers(&[("x-api-key", "tg_wrong-key-0123456789")]),
            AuthFailure::UnknownKey,
        ),
    ];
    for (headers, expected) in failures {
        assert_eq!(
            auth.authenticate(&headers).unwrap_err(),
            expected,
            "{headers:?}"
        );
    }
    let text = String::from_utf8(metrics.render().unwrap()).unwrap();
    assert!(
        text.contains("tiergate_auth_failures_total{node=\"n\",reason=\"malformed\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("tiergate_auth_failures_total{node=\"n\",reason=\"unknown_key\"} 2"),
        "{text}"
    );
    // The message never carries what the client sent.
    assert!(!AuthFailure::UnknownKey.message().contains("tg_"));
}

#[test]
fn a_tenants_policy_pins_tiers_checks_models_and_charges_tokens() {
    let metrics = NodeMetrics::new("n").unwrap();
    let mut edge = config("edge-team", KEY_A);
    edge.allowed_tiers = Some(vec![Tier::Edge]);
    edge.allowed_models = Some(vec!["tiergate".into()]);
    edge.tokens_per_minute = Some(100);
    let tenant = Tenant::new(&edge, Tier::Edge, metrics.tenant_requests.clone()).unwrap();

    let mut r = request(60);
    tenant.admit(&mut r).unwrap();
    assert_eq!(r.constraint, TierConstraint::EdgeOnly);
    // 40 tokens left this minute: 60 more wait, and say how long.
    let err = tenant.admit(&mut request(60)).unwrap_err();
    assert_eq!(err.http_status(), http::StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(err.grpc_code(), tonic::Code::ResourceExhausted);
    assert!(err.retry_after().is_some());
    // More than a minute's worth can never go: a clear 400, not a retry loop.
    assert_eq!(
        tenant.admit(&mut request(101)).unwrap_err().http_status(),
        http::StatusCode::BAD_REQUEST
    );

    let mut cloud = request(1);
    cloud.constraint = TierConstraint::AtLeastCloud;
    let err = tenant.admit(&mut cloud).unwrap_err();
    assert_eq!(err.http_status(), http::StatusCode::FORBIDDEN);
    assert_eq!(err.grpc_code(), tonic::Code::PermissionDenied);

    tenant.check_model("tiergate").unwrap();
    let err = tenant.check_model("tiergate-edge").unwrap_err();
    assert_eq!(err.http_status(), http::StatusCode::FORBIDDEN);
    assert!(err.to_string().contains("may use: tiergate"), "{err}");

    let text = String::from_utf8(metrics.render().unwrap()).unwrap();
    for (outcome, count) in [
        ("accepted", 1),
        ("token_limited", 2),
        ("forbidden", 2),
        ("rate_limited", 0),
    ] {
        let line = format!(
            "tiergate_tenant_requests_total{{node=\"n\",outcome=\"{outcome}\",tenant=\"edge-team\"}} {count}"
        );
        assert!(text.contains(&line), "{line}\n{text}");
    }
}

#[test]
fn one_tenant_at_its_rate_does_not_hold_back_another() {
    let metrics = NodeMetrics::new("n").unwrap();
    let mut slow = config("slow", KEY_A);
    slow.requests_per_second = Some(1.0 / 60.0);
    slow.burst = Some(2);
    let slow = Tenant::new(&slow, Tier::Edge, metrics.tenant_requests.clone()).unwrap();
    let free = Tenant::new(
        &config("free", KEY_B),
        Tier::Edge,
        metrics.tenant_requests.clone(),
    )
    .unwrap();
    let admitted = (0..6).filter(|_| slow.admit_request().is_ok()).count();
    assert_eq!(admitted, 2);
    assert!((0..6).all(|_| free.admit_request().is_ok()));
}
