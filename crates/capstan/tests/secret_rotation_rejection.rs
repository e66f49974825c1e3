//! The definitive-rejection path end to end: a PostgreSQL password policy refuses the
//! generated value, each refusal starts a new attempt with a fresh pending value (a new
//! token), never replaying the refused one, up to `maxAttemptsPerRotation`; then the
//! rotation fails and the previous credential stays current and logs in.
//!
//! The policy is `passwordcheck`, loaded only into the admin role's sessions
//! (`session_preload_libraries`), so nothing else in the shared server sees it. With a
//! SCRAM verifier it can only check that the password is not the role's name, so the
//! role is named like the only value a one-character generator can produce.

mod common;

use common::secret_data as data;

use std::collections::BTreeSet;
use std::time::Duration;

use capstan_core::conditions::find;
use capstan_secret_rotation::crd::{RotationOutcome, SecretRotation};
use capstan_testenv::{TempNamespace, TestEnv, await_condition};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(90);

fn psql(pg: &capstan_testenv::Postgres, url: &str, sql: &str) -> bool {
    common::psql(pg, url, sql).is_ok()
}

async fn patch(api: &Api<SecretRotation>, value: serde_json::Value) {
    api.patch("db", &PatchParams::default(), &Patch::Merge(value))
        .await
        .expect("patch");
}

