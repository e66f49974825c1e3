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
use std::time::{Duration, Instant, SystemTime};

use capstan_aws::autoscaling::sdk as aas;
use capstan_aws::cloudwatch::sdk as cw;
use capstan_aws::ecs::sdk as ecs;
use capstan_core::conditions::find;
use capstan_core::connection::ClusterConnection;
use capstan_service_scaling::crd::ServiceScaling;
use capstan_testenv::{TempNamespace, TestEnv, await_condition};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Fields drop in order: the manager stops before its namespaces go (a namespace being
/// deleted loses the Role that lets the manager write Events there).
struct Fixture {
    manager: common::Manager,
    client: kube::Client,
    ns: TempNamespace,
    _own: TempNamespace,
    connection: String,
    cluster: String,
    ecs: ecs::Client,
    cloudwatch: cw::Client,
    autoscaling: aas::Client,
    feeders: Vec<tokio::task::JoinHandle<()>>,
}

impl Fixture {
    async fn new(test: &str) -> Fixture {
        let env = TestEnv::get();
        let kube = env.kube().await.expect("kube");
        let aws = env.aws().await.expect("aws");
        let client = kube.client().await;
        let own = TempNamespace::create(kube).await.expect("own namespace");
        let ns = TempNamespace::create(kube).await.expect("namespace");
        let connection = format!("aws-{}", ns.name());
        common::aws_connection(&client, aws, own.name(), &connection, &[ns.name()]).await;
        let config = aws.sdk_config().await;
        let ecs = ecs::Client::new(&config);
        let cluster = ns.name().to_owned();
        ecs.create_cluster()
            .cluster_name(&cluster)
            .send()
            .await
            .expect("create cluster");
        let manager = start_manager(test, ns.name(), own.name()).await;
        Fixture {
            client,
            ns,
            _own: own,
            connection,
            cluster,
            ecs,
            cloudwatch: cw::Client::new(&config),
            autoscaling: aas::Client::new(&config),
            manager,
            feeders: Vec::new(),
        }
    }

    /// Stops the manager (SIGKILL: nothing is handed over) and starts a new one.
    async fn restart(&mut self, identity: &str) {
        self.manager.child.kill().await.expect("kill manager");
        self.manager = start_manager(identity, self.ns.name(), self._own.name()).await;
    }

    async fn create_service(&self, name: &str, desired: i32) {
        self.ecs
            .create_service()
            .cluster(&self.cluster)
            .service_name(name)
            .desired_count(desired)
            .send()
            .await
            .expect("create service");
    }

    fn api(&self) -> Api<ServiceScaling> {
        self.ns.api(self.client.clone())
    }

    /// Creates (or replaces the spec of) a ServiceScaling named `name` for the service of
    /// the same name, with 1-second metrics and evaluations plus `extra` spec fields.
    async fn apply(&self, name: &str, extra: Value) {
        let mut spec = json!({
            "connectionRef": { "name": self.connection },
            "service": { "cluster": self.cluster, "service": name },
            "minReplicas": 1,
            "maxReplicas": 4,
            "metrics": [{ "cpuUtilization": { "targetPercent": 50 } }],
            "evaluationInterval": "1s",
            "metricPeriodSeconds": 1,
            "metricLookbackSeconds": 3,
            "behavior": { "scaleDown": { "stabilizationWindowSeconds": 3 } }
        });
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                s.insert(k.clone(), v.clone());
            }
        }
        let obj = json!({
            "apiVersion": "capstan.dev/v1alpha1",
            "kind": "ServiceScaling",
            "metadata": { "name": name, "namespace": self.ns.name() },
            "spec": spec
        });
        self.api()
            .patch(
                name,
                &PatchParams::apply("service-scaling-test").force(),
                &Patch::Apply(&obj),
            )
            .await
            .expect("apply ServiceScaling");
    }

    async fn service(&self, name: &str) -> ecs::types::Service {
        self.ecs
            .describe_services()
            .cluster(&self.cluster)
            .services(name)
            .send()
            .await
            .expect("describe")
            .services()
            .first()
            .cloned()
            .expect("service exists")
    }

    async fn put_cpu(cloudwatch: &cw::Client, cluster: &str, service: &str, value: f64) {
        let dim = |n: &str, v: &str| cw::types::Dimension::builder().name(n).value(v).build();
        let datum = cw::types::MetricDatum::builder()
            .metric_name("CPUUtilization")
            .dimensions(dim("ClusterName", cluster))
            .dimensions(dim("ServiceName", service))
            .value(value)
            .unit(cw::types::StandardUnit::Percent)
            .storage_resolution(1)
            .timestamp(SystemTime::now().into())
            .build();
        cloudwatch
            .put_metric_data()
            .namespace("AWS/ECS")
            .metric_data(datum)
            .send()
            .await
            .expect("put metric data");
    }

    /// Plays the service's load: while `load` is Some, publishes CPUUtilization =
    /// 100 × load / running tasks every 300 ms; None publishes nothing (metrics stop).
    fn feed(&mut self, service: &str, load: &Arc<Mutex<Option<f64>>>) {
        let (ecs, cloudwatch, cluster, service, load) = (
            self.ecs.clone(),
            self.cloudwatch.clone(),
            self.cluster.clone(),
            service.to_owned(),
            load.clone(),
        );
        self.feeders.push(tokio::spawn(async move {
            loop {
                let current = *load.lock().unwrap();
                if let Some(load) = current {
                    let running = ecs
                        .describe_services()
                        .cluster(&cluster)
                        .services(&service)
                        .send()
                        .await
                        .ok()
                        .and_then(|o| o.services().first().map(|s| s.running_count()))
                        .unwrap_or(1)
                        .max(1);
                    let cpu = 100.0 * load / f64::from(running);
                    Fixture::put_cpu(&cloudwatch, &cluster, &service, cpu).await;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }));
    }

    /// Polls the service's desired count until `pred` holds; returns it and when.
    async fn await_desired(&self, name: &str, pred: impl Fn(i32) -> bool, why: &str) -> i32 {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let d = self.service(name).await.desired_count();
            if pred(d) {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "{why}: desired count stuck at {d}\nstatus: {:?}\nlogs:\n{}",
                self.api().get(name).await.ok().and_then(|o| o.status),
                self.manager.all_logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn await_condition(&self, name: &str, type_: &str, reason: &str) -> ServiceScaling {
        await_condition(
            &self.api(),
            name,
            |o: &ServiceScaling| {
                o.status
                    .as_ref()
                    .and_then(|s| find(&s.conditions, type_))
                    .is_some_and(|c| c.reason == reason)
            },
            TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{name}: {type_} never had reason {reason}: {e}\nlogs:\n{}",
                self.manager.all_logs()
            )
        })
    }

    /// Requests the manager sent for `operation` (e.g. `ECS:UpdateService`), from its
    /// `/metrics`.
    async fn aws_requests(&self, operation: &str) -> u64 {
        self.metric(&format!(
            "capstan_service_scaling_aws_requests_total{{operation=\"{operation}\"}}"
        ))
        .await
    }

    /// One sample of the manager's `/metrics` (0 when absent).
    async fn metric(&self, sample: &str) -> u64 {
        let (_, body) = self.manager.get("/metrics").await;
        let needle = format!("{sample} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&needle))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    async fn events(&self, name: &str) -> Vec<(String, String)> {
        self.ns
            .api::<Event>(self.client.clone())
            .list(&ListParams::default())
            .await
            .expect("events")
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }

    async fn cleanup(self) {
        for f in &self.feeders {
            f.abort();
        }
        let _ = Api::<ClusterConnection>::all(self.client.clone())
            .delete(&self.connection, &DeleteParams::default())
            .await;
    }
}

/// The cleanup timeout of the test managers: a deletion whose Application Auto Scaling
/// objects cannot be removed completes this long after it was asked for.
const CLEANUP_TIMEOUT_SECS: u64 = 3;

async fn start_manager(identity: &str, ns: &str, own: &str) -> common::Manager {
    let kube = TestEnv::get().kube().await.expect("kube");
    let cleanup_timeout = CLEANUP_TIMEOUT_SECS.to_string();
    common::start(
        kube,
        identity,
        &[
            "--leader-elect=false",
            "--controllers",
            "service-scaling",
            "--namespaces",
            ns,
            "--own-namespace",
            own,
            "--scaling-cleanup-timeout",
            &cleanup_timeout,
        ],
    )
    .await
}

/// RFC 3339 of a Unix second.
fn rfc3339(secs: i64) -> String {
    Timestamp::from_second(secs).expect("time").to_string()
}

fn ready(o: &ServiceScaling) -> (String, String) {
    o.status
        .as_ref()
        .and_then(|s| find(&s.conditions, "Ready"))
        .map(|c| (c.status.clone(), c.reason.clone()))
        .unwrap_or_default()
}

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

/// ApplicationAutoScaling mode declares the scalable target, a target-tracking policy
/// and scheduled actions, repairs them after they are changed behind its back, and
/// never writes the desired count.
#[tokio::test]
async fn application_autoscaling_mode_declares_and_repairs() {
    let f = Fixture::new("aas").await;
    f.create_service("orders", 2).await;
    let start = Timestamp::now().as_second() + 3600;
    let end = start + 7200;
    f.apply(
        "orders",
        json!({
            "mode": "ApplicationAutoScaling",
            "minReplicas": 2,
            "maxReplicas": 8,
            "schedules": [{
                "name": "sale",
                "start": rfc3339(start),
                "end": rfc3339(end),
                "minReplicas": 6
            }]
        }),
    )
    .await;
    f.await_condition("orders", "Ready", "AutoScalingDeclared")
        .await;
    let resource = format!("service/{}/orders", f.cluster);
    let ns = aas::types::ServiceNamespace::Ecs;
    let dim = aas::types::ScalableDimension::EcsServiceDesiredCount;
    let target = || async {
        f.autoscaling
            .describe_scalable_targets()
            .service_namespace(ns.clone())
            .resource_ids(&resource)
            .send()
            .await
            .expect("targets")
            .scalable_targets()
            .first()
            .map(|t| (t.min_capacity(), t.max_capacity()))
    };
    let policies = || async {
        f.autoscaling
            .describe_scaling_policies()
            .service_namespace(ns.clone())
            .resource_id(&resource)
            .send()
            .await
            .expect("policies")
            .scaling_policies()
            .iter()
            .map(|p| {
                let c = p.target_tracking_scaling_policy_configuration();
                (
                    p.policy_name().to_owned(),
                    c.map(|c| c.target_value()).unwrap_or_default(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(target().await, Some((2, 8)));
    assert_eq!(policies().await, vec![("capstan-0-cpu".to_owned(), 50.0)]);
    let actions = f
        .autoscaling
        .describe_scheduled_actions()
        .service_namespace(ns.clone())
        .resource_id(&resource)
        .send()
        .await
        .expect("actions");
    let mut got: Vec<(String, Option<i32>)> = actions
        .scheduled_actions()
        .iter()
        .map(|a| {
            (
                a.schedule().to_owned(),
                a.scalable_target_action().and_then(|t| t.min_capacity()),
            )
        })
        .collect();
    got.sort();
    let at = |t: i64| {
        let ts = Timestamp::from_second(t).expect("time");
        format!("at({})", ts.strftime("%Y-%m-%dT%H:%M:%S"))
    };
    let mut want = vec![(at(start), Some(6)), (at(end), Some(2))];
    want.sort();
    assert_eq!(got, want);

    // Behind Capstan's back: the bounds change and the policy goes.
    f.autoscaling
        .register_scalable_target()
        .service_namespace(ns.clone())
        .resource_id(&resource)
        .scalable_dimension(dim.clone())
        .min_capacity(1)
        .max_capacity(50)
        .send()
        .await
        .expect("change target");
    f.autoscaling
        .delete_scaling_policy()
        .service_namespace(ns.clone())
        .resource_id(&resource)
        .scalable_dimension(dim)
        .policy_name("capstan-0-cpu")
        .send()
        .await
        .expect("delete policy");
    let deadline = Instant::now() + TIMEOUT;
    while target().await != Some((2, 8)) || policies().await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "not repaired: {:?} {:?}\n{}",
            target().await,
            policies().await,
            f.manager.all_logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The Event follows the repair.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let events = f.events("orders").await;
        if events
            .iter()
            .any(|(r, n)| r == "AutoScalingRepaired" && n.contains("(found 1..50)"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "no repair Event: {events:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(f.aws_requests("ECS:UpdateService").await, 0);
    assert_eq!(f.service("orders").await.desired_count(), 2);
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

/// The Application Auto Scaling objects of one ECS service, read back from the emulator.
#[derive(Debug, PartialEq)]
struct Declared {
    /// The scalable target's bounds, if registered.
    target: Option<(i32, i32)>,
    /// Policy names, sorted.
    policies: Vec<String>,
    /// Scheduled action names, sorted.
    actions: Vec<String>,
}

impl Fixture {
    fn resource(&self, service: &str) -> String {
        format!("service/{}/{service}", self.cluster)
    }

    async fn declared(&self, service: &str) -> Declared {
        let resource = self.resource(service);
        let ns = aas::types::ServiceNamespace::Ecs;
        let target = self
            .autoscaling
            .describe_scalable_targets()
            .service_namespace(ns.clone())
            .resource_ids(&resource)
            .send()
            .await
            .expect("targets")
            .scalable_targets()
            .iter()
            .find(|t| t.resource_id() == resource)
            .map(|t| (t.min_capacity(), t.max_capacity()));
        let mut policies: Vec<String> = self
            .autoscaling
            .describe_scaling_policies()
            .service_namespace(ns.clone())
            .resource_id(&resource)
            .send()
            .await
            .expect("policies")
            .scaling_policies()
            .iter()
            .map(|p| p.policy_name().to_owned())
            .collect();
        policies.sort();
        let mut actions: Vec<String> = self
            .autoscaling
            .describe_scheduled_actions()
            .service_namespace(ns)
            .resource_id(&resource)
            .send()
            .await
            .expect("actions")
            .scheduled_actions()
            .iter()
            .map(|a| a.scheduled_action_name().to_owned())
            .collect();
        actions.sort();
        Declared {
            target,
            policies,
            actions,
        }
    }

    /// Someone else's target-tracking policy and scheduled action on the service's
    /// scalable target (a team's own, made outside Capstan).
    async fn add_foreign_objects(&self, service: &str) {
        let resource = self.resource(service);
        let ns = aas::types::ServiceNamespace::Ecs;
        let dim = aas::types::ScalableDimension::EcsServiceDesiredCount;
        let config = aas::types::TargetTrackingScalingPolicyConfiguration::builder()
            .target_value(70.0)
            .predefined_metric_specification(
                aas::types::PredefinedMetricSpecification::builder()
                    .predefined_metric_type(
                        aas::types::MetricType::EcsServiceAverageMemoryUtilization,
                    )
                    .build()
                    .expect("metric"),
            )
            .build()
            .expect("config");
        self.autoscaling
            .put_scaling_policy()
            .policy_name("team-memory")
            .service_namespace(ns.clone())
            .resource_id(&resource)
            .scalable_dimension(dim.clone())
            .policy_type(aas::types::PolicyType::TargetTrackingScaling)
            .target_tracking_scaling_policy_configuration(config)
            .send()
            .await
            .expect("foreign policy");
        self.autoscaling
            .put_scheduled_action()
            .scheduled_action_name("team-nightly")
            .service_namespace(ns)
            .resource_id(&resource)
            .scalable_dimension(dim)
            .schedule("cron(0 2 * * ? *)")
            .scalable_target_action(
                aas::types::ScalableTargetAction::builder()
                    .min_capacity(1)
                    .max_capacity(3)
                    .build(),
            )
            .send()
            .await
            .expect("foreign scheduled action");
    }

    /// Applies `name` in ApplicationAutoScaling mode with a sales window an hour ahead
    /// (so two scheduled actions are declared) and waits until it is declared.
    async fn declare_autoscaling(&self, name: &str) {
        let start = Timestamp::now().as_second() + 3600;
        self.apply(
            name,
            json!({
                "mode": "ApplicationAutoScaling",
                "minReplicas": 2,
                "maxReplicas": 8,
                "schedules": [{
                    "name": "sale",
                    "start": rfc3339(start),
                    "end": rfc3339(start + 7200),
                    "minReplicas": 6
                }]
            }),
        )
        .await;
        self.await_condition(name, "Ready", "AutoScalingDeclared")
            .await;
    }

    /// Waits for an Event about `name` with `reason` whose note satisfies `pred`.
    async fn await_event(&self, name: &str, reason: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let events = self.events(name).await;
            if let Some((_, note)) = events.iter().find(|(r, n)| r == reason && pred(n)) {
                return note.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no {reason} Event about {name}: {events:?}\nlogs:\n{}",
                self.manager.all_logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn finalizers(o: &ServiceScaling) -> Vec<String> {
    o.metadata.finalizers.clone().unwrap_or_default()
}

/// Deleting a ServiceScaling in ApplicationAutoScaling mode removes the scalable target,
/// Capstan's policies and its scheduled actions; on a service where someone else also
/// has a policy and a scheduled action, those are kept, and so is the target they need
/// (AWS would delete them with it).
#[tokio::test]
async fn deleting_in_autoscaling_mode_removes_only_capstans_objects() {
    let f = Fixture::new("aas-delete").await;
    f.create_service("orders", 2).await;
    f.create_service("billing", 2).await;
    f.declare_autoscaling("orders").await;
    f.declare_autoscaling("billing").await;
    f.add_foreign_objects("billing").await;
    let declared = f.declared("orders").await;
    assert_eq!(
        declared,
        Declared {
            target: Some((2, 8)),
            policies: vec!["capstan-0-cpu".into()],
            actions: vec!["capstan-schedule-1".into(), "capstan-schedule-2".into()],
        }
    );
    let o = f.api().get("orders").await.expect("get");
    assert_eq!(
        finalizers(&o),
        vec!["capstan.dev/autoscaling-cleanup".to_owned()]
    );
    assert_eq!(
        o.metadata
            .annotations
            .unwrap_or_default()
            .get("capstan.dev/autoscaling-resource"),
        Some(&f.resource("orders"))
    );

    for name in ["orders", "billing"] {
        f.api()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }
    for name in ["orders", "billing"] {
        capstan_testenv::await_deleted(&f.api(), name, TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{name} not deleted: {e}\n{}", f.manager.all_logs()));
    }
    assert_eq!(
        f.declared("orders").await,
        Declared {
            target: None,
            policies: vec![],
            actions: vec![],
        }
    );
    assert_eq!(
        f.declared("billing").await,
        Declared {
            target: Some((2, 8)),
            policies: vec!["team-memory".into()],
            actions: vec!["team-nightly".into()],
        },
        "someone else's policy and action, and the target they use, are kept"
    );
    let note = f
        .await_event("orders", "AutoScalingRemoved", |_| true)
        .await;
    assert!(
        note.contains("deleted policies capstan-0-cpu")
            && note.contains("deregistered the scalable target"),
        "{note}"
    );
    let note = f
        .await_event("billing", "AutoScalingRemoved", |_| true)
        .await;
    assert!(
        note.contains("kept the scalable target") && note.contains("policy team-memory"),
        "{note}"
    );
    f.cleanup().await;
}

/// Switching a ServiceScaling from ApplicationAutoScaling to Direct mode removes what it
/// declared (target, policy, scheduled actions) and drops the finalizer before Direct
/// mode evaluates it.
#[tokio::test]
async fn switching_to_direct_mode_removes_the_declared_objects() {
    let mut f = Fixture::new("aas-to-direct").await;
    f.create_service("orders", 2).await;
    let load = Arc::new(Mutex::new(Some(1.0)));
    f.feed("orders", &load);
    f.declare_autoscaling("orders").await;
    f.add_foreign_objects("orders").await;
    assert_eq!(f.declared("orders").await.policies.len(), 2);
    f.apply("orders", json!({ "mode": "Direct" })).await;
    let o = f.await_condition("orders", "Ready", "Evaluated").await;
    assert!(finalizers(&o).is_empty(), "{:?}", finalizers(&o));
    assert!(
        !o.metadata
            .annotations
            .unwrap_or_default()
            .contains_key("capstan.dev/autoscaling-resource")
    );
    assert_eq!(
        f.declared("orders").await,
        Declared {
            target: Some((2, 8)),
            policies: vec!["team-memory".into()],
            actions: vec!["team-nightly".into()],
        },
        "Capstan's objects gone, someone else's kept"
    );
    f.await_event("orders", "AutoScalingRemoved", |n| {
        n.contains("deleted policies capstan-0-cpu")
    })
    .await;

    // Without anyone else's objects the target goes too.
    f.create_service("api", 2).await;
    f.declare_autoscaling("api").await;
    f.apply("api", json!({ "mode": "Direct" })).await;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = f.declared("api").await;
        if left.target.is_none() && left.policies.is_empty() && left.actions.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left after the switch: {left:?}\n{}",
            f.manager.all_logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    f.cleanup().await;
}

/// A connection that no longer allows the namespace cannot be used to clean up, and
/// does not block the deletion forever: after the cleanup timeout the object is deleted
/// with a Warning Event naming what was left in AWS, which Capstan did not touch.
#[tokio::test]
async fn a_revoked_connection_does_not_block_deletion_forever() {
    let f = Fixture::new("aas-revoked").await;
    f.create_service("orders", 2).await;
    f.declare_autoscaling("orders").await;
    let before = f.declared("orders").await;
    assert_eq!(before.policies, vec!["capstan-0-cpu".to_owned()]);
    // The administrator takes the namespace off the connection.
    Api::<ClusterConnection>::all(f.client.clone())
        .patch(
            &f.connection,
            &PatchParams::default(),
            &Patch::Merge(
                json!({ "spec": { "allowedNamespaces": { "names": ["someone-else"] } } }),
            ),
        )
        .await
        .expect("revoke the namespace");
    f.await_condition("orders", "Ready", "ConnectionNotAllowed")
        .await;
    let asked = Instant::now();
    f.api()
        .delete("orders", &DeleteParams::default())
        .await
        .expect("delete");
    let o = f
        .await_condition("orders", "Ready", "AutoScalingCleanupFailed")
        .await;
    let msg = find(&o.status.expect("status").conditions, "Ready")
        .expect("Ready")
        .message
        .clone();
    assert!(msg.contains(&f.resource("orders")), "{msg}");
    capstan_testenv::await_deleted(&f.api(), "orders", TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("not deleted: {e}\n{}", f.manager.all_logs()));
    let took = asked.elapsed();
    eprintln!("deleted {took:?} after the request (cleanup timeout {CLEANUP_TIMEOUT_SECS} s)");
    // The deadline counts from the deletion timestamp, which has whole seconds.
    assert!(
        took >= Duration::from_secs(CLEANUP_TIMEOUT_SECS - 1),
        "deleted after {took:?}, before the {CLEANUP_TIMEOUT_SECS} s cleanup timeout"
    );
    let note = f
        .await_event("orders", "AutoScalingCleanupAbandoned", |_| true)
        .await;
    for part in [
        f.resource("orders"),
        "capstan-0-cpu".to_owned(),
        "capstan-schedule-1".to_owned(),
        format!("{:?}", f.connection),
    ] {
        assert!(note.contains(&part), "{part} not in: {note}");
    }
    f.await_event("orders", "AutoScalingCleanupFailed", |n| {
        n.contains(&f.connection)
    })
    .await;
    assert_eq!(
        f.declared("orders").await,
        before,
        "nothing is removed through a connection that refuses the namespace"
    );
    f.cleanup().await;
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
