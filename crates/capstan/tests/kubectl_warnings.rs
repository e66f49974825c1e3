//! Why nothing happens, as `kubectl describe` shows it, against the real API server and
//! the manager as a process: refusals, invalid specs, unreachable connections and
//! repeated API errors are Warning Events, once per transition; connection errors keep
//! their cause (connection refused, certificate verify failed).

mod common;

use common::rotation::create;
use common::ux::{await_warning, ready, start, touch, warnings};

use std::time::{Duration, Instant};

use capstan_core::connection::ClusterConnection;
use capstan_pipeline::crd::Pipeline;
use capstan_secret_rotation::crd::SecretRotation;
use capstan_service_scaling::crd::ServiceScaling;
use capstan_testenv::{TempNamespace, TestEnv, await_condition};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);

/// A SecretRotation with an invalid spec, one refused by its connection, a refused
/// ServiceScaling and a refused Pipeline each get exactly one Warning Event with Ready's
/// reason, however often they are reconciled afterwards (no Event storm).
#[tokio::test]
async fn a_persistently_refused_object_publishes_one_warning() {
    let kube = TestEnv::get().kube().await.expect("kube");
    let ns = TempNamespace::create(kube).await.expect("ns");
    let client = kube.client().await;
    let conn = format!("ux-elsewhere-{}", ns.name());
    let conns: Api<ClusterConnection> = Api::all(client.clone());
    create(
        &conns,
        json!({
            "apiVersion": "capstan.dev/v1alpha1", "kind": "ClusterConnection",
            "metadata": { "name": conn },
            "spec": {
                "allowedNamespaces": { "names": ["somewhere-else"] },
                "aws": { "region": "eu-west-1" }
            }
        }),
    )
    .await;
    let rotations: Api<SecretRotation> = ns.api(client.clone());
    let scalings: Api<ServiceScaling> = ns.api(client.clone());
    let pipelines: Api<Pipeline> = ns.api(client.clone());
    create(
        &rotations,
        json!({
            "apiVersion": "capstan.dev/v1alpha1", "kind": "SecretRotation",
            "metadata": { "name": "invalid" },
            "spec": {
                "backend": { "kubernetes": { "secretName": "store" } },
                "target": { "none": {} },
                "schedule": { "interval": "720h" },
                // No host with the none target: only the controller's validation sees it.
                "delivery": { "secret": { "name": "out", "template": { "URL": "{{ host }}" } } }
            }
        }),
    )
    .await;
    create(
        &rotations,
        json!({
            "apiVersion": "capstan.dev/v1alpha1", "kind": "SecretRotation",
            "metadata": { "name": "refused" },
            "spec": {
                "connectionRef": { "name": conn },
                "backend": { "awsSecretsManager": { "secretId": "x" } },
                "target": { "none": {} },
                "schedule": { "interval": "720h" }
            }
        }),
    )
    .await;
    create(
        &scalings,
        json!({
            "apiVersion": "capstan.dev/v1alpha1", "kind": "ServiceScaling",
            "metadata": { "name": "refused" },
            "spec": {
                "connectionRef": { "name": conn },
                "service": { "cluster": "c", "service": "s" },
                "maxReplicas": 2,
                "metrics": [{ "cpuUtilization": { "targetPercent": 50 } }]
            }
        }),
    )
    .await;
    create(
        &pipelines,
        json!({
            "apiVersion": "capstan.dev/v1alpha1", "kind": "Pipeline",
            "metadata": { "name": "refused" },
            "spec": {
                "connectionRef": { "name": conn },
                "revision": "1",
                "stages": [{ "name": "unit", "type": "Test",
                    "job": { "image": "example/test:1", "timeout": "5m" } }]
            }
        }),
    )
    .await;
    let m = start(
        kube,
        ns.name(),
        "ux-events",
        "secret-rotation,service-scaling,pipeline",
    )
    .await;
    let cases = [
        ("SecretRotation", "invalid", "InvalidSpec"),
        ("SecretRotation", "refused", "ConnectionNotAllowed"),
        ("ServiceScaling", "refused", "ConnectionNotAllowed"),
        ("Pipeline", "refused", "ConnectionNotAllowed"),
    ];
    let kinds_of = |e: &Event| e.regarding.as_ref().and_then(|r| r.kind.clone());
    for (kind, name, reason) in cases {
        await_warning(&client, ns.name(), name, reason, &m).await;
        let evs = warnings(&client, ns.name(), name, reason).await;
        assert!(
            evs.iter().any(|e| kinds_of(e).as_deref() == Some(kind)),
            "{kind}/{name}"
        );
    }
    // More reconciles of the same objects (each touch is a watch event), over seconds.
    for n in 0..3 {
        touch(&rotations, "invalid", n).await;
        touch(&rotations, "refused", n).await;
        touch(&scalings, "refused", n).await;
        touch(&pipelines, "refused", n).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reconciles = m.logs.lock().expect("logs").len();
    assert!(reconciles > 0);
    for (kind, name, reason) in cases {
        let evs: Vec<Event> = warnings(&client, ns.name(), name, reason)
            .await
            .into_iter()
            .filter(|e| kinds_of(e).as_deref() == Some(kind))
            .collect();
        assert_eq!(evs.len(), 1, "{kind}/{name}: {evs:?}");
        let note = evs[0].note.clone().unwrap_or_default();
        if reason == "ConnectionNotAllowed" {
            assert!(note.contains(&conn), "{note}");
        } else {
            assert!(note.contains("host"), "{note}");
        }
    }
    conns
        .delete(&conn, &DeleteParams::default())
        .await
        .expect("delete connection");
}

/// A status write the API server keeps refusing (here a ValidatingAdmissionPolicy; in
/// issue 8 it was RBAC) shows as one Warning `ReconcileFailing` naming the refusal, after
/// a few failures in a row, and not once per retry.
#[tokio::test]
async fn repeated_api_errors_publish_one_warning() {
    let kube = TestEnv::get().kube().await.expect("kube");
    let ns = TempNamespace::create(kube).await.expect("ns");
    let client = kube.client().await;
    let policy = format!("ux-deny-status-{}", ns.name());
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    create(
        &policies,
        json!({
            "metadata": { "name": policy },
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": { "resourceRules": [{
                    "apiGroups": ["capstan.dev"], "apiVersions": ["*"],
                    "operations": ["UPDATE"], "resources": ["secretrotations/status"]
                }] },
                "validations": [{
                    "expression": "object.metadata.name != 'doomed'",
                    "message": "status writes of doomed are refused by the test"
                }]
            }
        }),
    )
    .await;
    create(
        &bindings,
        json!({
            "metadata": { "name": policy },
            "spec": {
                "policyName": policy,
                "validationActions": ["Deny"],
                "matchResources": { "namespaceSelector": { "matchLabels": {
                    "kubernetes.io/metadata.name": ns.name() } } }
            }
        }),
    )
    .await;
    let api: Api<SecretRotation> = ns.api(client.clone());
    create(
        &api,
        json!({
            "apiVersion": "capstan.dev/v1alpha1", "kind": "SecretRotation",
            "metadata": { "name": "doomed" },
            "spec": {
                "backend": { "kubernetes": { "secretName": "store" } },
                "target": { "none": {} },
                "schedule": { "interval": "720h" }
            }
        }),
    )
    .await;
    // The policy takes a moment to apply: wait until it refuses the admin too.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let refused = api
            .patch_status(
                "doomed",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"rotationCount": 0}})),
            )
            .await
            .is_err();
        if refused {
            break;
        }
        assert!(Instant::now() < deadline, "the policy never applied");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let m = start(kube, ns.name(), "ux-api-errors", "secret-rotation").await;
    await_warning(&client, ns.name(), "doomed", "ReconcileFailing", &m).await;
    // Backoff 1, 2, 4, 8 s: several more failures within the next seconds.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let failures = m
        .logs
        .lock()
        .expect("logs")
        .iter()
        .filter(|l| l.contains("reconcile failed"))
        .count();
    assert!(failures >= 4, "only {failures} failures\n{}", m.all_logs());
    let evs = warnings(&client, ns.name(), "doomed", "ReconcileFailing").await;
    assert_eq!(evs.len(), 1, "{evs:?}");
    let note = evs[0].note.clone().unwrap_or_default();
    assert!(note.contains("refused by the test"), "{note}");
    let _ = bindings.delete(&policy, &DeleteParams::default()).await;
    let _ = policies.delete(&policy, &DeleteParams::default()).await;
}

