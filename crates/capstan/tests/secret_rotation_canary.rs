//! Leak canary: the manager runs as a real process with a recognisable marker at the
//! start of every generated value (`CAPSTAN_TEST_VALUE_MARKER`), at log level `debug`
//! for every crate, against the real API server, PostgreSQL (statement logging on),
//! OpenBao and MariaDB. After rotations that succeed (single user, alternating users,
//! Kubernetes and Vault backends) and rotations that fail (a missing admin Secret, a
//! missing database role, a value the database's password policy rejects), the marker
//! (and its base64 form) must be nowhere in Capstan's stderr, the namespace's Events
//! (`events.k8s.io/v1` and core v1), the SecretRotations, `/metrics`, or the PostgreSQL
//! and MariaDB server logs; and it must be in the stored and delivered values, so the
//! test can fail.

mod common;

use common::rotation::{create_rotation as create, rotate_now};
use common::secret_data as data;

/// Runs `sql` as the admin; panics with psql's error.
fn psql(pg: &capstan_testenv::Postgres, sql: &str) {
    if let Err(e) = common::psql(pg, &pg.admin_url(), sql) {
        panic!("{sql}: {e}");
    }
}

/// Waits for `n` rotations of `name` (this file's longer timeout).
async fn await_rotations(api: &Api<SecretRotation>, name: &str, n: i64, m: &common::Manager) {
    common::rotation::await_rotations_within(api, name, n, m, TIMEOUT).await;
}

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use capstan_core::conditions::find;
use capstan_secret_rotation::crd::SecretRotation;
use capstan_testenv::{TempNamespace, TestEnv, await_condition};
use k8s_openapi::api::core::v1::{Event as CoreEvent, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, PostParams};
use mysql_async::prelude::Queryable;
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(90);

/// 15 characters (a multiple of 3, so its base64 form is a prefix of the base64 form of
/// every value), unique per run.
fn marker() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let m = format!(
        "CNRY{:011}",
        (nanos ^ u128::from(std::process::id())) % 100_000_000_000
    );
    assert_eq!(m.len(), 15);
    m
}

async fn secret(api: &Api<Secret>, name: &str, data: Value) {
    let s: Secret = serde_json::from_value(json!({
        "metadata": { "name": name }, "stringData": data
    }))
    .expect("secret");
    api.create(&PostParams::default(), &s)
        .await
        .expect("create secret");
}

fn ready(o: &SecretRotation) -> Option<(String, String)> {
    let c = find(&o.status.as_ref()?.conditions, "Ready")?;
    Some((c.status.clone(), c.reason.clone()))
}

/// Waits for Ready=False with one of `reasons`; returns the reason.
async fn await_ready_false(
    api: &Api<SecretRotation>,
    name: &str,
    reasons: &[&str],
    m: &common::Manager,
) -> String {
    let o = await_condition(
        api,
        name,
        |o: &SecretRotation| {
            ready(o).is_some_and(|(s, r)| s == "False" && reasons.contains(&r.as_str()))
        },
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("{name}: not Ready=False {reasons:?}: {e}\n{}", m.all_logs()));
    ready(&o).map(|(_, r)| r).unwrap_or_default()
}

/// Waits until `status.lastFailure` names `reason` (a failed attempt was recorded).
async fn await_failure(api: &Api<SecretRotation>, name: &str, reason: &str, m: &common::Manager) {
    await_condition(
        api,
        name,
        |o: &SecretRotation| {
            o.status
                .as_ref()
                .and_then(|s| s.last_failure.as_ref())
                .is_some_and(|f| f.reason() == reason)
        },
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("{name}: no {reason} failure: {e}\n{}", m.all_logs()));
}

