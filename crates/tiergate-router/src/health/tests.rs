//! Tests of the link-health state machine: every breaker transition, EWMA and error window.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

const OPEN: Duration = Duration::from_secs(10);

/// Streak trigger only, so each test controls exactly what opens the breaker.
fn streak_config(failures: u32) -> LinkHealthConfig {
    LinkHealthConfig {
        ewma_alpha: 0.5,
        consecutive_failures: failures,
        error_rate_threshold: 0.0,
        window: 10,
        min_calls: 0,
        open_duration: OPEN,
        half_open_probes: 1,
        ..LinkHealthConfig::default()
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Opens a streak-3 link at `t0` and returns it.
fn opened_at(t0: Instant) -> LinkHealth {
    let mut link = LinkHealth::new(streak_config(3));
    for _ in 0..3 {
        assert!(link.try_acquire(t0));
        link.record_failure(t0);
    }
    assert_eq!(link.state(t0), LinkState::Open);
    link
}

#[test]
fn a_new_link_is_closed_available_and_unobserved() {
    let now = Instant::now();
    let mut link = LinkHealth::new(LinkHealthConfig::default());
    assert_eq!(link.state(now), LinkState::Closed);
    assert!(link.is_available(now));
    assert!(link.try_acquire(now));
    assert_eq!(link.latency_ewma(), None);
    assert_eq!(link.error_rate(), 0.0);
    assert_eq!(link.health_check(), HealthCheckStatus::Unknown);
}

#[test]
fn ewma_starts_at_the_first_sample_and_moves_by_alpha() {
    let now = Instant::now();
    let mut link = LinkHealth::new(streak_config(3));
    link.record_success(ms(100), now);
    assert_eq!(link.latency_ewma(), Some(ms(100)));
    link.record_success(ms(300), now);
    // 0.5 * 300 + 0.5 * 100
    let ewma = link.latency_ewma().unwrap().as_secs_f64();
    assert!((ewma - 0.200).abs() < 1e-9, "{ewma}");
    link.record_success(ms(200), now);
    let ewma = link.latency_ewma().unwrap().as_secs_f64();
    assert!((ewma - 0.200).abs() < 1e-9, "{ewma}");
}

#[test]
fn consecutive_failures_open_the_breaker_exactly_at_the_threshold() {
    let now = Instant::now();
    let mut link = LinkHealth::new(streak_config(3));
    link.record_failure(now);
    link.record_failure(now);
    assert_eq!(link.state(now), LinkState::Closed);
    assert_eq!(link.consecutive_failures(), 2);
    link.record_failure(now);
    assert_eq!(link.state(now), LinkState::Open);
    assert!(!link.is_available(now));
    assert!(!link.try_acquire(now));
}

#[test]
fn a_success_resets_the_failure_streak() {
    let now = Instant::now();
    let mut link = LinkHealth::new(streak_config(3));
    link.record_failure(now);
    link.record_failure(now);
    link.record_success(ms(10), now);
    assert_eq!(link.consecutive_failures(), 0);
    link.record_failure(now);
    link.record_failure(now);
    assert_eq!(link.state(now), LinkState::Closed);
}

#[test]
fn error_rate_over_the_window_opens_after_min_calls() {
    let now = Instant::now();
    let config = LinkHealthConfig {
        consecutive_failures: 0,
        error_rate_threshold: 0.5,
        window: 4,
        min_calls: 4,
        ..streak_config(0)
    };
    let mut link = LinkHealth::new(config);
    // F S F: rate 2/3 but only 3 calls: below min_calls.
    link.record_failure(now);
    link.record_success(ms(1), now);
    link.record_failure(now);
    assert_eq!(link.state(now), LinkState::Closed);
    assert!((link.error_rate() - 2.0 / 3.0).abs() < 1e-9);
    // S: 4 calls, rate 0.5 is reached only by a failure (successes never trip).
    link.record_success(ms(1), now);
    assert_eq!(link.state(now), LinkState::Closed);
    // F: window slides to S F S F: 2/4 = 0.5 >= threshold.
    link.record_failure(now);
    assert_eq!(link.error_rate(), 0.5);
    assert_eq!(link.snapshot(now).window_calls, 4);
    assert_eq!(link.state(now), LinkState::Open);
}

#[test]
fn the_window_forgets_old_failures() {
    let now = Instant::now();
    let config = LinkHealthConfig {
        consecutive_failures: 0,
        error_rate_threshold: 0.9,
        window: 3,
        min_calls: 1,
        ..streak_config(0)
    };
    let mut link = LinkHealth::new(config);
    link.record_success(ms(1), now);
    link.record_failure(now);
    for _ in 0..3 {
        link.record_success(ms(1), now);
    }
    assert_eq!(link.error_rate(), 0.0);
    assert_eq!(link.snapshot(now).window_calls, 3);
}

#[test]
fn open_rejects_until_the_open_duration_passes_then_half_open_admits_probes() {
    let t0 = Instant::now();
    let mut link = opened_at(t0);
    let almost = t0 + OPEN - ms(1);
    assert_eq!(link.state(almost), LinkState::Open);
    assert!(!link.is_available(almost));
    assert!(!link.try_acquire(almost));

    let later = t0 + OPEN;
    assert_eq!(link.state(later), LinkState::HalfOpen);
    assert!(link.is_available(later));
    assert!(link.try_acquire(later), "the probe is admitted");
    assert!(!link.is_available(later), "only one probe at a time");
    assert!(!link.try_acquire(later));
}

#[test]
fn a_probe_success_closes_with_a_fresh_window() {
    let t0 = Instant::now();
    let mut link = opened_at(t0);
    let later = t0 + OPEN;
    assert!(link.try_acquire(later));
    link.record_success(ms(20), later);
    assert_eq!(link.state(later), LinkState::Closed);
    assert_eq!(link.consecutive_failures(), 0);
    assert_eq!(link.error_rate(), 0.0);
    assert!(link.try_acquire(later));
    assert!(link.try_acquire(later));
    // Fresh streak: two more failures do not re-open a streak-3 breaker.
    link.record_failure(later);
    link.record_failure(later);
    assert_eq!(link.state(later), LinkState::Closed);
}

#[test]
fn a_probe_failure_reopens_for_another_full_period() {
    let t0 = Instant::now();
    let mut link = opened_at(t0);
    let probe_time = t0 + OPEN + ms(500);
    assert!(link.try_acquire(probe_time));
    link.record_failure(probe_time);
    assert_eq!(link.state(probe_time), LinkState::Open);
    assert!(!link.try_acquire(probe_time + OPEN - ms(1)));
    assert_eq!(link.state(probe_time + OPEN), LinkState::HalfOpen);
    assert!(link.try_acquire(probe_time + OPEN));
}

#[test]
fn half_open_admits_up_to_the_probe_count() {
    let t0 = Instant::now();
    let mut link = LinkHealth::new(LinkHealthConfig {
        half_open_probes: 3,
        ..streak_config(1)
    });
    link.record_failure(t0);
    let later = t0 + OPEN;
    assert!(link.try_acquire(later));
    assert!(link.try_acquire(later));
    assert!(link.is_available(later));
    assert!(link.try_acquire(later));
    assert!(!link.is_available(later));
    assert!(!link.try_acquire(later));
}

#[test]
fn probes_that_never_report_are_forgotten_after_another_period() {
    let t0 = Instant::now();
    let mut link = opened_at(t0);
    let probe_time = t0 + OPEN;
    assert!(link.try_acquire(probe_time));
    // The probe's caller gave up and never reported.
    assert!(!link.try_acquire(probe_time + OPEN - ms(1)));
    assert!(link.is_available(probe_time + OPEN));
    assert!(
        link.try_acquire(probe_time + OPEN),
        "a new probe round starts"
    );
}

#[test]
fn late_results_while_open_neither_close_nor_extend_it() {
    let t0 = Instant::now();
    let mut link = opened_at(t0);
    link.record_success(ms(5), t0 + ms(1));
    assert_eq!(link.state(t0 + ms(1)), LinkState::Open);
    link.record_failure(t0 + OPEN - ms(1));
    assert_eq!(link.state(t0 + OPEN), LinkState::HalfOpen, "not extended");
}

#[test]
fn a_result_after_the_open_period_acts_as_a_probe() {
    let t0 = Instant::now();
    let mut link = opened_at(t0);
    link.record_success(ms(5), t0 + OPEN);
    assert_eq!(link.state(t0 + OPEN), LinkState::Closed);

    let mut link = opened_at(t0);
    link.record_failure(t0 + OPEN);
    assert_eq!(link.state(t0 + OPEN), LinkState::Open);
}

#[test]
fn not_serving_health_check_rejects_and_serving_restores() {
    let now = Instant::now();
    let mut link = LinkHealth::new(streak_config(3));
    link.set_health_check(false);
    assert_eq!(link.health_check(), HealthCheckStatus::NotServing);
    assert!(!link.is_available(now));
    assert!(!link.try_acquire(now));
    // The breaker itself is untouched by the health check.
    assert_eq!(link.state(now), LinkState::Closed);
    link.set_health_check(true);
    assert!(link.is_available(now));
    assert!(link.try_acquire(now));
    link.set_health_check(false);
    link.clear_health_check();
    assert_eq!(link.health_check(), HealthCheckStatus::Unknown);
    assert!(link.try_acquire(now));
}

#[test]
fn serving_does_not_override_an_open_breaker() {
    let t0 = Instant::now();
    let mut link = opened_at(t0);
    link.set_health_check(true);
    assert!(!link.is_available(t0));
    assert!(!link.try_acquire(t0));
}

#[test]
fn not_serving_does_not_consume_a_probe_slot() {
    let t0 = Instant::now();
    let mut link = opened_at(t0);
    link.set_health_check(false);
    assert!(!link.try_acquire(t0 + OPEN));
    link.set_health_check(true);
    assert!(link.try_acquire(t0 + OPEN));
}

#[test]
fn disabled_triggers_never_open() {
    let now = Instant::now();
    let mut link = LinkHealth::new(LinkHealthConfig {
        consecutive_failures: 0,
        error_rate_threshold: 0.0,
        ..streak_config(0)
    });
    for _ in 0..100 {
        link.record_failure(now);
    }
    assert_eq!(link.state(now), LinkState::Closed);
    assert_eq!(link.error_rate(), 1.0);
}

#[test]
fn snapshot_reports_every_field_and_serializes() {
    let t0 = Instant::now();
    let mut link = LinkHealth::new(streak_config(2));
    link.record_success(ms(40), t0);
    link.record_failure(t0);
    link.set_health_check(true);
    let snap = link.snapshot(t0);
    assert_eq!(snap.state, LinkState::Closed);
    assert!(snap.available);
    assert_eq!(snap.latency_ewma_ms, Some(40.0));
    assert_eq!(snap.error_rate, 0.5);
    assert_eq!(snap.window_calls, 2);
    assert_eq!(snap.health_check, HealthCheckStatus::Serving);
    assert_eq!(snap.consecutive_failures, 1);
    link.record_failure(t0);
    let json = serde_json::to_value(link.snapshot(t0)).unwrap();
    assert_eq!(json["state"], "open");
    assert_eq!(json["available"], false);
    assert_eq!(json["health_check"], "serving");
    assert_eq!(json["consecutive_failures"], 2);
    assert_eq!(
        serde_json::to_value(link.snapshot(t0 + OPEN)).unwrap()["state"],
        "half_open"
    );
}

#[test]
fn config_parses_from_toml_with_defaults_and_rejects_unknown_fields() {
    let config: LinkHealthConfig =
        toml::from_str("consecutive_failures = 2\nopen_duration = \"250ms\"\n").unwrap();
    assert_eq!(config.consecutive_failures, 2);
    assert_eq!(config.open_duration, ms(250));
    assert_eq!(config.window, LinkHealthConfig::default().window);
    assert!(config.validate().is_ok());

    let err = toml::from_str::<LinkHealthConfig>("consecutive_failure = 2\n").unwrap_err();
    assert!(err.to_string().contains("consecutive_failure"), "{err}");
    let err = toml::from_str::<LinkHealthConfig>("open_duration = \"5\"\n").unwrap_err();
    assert!(err.to_string().contains("unit"), "{err}");
}

#[test]
fn validate_names_the_bad_field() {
    let cases = [
        (
            LinkHealthConfig {
                ewma_alpha: 0.0,
                ..Default::default()
            },
            "ewma_alpha",
        ),
        (
            LinkHealthConfig {
                ewma_alpha: 1.5,
                ..Default::default()
            },
            "ewma_alpha",
        ),
        (
            LinkHealthConfig {
                error_rate_threshold: 1.5,
                ..Default::default()
            },
            "error_rate_threshold",
        ),
        (
            LinkHealthConfig {
                window: 0,
                ..Default::default()
            },
            "window",
        ),
        (
            LinkHealthConfig {
                min_calls: 50,
                ..Default::default()
            },
            "min_calls",
        ),
        (
            LinkHealthConfig {
                half_open_probes: 0,
                ..Default::default()
            },
            "half_open_probes",
        ),
        (
            LinkHealthConfig {
                open_duration: Duration::ZERO,
                ..Default::default()
            },
            "open_duration",
        ),
    ];
    for (config, field) in cases {
        let err = config.validate().unwrap_err();
        assert!(err.contains(field), "{err}");
    }
}

#[test]
fn new_clamps_out_of_range_values() {
    let link = LinkHealth::new(LinkHealthConfig {
        ewma_alpha: -1.0,
        window: 0,
        min_calls: 9,
        half_open_probes: 0,
        ..Default::default()
    });
    let config = link.config();
    assert!(config.validate().is_ok(), "{config:?}");
}

#[test]
fn durations_parse_units_and_reject_the_rest() {
    use duration_text::parse;
    assert_eq!(parse("250ms").unwrap(), ms(250));
    assert_eq!(parse("1.5s").unwrap(), ms(1500));
    assert_eq!(parse("2m").unwrap(), Duration::from_secs(120));
    assert_eq!(parse("1h").unwrap(), Duration::from_secs(3600));
    assert_eq!(parse(" 1h 30m ").unwrap(), Duration::from_secs(5400));
    for bad in [
        "",
        "10",
        "s",
        "10 parsecs",
        "-1s",
        "1e999s",
        "99999999999999999999s",
    ] {
        assert!(parse(bad).is_err(), "{bad}");
    }
    let err = parse("3651d").unwrap_err();
    assert!(err.contains("longer than 10 years"), "{err}");
    // What is written is read back exactly.
    for d in [
        ms(1),
        ms(1500),
        Duration::from_secs(5400),
        Duration::new(7, 250),
    ] {
        let text = humantime::format_duration(d).to_string();
        assert_eq!(parse(&text).unwrap(), d, "{text}");
    }
}

#[test]
fn rate_limiting_holds_the_link_off_without_counting_as_a_failure() {
    let t0 = Instant::now();
    let mut link = LinkHealth::new(streak_config(2));
    assert!(link.try_acquire(t0));
    // Calls already in flight may come back rate-limited too.
    for _ in 0..5 {
        link.record_rate_limited(None, t0);
    }
    assert_eq!(
        link.state(t0),
        LinkState::Closed,
        "back-pressure is not failure"
    );
    assert_eq!(link.consecutive_failures(), 0);
    assert_eq!(link.snapshot(t0).window_calls, 0);
    // Held off for the default pause, then admitted again.
    let pause = LinkHealthConfig::default().rate_limit_hold_off;
    assert!(!link.is_available(t0));
    assert!(!link.try_acquire(t0 + pause - ms(1)));
    assert!(link.snapshot(t0).hold_off_ms.is_some());
    assert!(link.is_available(t0 + pause));
    assert!(link.try_acquire(t0 + pause));
    assert_eq!(link.snapshot(t0 + pause).hold_off_ms, None);

    // The upstream's Retry-After is honoured, up to max_hold_off.
    link.record_rate_limited(Some(Duration::from_secs(3)), t0);
    assert!(!link.is_available(t0 + ms(2999)));
    assert!(link.is_available(t0 + ms(3000)));
    link.record_rate_limited(Some(Duration::from_secs(3600)), t0);
    let max = LinkHealthConfig::default().max_hold_off;
    assert!(!link.is_available(t0 + max - ms(1)));
    assert!(link.is_available(t0 + max));
}

#[test]
fn a_released_probe_frees_its_slot_and_decides_nothing() {
    let t0 = Instant::now();
    let mut link = opened_at(t0);
    let t1 = t0 + OPEN;
    assert!(link.try_acquire(t1), "the probe");
    assert!(!link.try_acquire(t1), "one probe at a time");
    // The client cancelled the probe: nothing learnt, the next call probes at once.
    link.release(t1);
    assert_eq!(link.state(t1), LinkState::HalfOpen);
    assert!(link.try_acquire(t1));
    link.record_success(ms(10), t1);
    assert_eq!(link.state(t1), LinkState::Closed);
    // A release on a closed link changes nothing.
    link.release(t1);
    assert_eq!(link.state(t1), LinkState::Closed);
    assert_eq!(link.snapshot(t1).window_calls, 1);
}

#[test]
fn a_rate_limited_probe_gives_its_slot_back_after_the_hold_off() {
    let t0 = Instant::now();
    let mut link = opened_at(t0);
    let t1 = t0 + OPEN;
    assert!(link.try_acquire(t1));
    link.record_rate_limited(Some(ms(500)), t1);
    assert_eq!(link.state(t1), LinkState::HalfOpen);
    assert!(!link.try_acquire(t1 + ms(499)));
    assert!(link.try_acquire(t1 + ms(500)));
}

#[test]
fn hold_off_longer_than_its_cap_is_refused_by_validate() {
    let config = LinkHealthConfig {
        rate_limit_hold_off: Duration::from_secs(10),
        max_hold_off: Duration::from_secs(1),
        ..LinkHealthConfig::default()
    };
    assert!(
        config
            .validate()
            .unwrap_err()
            .contains("rate_limit_hold_off")
    );
}

#[test]
fn available_in_tells_how_long_until_a_call_is_admitted_again() {
    let t0 = Instant::now();
    let mut link = opened_at(t0);
    assert_eq!(link.available_in(t0), Some(OPEN));
    assert_eq!(link.available_in(t0 + ms(4000)), Some(ms(6000)));
    // Half-open with its one probe out: the next round starts a full period after this one.
    assert!(link.try_acquire(t0 + OPEN));
    assert_eq!(
        link.available_in(t0 + OPEN + ms(1000)),
        Some(OPEN - ms(1000))
    );
    link.record_success(ms(5), t0 + OPEN + ms(1000));
    assert_eq!(
        link.available_in(t0 + OPEN + ms(1000)),
        Some(Duration::ZERO)
    );
    // Back-pressure holds it off too; the longer of the two waits counts.
    link.record_rate_limited(Some(Duration::from_secs(3)), t0 + OPEN + ms(1000));
    assert_eq!(
        link.available_in(t0 + OPEN + ms(2000)),
        Some(Duration::from_secs(2))
    );
    // A peer that says NOT_SERVING: only its health check can tell.
    link.set_health_check(false);
    assert_eq!(link.available_in(t0 + OPEN + ms(2000)), None);
}
