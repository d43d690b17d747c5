//! The load generator at toy size against the real server binary: every
//! scenario and the side-by-side run end to end, asserting behaviour (no
//! gap, no failed client, everything delivered), never speed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use tagstream_bench::peers::{Peer, run_peer};
use tagstream_bench::scenario::{Scenario, run};
use tagstream_testkit::require;

/// The server binary: `target/<profile>/tagstream`, beside this package's
/// binary. `cargo test --workspace` builds it.
fn server() -> PathBuf {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_tagstream-bench"));
    let bin = bench.with_file_name("tagstream");
    assert!(
        bin.is_file(),
        "{} is missing: run the tests with `cargo test --workspace`",
        bin.display()
    );
    bin
}

#[tokio::test]
async fn every_scenario_runs_at_toy_size() {
    let bin = server();
    for name in ["idle", "room", "wall", "storm"] {
        let preset = Scenario::preset(name).unwrap();
        let scenario = Scenario {
            clients: 6,
            rate: preset.rate.min(200),
            duration: Duration::from_millis(300),
            ..preset
        };
        let report = run(&scenario, &bin)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(report.get("gaps"), Some(0.0), "{name}: {}", report.table());
        assert_eq!(report.get("clients_failed"), Some(0.0), "{name}");
        if scenario.storm {
            assert_eq!(
                report.get("storm_snapshots"),
                Some(0.0),
                "{name}: resumed by catch-up"
            );
        }
        if scenario.rate > 0 {
            assert!(
                report.get("updates_delivered_per_s").unwrap() > 0.0,
                "{name}: nothing delivered"
            );
        }
    }
}

#[tokio::test]
async fn peers_side_by_side_runs_at_toy_size() {
    if require("mosquitto").is_none() || require("nats-server").is_none() {
        return;
    }
    let bin = server();
    // Mosquitto's own WebSocket listener binds every interface, so it runs
    // only inside benches/peers.sh's private network namespace. Here: NATS
    // over WebSocket, and tagstream fed through Mosquitto's TCP listener
    // (which keeps to 127.0.0.1).
    for peer in [Peer::Nats, Peer::Tagstream] {
        let run = run_peer(peer, 4, &[100, 200], Duration::from_millis(500), &bin)
            .await
            .unwrap_or_else(|e| panic!("{peer:?}: {e:#}"));
        // Two steps, unless the first missed the latency limit (the
        // harness then stops, as it does at full size).
        assert!(!run.steps.is_empty(), "{peer:?}: no step ran");
        // Behaviour only (no latency bound in a test): every message
        // reached every subscriber, with no gap.
        for s in &run.steps {
            assert!(s.published > 0, "{peer:?}: {s:?}");
            assert_eq!(s.delivered, s.published * 4, "{peer:?}: {s:?}");
            assert_eq!(s.gaps, 0, "{peer:?}: {s:?}");
        }
    }
}