/// A Vault connection to a closed port says "connection refused", one to a TLS server
/// with a certificate Capstan does not trust says so (not reqwest's bare "error sending
/// request"), and an AWS connection to a closed port says "connection refused"; each is
/// one Warning Event on the ClusterConnection.
#[tokio::test]
async fn connection_errors_keep_their_cause() {
    let kube = TestEnv::get().kube().await.expect("kube");
    let own = TempNamespace::create(kube).await.expect("ns");
    let client = kube.client().await;
    common::aws_creds_secret(&client, own.name()).await;
    let secrets: Api<Secret> = own.api(client.clone());
    create(
        &secrets,
        json!({ "metadata": { "name": "vault-token" }, "stringData": { "token": "t" } }),
    )
    .await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let conns: Api<ClusterConnection> = Api::all(client.clone());
    let name = |s: &str| format!("ux-{s}-{}", own.name());
    let vault = |address: String| json!({ "address": address, "auth": { "token": { "secretRef": { "name": "vault-token" } } } });
    let specs = [
        (
            name("vault-closed"),
            json!({ "vault": vault(format!("http://127.0.0.1:{closed}")) }),
        ),
        // The test API server speaks TLS with a certificate from its own CA.
        (
            name("vault-tls"),
            json!({ "vault": vault(kube.api_server_url().to_owned()) }),
        ),
        (
            name("aws-closed"),
            json!({ "aws": {
                "region": "eu-west-1",
                "endpointUrl": format!("http://127.0.0.1:{closed}"),
                "credentialsSecretRef": { "name": "aws-creds" }
            } }),
        ),
    ];
    for (n, spec) in &specs {
        let mut spec = spec.clone();
        spec["allowedNamespaces"] = json!({ "names": [own.name()] });
        create(
            &conns,
            json!({
                "apiVersion": "capstan.dev/v1alpha1", "kind": "ClusterConnection",
                "metadata": { "name": n }, "spec": spec
            }),
        )
        .await;
    }
    let m = start(kube, own.name(), "ux-connections", "connection").await;
    let expect = [
        (name("vault-closed"), "connection refused"),
        (name("vault-tls"), "certificate"),
        (name("aws-closed"), "connection refused"),
    ];
    for (n, want) in &expect {
        let o = await_condition(
            &conns,
            n,
            |c: &ClusterConnection| {
                ready(c.status.as_ref().map(|s| &s.conditions))
                    .is_some_and(|(s, _, _)| s == "False")
            },
            TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| panic!("{n}: {e}\n{}", m.all_logs()));
        let (_, reason, message) = ready(o.status.as_ref().map(|s| &s.conditions)).expect("Ready");
        assert!(
            message.to_lowercase().contains(want),
            "{n}: want {want:?} in {message:?}"
        );
        assert_eq!(
            await_warning(&client, "default", n, &reason, &m).await,
            1,
            "{n}"
        );
    }
    for (n, _) in &specs {
        let _ = conns.delete(n, &DeleteParams::default()).await;
    }
}
