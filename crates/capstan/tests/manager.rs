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
    // The standard process series (unprefixed), the build, leadership, and the
    // Kubernetes client's requests by verb, resource and code.
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
        "capstan_leader 1",
        r#"capstan_kube_requests_total{verb="watch",resource="secretrotations",code="200"}"#,
        r#"capstan_kube_request_duration_seconds_count{verb="list"}"#,
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }
    let build = metrics
        .lines()
        .find(|l| l.starts_with("capstan_build_info{"))
        .unwrap_or_else(|| panic!("no capstan_build_info:\n{metrics}"));
    let commit = build
        .split("commit=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_default();
    assert!(
        build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
            && commit.len() == 40
            && commit.chars().all(|c| c.is_ascii_hexdigit())
            && build.ends_with(" 1"),
        "{build}"
    );
}

/// With two managers exactly one holds the lease; when the leader is killed the other
/// takes over within a generous bound (the measured time is printed). Only the leader
/// exports per-object series: the standby none, the new leader after the failover, and
/// none for an object once it is deleted.
#[tokio::test]
async fn two_managers_one_leader_and_takeover_after_kill() {
    let kube = TestEnv::get().kube().await.expect("kube");
    let ns = TempNamespace::create(kube).await.expect("namespace");
    let client = kube.client().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns.name());
    // An object whose series the leader, and only the leader, exports.
    let pipelines: Api<capstan_pipeline::crd::Pipeline> =
        Api::namespaced(client.clone(), ns.name());
    let pipeline: capstan_pipeline::crd::Pipeline = serde_json::from_value(serde_json::json!({
        "apiVersion": "capstan.dev/v1alpha1", "kind": "Pipeline",
        "metadata": { "name": "watched" },
        "spec": { "revision": "1.0", "stages": [
            { "name": "test", "type": "Test", "job": { "image": "busybox" } } ] }
    }))
    .expect("pipeline");
    pipelines
        .create(&kube::api::PostParams::default(), &pipeline)
        .await
        .expect("create");
    let series = format!(
        r#"capstan_object_ready{{kind="Pipeline",namespace="{}",name="watched""#,
        ns.name()
    );
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
    assert!(leads(&leader).await, "the leader's capstan_leader is 1");
    assert!(!leads(&follower).await, "the standby's capstan_leader is 0");
    exports_within(&leader, &series, true).await;
    assert!(
        !follower
            .get("/metrics")
            .await
            .1
            .contains("capstan_object_ready"),
        "a standby exports no per-object series"
    );
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
    while !follower.logged("became leader") || !leads(&follower).await {
        assert!(
            Instant::now() < deadline,
            "follower never started its controllers:\n{}",
            follower.all_logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The new leader exports the object's series; once the object is deleted, no more.
    exports_within(&follower, &series, true).await;
    pipelines
        .delete("watched", &kube::api::DeleteParams::default())
        .await
        .expect("delete");
    exports_within(&follower, &series, false).await;
}

/// Waits until the manager's /metrics has (or no longer has) `series`.
async fn exports_within(m: &common::Manager, series: &str, present: bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, metrics) = m.get("/metrics").await;
        if metrics.contains(series) == present {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {series} {}:\n{metrics}",
            m.identity,
            if present {
                "never exported"
            } else {
                "still exported"
            }
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether the manager's `capstan_leader` gauge is 1.
async fn leads(m: &common::Manager) -> bool {
    let (_, metrics) = m.get("/metrics").await;
    metrics.lines().any(|l| l == "capstan_leader 1")
}

/// SIGTERM stops the manager with exit status 0 and releases the lease, so a successor
/// need not wait for it to expire. A standby stopped the same way says nothing of a
/// lease it never held.
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
    let mut standby = common::start(kube, "standby", &args(ns.name(), "term")).await;
    standby.await_ready(Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !standby.logged("standby: another instance leads") {
        assert!(Instant::now() < deadline, "{}", standby.all_logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    standby.signal(Signal::SIGTERM);
    let status = tokio::time::timeout(Duration::from_secs(30), standby.child.wait())
        .await
        .expect("the standby stops")
        .expect("wait");
    assert!(status.success(), "{}", standby.all_logs());
    assert!(
        !standby.logged("lease released"),
        "a standby logged releasing a lease it never held:\n{}",
        standby.all_logs()
    );
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
    assert!(m.logged("lease released"), "{}", m.all_logs());
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

/// `--health-addr` moves the probes to an address of their own: the metrics address
/// then serves `/metrics` only.
#[tokio::test]
async fn probes_can_listen_apart_from_metrics() {
    let kube = TestEnv::get().kube().await.expect("kube");
    let ns = TempNamespace::create(kube).await.expect("namespace");
    let mut extra = args(ns.name(), "apart");
    extra.extend(["--health-addr", "127.0.0.1:0"]);
    let m = common::start(kube, "apart", &extra).await;
    let probe = logged_addr(&m, "probe server listening").await;
    assert_ne!(probe, m.admin);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let resp = reqwest::get(format!("http://{probe}/readyz"))
            .await
            .expect("GET");
        if resp.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never ready:\n{}", m.all_logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let healthz = reqwest::get(format!("http://{probe}/healthz"))
        .await
        .expect("GET");
    assert_eq!(healthz.status(), 200);
    let on_probe = reqwest::get(format!("http://{probe}/metrics"))
        .await
        .expect("GET");
    assert_eq!(
        on_probe.status(),
        404,
        "metrics are not on the probe address"
    );
    assert_eq!(
        m.get("/healthz").await.0,
        404,
        "probes are not on the metrics address"
    );
    assert_eq!(m.get("/metrics").await.0, 200);
}

/// The address a log line with `message` names (`addr`).
async fn logged_addr(m: &common::Manager, message: &str) -> std::net::SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = m.logs.lock().expect("logs").iter().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            v["message"]
                .as_str()?
                .starts_with(message)
                .then(|| v["addr"].as_str()?.parse().ok())
                .flatten()
        });
        if let Some(addr) = found {
            return addr;
        }
        assert!(
            Instant::now() < deadline,
            "no {message:?}:\n{}",
            m.all_logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `--kubeconfig` and `--context` pick the cluster as kubectl's do: with a kubeconfig
/// whose current context points at nothing, `--context` reaches the API server; a
/// context the file lacks is a clear error naming it.
#[tokio::test]
async fn kubeconfig_and_context_flags_pick_the_cluster() {
    let kube = TestEnv::get().kube().await.expect("kube");
    let ns = TempNamespace::create(kube).await.expect("namespace");
    let m = common::start(kube, "kubeconfig-source", &args(ns.name(), "kc")).await;
    // The installation's kubeconfig, renamed context `capstan`, plus a current context
    // `nowhere` whose server refuses connections.
    let text = std::fs::read_to_string(&m.installation.kubeconfig_path).expect("kubeconfig");
    let mut kc: serde_yaml::Value = serde_yaml::from_str(&text).expect("yaml");
    let real = kc["current-context"]
        .as_str()
        .expect("current context")
        .to_owned();
    for ctx in kc["contexts"].as_sequence_mut().expect("contexts") {
        if ctx["name"].as_str() == Some(real.as_str()) {
            ctx["name"] = "capstan".into();
        }
    }
    let nowhere_cluster: serde_yaml::Value = serde_yaml::from_str(
        "{name: nowhere, cluster: {server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}}",
    )
    .expect("yaml");
    let nowhere_context: serde_yaml::Value =
        serde_yaml::from_str("{name: nowhere, context: {cluster: nowhere, user: nobody}}")
            .expect("yaml");
    let nobody: serde_yaml::Value =
        serde_yaml::from_str("{name: nobody, user: {token: none}}").expect("yaml");
    kc["clusters"]
        .as_sequence_mut()
        .expect("clusters")
        .push(nowhere_cluster);
    kc["contexts"]
        .as_sequence_mut()
        .expect("contexts")
        .push(nowhere_context);
    kc["users"].as_sequence_mut().expect("users").push(nobody);
    kc["current-context"] = "nowhere".into();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&kc).expect("yaml")).expect("write");
    let path = path.to_str().expect("utf-8").to_owned();

    let spawn = |context: &str| {
        let args = m.installation.run_args(&[
            "--namespaces",
            ns.name(),
            "--own-namespace",
            ns.name(),
            "--leader-elect=false",
            "--metrics-addr",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--identity",
            "kubeconfig-flags",
            "--kubeconfig",
            &path,
            "--context",
            context,
        ]);
        tokio::process::Command::new(env!("CARGO_BIN_EXE_capstan"))
            .args(&args)
            .env_remove("KUBECONFIG")
            .env("POD_NAMESPACE", ns.name())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn")
    };
    // A context the file lacks: a clear error, at once.
    let out = tokio::time::timeout(Duration::from_secs(30), spawn("staging").wait_with_output())
        .await
        .expect("exits")
        .expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--context staging"), "{stderr}");

    // The right one: the manager reaches the API server and lists its CRDs.
    let mut child = spawn("capstan");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
    let mut seen = Vec::new();
    let admin = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push(line.clone());
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["message"] == "admin server listening (/metrics, /healthz, /readyz)" {
                return v["addr"]
                    .as_str()
                    .and_then(|a| a.parse::<std::net::SocketAddr>().ok());
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_else(|| panic!("no admin server; logs:\n{}", seen.join("\n")));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let resp = reqwest::get(format!("http://{admin}/readyz"))
            .await
            .expect("GET");
        if resp.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready through --context capstan"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = child.kill().await;
}

/// `--log-format text` writes no colour codes when stderr is not a terminal (a log
/// file, a pipe, a container runtime's log).
#[tokio::test]
async fn text_logs_carry_no_colour_codes_off_a_terminal() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args([
            "run",
            "--log-format",
            "text",
            "--metrics-addr",
            "127.0.0.1:0",
            "--kubeconfig",
            "/nonexistent/kubeconfig",
        ])
        .output()
        .await
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("starting") && stderr.contains("INFO"),
        "{stderr}"
    );
    assert!(
        stderr.contains("--kubeconfig /nonexistent/kubeconfig"),
        "{stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in a pipe: {stderr:?}"
    );
}
