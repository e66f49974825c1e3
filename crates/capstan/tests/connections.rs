//! Connections decide who may reach what: an object in a namespace that its
//! ClusterConnection does not allow is refused with a condition naming the connection;
//! one in an allowed namespace proceeds; a change to the connection re-runs the
//! objects that name it. The connection controller checks reachability for real (STS
//! GetCallerIdentity against the AWS emulator).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use capstan_core::conditions::find;
use capstan_core::connection::ClusterConnection;
use capstan_secret_rotation::crd::SecretRotation;
use capstan_testenv::{TempNamespace, TestEnv, await_condition};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

fn reason_is(conditions: Option<&Vec<Condition>>, type_: &str, reason: &str) -> bool {
    conditions
        .and_then(|c| find(c, type_))
        .is_some_and(|c| c.reason == reason)
}

#[tokio::test]
async fn a_connection_admits_only_the_namespaces_it_lists() {
    let env = TestEnv::get();
    let kube = env.kube().await.expect("kube");
    let aws = env.aws().await.expect("aws");
    let client = kube.client().await;
    let own = TempNamespace::create(kube)
        .await
        .expect("capstan's namespace");
    let allowed = TempNamespace::create(kube)
        .await
        .expect("allowed namespace");
    let other = TempNamespace::create(kube).await.expect("other namespace");

    // Credentials for the emulator live in Capstan's own namespace.
    let creds: Secret = serde_json::from_value(json!({
        "metadata": { "name": "aws-creds" },
        "stringData": {
            "AWS_ACCESS_KEY_ID": capstan_testenv::TEST_ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": capstan_testenv::TEST_SECRET_ACCESS_KEY
        }
    }))
    .expect("secret");
    own.api::<Secret>(client.clone())
        .create(&PostParams::default(), &creds)
        .await
        .expect("creds");

    let conn_name = format!("aws-{}", allowed.name());
    let conns: Api<ClusterConnection> = Api::all(client.clone());
    let conn: ClusterConnection = serde_json::from_value(json!({
        "apiVersion": "capstan.dev/v1alpha1",
        "kind": "ClusterConnection",
        "metadata": { "name": conn_name },
        "spec": {
            "allowedNamespaces": {
                "names": [allowed.name()],
                "selector": { "matchLabels": { "capstan-test/grant": conn_name } }
            },
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

    let rotation = |ns: &str| -> SecretRotation {
        serde_json::from_value(json!({
            "apiVersion": "capstan.dev/v1alpha1",
            "kind": "SecretRotation",
            "metadata": { "name": "api-key", "namespace": ns },
            "spec": {
                "connectionRef": { "name": conn_name },
                "backend": { "awsSecretsManager": { "secretId": format!("{ns}/api-key") } },
                "target": { "none": {} },
                "schedule": { "interval": "720h" }
            }
        }))
        .expect("rotation")
    };
    let in_allowed: Api<SecretRotation> = allowed.api(client.clone());
    let in_other: Api<SecretRotation> = other.api(client.clone());
    in_allowed
        .create(&PostParams::default(), &rotation(allowed.name()))
        .await
        .expect("create");
    in_other
        .create(&PostParams::default(), &rotation(other.name()))
        .await
        .expect("create");

    let namespaces = format!("{},{}", allowed.name(), other.name());
    let manager = common::start(
        kube.kubeconfig_path(),
        "connections",
        &[
            "--leader-elect=false",
            "--namespaces",
            &namespaces,
            "--own-namespace",
            own.name(),
        ],
    )
    .await;
    let timeout = Duration::from_secs(60);

    // The connection itself: reachable with the credentials from Capstan's namespace.
    let c = await_condition(
        &conns,
        &conn_name,
        |c: &ClusterConnection| {
            reason_is(
                c.status.as_ref().map(|s| &s.conditions),
                "Ready",
                "Reachable",
            )
        },
        timeout,
    )
    .await
    .unwrap_or_else(|e| panic!("connection not Reachable: {e}\n{}", manager.all_logs()));
    let msg = &find(&c.status.as_ref().expect("status").conditions, "Ready")
        .expect("Ready")
        .message;
    assert!(msg.contains(capstan_testenv::TEST_ACCOUNT_ID), "{msg}");

    // Refused in the other namespace, naming the connection.
    let refused = await_condition(
        &in_other,
        "api-key",
        |o: &SecretRotation| {
            reason_is(
                o.status.as_ref().map(|s| &s.conditions),
                "Ready",
                "ConnectionNotAllowed",
            )
        },
        timeout,
    )
    .await
    .unwrap_or_else(|e| panic!("not refused: {e}\n{}", manager.all_logs()));
    let ready = find(
        &refused.status.as_ref().expect("status").conditions,
        "Ready",
    )
    .expect("Ready")
    .clone();
    assert_eq!(ready.status, "False");
    assert!(
        ready.message.contains(&conn_name) && ready.message.contains(other.name()),
        "{}",
        ready.message
    );

    // Proceeds in the allowed namespace: the connection is allowed and the rotation runs
    // through it (Secrets Manager in the emulator, reached with the connection's
    // credentials from Capstan's namespace).
    await_condition(
        &in_allowed,
        "api-key",
        |o: &SecretRotation| {
            let c = o.status.as_ref().map(|s| &s.conditions);
            reason_is(c, "ConnectionReady", "ConnectionAllowed")
                && reason_is(c, "Ready", "CredentialCurrent")
        },
        timeout,
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "allowed object did not proceed: {e}\n{}",
            manager.all_logs()
        )
    });

    // The administrator grants the other namespace by labelling it: the refused object
    // is re-run without being touched itself (the controllers watch namespaces).
    let mut labels = BTreeMap::new();
    labels.insert("capstan-test/grant".to_owned(), conn_name.clone());
    Api::<Namespace>::all(client.clone())
        .patch(
            other.name(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": labels}})),
        )
        .await
        .expect("label namespace");
    await_condition(
        &in_other,
        "api-key",
        |o: &SecretRotation| {
            reason_is(
                o.status.as_ref().map(|s| &s.conditions),
                "ConnectionReady",
                "ConnectionAllowed",
            )
        },
        timeout,
    )
    .await
    .unwrap_or_else(|e| panic!("granted namespace not re-run: {e}\n{}", manager.all_logs()));

    conns
        .delete(&conn_name, &DeleteParams::default())
        .await
        .expect("delete connection");
}
