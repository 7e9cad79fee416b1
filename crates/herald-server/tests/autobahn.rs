//! RFC 6455 conformance of Herald's WebSocket stack, by the Autobahn
//! fuzzing client (`wstest` from the Python 2 `autobahntestsuite`) against
//! the echo endpoint in `herald_server::conformance`, which runs on the
//! node's own accept loop, HTTP server and upgrade settings.
//!
//! Every case must come out OK, NON-STRICT or INFORMATIONAL, and every
//! close OK or INFORMATIONAL. Cases 12 and 13 (permessage-deflate) are
//! excluded: Herald does not negotiate compression. `scripts/test` runs a
//! fast subset (cases 1 to 7 and 10); `HERALD_AUTOBAHN=full` runs all the
//! others too (the 9.* cases push up to 16 MiB messages and take minutes),
//! and `HERALD_AUTOBAHN_REPORT=<dir>` keeps the suite's report there.
//! `scripts/autobahn-setup` installs `wstest` under `target/autobahn`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::net::TcpListener;

/// Where `wstest` is: `HERALD_WSTEST`, else `target/autobahn/bin/wstest`
/// in this workspace, else on the PATH.
fn wstest() -> PathBuf {
    if let Some(path) = std::env::var_os("HERALD_WSTEST") {
        return PathBuf::from(path);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let installed = workspace.join("target/autobahn/bin/wstest");
    if installed.exists() {
        return installed;
    }
    let on_path = std::process::Command::new("wstest").arg("--help").output();
    assert!(
        on_path.is_ok(),
        "the Autobahn test suite (wstest) is missing: run scripts/autobahn-setup (it needs Python 2.7), \
         or point HERALD_WSTEST at a wstest"
    );
    PathBuf::from("wstest")
}

/// The cases to run, and whether this is the full run.
fn cases() -> (Vec<&'static str>, bool) {
    let fast = vec!["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*"];
    match std::env::var("HERALD_AUTOBAHN").as_deref() {
        Ok("full") => (vec!["*"], true),
        _ => (fast, false),
    }
}

/// What the suite said of a case that is not acceptable, as
/// `case: behavior / close behavior`.
fn failures(report: &Value) -> Vec<String> {
    let acceptable = |behavior: &str| matches!(behavior, "OK" | "NON-STRICT" | "INFORMATIONAL");
    let mut failed = Vec::new();
    for (case, outcome) in report["herald"].as_object().into_iter().flatten() {
        let behavior = outcome["behavior"].as_str().unwrap_or("?");
        let close = outcome["behaviorClose"].as_str().unwrap_or("?");
        if !acceptable(behavior) || !matches!(close, "OK" | "INFORMATIONAL") {
            failed.push(format!("{case}: {behavior} / close {close}"));
        }
    }
    failed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_stack_passes_the_autobahn_fuzzing_client() {
    let wstest = wstest();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(herald_server::conformance::serve_echo(listener, 16 << 20, async move {
        let _ = stopped.await;
    }));

    let keep = std::env::var_os("HERALD_AUTOBAHN_REPORT").map(PathBuf::from);
    let dir = keep.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("herald-autobahn-{}", addr.port())));
    std::fs::create_dir_all(&dir).unwrap();
    let (cases, full) = cases();
    let spec = json!({
        "outdir": dir.join("reports").display().to_string(),
        "servers": [{"agent": "herald", "url": format!("ws://{addr}/")}],
        "cases": cases,
        "exclude-cases": ["12.*", "13.*"],
        "exclude-agent-cases": {},
    });
    std::fs::write(dir.join("fuzzingclient.json"), spec.to_string()).unwrap();

    let patience = if full { Duration::from_secs(1800) } else { Duration::from_secs(300) };
    let run = tokio::process::Command::new(&wstest)
        .args(["-m", "fuzzingclient", "-s", "fuzzingclient.json"])
        .current_dir(&dir)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(patience, run)
        .await
        .unwrap_or_else(|_| panic!("wstest did not finish within {patience:?}"))
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", wstest.display()));
    assert!(output.status.success(), "wstest failed: {}", String::from_utf8_lossy(&output.stderr));

    let index = std::fs::read_to_string(dir.join("reports/index.json")).expect("the suite's report");
    let report: Value = serde_json::from_str(&index).unwrap();
    let ran = report["herald"].as_object().map_or(0, |cases| cases.len());
    let mut tally = BTreeMap::new();
    for outcome in report["herald"].as_object().into_iter().flatten().map(|(_, o)| o) {
        *tally.entry(outcome["behavior"].as_str().unwrap_or("?").to_owned()).or_insert(0) += 1;
    }
    eprintln!("autobahn: {ran} cases: {tally:?}; report in {}", dir.join("reports").display());
    let failed = failures(&report);
    assert!(failed.is_empty(), "{} of {ran} cases failed:\n{}", failed.len(), failed.join("\n"));
    assert!(ran >= if full { 300 } else { 240 }, "only {ran} cases ran");

    let _ = stop.send(());
    let _ = server.await;
    if keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
