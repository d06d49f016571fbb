//! Pooled connections to the tiers above that die while idle must not cost the next request
//! anything.
//!
//! The cloud link's pooled connection whose path dies silently while it is idle (a NAT that
//! dropped its mapping: every packet of that one connection vanishes, new connections pass).
//! Without probes the next request is sent into it and waits out the cloud's first-token
//! timeout; with `[upstreams.cloud] keepalive_interval` / `keepalive_timeout` the node's kernel
//! probes the idle connection, closes it when the probes go unanswered, and the next request
//! opens a fresh one and is answered by the cloud at once. Played in a network namespace of the
//! test's own (the edge inside it, the fake cloud on the host's end of the veth pair), the one
//! connection dropped with a `tc` filter; without CAP_NET_ADMIN the test says why and skips.
//!
//! Over HTTP/2 both links PING: a pooled connection whose peer hung while TCP lives on (a
//! middlebox or the peer's kernel still acknowledges, so TCP keepalive sees nothing wrong) is
//! closed when a PING goes unanswered. Played with a proxy that freezes the connections open at
//! a moment and lets new ones pass.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::net::SocketAddr;
use std::time::Duration;

use tiergate_e2e::faults::{FaultProxy, ProxyMode};
use tiergate_e2e::netns::Netns;
use tiergate_e2e::pki::Pki;
use tiergate_e2e::scenario::{FakeCloud, regional_node, unary_chat};
use tiergate_e2e::{Gate, Launch, NodeProcess, node_toml};

const PROMPT: &str = "what is the capital of france";
const FIRST_TOKEN_TIMEOUT: Duration = Duration::from_secs(2);

#[tokio::test]
async fn a_pooled_cloud_connection_whose_path_died_is_probed_away_before_the_next_request() {
    let Some(netns) = Netns::for_test() else {
        return;
    };
    let cloud = FakeCloud::start_on(netns.host_ip.into()).await.unwrap();
    let cloud_addr: SocketAddr = cloud
        .url
        .trim_start_matches("http://")
        .trim_end_matches("/v1")
        .parse()
        .unwrap();
    // Probes after 1 s of quiet, one a second, three unanswered: closed about 4 s after the
    // connection's last packet.
    let toml = format!(
        "[node]\nname = \"edge-1\"\ntier = \"edge\"\n[engine]\nmodel_dir = \"models/edge\"\n\
         [upstreams.cloud]\nbase_url = \"{}\"\nmodel = \"tiergate\"\nconnect_timeout = \"300ms\"\n\
         first_token_timeout = \"{}ms\"\nkeepalive_interval = \"1s\"\nkeepalive_timeout = \"3s\"\n\
         [upstreams.cloud.health]\nconsecutive_failures = 100\n{}",
        cloud.url,
        FIRST_TOKEN_TIMEOUT.as_millis(),
        Gate::CloudFirst.router_toml()
    );
    let launch = Launch {
        wrapper: netns.wrapper(),
        listen_ip: netns.ns_ip.into(),
        ..Launch::default()
    };
    let edge = NodeProcess::launch("edge", &toml, &launch).await.unwrap();

    let (first, _) = unary_chat(&edge, PROMPT).await.unwrap();
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("x-tiergate-tier"), Some("cloud"));
    let pooled = netns.ports_connected_to(cloud_addr).unwrap();
    assert!(!pooled.is_empty(), "no pooled connection to the cloud");
    for port in &pooled {
        netns.drop_connection(*port).unwrap();
    }
    eprintln!("pooled cloud connection(s) from port(s) {pooled:?} now lose every packet");

    // Idle past the probes' verdict, then the next request.
    after_a_while_the_tier_answers(&edge, "cloud", Duration::from_secs(6), "TCP keepalive").await;
    let now = netns.ports_connected_to(cloud_addr).unwrap();
    assert!(
        pooled.iter().all(|port| !now.contains(port)),
        "the dead connection is still open: {now:?}"
    );
}

