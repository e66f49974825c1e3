//! SecretRotation delivery to ECS services against moto (with
//! `tests/env/moto_ext/ecs_service_tasks.py`: a forced deployment stays IN_PROGRESS for
//! the service's `capstan.dev/moto-task-start-seconds`, then COMPLETED). Kubernetes
//! backend, no target, ECS through `delivery.ecsConnectionRef`.
//!
//! A background poller records every PRIMARY deployment id the service shows (every
//! 100 ms; each deployment stays PRIMARY for at least its start time), so a second forced
//! deployment for one rotation cannot hide.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capstan_aws::ecs::sdk as ecs;
use capstan_core::conditions::find;
use capstan_core::connection::ClusterConnection;
use capstan_secret_rotation::crd::{RotationStep, SecretRotation};
use capstan_testenv::{TempNamespace, TestEnv, await_condition};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);
/// How long a forced deployment of the test service stays IN_PROGRESS in moto.
const START_SECONDS: u64 = 4;

fn count(o: &SecretRotation) -> i64 {
    o.status.as_ref().map_or(0, |s| s.rotation_count)
}

fn delivered(o: &SecretRotation) -> Option<(String, String)> {
    let c = find(&o.status.as_ref()?.conditions, "Delivered")?;
    Some((c.status.clone(), c.reason.clone()))
}

fn in_deliver(o: &SecretRotation) -> bool {
    o.status
        .as_ref()
        .and_then(|s| s.rotation.as_ref())
        .is_some_and(|r| r.step == RotationStep::Deliver)
}

async fn primary(client: &ecs::Client, cluster: &str, service: &str) -> Option<(String, String)> {
    let out = client
        .describe_services()
        .cluster(cluster)
        .services(service)
        .send()
        .await
        .ok()?;
    let s = out.services().first()?;
    let d = s
        .deployments()
        .iter()
        .find(|d| d.status() == Some("PRIMARY"))?;
    Some((
        d.id().unwrap_or_default().to_owned(),
        d.rollout_state()
            .map(|r| r.as_str().to_owned())
            .unwrap_or_default(),
    ))
}

/// One forced deployment per rotation, none when Capstan restarts in the middle of the
/// delivery, and the rotation counts as delivered only once the deployment completed;
/// the next rotation waits for it.
#[tokio::test]
async fn each_rotation_forces_one_ecs_deployment_and_is_delivered_when_it_completes() {
    let env = TestEnv::get();
    let kube = env.kube().await.expect("kube");
    let aws = env.aws().await.expect("aws");
    let client = kube.client().await;
    let own = TempNamespace::create(kube).await.expect("own namespace");
    let ns = TempNamespace::create(kube).await.expect("namespace");
    let api: Api<SecretRotation> = ns.api(client.clone());
    let connection = format!("aws-{}", ns.name());
    common::aws_connection(&client, aws, own.name(), &connection, &[ns.name()]).await;
    let config = aws.sdk_config().await;
    let ecs = ecs::Client::new(&config);
    let cluster = ns.name().to_owned();
    let service = "orders";
    ecs.create_cluster()
        .cluster_name(&cluster)
        .send()
        .await
        .expect("create cluster");
    ecs.create_service()
        .cluster(&cluster)
        .service_name(service)
        .desired_count(2)
        .tags(
            ecs::types::Tag::builder()
                .key("capstan.dev/moto-task-start-seconds")
                .value(START_SECONDS.to_string())
                .build(),
        )
        .send()
        .await
        .expect("create service");
    // Let the creation's own deployment complete.
    tokio::time::sleep(Duration::from_secs(START_SECONDS + 1)).await;
    let (initial, state) = primary(&ecs, &cluster, service).await.expect("primary");
    assert_eq!(state, "COMPLETED");

    let seen: Arc<Mutex<BTreeSet<String>>> = Arc::new(Mutex::new(BTreeSet::new()));
    let poller = {
        let (ecs, cluster, seen) = (ecs.clone(), cluster.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                if let Some((id, _)) = primary(&ecs, &cluster, service).await {
                    seen.lock().unwrap().insert(id);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let forced = || {
        let s = seen.lock().unwrap();
        s.iter().filter(|id| **id != initial).count()
    };

    let obj: SecretRotation = serde_json::from_value(json!({
        "apiVersion": "capstan.dev/v1alpha1", "kind": "SecretRotation",
        "metadata": { "name": "api-key" },
        "spec": {
            "backend": { "kubernetes": { "secretName": "api-key-store" } },
            "target": { "none": {} },
            "strategy": { "singleUser": { "acceptLoginFailuresUntilRestart": true } },
            "schedule": { "interval": "720h" },
            "delivery": {
                "secret": { "name": "api-key" },
                "ecsConnectionRef": { "name": connection },
                "ecsServices": [ { "cluster": cluster, "service": service } ]
            }
        }
    }))
    .expect("object");
    api.create(&PostParams::default(), &obj)
        .await
        .expect("create");
    let args = [
        "--leader-elect=false",
        "--controllers",
        "secret-rotation",
        "--namespaces",
        ns.name(),
        "--own-namespace",
        own.name(),
    ];
    let m = common::start(kube, "sr-ecs-1", &args).await;

    // Rotation 1: the deployment is forced, and the rotation waits in Deliver while it
    // is IN_PROGRESS.
    let o = await_condition(&api, "api-key", in_deliver, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("no Deliver step: {e}\n{}", m.all_logs()));
    assert_eq!(
        delivered(&o),
        Some(("False".into(), "DeliveryInProgress".into()))
    );
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while forced() < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no forced deployment\n{}",
            m.all_logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, state) = primary(&ecs, &cluster, service).await.expect("primary");
    assert_eq!(state, "IN_PROGRESS");
    // A restart in the middle of the delivery forces nothing again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count(&api.get("api-key").await.expect("get")), 0);
    drop(m);
    let m = common::start(kube, "sr-ecs-2", &args).await;
    let o = await_condition(&api, "api-key", |o| count(o) >= 1, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("rotation 1 not delivered: {e}\n{}", m.all_logs()));
    assert_eq!(forced(), 1, "one forced deployment for rotation 1");
    let (_, state) = primary(&ecs, &cluster, service).await.expect("primary");
    assert_eq!(state, "COMPLETED", "delivered only after completion");
    assert_eq!(delivered(&o), Some(("True".into(), "Delivered".into())));
    let version1 = o.status.as_ref().and_then(|s| s.current_version.clone());

    // Rotation 2: one more.
    api.patch(
        "api-key",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"capstan.dev/rotate-now": "t2"}}})),
    )
    .await
    .expect("annotate");
    await_condition(&api, "api-key", in_deliver, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("no second Deliver: {e}\n{}", m.all_logs()));
    let o = await_condition(&api, "api-key", |o| count(o) >= 2, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("rotation 2 not delivered: {e}\n{}", m.all_logs()));
    assert_ne!(
        o.status.as_ref().and_then(|s| s.current_version.clone()),
        version1
    );
    let (_, state) = primary(&ecs, &cluster, service).await.expect("primary");
    assert_eq!(state, "COMPLETED");
    // Nothing more happens between rotations.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(forced(), 2, "one forced deployment per rotation");
    assert_eq!(count(&api.get("api-key").await.expect("get")), 2);
    poller.abort();
    println!(
        "FIGURE ecs delivery: 2 rotations, {} forced deployments, 1 restart",
        forced()
    );
}

