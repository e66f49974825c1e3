//! The ServiceScaling tests' fixture: per test a namespace, an ECS cluster in the
//! emulator, a ClusterConnection and a manager process (so the manager's AWS request
//! counters are the test's own), with the load the test plays on the service, and what
//! ApplicationAutoScaling mode declared, read back from the emulator.

#![allow(clippy::unwrap_used)]

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
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Fields drop in order: the manager stops before its namespaces go (a namespace being
/// deleted loses the Role that lets the manager write Events there).
pub struct Fixture {
    pub manager: super::Manager,
    pub client: kube::Client,
    pub ns: TempNamespace,
    pub _own: TempNamespace,
    pub connection: String,
    pub cluster: String,
    pub ecs: ecs::Client,
    pub cloudwatch: cw::Client,
    pub autoscaling: aas::Client,
    pub feeders: Vec<tokio::task::JoinHandle<()>>,
}

impl Fixture {
    pub async fn new(test: &str) -> Fixture {
        let env = TestEnv::get();
        let kube = env.kube().await.expect("kube");
        let aws = env.aws().await.expect("aws");
        let client = kube.client().await;
        let own = TempNamespace::create(kube).await.expect("own namespace");
        let ns = TempNamespace::create(kube).await.expect("namespace");
        let connection = format!("aws-{}", ns.name());
        super::aws_connection(&client, aws, own.name(), &connection, &[ns.name()]).await;
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
    pub async fn restart(&mut self, identity: &str) {
        self.manager.child.kill().await.expect("kill manager");
        self.manager = start_manager(identity, self.ns.name(), self._own.name()).await;
    }

    pub async fn create_service(&self, name: &str, desired: i32) {
        self.ecs
            .create_service()
            .cluster(&self.cluster)
            .service_name(name)
            .desired_count(desired)
            .send()
            .await
            .expect("create service");
    }

    pub fn api(&self) -> Api<ServiceScaling> {
        self.ns.api(self.client.clone())
    }

    /// Creates (or replaces the spec of) a ServiceScaling named `name` for the service of
    /// the same name, with 1-second metrics and evaluations plus `extra` spec fields.
    pub async fn apply(&self, name: &str, extra: Value) {
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

    pub async fn service(&self, name: &str) -> ecs::types::Service {
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

    pub async fn put_cpu(cloudwatch: &cw::Client, cluster: &str, service: &str, value: f64) {
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
    pub fn feed(&mut self, service: &str, load: &Arc<Mutex<Option<f64>>>) {
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
    pub async fn await_desired(&self, name: &str, pred: impl Fn(i32) -> bool, why: &str) -> i32 {
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

    pub async fn await_condition(&self, name: &str, type_: &str, reason: &str) -> ServiceScaling {
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
    pub async fn aws_requests(&self, operation: &str) -> u64 {
        self.metric(&format!(
            "capstan_service_scaling_aws_requests_total{{operation=\"{operation}\"}}"
        ))
        .await
    }

    /// One sample of the manager's `/metrics` (0 when absent).
    pub async fn metric(&self, sample: &str) -> u64 {
        let (_, body) = self.manager.get("/metrics").await;
        let needle = format!("{sample} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&needle))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    pub async fn events(&self, name: &str) -> Vec<(String, String)> {
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

    pub async fn cleanup(self) {
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
pub const CLEANUP_TIMEOUT_SECS: u64 = 3;

pub async fn start_manager(identity: &str, ns: &str, own: &str) -> super::Manager {
    let kube = TestEnv::get().kube().await.expect("kube");
    let cleanup_timeout = CLEANUP_TIMEOUT_SECS.to_string();
    super::start(
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
pub fn rfc3339(secs: i64) -> String {
    Timestamp::from_second(secs).expect("time").to_string()
}

pub fn ready(o: &ServiceScaling) -> (String, String) {
    o.status
        .as_ref()
        .and_then(|s| find(&s.conditions, "Ready"))
        .map(|c| (c.status.clone(), c.reason.clone()))
        .unwrap_or_default()
}

/// The Application Auto Scaling objects of one ECS service, read back from the emulator.
#[derive(Debug, PartialEq)]
pub struct Declared {
    /// The scalable target's bounds, if registered.
    pub target: Option<(i32, i32)>,
    /// Policy names, sorted.
    pub policies: Vec<String>,
    /// Scheduled action names, sorted.
    pub actions: Vec<String>,
}

impl Fixture {
    pub fn resource(&self, service: &str) -> String {
        format!("service/{}/{service}", self.cluster)
    }

    pub async fn declared(&self, service: &str) -> Declared {
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
    pub async fn add_foreign_objects(&self, service: &str) {
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
    pub async fn declare_autoscaling(&self, name: &str) {
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
    pub async fn await_event(
        &self,
        name: &str,
        reason: &str,
        pred: impl Fn(&str) -> bool,
    ) -> String {
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

pub fn finalizers(o: &ServiceScaling) -> Vec<String> {
    o.metadata.finalizers.clone().unwrap_or_default()
}

/// The emulator's request counts whose key starts with `prefix`
/// (`tests/env/moto_ext/request_counter.py`: the emulator's count, not the manager's).
pub async fn emulator_counts(prefix: &str) -> std::collections::HashMap<String, u64> {
    let aws = TestEnv::get().aws().await.expect("aws");
    let url = format!(
        "{}/moto-api/capstan/requests?prefix={prefix}",
        aws.endpoint_url().trim_end_matches('/')
    );
    reqwest::get(url)
        .await
        .expect("emulator counts")
        .json()
        .await
        .expect("counts json")
}

/// One count of the emulator (0 when absent).
pub async fn emulator_count(key: &str) -> u64 {
    emulator_counts(key)
        .await
        .get(key)
        .copied()
        .unwrap_or_default()
}

/// A ServiceScaling of `cluster/service` through `connection` at the 1 s floor (CPU
/// target 50%, 1..4 tasks, 1 s metric periods).
pub fn floor_scaling(
    ns: &str,
    name: &str,
    connection: &str,
    cluster: &str,
    service: &str,
) -> Value {
    json!({
        "apiVersion": "capstan.dev/v1alpha1",
        "kind": "ServiceScaling",
        "metadata": { "name": name, "namespace": ns },
        "spec": {
            "connectionRef": { "name": connection },
            "service": { "cluster": cluster, "service": service },
            "minReplicas": 1,
            "maxReplicas": 4,
            "metrics": [{ "cpuUtilization": { "targetPercent": 50 } }],
            "evaluationInterval": "1s",
            "metricPeriodSeconds": 1,
            "metricLookbackSeconds": 3
        }
    })
}
