//! `make bench`: the ServiceScaling controller against the real local environment
//! (kube-apiserver and moto from `capstan-testenv`), run in this process. Prints figures;
//! asserts nothing. Bounded: a few minutes.
//!
//! 1. **Fleet**: 1,000 ServiceScalings over 1,000 emulated ECS services (evaluation
//!    interval 10 s, CPU on target, so steady state writes nothing). Over a window of
//!    steady-state cycles: AWS requests per cycle by operation (counted by the
//!    controller's SDK interceptor, `capstan_service_scaling_aws_requests_total`),
//!    Capstan's CPU time per cycle (this process, which only sleeps meanwhile) and RSS.
//! 2. **Reaction**: from a CPU datapoint being readable in CloudWatch (PutMetricData
//!    returned) to the UpdateService it causes (the service's desired count observed
//!    changed, polled every 50 ms), at 8 phases of a 5 s evaluation interval.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use capstan_aws::cloudwatch::sdk as cw;
use capstan_aws::ecs::sdk as ecs;
use capstan_core::clock::SystemClock;
use capstan_core::connection::ClusterConnection;
use capstan_core::runtime::{Readiness, Runtime};
use capstan_service_scaling::controller::{Metrics, run};
use capstan_service_scaling::crd::ServiceScaling;
use capstan_testenv::{TempNamespace, TestEnv};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const SERVICES: usize = 1000;
/// The fleet's evaluation interval: longer than one cycle takes against moto (whose
/// GetMetricData is slow on 500 queries), so cycles do not overlap.
const FLEET_INTERVAL_SECS: u64 = 10;
const WINDOW_CYCLES: u64 = 4;
/// The reaction bench's interval.
const INTERVAL_SECS: u64 = 5;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Env {
    client: kube::Client,
    ecs: ecs::Client,
    cloudwatch: cw::Client,
    endpoint: String,
    region: String,
}

async fn put_cpu(
    env: &Env,
    cluster: &str,
    services: &[String],
    value: f64,
) -> Result<(), BoxError> {
    for chunk in services.chunks(20) {
        let mut req = env.cloudwatch.put_metric_data().namespace("AWS/ECS");
        for s in chunk {
            let dim = |n: &str, v: &str| cw::types::Dimension::builder().name(n).value(v).build();
            req = req.metric_data(
                cw::types::MetricDatum::builder()
                    .metric_name("CPUUtilization")
                    .dimensions(dim("ClusterName", cluster))
                    .dimensions(dim("ServiceName", s))
                    .value(value)
                    .unit(cw::types::StandardUnit::Percent)
                    .storage_resolution(1)
                    .timestamp(SystemTime::now().into())
                    .build(),
            );
        }
        req.send().await?;
    }
    Ok(())
}

/// A namespace with a connection to moto; returns (namespace, own namespace, connection).
async fn tenant(
    env: &Env,
    kube: &capstan_testenv::Kube,
) -> Result<(TempNamespace, TempNamespace, String), BoxError> {
    let own = TempNamespace::create(kube).await?;
    let ns = TempNamespace::create(kube).await?;
    let creds: Secret = serde_json::from_value(json!({
        "metadata": { "name": "aws-creds" },
        "stringData": {
            "AWS_ACCESS_KEY_ID": capstan_testenv::TEST_ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": capstan_testenv::TEST_SECRET_ACCESS_KEY
        }
    }))?;
    own.api::<Secret>(env.client.clone())
        .create(&PostParams::default(), &creds)
        .await?;
    let name = format!("aws-{}", ns.name());
    let conn: ClusterConnection = serde_json::from_value(json!({
        "apiVersion": "capstan.dev/v1alpha1",
        "kind": "ClusterConnection",
        "metadata": { "name": name },
        "spec": {
            "allowedNamespaces": { "names": [ns.name()] },
            "aws": { "region": env.region, "endpointUrl": env.endpoint,
                     "credentialsSecretRef": { "name": "aws-creds" } }
        }
    }))?;
    Api::<ClusterConnection>::all(env.client.clone())
        .create(&PostParams::default(), &conn)
        .await?;
    Ok((ns, own, name))
}