/// The cloud is a tiergate node serving its OpenAI API over TLS (ALPN offers h2), reached
/// through a proxy that can freeze the connections open at a moment while letting new ones
/// pass. After one answer the pooled HTTP/2 connection is frozen: TCP keepalive probes are
/// answered by the proxy's kernel, only an HTTP/2 PING finds it. With `keepalive_interval = 1s`
/// and `keepalive_timeout = 2s` the unanswered PING closes it about 3 s later, and the next
/// request opens a fresh connection and is answered by the cloud at once.
#[tokio::test]
async fn a_pooled_http2_cloud_connection_whose_peer_hung_is_pinged_away_before_the_next_request() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path()).unwrap();
    let mut cloud_toml = node_toml("cloud-1", "cloud", "regional", None, None, Gate::Default);
    cloud_toml.push_str(&pki.server_tls_toml());
    let cloud = NodeProcess::start("cloud", &cloud_toml).await.unwrap();
    let proxy = FaultProxy::start(cloud.http, ProxyMode::Pass)
        .await
        .unwrap();
    let toml = format!(
        "[node]\nname = \"edge-1\"\ntier = \"edge\"\n[engine]\nmodel_dir = \"models/edge\"\n\
         [upstreams.cloud]\nbase_url = \"https://{}/v1\"\nmodel = \"tiergate\"\nca_file = \"{}\"\n\
         connect_timeout = \"1s\"\nfirst_token_timeout = \"{}ms\"\nkeepalive_interval = \"1s\"\n\
         keepalive_timeout = \"2s\"\n[upstreams.cloud.health]\nconsecutive_failures = 100\n{}",
        proxy.addr,
        pki.ca.display(),
        FIRST_TOKEN_TIMEOUT.as_millis(),
        Gate::CloudFirst.router_toml()
    );
    let edge = NodeProcess::start("edge", &toml).await.unwrap();

    let (first, _) = unary_chat(&edge, PROMPT).await.unwrap();
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("x-tiergate-tier"), Some("cloud"));
    proxy.set(ProxyMode::FreezeOpen);

    // Idle past the PING's verdict, then the next request.
    after_a_while_the_tier_answers(&edge, "cloud", Duration::from_secs(5), "HTTP/2 PING").await;
}

/// The same over the regional link (gRPC, HTTP/2 always): the regional node behind the
/// freezing proxy; `[upstreams.regional] keepalive_interval = 1s`, `keepalive_timeout = 2s`.
/// The channel's hung connection is closed by the PING, and the next call connects afresh and
/// is answered by the regional tier at once.
#[tokio::test]
async fn a_regional_connection_whose_peer_hung_is_pinged_away_before_the_next_request() {
    let regional = regional_node().await.unwrap();
    let proxy = FaultProxy::start(regional.grpc, ProxyMode::Pass)
        .await
        .unwrap();
    let toml = format!(
        "[node]\nname = \"edge-1\"\ntier = \"edge\"\n[engine]\nmodel_dir = \"models/edge\"\n\
         [upstreams.regional]\nendpoints = [\"{}\"]\nconnect_timeout = \"1s\"\n\
         first_token_timeout = \"{}ms\"\nkeepalive_interval = \"1s\"\nkeepalive_timeout = \"2s\"\n\
         [upstreams.regional.health]\nconsecutive_failures = 100\n{}",
        proxy.url(),
        FIRST_TOKEN_TIMEOUT.as_millis(),
        Gate::RegionalFirst.router_toml()
    );
    let edge = NodeProcess::start("edge", &toml).await.unwrap();

    let (first, _) = unary_chat(&edge, PROMPT).await.unwrap();
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("x-tiergate-tier"), Some("regional"));
    proxy.set(ProxyMode::FreezeOpen);

    // Idle past the PING's verdict, then the next request.
    after_a_while_the_tier_answers(&edge, "regional", Duration::from_secs(5), "regional PING")
        .await;
}

/// After `idle`, the next request must be answered by `tier` within its first-token timeout: it
/// did not go into the connection that died while pooled.
async fn after_a_while_the_tier_answers(
    edge: &NodeProcess,
    tier: &str,
    idle: Duration,
    probe: &str,
) {
    tokio::time::sleep(idle).await;
    let (reply, took) = unary_chat(edge, PROMPT).await.unwrap();
    eprintln!(
        "{probe}: the next request: {} from {:?} in {took:?}",
        reply.status,
        reply.header("x-tiergate-tier")
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.header("x-tiergate-tier"),
        Some(tier),
        "{probe}: the request went into the dead connection and waited out its first-token \
         timeout or deadline there"
    );
    assert!(took < FIRST_TOKEN_TIMEOUT, "{probe}: {took:?}");
}
