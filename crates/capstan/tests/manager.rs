//! The manager as a real process against a real API server: readiness, metrics,
//! leader election and clean shutdown.

mod common;

use std::time::{Duration, Instant};

use capstan_testenv::{TempNamespace, TestEnv};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use nix::sys::signal::Signal;

/// Flags shared by these tests: only this test's namespace, a short lease (8 s, renewed
/// 4 s before expiry: slack enough that a loaded CI machine does not make it flap).
fn args<'a>(ns: &'a str, lease: &'a str) -> Vec<&'a str> {
    vec![
        "--namespaces",
        ns,
        "--lease-namespace",
        ns,
        "--own-namespace",
        ns,
        "--lease-name",
        lease,
        "--lease-duration",
        "8",
        "--lease-grace",
        "4",
    ]
}

async fn lease_holder(api: &Api<Lease>, name: &str) -> Option<String> {
    api.get_opt(name)
        .await
        .ok()
        .flatten()?
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

async fn await_holder(
    api: &Api<Lease>,
    name: &str,
    timeout: Duration,
    ok: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(h) = lease_holder(api, name).await
            && ok(&h)
        {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "lease {name} not taken as expected within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The manager becomes ready once its watches have synced and serves Prometheus metrics.
#[tokio::test]
async fn manager_becomes_ready_and_serves_metrics() {
    let kube = TestEnv::get().kube().await.expect("kube");
    let ns = TempNamespace::create(kube).await.expect("namespace");
    let m = common::start(kube, "solo", &args(ns.name(), "solo")).await;
    m.await_ready(Duration::from_secs(60)).await;
    let (code, body) = m.get("/healthz").await;
    assert_eq!((code, body.as_str()), (200, "ok"));
    let (code, metrics) = m.get("/metrics").await;
    assert_eq!(code, 200);
    for name in [
        "capstan_secret_rotation_reconciles_total",
        "capstan_service_scaling_reconcile_duration_seconds",
        "capstan_pipeline_reconciles_total",
        "capstan_connection_reconciles_total",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }
    assert!(metrics.ends_with("# EOF\n"), "not OpenMetrics text");
}

/// With two managers exactly one holds the lease; when the leader is killed the other
/// takes over within a generous bound (the measured time is printed).
#[tokio::test]
async fn two_managers_one_leader_and_takeover_after_kill() {
    let kube = TestEnv::get().kube().await.expect("kube");
    let ns = TempNamespace::create(kube).await.expect("namespace");
    let client = kube.client().await;
    let leases: Api<Lease> = Api::namespaced(client, ns.name());
    let a = common::start(kube, "manager-a", &args(ns.name(), "pair")).await;
    let b = common::start(kube, "manager-b", &args(ns.name(), "pair")).await;
    a.await_ready(Duration::from_secs(60)).await;
    b.await_ready(Duration::from_secs(60)).await;

    let holder = await_holder(&leases, "pair", Duration::from_secs(30), |_| true).await;
    // Hold still for longer than a lease period: leadership must not flap or double.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        lease_holder(&leases, "pair").await.as_deref(),
        Some(holder.as_str())
    );
    let leaders = [&a, &b]
        .iter()
        .filter(|m| m.logged("became leader"))
        .count();
    assert_eq!(
        leaders,
        1,
        "exactly one manager leads\nA:\n{}\nB:\n{}",
        a.all_logs(),
        b.all_logs()
    );

    let (mut leader, follower) = if holder == "manager-a" {
        (a, b)
    } else {
        (b, a)
    };
    let killed = Instant::now();
    leader.signal(Signal::SIGKILL);
    let _ = leader.child.wait().await;
    let new = await_holder(&leases, "pair", Duration::from_secs(60), |h| {
        h == follower.identity
    })
    .await;
    let takeover = killed.elapsed();
    // Reported, not asserted tightly: lease duration 8 s plus the retry period.
    eprintln!(
        "FIGURE leader takeover after SIGKILL: {:.2} s (lease 8 s, grace 4 s)",
        takeover.as_secs_f64()
    );
    assert_eq!(new, follower.identity);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !follower.logged("became leader") {
        assert!(
            Instant::now() < deadline,
            "follower never started its controllers:\n{}",
            follower.all_logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGTERM stops the manager with exit status 0 and releases the lease, so a successor
/// need not wait for it to expire.
#[tokio::test]
async fn sigterm_exits_cleanly_and_releases_the_lease() {
    let kube = TestEnv::get().kube().await.expect("kube");
    let ns = TempNamespace::create(kube).await.expect("namespace");
    let leases: Api<Lease> = Api::namespaced(kube.client().await, ns.name());
    let mut m = common::start(kube, "terminated", &args(ns.name(), "term")).await;
    m.await_ready(Duration::from_secs(60)).await;
    await_holder(&leases, "term", Duration::from_secs(30), |h| {
        h == "terminated"
    })
    .await;
    let sent = Instant::now();
    m.signal(Signal::SIGTERM);
    let status = match tokio::time::timeout(Duration::from_secs(30), m.child.wait()).await {
        Ok(status) => status.expect("wait"),
        Err(_) => panic!("still running 30 s after SIGTERM; logs:\n{}", m.all_logs()),
    };
    eprintln!(
        "FIGURE shutdown after SIGTERM: {:.2} s",
        sent.elapsed().as_secs_f64()
    );
    assert!(status.success(), "exit status {status:?}\n{}", m.all_logs());
    assert_eq!(
        lease_holder(&leases, "term").await,
        None,
        "lease still held after shutdown"
    );
}

/// A missing CRD is one clear error naming it, not a crash loop of failed watches.
#[tokio::test]
async fn a_missing_crd_is_a_clear_error_naming_it() {
    let kube = TestEnv::get().kube().await.expect("kube");
    let client = kube.client().await;
    let names = vec![
        "secretrotations.capstan.dev".to_owned(),
        "widgets.capstan.dev".to_owned(),
    ];
    let err = capstan::crds::wait_established(&client, &names, Duration::from_secs(2))
        .await
        .expect_err("widgets.capstan.dev is not installed");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("CRD widgets.capstan.dev is not installed"),
        "{msg}"
    );
    // The installed one passed: the error names only the missing CRD.
    assert!(!msg.contains("secretrotations"), "{msg}");
}