async fn create_fleet(
    env: &Env,
    ns: &TempNamespace,
    connection: &str,
    cluster: &str,
    names: &[String],
    interval_secs: u64,
    spec_extra: serde_json::Value,
) -> Result<(), BoxError> {
    env.ecs
        .create_cluster()
        .cluster_name(cluster)
        .send()
        .await?;
    let created: Vec<Result<(), BoxError>> = futures::stream::iter(names.iter())
        .map(|n| {
            let api: Api<ServiceScaling> = ns.api(env.client.clone());
            let extra = spec_extra.clone();
            async move {
                env.ecs
                    .create_service()
                    .cluster(cluster)
                    .service_name(n)
                    .desired_count(2)
                    .send()
                    .await?;
                let mut spec = json!({
                    "connectionRef": { "name": connection },
                    "service": { "cluster": cluster, "service": n },
                    "minReplicas": 1, "maxReplicas": 4,
                    "metrics": [{ "cpuUtilization": { "targetPercent": 50 } }],
                    "evaluationInterval": format!("{interval_secs}s"),
                });
                if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
                    s.extend(e.clone());
                }
                let obj: ServiceScaling = serde_json::from_value(json!({
                    "apiVersion": "capstan.dev/v1alpha1", "kind": "ServiceScaling",
                    "metadata": { "name": n }, "spec": spec
                }))?;
                api.create(&PostParams::default(), &obj).await?;
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    created.into_iter().collect()
}

fn controller(
    env: &Env,
    own: &str,
    ns: &str,
) -> (
    impl Future<Output = ()>,
    prometheus_client::registry::Registry,
    CancellationToken,
) {
    let mut registry = capstan_core::metrics::new_registry();
    let metrics = Metrics::register(&mut registry);
    let rt = Runtime {
        client: env.client.clone(),
        namespaces: vec![ns.to_owned()],
        concurrency: 8,
        instance: "bench".into(),
        own_namespace: own.to_owned(),
        service_account_token_file: "/nonexistent".into(),
        clock: Arc::new(SystemClock),
        readiness: Readiness::default(),
        aws: Default::default(),
        objects: Default::default(),
    };
    let token = CancellationToken::new();
    (run(rt, metrics, token.clone()), registry, token)
}

/// Every sample of the registry, by name with labels.
fn samples(registry: &prometheus_client::registry::Registry) -> Vec<(String, f64)> {
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, registry).is_err() {
        return Vec::new();
    }
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn sample(s: &[(String, f64)], name: &str) -> f64 {
    s.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| *v)
        .unwrap_or(0.0)
}

/// (user + system CPU seconds, RSS kB, peak RSS kB) of this process.
fn process() -> (f64, u64, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split(' ').collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 after the name.
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (cpu, kb("VmRSS:"), kb("VmHWM:"))
}

async fn count_ready(api: &Api<ServiceScaling>, reason: &str) -> usize {
    api.list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .iter()
                .filter(|o| {
                    o.status.as_ref().is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.reason == reason)
                    })
                })
                .count()
        })
        .unwrap_or(0)
}