/// Three attempts, each refused by the policy with its own pending value, then
/// `RotationFailed`; the current credential is untouched and logs in; a usable generator
/// then rotates normally.
#[tokio::test]
async fn a_value_the_policy_refuses_is_never_replayed_and_attempts_are_capped() {
    let env = TestEnv::get();
    let kube = env.kube().await.expect("kube");
    let pg = env.postgres().await.expect("postgres");
    let ns = TempNamespace::create(kube).await.expect("ns");
    let client = kube.client().await;
    let api: Api<SecretRotation> = ns.api(client.clone());
    let secrets: Api<Secret> = ns.api(client.clone());
    let id = ns.name().replace('-', "_");
    let db = format!("db_{id}");
    let admin = format!("adm_{id}");
    let admin_pw = format!("Adm1n-{id}");
    // The only value a 16-character generator of `z` alone can produce.
    let user = "z".repeat(16);
    assert!(psql(pg, &pg.admin_url(), &format!("CREATE DATABASE {db}")));
    assert!(psql(
        pg,
        &pg.admin_url(),
        &format!(
            "DROP ROLE IF EXISTS {user}; CREATE ROLE {user} LOGIN; \
             CREATE ROLE {admin} LOGIN CREATEROLE PASSWORD '{admin_pw}'; \
             ALTER ROLE {admin} SET session_preload_libraries = 'passwordcheck'; \
             GRANT {user} TO {admin} WITH ADMIN OPTION"
        )
    ));
    let s: Secret = serde_json::from_value(json!({
        "metadata": { "name": "pg-admin" },
        "stringData": { "username": admin, "password": admin_pw }
    }))
    .expect("secret");
    secrets
        .create(&PostParams::default(), &s)
        .await
        .expect("admin secret");
    let obj: SecretRotation = serde_json::from_value(json!({
        "apiVersion": "capstan.dev/v1alpha1", "kind": "SecretRotation",
        "metadata": { "name": "db" },
        "spec": {
            "backend": { "kubernetes": { "secretName": "db-store" } },
            "target": { "postgres": {
                "host": "127.0.0.1", "port": pg.port(), "database": db, "sslMode": "disable",
                "username": user, "adminSecretRef": { "name": "pg-admin" } } },
            "strategy": { "singleUser": {} },
            "maxAttemptsPerRotation": 3,
            "schedule": { "interval": "720h" },
            "delivery": { "secret": { "name": "db-app" } }
        }
    }))
    .expect("object");
    api.create(&PostParams::default(), &obj)
        .await
        .expect("create");
    let m = common::start(
        kube,
        "sr-rejection",
        &[
            "--leader-elect=false",
            "--namespaces",
            ns.name(),
            "--own-namespace",
            ns.name(),
            "--controllers",
            "secret-rotation",
        ],
    )
    .await;
    let logs_in = |p: &str| {
        psql(
            pg,
            &format!("postgres://{user}:{p}@127.0.0.1:{}/{db}", pg.port()),
            "select 1",
        )
    };

    // The first rotation, with the default generator, succeeds.
    let o = await_condition(
        &api,
        "db",
        |o: &SecretRotation| o.status.as_ref().is_some_and(|s| s.rotation_count == 1),
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("no first rotation: {e}\n{}", m.all_logs()));
    let v1 = o.status.and_then(|s| s.current_version).expect("version");
    let p1 = data(&secrets, "db-app").await["password"].clone();
    assert!(logs_in(&p1));

    // Only `z`: every value equals the role's name, and passwordcheck refuses it.
    patch(
        &api,
        json!({
            "metadata": {"annotations": {"capstan.dev/rotate-now": "refused"}},
            "spec": {"generator": {
                "length": 16, "lowercase": true, "uppercase": false, "digits": false,
                "symbols": false, "excludeCharacters": "abcdefghijklmnopqrstuvwxy"
            }}
        }),
    )
    .await;
    let o = await_condition(
        &api,
        "db",
        |o: &SecretRotation| {
            o.status.as_ref().is_some_and(|s| {
                s.rotation.is_none()
                    && s.recent_rotations
                        .first()
                        .is_some_and(|r| r.outcome == RotationOutcome::Failed)
            })
        },
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("the refused rotation did not fail: {e}\n{}", m.all_logs()));
    let st = o.status.clone().expect("status");
    let failed = &st.recent_rotations[0];
    assert_eq!(failed.attempts, 3, "capped at maxAttemptsPerRotation");
    assert_eq!(failed.failure_reason.as_deref(), Some("TargetRejected"));
    assert_eq!(st.rotation_count, 1);
    assert_eq!(st.current_version.as_deref(), Some(v1.as_str()));
    let ready = find(&st.conditions, "Ready").expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "RotationFailed")
    );
    // The previous credential stays current, delivered, and logs in; nothing pending.
    assert_eq!(data(&secrets, "db-app").await["password"], p1);
    assert!(logs_in(&p1), "the current credential still logs in");
    assert!(data(&secrets, "db-store-pending").await.is_empty());
    // One refusal per attempt, each with its own pending version: never a replay.
    let rejected: Vec<(u64, String)> = m
        .logs
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "capstan::audit" && v["outcome"] == "rejected")
        .map(|v| {
            (
                v["attempt"].as_u64().unwrap_or_default(),
                v["version"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let attempts: BTreeSet<u64> = rejected.iter().map(|(a, _)| *a).collect();
    let versions: BTreeSet<&String> = rejected.iter().map(|(_, v)| v).collect();
    assert_eq!(
        attempts,
        BTreeSet::from([1, 2, 3]),
        "refusals: {rejected:?}\n{}",
        m.all_logs()
    );
    assert_eq!(
        versions.len(),
        3,
        "a fresh pending value per attempt: {rejected:?}"
    );

    // A usable generator again: the next rotation succeeds.
    patch(
        &api,
        json!({
            "metadata": {"annotations": {"capstan.dev/rotate-now": "fine"}},
            "spec": {"generator": null}
        }),
    )
    .await;
    await_condition(
        &api,
        "db",
        |o: &SecretRotation| o.status.as_ref().is_some_and(|s| s.rotation_count == 2),
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("no rotation after the fix: {e}\n{}", m.all_logs()));
    let p2 = data(&secrets, "db-app").await["password"].clone();
    assert!(logs_in(&p2), "the new credential logs in");
    assert!(!logs_in(&p1), "the old one no longer does (single user)");
    println!(
        "FIGURE rejection: {} refused attempts with {} distinct pending versions, then RotationFailed",
        rejected.len(),
        versions.len()
    );
}