/// Where each needle occurs in `haystack`, as short excerpts (for the failure message).
fn hits(haystack: &str, needles: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for n in needles {
        for (i, _) in haystack.match_indices(n) {
            let (a, b) = (
                i.saturating_sub(200),
                (i + n.len() + 200).min(haystack.len()),
            );
            let (a, b) = (
                (0..=a)
                    .rev()
                    .find(|&k| haystack.is_char_boundary(k))
                    .unwrap_or(0),
                (b..=haystack.len())
                    .find(|&k| haystack.is_char_boundary(k))
                    .unwrap_or(haystack.len()),
            );
            out.push(haystack[a..b].to_owned());
        }
    }
    out
}

/// Generated values never reach logs, Events, status, metrics or database server logs,
/// on success paths (single user, alternating users, Kubernetes and Vault backends) and
/// on error paths (missing admin Secret, missing role, a value the policy rejects); and
/// they do reach the backends and the delivered Secrets (the marker is in play).
#[tokio::test]
async fn generated_values_never_reach_logs_events_status_metrics_or_database_logs() {
    let env = TestEnv::get();
    let kube = env.kube().await.expect("kube");
    let pg = env.postgres().await.expect("postgres");
    let vault = env.vault().await.expect("vault");
    let maria = env.mariadb().await.expect("mariadb");
    pg.enable_statement_logging()
        .await
        .expect("statement logging");
    let ns = TempNamespace::create(kube).await.expect("ns");
    let nsn = ns.name().to_owned();
    let client = kube.client().await;
    let api: Api<SecretRotation> = ns.api(client.clone());
    let secrets: Api<Secret> = ns.api(client.clone());
    let marker = marker();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&marker);
    let needles = [marker.as_str(), b64.as_str()];

    // PostgreSQL: one database, three roles; MariaDB: one user under a password policy
    // that refuses values without symbols.
    let id = nsn.replace('-', "_");
    let db = format!("db_{id}");
    let (single, alt, vlt, absent) = (
        format!("single_{id}"),
        format!("alt_{id}"),
        format!("vlt_{id}"),
        format!("absent_{id}"),
    );
    psql(pg, &format!("CREATE DATABASE {db}"));
    for r in [&single, &alt, &vlt] {
        psql(
            pg,
            &format!("CREATE ROLE {r} LOGIN PASSWORD 'initial-{id}'"),
        );
    }
    secret(
        &secrets,
        "pg-admin",
        json!({ "username": pg.admin_user(), "password": pg.admin_password() }),
    )
    .await;
    secret(
        &secrets,
        "my-admin",
        json!({ "username": maria.admin_user(), "password": maria.admin_password() }),
    )
    .await;
    let rejected_user = format!("rej_{}", &id[id.len().saturating_sub(12)..]);
    let my_opts = mysql_async::OptsBuilder::from_opts(
        mysql_async::Opts::from_url(&maria.admin_url()).expect("url"),
    )
    .prefer_socket(false);
    let mut my = mysql_async::Conn::new(my_opts)
        .await
        .expect("mariadb admin");
    my.query_drop(format!(
        "CREATE USER '{rejected_user}'@'%' IDENTIFIED BY 'Initial-1-{id}'"
    ))
    .await
    .expect("create user");
    // This test binary has its own MariaDB: the policy affects no other test.
    my.query_drop("INSTALL SONAME 'simple_password_check'")
        .await
        .expect("install simple_password_check");

    let conn = format!("vault-{nsn}");
    secret(
        &secrets,
        &format!("{conn}-creds"),
        json!({ "token": vault.root_token() }),
    )
    .await;
    let cc: capstan_core::connection::ClusterConnection = serde_json::from_value(json!({
        "apiVersion": "capstan.dev/v1alpha1", "kind": "ClusterConnection",
        "metadata": { "name": conn },
        "spec": {
            "vault": { "address": vault.addr(),
                       "auth": { "token": { "secretRef": { "name": format!("{conn}-creds") } } } },
            "allowedNamespaces": { "names": [nsn] }
        }
    }))
    .expect("connection");
    Api::<capstan_core::connection::ClusterConnection>::all(client.clone())
        .create(&PostParams::default(), &cc)
        .await
        .expect("create connection");

    let pg_target = |user: &str, admin: &str| {
        json!({ "postgres": {
            "host": "127.0.0.1", "port": pg.port(), "database": db, "sslMode": "disable",
            "username": user, "adminSecretRef": { "name": admin } } })
    };
    let k8s = |store: &str| json!({ "kubernetes": { "secretName": store } });
    create(
        &api,
        "single",
        json!({
            "backend": k8s("single-store"), "target": pg_target(&single, "pg-admin"),
            "strategy": { "singleUser": {} }, "schedule": { "interval": "720h" },
            "delivery": { "secret": { "name": "single-app",
                "template": { "DATABASE_URL": "postgres://{{ username }}:{{ password | urlencode }}@{{ host }}/{{ database }}" } } }
        }),
    )
    .await;
    create(
        &api,
        "alt",
        json!({
            "backend": k8s("alt-store"), "target": pg_target(&alt, "pg-admin"),
            "strategy": { "alternatingUsers": {} }, "schedule": { "interval": "720h" },
            "delivery": { "secret": { "name": "alt-app" } }
        }),
    )
    .await;
    create(
        &api,
        "vault",
        json!({
            "connectionRef": { "name": conn },
            "backend": { "vault": { "mount": "secret", "path": format!("{nsn}/db") } },
            "target": pg_target(&vlt, "pg-admin"),
            "strategy": { "singleUser": {} }, "schedule": { "interval": "720h" },
            "delivery": { "secret": { "name": "vault-app" } }
        }),
    )
    .await;
    create(
        &api,
        "token",
        json!({
            "backend": k8s("token-store"), "target": { "none": {} },
            "schedule": { "interval": "720h" },
            "delivery": { "secret": { "name": "token-app", "template": { "TOKEN": "{{ value }}" } } }
        }),
    )
    .await;
    create(
        &api,
        "missing-admin",
        json!({
            "backend": k8s("missing-admin-store"), "target": pg_target(&single, "absent-admin"),
            "schedule": { "interval": "720h" }
        }),
    )
    .await;
    create(
        &api,
        "missing-role",
        json!({
            "backend": k8s("missing-role-store"), "target": pg_target(&absent, "pg-admin"),
            "schedule": { "interval": "720h" }, "maxAttemptsPerRotation": 2
        }),
    )
    .await;
    create(
        &api,
        "rejected",
        json!({
            "backend": k8s("rejected-store"),
            "target": { "mysql": {
                "host": "127.0.0.1", "port": maria.port(), "sslMode": "disabled",
                "username": rejected_user, "adminSecretRef": { "name": "my-admin" } } },
            "generator": { "symbols": false },
            "schedule": { "interval": "720h" }, "maxAttemptsPerRotation": 2
        }),
    )
    .await;

    let args = [
        "--leader-elect=false",
        "--namespaces",
        &nsn,
        "--own-namespace",
        &nsn,
        "--controllers",
        "secret-rotation",
    ];
    let m = common::start_with_level(
        kube,
        "sr-canary",
        "debug",
        &args,
        &[("CAPSTAN_TEST_VALUE_MARKER", marker.as_str())],
    )
    .await;

    for name in ["single", "alt", "vault", "token"] {
        await_rotations(&api, name, 1, &m).await;
    }
    for n in 2..=3 {
        for name in ["single", "alt", "vault", "token"] {
            rotate_now(&api, name, &format!("t{n}")).await;
        }
        for name in ["single", "alt", "vault", "token"] {
            await_rotations(&api, name, n, &m).await;
        }
    }
    await_ready_false(&api, "missing-admin", &["AdminSecretUnavailable"], &m).await;
    await_failure(&api, "missing-role", "TargetUserNotFound", &m).await;
    await_failure(&api, "rejected", "TargetRejected", &m).await;
    // Let Events be written and the log flushed.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The marker is in play: every stored and delivered value carries it.
    let starts = |v: &str, what: &str| {
        assert!(
            v.starts_with(&marker),
            "{what} does not start with the marker"
        );
    };
    for store in ["single-store", "alt-store", "token-store"] {
        starts(&data(&secrets, store).await["password"], store);
    }
    starts(&data(&secrets, "alt-app").await["password"], "alt-app");
    assert!(
        data(&secrets, "single-app").await["DATABASE_URL"].contains(&marker),
        "templated DATABASE_URL"
    );
    starts(&data(&secrets, "token-app").await["TOKEN"], "token-app");
    starts(&data(&secrets, "vault-app").await["password"], "vault-app");
    let kv: Value = reqwest::Client::new()
        .get(format!("{}/v1/secret/data/{nsn}/db", vault.addr()))
        .header("X-Vault-Token", vault.root_token())
        .send()
        .await
        .expect("vault read")
        .json()
        .await
        .expect("json");
    starts(
        kv["data"]["data"]["password"].as_str().unwrap_or_default(),
        "vault KV",
    );
    // The failing rotation generated a value too (pending, retried, never promoted; a
    // rejected one's pending Secret is emptied when the attempt is discarded).
    let pending = "missing-role-store-pending";
    let v = secrets
        .get(pending)
        .await
        .expect("get")
        .data
        .unwrap_or_default();
    assert!(
        v.values()
            .any(|b| String::from_utf8_lossy(&b.0).starts_with(&marker)),
        "{pending} holds no marked value: {:?}",
        v.keys().collect::<Vec<_>>()
    );
    // The raw Secret object as the API serves it carries the base64 form.
    let raw =
        serde_json::to_string(&secrets.get("single-store").await.expect("get")).expect("json");
    assert!(
        raw.contains(&b64),
        "base64 form of the marker not in the Secret"
    );

    // Nowhere else.
    let logs = m.all_logs();
    assert!(
        logs.lines().count() > 100 && logs.contains("\"level\":\"DEBUG\""),
        "the log is not at debug level: {} lines",
        logs.lines().count()
    );
    let leaked = hits(&logs, &needles);
    assert!(leaked.is_empty(), "marker in Capstan's log:\n{leaked:#?}");

    let events: Api<Event> = ns.api(client.clone());
    let ev = serde_json::to_string(&events.list(&ListParams::default()).await.expect("events"))
        .expect("json");
    let core: Api<CoreEvent> = ns.api(client.clone());
    let cev = serde_json::to_string(&core.list(&ListParams::default()).await.expect("events"))
        .expect("json");
    for e in [
        "RotationSucceeded",
        "RotationAttemptFailed",
        "ReferenceUnresolved",
    ] {
        assert!(ev.contains(e), "no {e} Event: {ev}");
    }
    let leaked = hits(&format!("{ev}\n{cev}"), &needles);
    assert!(leaked.is_empty(), "marker in Events:\n{leaked:#?}");

    let objects = serde_json::to_string(&api.list(&ListParams::default()).await.expect("list"))
        .expect("json");
    assert!(objects.contains("TargetRejected"));
    let leaked = hits(&objects, &needles);
    assert!(leaked.is_empty(), "marker in SecretRotations:\n{leaked:#?}");

    let (code, metrics) = m.get("/metrics").await;
    assert_eq!(code, 200);
    assert!(metrics.contains("capstan_secret_rotation_rotations_total"));
    let leaked = hits(&metrics, &needles);
    assert!(leaked.is_empty(), "marker in /metrics:\n{leaked:#?}");

    let pg_log = std::fs::read_to_string(pg.log_path()).expect("postgres log");
    assert!(
        pg_log.contains(&format!("ALTER ROLE {single}"))
            || pg_log.contains(&format!("ALTER ROLE \"{single}\"")),
        "statement logging is not on: no ALTER ROLE of {single} in the log"
    );
    let leaked = hits(&pg_log, &needles);
    assert!(
        leaked.is_empty(),
        "marker in the PostgreSQL log:\n{leaked:#?}"
    );
    let maria_log = std::fs::read_to_string(maria.log_path()).unwrap_or_default();
    let leaked = hits(&maria_log, &needles);
    assert!(leaked.is_empty(), "marker in the MariaDB log:\n{leaked:#?}");
}
