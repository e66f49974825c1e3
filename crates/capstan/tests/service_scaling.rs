//! ServiceScaling end to end: `capstan run` as a real process against the real API
//! server and the moto AWS emulator (with `tests/env/moto_ext/ecs_service_tasks.py`,
//! so running counts follow desired counts). Each test has its own namespace, ECS
//! cluster, ClusterConnection and manager process (so the manager's AWS request
//! counters are the test's own); the test plays the service's load by publishing
//! `AWS/ECS CPUUtilization` = 100 × load / running tasks every 300 ms, and every spec
//! uses 1-second metric periods and intervals so nothing waits minutes.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capstan_core::conditions::find;
use capstan_service_scaling::crd::ServiceScaling;
use capstan_testenv::{TempNamespace, TestEnv, await_condition};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use common::scaling::*;

/// A CPU spike scales the service up within an evaluation, with an Event carrying the
/// numbers; when the load drops, the service scales down only once the 3 s scale-down
/// stabilization window has passed.
#[tokio::test]
async fn scales_up_on_a_cpu_spike_and_down_only_after_the_window() {
    let mut f = Fixture::new("scale-up-down").await;
    f.create_service("web", 2).await;
    let load = Arc::new(Mutex::new(Some(1.0))); // 50% on 2 tasks: on target
    f.feed("web", &load);
    f.apply("web", json!({})).await;
    let o = f.await_condition("web", "Ready", "Evaluated").await;
    let status = o.status.expect("status");
    assert_eq!(status.current_replicas, Some(2));
    assert_eq!(status.current_metrics[0].name, "cpu");
    assert_eq!(
        f.service("web").await.desired_count(),
        2,
        "on target: no change"
    );
    // Steady state: evaluations every second, but nothing a reader sees changes, so
    // status is not rewritten.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rv = f
        .api()
        .get("web")
        .await
        .expect("get")
        .metadata
        .resource_version;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        f.api()
            .get("web")
            .await
            .expect("get")
            .metadata
            .resource_version,
        rv,
        "status rewritten while nothing changed"
    );
    assert!(f.metric("capstan_service_scaling_evaluations_total").await >= 4);

    *load.lock().unwrap() = Some(4.0); // 200% on 2 tasks
    let spike = Instant::now();
    f.await_desired("web", |d| d == 4, "scale-up on the spike")
        .await;
    assert!(
        spike.elapsed() < Duration::from_secs(5),
        "scale-up took {:?}",
        spike.elapsed()
    );
    let o = f
        .await_condition("web", "ScalingLimited", "TooManyReplicas")
        .await;
    let status = o.status.expect("status");
    assert_eq!(status.desired_replicas, Some(4));
    assert_eq!(
        status.last_scale_direction,
        Some(capstan_service_scaling::crd::ScaleDirection::Up)
    );
    let events = f.events("web").await;
    let up = events
        .iter()
        .find(|(r, _)| r == "ScaledUp")
        .unwrap_or_else(|| panic!("no ScaledUp event: {events:?}"));
    assert!(
        up.1.contains("2 → 4") && up.1.contains("cpu") && up.1.contains("target 50%"),
        "{}",
        up.1
    );
    assert_eq!(
        f.metric("capstan_service_scaling_scale_operations_total{direction=\"up\"}")
            .await,
        1
    );
    assert_eq!(f.aws_requests("ECS:UpdateService").await, 1);

    *load.lock().unwrap() = Some(1.0); // 25% on 4 tasks: 2 would do
    let drop = Instant::now();
    f.await_desired("web", |d| d < 4, "scale-down after the window")
        .await;
    let after = drop.elapsed();
    assert!(
        after >= Duration::from_millis(2500),
        "scaled down after {after:?}, inside the 3 s stabilization window"
    );
    assert_eq!(f.service("web").await.desired_count(), 2);
    // Each scale has its own Event with its numbers.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let events = f.events("web").await;
        if events
            .iter()
            .any(|(r, n)| r == "ScaledDown" && n.contains("4 → 2"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "no ScaledDown Event: {events:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    f.cleanup().await;
}

/// A schedule window's floor applies while it is open (even on target load) and lifts
/// after it closes, when the service scales back down on its metrics.
#[tokio::test]
async fn a_sales_floor_applies_inside_its_window_and_lifts_after() {
    let mut f = Fixture::new("sales-floor").await;
    f.create_service("shop", 2).await;
    let load = Arc::new(Mutex::new(Some(1.0)));
    f.feed("shop", &load);
    let now = Timestamp::now().as_second();
    let (start, end) = (now + 4, now + 9);
    f.apply(
        "shop",
        json!({
            "maxReplicas": 6,
            "schedules": [{
                "name": "flash-sale",
                "start": rfc3339(start),
                "end": rfc3339(end),
                "minReplicas": 5
            }]
        }),
    )
    .await;
    f.await_condition("shop", "Ready", "Evaluated").await;
    assert_eq!(
        f.service("shop").await.desired_count(),
        2,
        "before the window"
    );
    f.await_desired("shop", |d| d == 5, "the floor inside the window")
        .await;
    let opened = Timestamp::now();
    assert!(
        opened.as_millisecond() >= start * 1000 - 1100,
        "floor applied at {opened}, before the window opened at {}",
        rfc3339(start)
    );
    let o = f.api().get("shop").await.expect("get");
    assert_eq!(
        o.status.expect("status").active_schedules,
        vec!["flash-sale".to_owned()]
    );
    f.await_desired("shop", |d| d < 5, "the floor lifting")
        .await;
    assert!(
        Timestamp::now().as_second() >= end,
        "the floor lifted before the window closed at {}",
        rfc3339(end)
    );
    f.await_desired("shop", |d| d == 2, "back to the metric's count")
        .await;
    f.cleanup().await;
}

/// When metrics stop, the object reports FailedGetMetrics; after 2 failed evaluations
/// the fallback sets its count.
#[tokio::test]
async fn fallback_applies_when_metrics_stop() {
    let mut f = Fixture::new("fallback").await;
    f.create_service("api", 2).await;
    let load = Arc::new(Mutex::new(Some(1.0)));
    f.feed("api", &load);
    f.apply(
        "api",
        json!({ "fallback": { "afterFailedEvaluations": 2, "action": "SetReplicas", "replicas": 3 } }),
    )
    .await;
    f.await_condition("api", "Ready", "Evaluated").await;
    assert_eq!(f.service("api").await.desired_count(), 2);
    *load.lock().unwrap() = None;
    let o = f.await_condition("api", "ScalingActive", "Fallback").await;
    assert_eq!(ready(&o), ("False".into(), "FailedGetMetrics".into()));
    f.await_desired("api", |d| d == 3, "the fallback count")
        .await;
    f.cleanup().await;
}

/// A suspended object neither reads nor scales; resuming scales on the load.
#[tokio::test]
async fn suspend_stops_scaling_until_resumed() {
    let mut f = Fixture::new("suspend").await;
    f.create_service("batch", 2).await;
    let load = Arc::new(Mutex::new(Some(4.0))); // 200%: would scale to 4
    f.feed("batch", &load);
    f.apply("batch", json!({ "suspend": true })).await;
    let o = f.await_condition("batch", "Ready", "Suspended").await;
    assert_eq!(ready(&o).0, "True");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(f.service("batch").await.desired_count(), 2, "suspended");
    assert_eq!(f.aws_requests("ECS:UpdateService").await, 0);
    f.apply("batch", json!({ "suspend": false })).await;
    f.await_desired("batch", |d| d == 4, "scaling after resume")
        .await;
    f.cleanup().await;
}

/// A service or cluster that does not exist gives Ready=False with a reason, and
/// Capstan never calls UpdateService.
#[tokio::test]
async fn a_missing_service_or_cluster_is_not_ready_and_never_written() {
    let f = Fixture::new("missing").await;
    f.apply("ghost", json!({})).await;
    let o = f.await_condition("ghost", "Ready", "ServiceNotFound").await;
    assert_eq!(ready(&o).0, "False");
    let msg = find(&o.status.expect("status").conditions, "Ready")
        .expect("Ready")
        .message
        .clone();
    assert!(msg.contains("ghost"), "{msg}");
    let mut other = json!({});
    other["service"] = json!({ "cluster": "no-such-cluster", "service": "web" });
    f.apply("lost", other).await;
    f.await_condition("lost", "Ready", "ClusterNotFound").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(f.aws_requests("ECS:DescribeServices").await > 0);
    assert_eq!(f.aws_requests("ECS:UpdateService").await, 0);
    f.cleanup().await;
}

/// A restarted manager seeds its recommendation history with the current count (the
/// HPA's way), so it does not jump down on its first evaluation: the scale-down still
/// waits for the stabilization window, counted from the new manager's first evaluation.
#[tokio::test]
async fn a_restarted_manager_does_not_jump() {
    let mut f = Fixture::new("restart-a").await;
    f.create_service("cart", 4).await;
    let load = Arc::new(Mutex::new(Some(1.0))); // 25% on 4 tasks: 2 would do
    f.feed("cart", &load);
    f.apply(
        "cart",
        json!({ "behavior": { "scaleDown": { "stabilizationWindowSeconds": 5 } } }),
    )
    .await;
    f.await_condition("cart", "AbleToScale", "ScaleDownStabilized")
        .await;
    assert_eq!(f.service("cart").await.desired_count(), 4);
    f.restart("restart-b").await;
    let restarted = Instant::now();
    // The new manager evaluates within a second or two; it must hold 4 until its own
    // window has passed.
    while restarted.elapsed() < Duration::from_secs(4) {
        assert_eq!(
            f.service("cart").await.desired_count(),
            4,
            "jumped {:?} after the restart\n{}",
            restarted.elapsed(),
            f.manager.all_logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f.await_desired(
        "cart",
        |d| d == 2,
        "scale-down after the new manager's window",
    )
    .await;
    f.cleanup().await;
}

/// The API server refuses a metric period CloudWatch does not offer and a lookback
/// shorter than the period, naming the field.
#[tokio::test]
async fn metric_periods_are_checked_at_admission() {
    let kube = TestEnv::get().kube().await.expect("kube");
    let client = kube.client().await;
    let ns = TempNamespace::create(kube).await.expect("namespace");
    let api: Api<ServiceScaling> = ns.api(client);
    let object = |period: i32, lookback: i32| -> ServiceScaling {
        serde_json::from_value(json!({
            "apiVersion": "capstan.dev/v1alpha1", "kind": "ServiceScaling",
            "metadata": { "name": format!("p{period}-l{lookback}") },
            "spec": {
                "connectionRef": { "name": "any" },
                "service": { "cluster": "c", "service": "s" },
                "maxReplicas": 2,
                "metrics": [{ "cpuUtilization": { "targetPercent": 50 } }],
                "metricPeriodSeconds": period,
                "metricLookbackSeconds": lookback
            }
        }))
        .expect("object")
    };
    let refused = |period, lookback| {
        let api = api.clone();
        async move {
            match api
                .create(&PostParams::default(), &object(period, lookback))
                .await
            {
                Err(kube::Error::Api(e)) => e.message,
                other => panic!("{period}/{lookback} accepted: {other:?}"),
            }
        }
    };
    let msg = refused(7, 60).await;
    assert!(
        msg.contains("metricPeriodSeconds must be 1, 5, 10, 30 or a multiple of 60"),
        "{msg}"
    );
    let msg = refused(120, 60).await;
    assert!(
        msg.contains("metricLookbackSeconds must be at least metricPeriodSeconds"),
        "{msg}"
    );
    for (period, lookback) in [(1, 3), (30, 30), (120, 600)] {
        api.create(&PostParams::default(), &object(period, lookback))
            .await
            .unwrap_or_else(|e| panic!("{period}/{lookback} refused: {e}"));
    }
}

/// Right after a rescale, AbleToScale says SucceededRescale with the new count (the
/// HPA's condition), not the algorithm's reason for the decision.
#[tokio::test]
async fn a_rescale_reports_succeeded_rescale() {
    let mut f = Fixture::new("rescaled").await;
    f.create_service("web", 2).await;
    let load = Arc::new(Mutex::new(Some(1.0))); // on target
    f.feed("web", &load);
    f.apply("web", json!({})).await;
    let o = f.await_condition("web", "Ready", "Evaluated").await;
    let able = |o: &ServiceScaling| {
        o.status
            .as_ref()
            .and_then(|s| find(&s.conditions, "AbleToScale"))
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
            .unwrap_or_default()
    };
    assert_ne!(able(&o).1, "SucceededRescale", "nothing was rescaled yet");
    // Watch from before the spike: the next evaluation may replace the condition.
    let api = f.api();
    let rescaled = tokio::spawn(async move {
        await_condition(
            &api,
            "web",
            |o: &ServiceScaling| {
                o.status
                    .as_ref()
                    .and_then(|s| find(&s.conditions, "AbleToScale"))
                    .is_some_and(|c| c.reason == "SucceededRescale")
            },
            TIMEOUT,
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    *load.lock().unwrap() = Some(4.0); // 200% on 2 tasks
    let o = rescaled
        .await
        .expect("watch task")
        .unwrap_or_else(|e| panic!("no SucceededRescale: {e}\n{}", f.manager.all_logs()));
    let (status, _, message) = able(&o);
    assert_eq!(status, "True");
    assert!(message.ends_with("desired count to 4"), "{message}");
    assert_eq!(o.status.expect("status").desired_replicas, Some(4));
    assert_eq!(f.service("web").await.desired_count(), 4);
    f.cleanup().await;
}

/// The API server accepts any non-negative tolerance, as the HPA does (2.0 is a 200%
/// band; "100m" is the HPA's own form of 0.1), and refuses a negative one naming the
/// field.
#[tokio::test]
async fn tolerance_accepts_what_the_hpa_accepts_at_admission() {
    let kube = TestEnv::get().kube().await.expect("kube");
    let client = kube.client().await;
    let ns = TempNamespace::create(kube).await.expect("namespace");
    let api: Api<ServiceScaling> = ns.api(client);
    let object = |name: &str, extra: Value| -> ServiceScaling {
        let mut spec = json!({
            "connectionRef": { "name": "any" },
            "service": { "cluster": "c", "service": "s" },
            "maxReplicas": 2,
            "metrics": [{ "cpuUtilization": { "targetPercent": 50 } }]
        });
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                s.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(json!({
            "apiVersion": "capstan.dev/v1alpha1", "kind": "ServiceScaling",
            "metadata": { "name": name },
            "spec": spec
        }))
        .expect("object")
    };
    for (name, extra) in [
        ("two", json!({ "tolerance": "2.0" })),
        ("one", json!({ "tolerance": "1" })),
        ("milli", json!({ "tolerance": "100m" })),
        (
            "per-direction",
            json!({ "behavior": { "scaleUp": { "tolerance": "2.0" },
                                  "scaleDown": { "tolerance": "1.5" } } }),
        ),
    ] {
        api.create(&PostParams::default(), &object(name, extra.clone()))
            .await
            .unwrap_or_else(|e| panic!("{extra} refused: {e}"));
    }
    let stored = api.get("two").await.expect("get");
    assert_eq!(stored.spec.tolerance.fraction(), Some(2.0));
    for (name, extra, path) in [
        ("negative", json!({ "tolerance": "-0.1" }), "spec.tolerance"),
        (
            "negative-down",
            json!({ "behavior": { "scaleDown": { "tolerance": "-1" } } }),
            "spec.behavior.scaleDown.tolerance",
        ),
        ("percent", json!({ "tolerance": "10%" }), "spec.tolerance"),
    ] {
        match api
            .create(&PostParams::default(), &object(name, extra.clone()))
            .await
        {
            Err(kube::Error::Api(e)) => assert!(e.message.contains(path), "{extra}: {}", e.message),
            other => panic!("{extra} accepted: {other:?}"),
        }
    }
}
