//! What crosses the network between nodes is encrypted and both ends are authenticated: the
//! regional node serves gRPC over TLS and accepts only callers whose certificate its CA signed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use tiergate_e2e::pki::Pki;
use tiergate_e2e::{Gate, NodeProcess, node_toml};
use tiergate_proto::v1 as pb;

fn edge_toml(regional: &NodeProcess, pki: &Pki, with_client_cert: bool) -> String {
    let mut toml = node_toml("edge-1", "edge", "edge", None, None, Gate::Abandon);
    toml.push_str(&format!(
        "[upstreams.regional]\nendpoints = [\"https://{}\"]\n[upstreams.regional.tls]\nca_file = \"{}\"\ndomain = \"localhost\"\n",
        regional.grpc,
        pki.ca.display()
    ));
    if with_client_cert {
        toml.push_str(&format!(
            "cert_file = \"{}\"\nkey_file = \"{}\"\n",
            pki.client_cert.display(),
            pki.client_key.display()
        ));
    }
    toml
}

#[tokio::test]
async fn regional_link_is_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path()).unwrap();
    let mut regional_toml = node_toml(
        "regional-1",
        "regional",
        "regional",
        None,
        None,
        Gate::Commit,
    );
    regional_toml = regional_toml.replacen(
        "[engine]",
        &format!(
            "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n[engine]",
            pki.server_cert.display(),
            pki.server_key.display(),
            pki.ca.display()
        ),
        1,
    );
    // Tenants on the regional node: a caller needs a key, except a peer node, which the
    // client certificate its TLS handshake verified identifies (the edge sends no key).
    regional_toml.push_str(&format!(
        "[[tenants]]\nname = \"someone\"\nkey_sha256 = [\"{}\"]\n",
        "ab".repeat(32)
    ));
    let regional = NodeProcess::start("regional", &regional_toml)
        .await
        .unwrap();

    // An edge with a client certificate escalates over mTLS and gets the regional answer: the
    // regional node took it for a peer by its certificate.
    let edge = NodeProcess::start("edge", &edge_toml(&regional, &pki, true))
        .await
        .unwrap();
    let mut client = edge.grpc_client().await.unwrap();
    let request = pb::GenerateRequest {
        prompt: "what is 12 plus 7".into(),
        params: Some(pb::GenerationParams {
            max_new_tokens: 8,
            ..Default::default()
        }),
        ..Default::default()
    };
    let routing = client
        .generate(request.clone())
        .await
        .unwrap()
        .into_inner()
        .routing
        .unwrap();
    assert_eq!(routing.tier, pb::Tier::Regional as i32, "{routing:?}");
    assert_eq!(routing.node, "regional-1");

    // Without one, the regional node refuses the handshake: the edge answers itself, degraded.
    let stranger = NodeProcess::start("stranger", &edge_toml(&regional, &pki, false))
        .await
        .unwrap();
    let mut client = stranger.grpc_client().await.unwrap();
    let routing = client
        .generate(request.clone())
        .await
        .unwrap()
        .into_inner()
        .routing
        .unwrap();
    assert_eq!(routing.tier, pb::Tier::Edge as i32, "{routing:?}");
    assert!(routing.degraded);

    // A plaintext caller gets nowhere either.
    let plain = tiergate_proto::v1::inference_client::InferenceClient::connect(format!(
        "http://{}",
        regional.grpc
    ))
    .await;
    if let Ok(mut plain) = plain {
        assert!(plain.generate(request).await.is_err());
    }
}
