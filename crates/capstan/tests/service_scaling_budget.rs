//! ServiceScaling under a tenant who sets everything at the floor: `capstan run` as a
//! real process against the real API server and the moto AWS emulator, whose
//! `tests/env/moto_ext/request_counter.py` counts the requests it answers per ECS cluster
//! and service (the emulator's count, not the manager's own).
//!
//! - 200 objects at the 1 s floor aimed at missing services stay under the account's
//!   request budget, and do not delay another namespace's scale-up;
//! - a missing service is looked for again with exponential backoff;
//! - a deleted ServiceScaling of a missing service is no longer evaluated.

#![allow(clippy::unwrap_used)]

mod common;

use common::scaling::{Fixture, emulator_count, emulator_counts, floor_scaling as scaling};

use std::time::{Duration, Instant};

use capstan_aws::cloudwatch::sdk as cw;
use capstan_aws::ecs::sdk as ecs;
use capstan_core::conditions::find;
use capstan_core::connection::ClusterConnection;
use capstan_service_scaling::crd::ServiceScaling;
use capstan_testenv::{TempNamespace, TestEnv, await_condition};
use futures::StreamExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(30);

async fn apply(client: &kube::Client, obj: &Value) {
    let ns = obj["metadata"]["namespace"].as_str().unwrap();
    let name = obj["metadata"]["name"].as_str().unwrap();
    Api::<ServiceScaling>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::apply("service-scaling-budget-test").force(),
            &Patch::Apply(obj),
        )
        .await
        .expect("apply ServiceScaling");
}

async fn start_manager(
    identity: &str,
    namespaces: &str,
    own: &str,
    extra: &[&str],
) -> common::Manager {
    let kube = TestEnv::get().kube().await.expect("kube");
    let mut args = vec![
        "--leader-elect=false",
        "--controllers",
        "service-scaling",
        "--namespaces",
        namespaces,
        "--own-namespace",
        own,
    ];
    args.extend_from_slice(extra);
    common::start(kube, identity, &args).await
}

async fn create_cluster(ecs: &ecs::Client, name: &str) {
    ecs.create_cluster()
        .cluster_name(name)
        .send()
        .await
        .expect("create cluster");
}

async fn desired_count(ecs: &ecs::Client, cluster: &str, service: &str) -> i32 {
    ecs.describe_services()
        .cluster(cluster)
        .services(service)
        .send()
        .await
        .expect("describe")
        .services()
        .first()
        .map(|s| s.desired_count())
        .unwrap_or_default()
}

async fn delete_connection(client: &kube::Client, name: &str) {
    let _ = Api::<ClusterConnection>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await;
}