/// A separate ECS connection that does not allow the namespace refuses the object
/// (Ready=False, nothing rotated); allowing it re-runs the object without any change to
/// the object itself (the ECS connection is watched too), and the rotation delivers.
#[tokio::test]
async fn a_refused_ecs_connection_blocks_until_the_connection_allows_the_namespace() {
    let env = TestEnv::get();
    let kube = env.kube().await.expect("kube");
    let aws = env.aws().await.expect("aws");
    let client = kube.client().await;
    let own = TempNamespace::create(kube).await.expect("own namespace");
    let ns = TempNamespace::create(kube).await.expect("namespace");
    let api: Api<SecretRotation> = ns.api(client.clone());
    common::aws_creds_secret(&client, own.name()).await;
    let connection = format!("aws-{}", ns.name());
    let conns: Api<ClusterConnection> = Api::all(client.clone());
    let conn: ClusterConnection = serde_json::from_value(json!({
        "apiVersion": "capstan.dev/v1alpha1", "kind": "ClusterConnection",
        "metadata": { "name": connection },
        "spec": {
            "allowedNamespaces": { "names": ["somewhere-else"] },
            "aws": {
                "region": aws.region(),
                "endpointUrl": aws.endpoint_url(),
                "credentialsSecretRef": { "name": "aws-creds" }
            }
        }
    }))
    .expect("connection");
    conns
        .create(&PostParams::default(), &conn)
        .await
        .expect("create connection");
    let config = aws.sdk_config().await;
    let ecs = ecs::Client::new(&config);
    let cluster = ns.name().to_owned();
    ecs.create_cluster()
        .cluster_name(&cluster)
        .send()
        .await
        .expect("create cluster");
    ecs.create_service()
        .cluster(&cluster)
        .service_name("web")
        .desired_count(1)
        .send()
        .await
        .expect("create service");
    let obj: SecretRotation = serde_json::from_value(json!({
        "apiVersion": "capstan.dev/v1alpha1", "kind": "SecretRotation",
        "metadata": { "name": "api-key" },
        "spec": {
            "backend": { "kubernetes": { "secretName": "api-key-store" } },
            "target": { "none": {} },
            "strategy": { "singleUser": { "acceptLoginFailuresUntilRestart": true } },
            "schedule": { "interval": "720h" },
            "delivery": {
                "secret": { "name": "api-key" },
                "ecsConnectionRef": { "name": connection },
                "ecsServices": [ { "cluster": cluster, "service": "web" } ]
            }
        }
    }))
    .expect("object");
    api.create(&PostParams::default(), &obj)
        .await
        .expect("create");
    let m = common::start(
        kube,
        "sr-ecs-refused",
        &[
            "--leader-elect=false",
            "--controllers",
            "secret-rotation",
            "--namespaces",
            ns.name(),
            "--own-namespace",
            own.name(),
        ],
    )
    .await;
    let ready_false = |o: &SecretRotation| {
        o.status
            .as_ref()
            .and_then(|s| find(&s.conditions, "Ready"))
            .is_some_and(|c| c.status == "False")
    };
    await_condition(&api, "api-key", ready_false, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("not refused: {e}\n{}", m.all_logs()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let o = api.get("api-key").await.expect("get");
    assert_eq!(count(&o), 0, "nothing rotated while refused");
    assert!(o.status.as_ref().is_some_and(|s| s.rotation.is_none()));

    conns
        .patch(
            &connection,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"allowedNamespaces": {"names": [ns.name()]}}})),
        )
        .await
        .expect("allow");
    let o = await_condition(&api, "api-key", |o| count(o) >= 1, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("not rotated once allowed: {e}\n{}", m.all_logs()));
    assert_eq!(delivered(&o), Some(("True".into(), "Delivered".into())));
}
