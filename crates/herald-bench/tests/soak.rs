//! A short chaos soak: three `herald` nodes (the binary this workspace
//! builds) over a `redis-server` of the soak's own, through every kind of
//! fault once, must end with every client caught up and no anomaly. The
//! 30-minute run is done by hand (see BENCHMARKS.md).

use std::path::PathBuf;
use std::time::Duration;

use herald_bench::scenario::soak::{self, SoakArgs};

/// The `herald` binary beside this test's own directory
/// (`target/<profile>/herald`); `cargo test --workspace` builds it.
fn herald_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps/<test>");
    let herald = profile_dir.join("herald");
    assert!(
        herald.exists(),
        "{} is missing: run the workspace's tests (cargo test --workspace), which build it",
        herald.display()
    );
    herald
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_soak_through_every_kind_of_fault_loses_nothing_silently() {
    let dir = std::env::temp_dir().join(format!("herald-soak-test-{}", std::process::id()));
    let args = SoakArgs {
        herald: herald_binary(),
        dir: dir.clone(),
        nodes: 3,
        clients: 30,
        channels: 8,
        channels_per_client: 3,
        rate: 60.0,
        // Every kind of fault at least once (a killed node stays down 2 s).
        duration: Duration::from_secs(26),
        fault_every: Duration::from_secs(3),
        stallable_share: 0.2,
        payload_bytes: 1000,
        seed: 7,
    };
    let result = soak::run(&args).await.expect("the soak runs");
    let report = serde_json::to_string_pretty(&result).unwrap_or_default();
    assert_eq!(result.anomaly_count, 0, "the nodes' logs are in {}:\n{report}", dir.display());
    let faults = &result.faults;
    assert!(
        faults.node_kills >= 1 && faults.redis_restarts >= 1 && faults.redis_wipes >= 1,
        "nodes and Redis were killed: {report}"
    );
    assert!(faults.cut_bursts >= 1 && faults.stalls >= 1, "clients were cut and stalled: {report}");
    assert!(result.published > 1000 && result.deliveries > result.published, "{report}");
    assert!(result.recovered > 0, "clients recovered what they missed: {report}");
    assert!(result.not_recovered > 0, "the wiped Redis lost history, and clients were told: {report}");
    let _ = std::fs::remove_dir_all(&dir);
}