/// 200 ServiceScalings at the 1 s floor in one namespace, all aimed at services that do
/// not exist, share the account's DescribeServices budget (2/s here) with one
/// ServiceScaling of an existing service in another namespace: the emulator sees no
/// more DescribeServices calls from both than the budget allows, and the other
/// namespace's service still scales up within its interval plus a few seconds, because
/// each namespace's calls queue separately and are served in turn.
#[tokio::test]
async fn two_hundred_floor_objects_on_missing_services_stay_in_budget_and_do_not_delay_others() {
    let env = TestEnv::get();
    let kube = env.kube().await.expect("kube");
    let aws = env.aws().await.expect("aws");
    let client = kube.client().await;
    let own = TempNamespace::create(kube).await.expect("own namespace");
    let noisy = TempNamespace::create(kube).await.expect("noisy namespace");
    let quiet = TempNamespace::create(kube).await.expect("quiet namespace");
    let connection = format!("aws-{}", noisy.name());
    common::aws_connection(
        &client,
        aws,
        own.name(),
        &connection,
        &[noisy.name(), quiet.name()],
    )
    .await;
    let config = aws.sdk_config().await;
    let ecs = ecs::Client::new(&config);
    let cloudwatch = cw::Client::new(&config);
    let (noisy_cluster, quiet_cluster) = (noisy.name().to_owned(), quiet.name().to_owned());
    create_cluster(&ecs, &noisy_cluster).await;
    create_cluster(&ecs, &quiet_cluster).await;
    ecs.create_service()
        .cluster(&quiet_cluster)
        .service_name("web")
        .desired_count(1)
        .send()
        .await
        .expect("create service");

    let describe = |cluster: &str| format!("ecs:DescribeServices@{cluster}");
    let before = emulator_count(&describe(&noisy_cluster)).await
        + emulator_count(&describe(&quiet_cluster)).await;
    let namespaces = format!("{},{}", noisy.name(), quiet.name());
    let manager = start_manager(
        "budget",
        &namespaces,
        own.name(),
        &["--aws-budget", "ecs-read=2/2"],
    )
    .await;
    let started = Instant::now();

    // The noisy tenant: 200 objects at the floor, for services that do not exist.
    let objects: Vec<Value> = (0..200)
        .map(|i| {
            scaling(
                noisy.name(),
                &format!("ghost-{i}"),
                &connection,
                &noisy_cluster,
                &format!("ghost-{i}"),
            )
        })
        .collect();
    let creating = {
        let client = client.clone();
        tokio::spawn(async move {
            futures::stream::iter(objects.iter())
                .for_each_concurrent(8, |o| apply(&client, o))
                .await;
        })
    };
    // Let the noisy namespace fill its queue before the quiet one asks for anything.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The quiet tenant: one object of an existing service under a sudden load.
    apply(
        &client,
        &scaling(quiet.name(), "web", &connection, &quiet_cluster, "web"),
    )
    .await;
    let feeding = {
        let (cloudwatch, cluster) = (cloudwatch.clone(), quiet_cluster.clone());
        tokio::spawn(async move {
            loop {
                Fixture::put_cpu(&cloudwatch, &cluster, "web", 100.0).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let load_at = Instant::now();
    // The test's own DescribeServices calls reach the emulator's count too.
    let mut own_calls = 0u64;
    loop {
        own_calls += 1;
        if desired_count(&ecs, &quiet_cluster, "web").await >= 2 {
            break;
        }
        assert!(
            load_at.elapsed() < TIMEOUT,
            "the quiet namespace's service never scaled up\nlogs:\n{}",
            manager.all_logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let scaled_after = load_at.elapsed();
    feeding.abort();
    eprintln!("quiet namespace scaled up {scaled_after:?} after its load started");
    // The interval (1 s), the first datapoint, and one turn of the 2/s budget, with
    // room for a loaded machine; a FIFO queue behind 200 objects at 2/s takes far longer.
    assert!(
        scaled_after < Duration::from_secs(8),
        "the quiet namespace waited {scaled_after:?} behind the noisy one\nlogs:\n{}",
        manager.all_logs()
    );

    creating.await.expect("created the noisy objects");
    let until = started + Duration::from_secs(20);
    tokio::time::sleep_until(until.into()).await;
    let calls = emulator_count(&describe(&noisy_cluster)).await
        + emulator_count(&describe(&quiet_cluster)).await
        - before
        - own_calls;
    let window = started.elapsed().as_secs_f64();
    let allowed = 2.0 * window + 2.0;
    let lookups: u64 = emulator_counts(&format!("ecs:DescribeServices:{noisy_cluster}/"))
        .await
        .values()
        .sum();
    eprintln!(
        "{calls} DescribeServices calls ({lookups} lookups of missing services) in {window:.1}s; budget allows {allowed:.0}"
    );
    assert!(calls > 0, "no call reached the emulator");
    assert!(
        calls as f64 <= allowed,
        "{calls} DescribeServices calls in {window:.1}s exceed the 2/s budget ({allowed:.0})"
    );
    delete_connection(&client, &connection).await;
}

/// A ServiceScaling of a service that does not exist, at the 1 s floor, is looked for
/// again after 1, 2, 4, 8... seconds rather than every second, and its status says so.
#[tokio::test]
async fn a_missing_service_is_looked_for_with_exponential_backoff() {
    let env = TestEnv::get();
    let kube = env.kube().await.expect("kube");
    let aws = env.aws().await.expect("aws");
    let client = kube.client().await;
    let own = TempNamespace::create(kube).await.expect("own namespace");
    let ns = TempNamespace::create(kube).await.expect("namespace");
    let connection = format!("aws-{}", ns.name());
    common::aws_connection(&client, aws, own.name(), &connection, &[ns.name()]).await;
    let ecs = ecs::Client::new(&aws.sdk_config().await);
    let cluster = ns.name().to_owned();
    create_cluster(&ecs, &cluster).await;
    let manager = start_manager("backoff", ns.name(), own.name(), &[]).await;
    apply(
        &client,
        &scaling(ns.name(), "ghost", &connection, &cluster, "ghost"),
    )
    .await;
    let api = Api::<ServiceScaling>::namespaced(client.clone(), ns.name());
    await_condition(
        &api,
        "ghost",
        |o: &ServiceScaling| {
            o.status
                .as_ref()
                .and_then(|s| find(&s.conditions, "Ready"))
                .is_some_and(|c| c.reason == "ServiceNotFound")
        },
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("never ServiceNotFound: {e}\nlogs:\n{}", manager.all_logs()));
    let key = format!("ecs:DescribeServices:{cluster}/ghost");
    let first = emulator_count(&key).await;
    tokio::time::sleep(Duration::from_secs(16)).await;
    let lookups = emulator_count(&key).await - first;
    eprintln!("{lookups} lookups of the missing service in 16 s at a 1 s interval");
    // 1 + 2 + 4 + 8 s (each up to 20% longer): 3 to 5 lookups, not 16.
    assert!(
        (2..=5).contains(&lookups),
        "{lookups} lookups in 16 s\nlogs:\n{}",
        manager.all_logs()
    );
    let o = api.get("ghost").await.expect("get");
    let msg = find(&o.status.expect("status").conditions, "Ready")
        .expect("Ready")
        .message
        .clone();
    assert!(msg.contains("backing off"), "{msg}");
    delete_connection(&client, &connection).await;
}

/// After a ServiceScaling whose service does not exist is deleted, the emulator sees
/// no more requests for that service.
#[tokio::test]
async fn a_deleted_scaling_of_a_missing_service_is_no_longer_evaluated() {
    let env = TestEnv::get();
    let kube = env.kube().await.expect("kube");
    let aws = env.aws().await.expect("aws");
    let client = kube.client().await;
    let own = TempNamespace::create(kube).await.expect("own namespace");
    let ns = TempNamespace::create(kube).await.expect("namespace");
    let connection = format!("aws-{}", ns.name());
    common::aws_connection(&client, aws, own.name(), &connection, &[ns.name()]).await;
    let ecs = ecs::Client::new(&aws.sdk_config().await);
    let cluster = ns.name().to_owned();
    create_cluster(&ecs, &cluster).await;
    let manager = start_manager("deleted", ns.name(), own.name(), &[]).await;
    apply(
        &client,
        &scaling(ns.name(), "ghost", &connection, &cluster, "ghost"),
    )
    .await;
    let api = Api::<ServiceScaling>::namespaced(client.clone(), ns.name());
    await_condition(
        &api,
        "ghost",
        |o: &ServiceScaling| {
            o.status
                .as_ref()
                .and_then(|s| find(&s.conditions, "Ready"))
                .is_some_and(|c| c.reason == "ServiceNotFound")
        },
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("never ServiceNotFound: {e}\nlogs:\n{}", manager.all_logs()));
    api.delete("ghost", &DeleteParams::default())
        .await
        .expect("delete");
    // The manager's watch sees the deletion well within a second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let key = format!("ecs:DescribeServices:{cluster}/ghost");
    let at_delete = emulator_count(&key).await;
    assert!(at_delete > 0, "the service was never looked up");
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after = emulator_count(&key).await - at_delete;
    assert_eq!(
        after,
        0,
        "the deleted ServiceScaling was evaluated {after} more times\nlogs:\n{}",
        manager.all_logs()
    );
    delete_connection(&client, &connection).await;
}