async fn fleet(env: &Env, kube: &capstan_testenv::Kube) -> Result<(), BoxError> {
    let (ns, own, connection) = tenant(env, kube).await?;
    let cluster = format!("fleet-{}", ns.name());
    let names: Vec<String> = (0..SERVICES).map(|i| format!("svc-{i:04}")).collect();
    let setup = Instant::now();
    put_cpu(env, &cluster, &names, 50.0).await?;
    create_fleet(
        env,
        &ns,
        &connection,
        &cluster,
        &names,
        FLEET_INTERVAL_SECS,
        json!({}),
    )
    .await?;
    println!(
        "  setup: {SERVICES} ECS services and ServiceScalings created in {:.1} s",
        setup.elapsed().as_secs_f64()
    );
    let (ctrl, registry, token) = controller(env, own.name(), ns.name());
    let work = async {
        let api: Api<ServiceScaling> = ns.api(env.client.clone());
        let started = Instant::now();
        loop {
            let n = count_ready(&api, "Evaluated").await;
            if n == SERVICES {
                break;
            }
            if started.elapsed() > Duration::from_secs(240) {
                println!(
                    "  only {n} of {SERVICES} objects evaluated after 240 s; measuring anyway"
                );
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        println!(
            "  all {SERVICES} objects Ready (first evaluation and status) {:.1} s after the controller started",
            started.elapsed().as_secs_f64()
        );
        // Fresh datapoints (they stay readable for the 300 s default lookback), then one
        // settling cycle before the window.
        put_cpu(env, &cluster, &names, 50.0).await?;
        tokio::time::sleep(Duration::from_secs(FLEET_INTERVAL_SECS)).await;
        let before = samples(&registry);
        let (cpu0, _, _) = process();
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(FLEET_INTERVAL_SECS * WINDOW_CYCLES)).await;
        let after = samples(&registry);
        let (cpu1, rss, hwm) = process();
        let wall = t0.elapsed().as_secs_f64();
        let d = |name: &str| sample(&after, name) - sample(&before, name);
        let evaluations = d("capstan_service_scaling_evaluations_total");
        let cycles = (evaluations / SERVICES as f64).max(1.0);
        let op = |o: &str| {
            d(&format!(
                "capstan_service_scaling_aws_requests_total{{operation=\"{o}\"}}"
            )) / cycles
        };
        println!(
            "  window: {wall:.1} s, {evaluations} evaluations = {cycles:.1} cycles of {SERVICES} objects ({} connection cycles)",
            d("capstan_service_scaling_evaluation_cycles_total")
        );
        println!(
            "  AWS requests per cycle: DescribeServices {:.1} (target <= {}), GetMetricData {:.1} (target <= {}), UpdateService {:.1}, other {:.1}",
            op("ECS:DescribeServices"),
            SERVICES.div_ceil(10),
            op("CloudWatch:GetMetricData"),
            SERVICES.div_ceil(500),
            op("ECS:UpdateService"),
            after
                .iter()
                .filter(
                    |(n, _)| n.starts_with("capstan_service_scaling_aws_requests_total")
                        && !n.contains("DescribeServices")
                        && !n.contains("GetMetricData")
                        && !n.contains("UpdateService")
                )
                .map(|(n, v)| v - sample(&before, n))
                .sum::<f64>()
                / cycles
                + 0.0, // never "-0.0"
        );
        let dur_sum = d("capstan_service_scaling_evaluation_duration_seconds_sum");
        let dur_count = d("capstan_service_scaling_evaluation_duration_seconds_count").max(1.0);
        println!(
            "  Capstan CPU time per cycle: {:.0} ms ({:.1}% of one core); cycle wall time {:.2} s (mostly waiting on moto); RSS {:.1} MiB (peak {:.1} MiB)",
            (cpu1 - cpu0) * 1000.0 / cycles,
            (cpu1 - cpu0) * 100.0 / wall,
            dur_sum / dur_count,
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        );
        println!(
            "  status writes in steady state: none expected (CPU on target); reconciles in the window: {}",
            d("capstan_service_scaling_reconciles_total")
        );
        token.cancel();
        Ok::<(), BoxError>(())
    };
    // An error in the work stops the controller too.
    let ((), result) = tokio::join!(ctrl, async {
        let r = work.await;
        token.cancel();
        r
    });
    result?;
    let _ = Api::<ClusterConnection>::all(env.client.clone())
        .delete(&connection, &Default::default())
        .await;
    drop(own);
    drop(ns);
    Ok(())
}

async fn reaction(env: &Env, kube: &capstan_testenv::Kube) -> Result<(), BoxError> {
    const SAMPLES: usize = 8;
    let (ns, own, connection) = tenant(env, kube).await?;
    let cluster = format!("reaction-{}", ns.name());
    let names: Vec<String> = (0..SAMPLES).map(|i| format!("r-{i}")).collect();
    put_cpu(env, &cluster, &names, 50.0).await?;
    create_fleet(
        env,
        &ns,
        &connection,
        &cluster,
        &names,
        INTERVAL_SECS,
        json!({ "metricPeriodSeconds": 1, "metricLookbackSeconds": 300 }),
    )
    .await?;
    let (ctrl, _registry, token) = controller(env, own.name(), ns.name());
    let work = async {
        let api: Api<ServiceScaling> = ns.api(env.client.clone());
        while count_ready(&api, "Evaluated").await < SAMPLES {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let mut reactions = Vec::new();
        for (i, name) in names.iter().enumerate() {
            // Spread the spikes over the phases of the interval.
            let phase =
                Duration::from_millis((i as u64 * 618 * INTERVAL_SECS) % (INTERVAL_SECS * 1000));
            tokio::time::sleep(phase).await;
            put_cpu(env, &cluster, std::slice::from_ref(name), 200.0).await?;
            let t0 = Instant::now();
            loop {
                let out = env
                    .ecs
                    .describe_services()
                    .cluster(&cluster)
                    .services(name)
                    .send()
                    .await?;
                if out
                    .services()
                    .first()
                    .is_some_and(|s| s.desired_count() != 2)
                {
                    break;
                }
                if t0.elapsed() > Duration::from_secs(30) {
                    println!("  {name}: no scale within 30 s");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            reactions.push(t0.elapsed().as_secs_f64());
        }
        reactions.sort_by(f64::total_cmp);
        println!(
            "  datapoint readable -> desired count changed, {SAMPLES} samples at spread phases of a {INTERVAL_SECS} s interval: min {:.2} s, median {:.2} s, max {:.2} s (target <= {} s: one interval + 1 s)",
            reactions[0],
            reactions[SAMPLES / 2],
            reactions[SAMPLES - 1],
            INTERVAL_SECS + 1
        );
        token.cancel();
        Ok::<(), BoxError>(())
    };
    // An error in the work stops the controller too.
    let ((), result) = tokio::join!(ctrl, async {
        let r = work.await;
        token.cancel();
        r
    });
    result?;
    let _ = Api::<ClusterConnection>::all(env.client.clone())
        .delete(&connection, &Default::default())
        .await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let started = Instant::now();
    let testenv = TestEnv::get();
    let kube = testenv.kube().await?;
    let aws = testenv.aws().await?;
    let config = aws.sdk_config().await;
    let env = Env {
        client: kube.client().await,
        ecs: ecs::Client::new(&config),
        cloudwatch: cw::Client::new(&config),
        endpoint: aws.endpoint_url().to_owned(),
        region: aws.region().to_owned(),
    };
    println!(
        "ServiceScaling fleet ({SERVICES} objects and services, {FLEET_INTERVAL_SECS} s interval, against moto and a real kube-apiserver; environment up in {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    fleet(&env, kube).await?;
    println!("ServiceScaling reaction time");
    reaction(&env, kube).await?;
    println!("(bench took {:.0} s)", started.elapsed().as_secs_f64());
    Ok(())
}
