//! ServiceScaling's evaluation loop is fair between connections: `capstan run` as a real
//! process against the real API server and the moto AWS emulator, with two AWS
//! ClusterConnections to the same emulator, one of them through a local proxy that holds
//! every request for 5 s (an AWS account whose API is slow, or a congested VPC
//! endpoint). Each connection's batch runs on its own, so the slow one delays only
//! itself: the other connection's service keeps being evaluated at its interval.
//!
//! Measured through the emulator's own request count
//! (`tests/env/moto_ext/request_counter.py`), polled every 50 ms: the gaps between two
//! DescribeServices calls for the fast connection's service stay within its 1 s interval
//! plus 1 s. A loop that waited for every connection together would leave gaps of 5 s.

#![allow(clippy::unwrap_used)]

mod common;

use common::scaling::{emulator_count, floor_scaling as scaling};

use std::time::{Duration, Instant};

use capstan_aws::ecs::sdk as ecs;
use capstan_core::conditions::find;
use capstan_core::connection::ClusterConnection;
use capstan_service_scaling::crd::ServiceScaling;
use capstan_testenv::{TempNamespace, TestEnv, await_condition};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TIMEOUT: Duration = Duration::from_secs(30);
/// How long the slow proxy holds each request.
const SLOW: Duration = Duration::from_secs(5);
/// The objects' evaluation interval.
const INTERVAL: Duration = Duration::from_secs(1);

/// A TCP proxy on 127.0.0.1 to `upstream` (`host:port`) that holds every chunk the
/// client sends for `delay` before passing it on: each request takes `delay` longer.
/// Answers flow back at once. Returns the proxy's URL.
async fn slow_proxy(upstream: String, delay: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("proxy address");
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let requests = async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match client_read.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        tokio::time::sleep(delay).await;
                        if server_write.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                let answers = async move {
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                };
                tokio::join!(requests, answers);
            });
        }
    });
    format!("http://{addr}")
}

/// An AWS ClusterConnection `name` to `endpoint` for namespace `ns`, with the
/// emulator's credentials (Secret `aws-creds` in `own`).
async fn connection(
    client: &kube::Client,
    aws: &capstan_testenv::Aws,
    name: &str,
    endpoint: &str,
    ns: &str,
) {
    let conn: ClusterConnection = serde_json::from_value(json!({
        "apiVersion": "capstan.dev/v1alpha1", "kind": "ClusterConnection",
        "metadata": { "name": name },
        "spec": {
            "allowedNamespaces": { "names": [ns] },
            "aws": {
                "region": aws.region(),
                "endpointUrl": endpoint,
                "credentialsSecretRef": { "name": "aws-creds" }
            }
        }
    }))
    .expect("connection");
    Api::<ClusterConnection>::all(client.clone())
        .create(&PostParams::default(), &conn)
        .await
        .expect("create connection");
}

/// Polls `key`'s count every 50 ms for `window` and returns the longest time between
/// two increments (and how many increments there were).
async fn longest_gap(key: &str, window: Duration) -> (Duration, u64) {
    let start = Instant::now();
    let mut last_count = emulator_count(key).await;
    let mut last_seen = Instant::now();
    let mut longest = Duration::ZERO;
    let mut increments = 0;
    while start.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let count = emulator_count(key).await;
        if count > last_count {
            longest = longest.max(last_seen.elapsed());
            increments += count - last_count;
            last_count = count;
            last_seen = Instant::now();
        }
    }
    (longest.max(last_seen.elapsed()), increments)
}

/// A connection whose every AWS call takes 5 s delays no other connection's
/// evaluation by more than 1 s.
#[tokio::test]
async fn a_slow_connection_delays_no_other_connection() {
    let env = TestEnv::get();
    let kube = env.kube().await.expect("kube");
    let aws = env.aws().await.expect("aws");
    let client = kube.client().await;
    let own = TempNamespace::create(kube).await.expect("own namespace");
    let ns = TempNamespace::create(kube).await.expect("namespace");
    common::aws_creds_secret(&client, own.name()).await;
    let endpoint = aws.endpoint_url().to_owned();
    let upstream = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let proxy = slow_proxy(upstream, SLOW).await;
    let (fast, slow) = (format!("fast-{}", ns.name()), format!("slow-{}", ns.name()));
    connection(&client, aws, &fast, &endpoint, ns.name()).await;
    connection(&client, aws, &slow, &proxy, ns.name()).await;

    // Two services in two clusters, so the emulator counts each one's lookups apart.
    let ecs = ecs::Client::new(&aws.sdk_config().await);
    let (fast_cluster, slow_cluster) =
        (format!("{}-fast", ns.name()), format!("{}-slow", ns.name()));
    for cluster in [&fast_cluster, &slow_cluster] {
        ecs.create_cluster()
            .cluster_name(cluster.as_str())
            .send()
            .await
            .expect("create cluster");
        ecs.create_service()
            .cluster(cluster.as_str())
            .service_name("web")
            .desired_count(2)
            .send()
            .await
            .expect("create service");
    }

    let manager = common::start(
        kube,
        "fairness",
        &[
            "--leader-elect=false",
            "--controllers",
            "service-scaling",
            "--namespaces",
            ns.name(),
            "--own-namespace",
            own.name(),
        ],
    )
    .await;
    let api = Api::<ServiceScaling>::namespaced(client.clone(), ns.name());
    for (name, conn, cluster) in [
        ("fast", &fast, &fast_cluster),
        ("slow", &slow, &slow_cluster),
    ] {
        api.patch(
            name,
            &PatchParams::apply("service-scaling-fairness-test").force(),
            &Patch::Apply(scaling(ns.name(), name, conn, cluster, "web")),
        )
        .await
        .expect("apply ServiceScaling");
    }
    // Both are evaluated: the slow one's first answer takes a few proxy delays.
    for name in ["fast", "slow"] {
        await_condition(
            &api,
            name,
            |o: &ServiceScaling| {
                o.status
                    .as_ref()
                    .and_then(|s| find(&s.conditions, "Ready"))
                    .is_some()
            },
            TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| panic!("{name} never evaluated: {e}\nlogs:\n{}", manager.all_logs()));
    }
    let slow_key = format!("ecs:DescribeServices:{slow_cluster}/web");
    let slow_before = emulator_count(&slow_key).await;

    // While the slow connection's calls keep taking 5 s each, the fast one's service is
    // looked up at its interval.
    let fast_key = format!("ecs:DescribeServices:{fast_cluster}/web");
    let (gap, lookups) = longest_gap(&fast_key, Duration::from_secs(12)).await;
    let slow_lookups = emulator_count(&slow_key).await - slow_before;
    eprintln!(
        "fast connection: {lookups} lookups in 12 s, longest gap {gap:?}; slow connection: {slow_lookups} lookups"
    );
    assert!(
        slow_lookups >= 1,
        "the slow connection was not evaluated during the window, so it held nothing up\nlogs:\n{}",
        manager.all_logs()
    );
    assert!(
        gap <= INTERVAL + Duration::from_secs(1),
        "the fast connection's evaluations were {gap:?} apart (interval {INTERVAL:?})\nlogs:\n{}",
        manager.all_logs()
    );
    drop(manager);
    for name in [&fast, &slow] {
        let _ = Api::<ClusterConnection>::all(client.clone())
            .delete(name, &DeleteParams::default())
            .await;
    }
}
