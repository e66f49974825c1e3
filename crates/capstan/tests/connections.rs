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
    common::aws_creds_secret(&client, own.name()).await;

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
        kube,
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

/// Vault connections are checked for real with each auth method: the token is looked up,
/// an AppRole login is made and its token revoked at once (a check leaves no token
/// behind); a refused token or secret ID gives Ready=False without the secret in it.
#[tokio::test]
async fn vault_connections_are_checked_with_their_auth_method() {
    let env = TestEnv::get();
    let kube = env.kube().await.expect("kube");
    let vault = env.vault().await.expect("vault");
    let client = kube.client().await;
    let own = TempNamespace::create(kube).await.expect("own namespace");
    let n = own.name().to_owned();
    let mount = format!("approle-conn-{n}");
    common::bao(
        vault,
        reqwest::Method::POST,
        &format!("sys/auth/{mount}"),
        json!({"type": "approle"}),
    )
    .await;
    common::bao(
        vault,
        reqwest::Method::POST,
        &format!("auth/{mount}/role/check"),
        json!({"token_ttl": "1h"}),
    )
    .await;
    let role_id = common::bao(
        vault,
        reqwest::Method::GET,
        &format!("auth/{mount}/role/check/role-id"),
        json!(null),
    )
    .await["data"]["role_id"]
        .as_str()
        .expect("role id")
        .to_owned();
    let secret_id = common::bao(
        vault,
        reqwest::Method::POST,
        &format!("auth/{mount}/role/check/secret-id"),
        json!({}),
    )
    .await["data"]["secret_id"]
        .as_str()
        .expect("secret id")
        .to_owned();
    let wrong = "11111111-2222-3333-4444-555555555555";
    let secrets: Api<Secret> = own.api(client.clone());
    for (name, data) in [
        ("token-good", json!({ "token": vault.root_token() })),
        ("token-bad", json!({ "token": wrong })),
        ("approle-good", json!({ "secret_id": secret_id })),
        ("approle-bad", json!({ "secret_id": wrong })),
    ] {
        let s: Secret = serde_json::from_value(json!({
            "metadata": { "name": name }, "stringData": data
        }))
        .expect("secret");
        secrets
            .create(&PostParams::default(), &s)
            .await
            .expect("secret");
    }
    let conns: Api<ClusterConnection> = Api::all(client.clone());
    let cases = [
        (
            "token-good",
            json!({ "token": { "secretRef": { "name": "token-good" } } }),
            true,
        ),
        (
            "token-bad",
            json!({ "token": { "secretRef": { "name": "token-bad" } } }),
            false,
        ),
        (
            "approle-good",
            json!({ "appRole": { "mountPath": mount, "roleId": role_id, "secretIdRef": { "name": "approle-good" } } }),
            true,
        ),
        (
            "approle-bad",
            json!({ "appRole": { "mountPath": mount, "roleId": role_id, "secretIdRef": { "name": "approle-bad" } } }),
            false,
        ),
    ];
    for (name, auth, _) in &cases {
        let conn: ClusterConnection = serde_json::from_value(json!({
            "apiVersion": "capstan.dev/v1alpha1", "kind": "ClusterConnection",
            "metadata": { "name": format!("{name}-{n}") },
            "spec": {
                "allowedNamespaces": { "names": [n] },
                "vault": { "address": vault.addr(), "auth": auth }
            }
        }))
        .expect("connection");
        conns
            .create(&PostParams::default(), &conn)
            .await
            .expect("create");
    }
    let manager = common::start(
        kube,
        "vault-connections",
        &[
            "--leader-elect=false",
            "--namespaces",
            &n,
            "--own-namespace",
            &n,
        ],
    )
    .await;
    for (name, _, ok) in &cases {
        let full = format!("{name}-{n}");
        let c = await_condition(
            &conns,
            &full,
            |c: &ClusterConnection| {
                c.status
                    .as_ref()
                    .and_then(|s| find(&s.conditions, "Ready"))
                    .is_some_and(|r| r.status == if *ok { "True" } else { "False" })
            },
            Duration::from_secs(60),
        )
        .await
        .unwrap_or_else(|e| panic!("{full}: {e}\n{}", manager.all_logs()));
        let text = serde_json::to_string(&c).expect("json");
        assert!(
            !text.contains(wrong) && !text.contains(&secret_id),
            "{text}"
        );
        if *name == "approle-good" {
            assert!(text.contains("AppRole login"), "{text}");
        }
    }
    assert_eq!(
        common::vault_tokens_from(vault, &mount).await,
        0,
        "the AppRole check left its token in Vault"
    );
    let logs = manager.all_logs();
    assert!(
        !logs.contains(wrong) && !logs.contains(&secret_id),
        "a secret in the logs"
    );
    for (name, _, _) in &cases {
        conns
            .delete(&format!("{name}-{n}"), &DeleteParams::default())
            .await
            .expect("delete");
    }
}
