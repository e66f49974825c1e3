//! SecretRotation's `vaultDatabaseStaticRole` target end to end: the manager (with the
//! chart's RBAC) against the real API server, OpenBao's database secrets engine and a
//! local PostgreSQL. Capstan declares the engine's connection and the static role,
//! triggers `rotate-role` on its schedule and delivers `static-creds`; a rotation Vault
//! makes behind its back is delivered; drift is written back and reported; a Vault role
//! this object did not declare is not adopted; a mount outside the namespace's scope is
//! refused before anything is written.

mod common;

use common::postgres::logs_in;
use common::rotation::{await_rotations, rotate_now, start};
use common::{bao, psql, secret_data};

use std::time::Duration;

use capstan_secret_rotation::crd::SecretRotation;
use capstan_testenv::{TempNamespace, TestEnv, await_condition};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use reqwest::Method;
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(60);

/// Whether Vault answers `path` (GET as root) with a success.
async fn exists(vault: &capstan_testenv::Vault, path: &str) -> bool {
    reqwest::Client::new()
        .get(format!("{}/v1/{path}", vault.addr()))
        .header("X-Vault-Token", vault.root_token())
        .send()
        .await
        .expect("vault")
        .status()
        .is_success()
}

fn condition(o: &SecretRotation, kind: &str) -> Option<(String, String)> {
    let c = o
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == kind)?;
    Some((c.status.clone(), c.reason.clone()))
}

#[tokio::test]
async fn a_static_role_is_declared_rotated_repaired_and_delivered() {
    let env = TestEnv::get();
    let kube = env.kube().await.expect("kube");
    let vault = env.vault().await.expect("vault");
    let pg = env.postgres().await.expect("postgres");
    let ns = TempNamespace::create(kube).await.expect("ns");
    let client = kube.client().await;
    let api: Api<SecretRotation> = ns.api(client.clone());
    let secrets: Api<Secret> = ns.api(client.clone());
    let (db, user) = common::postgres::pg_setup(pg, &secrets, ns.name()).await;
    let mount = format!("db-{}", ns.name());
    bao(
        vault,
        Method::POST,
        &format!("sys/mounts/{mount}"),
        json!({ "type": "database" }),
    )
    .await;
    // A static role of the same name that a person made: never adopted.
    let squatter = format!("{}-squatter", ns.name());
    psql(
        pg,
        &pg.admin_url(),
        &format!(
            "CREATE ROLE squat_{} LOGIN PASSWORD 'x'",
            ns.name().replace('-', "_")
        ),
    )
    .expect("role");

    let conn = common::vault_connection(
        &client,
        vault,
        ns.name(),
        Some(json!([ { "vaultDatabase": { "roles": ["db-${namespace}/${namespace}-*"] } } ])),
    )
    .await;
    let spec = |name: &str, mount: &str, username: &str| {
        json!({
            "backend": { "kubernetes": { "secretName": format!("store-{name}") } },
            "target": { "vaultDatabaseStaticRole": {
                "connectionRef": { "name": conn }, "mount": mount,
                "host": "127.0.0.1", "port": pg.port(), "database": db, "sslMode": "disable",
                "adminSecretRef": { "name": "pg-admin" }, "username": username,
                "rotationPeriod": "1440h", "driftCheckInterval": "5s" } },
            "strategy": { "singleUser": {} },
            "schedule": { "interval": "720h" },
            "delivery": { "secret": { "name": format!("app-{name}") } }
        })
    };
    common::rotation::create_rotation(&api, "orders", spec("orders", &mount, &user)).await;
    let m = start(kube, ns.name(), "sr-vault-static").await;

    // Rotation 1: Vault's connection and role declared; its password delivered and
    // logging in.
    let role = format!("{}-orders", ns.name());
    await_rotations(&api, "orders", 1, &m).await;
    let delivered = secret_data(&secrets, "app-orders").await;
    assert_eq!(delivered["username"], user);
    assert_eq!(delivered["database"], db);
    let creds = bao(
        vault,
        Method::GET,
        &format!("{mount}/static-creds/{role}"),
        Value::Null,
    )
    .await;
    assert_eq!(
        creds["data"]["password"], delivered["password"],
        "Vault's password"
    );
    assert!(logs_in(pg, &db, &user, &delivered["password"]));
    let config = bao(
        vault,
        Method::GET,
        &format!("{mount}/config/{role}"),
        Value::Null,
    )
    .await;
    assert_eq!(config["data"]["allowed_roles"], json!([role]));

    // Rotation 2, on demand: rotate-role, the new password delivered, the old one
    // refused.
    rotate_now(&api, "orders", "now").await;
    await_rotations(&api, "orders", 2, &m).await;
    let second = secret_data(&secrets, "app-orders").await;
    assert_ne!(second["password"], delivered["password"]);
    assert!(logs_in(pg, &db, &user, &second["password"]));
    assert!(!logs_in(pg, &db, &user, &delivered["password"]));

    // Vault rotates the role behind Capstan's back (as its rotation_period would): the
    // next drift check delivers Vault's password.
    bao(
        vault,
        Method::POST,
        &format!("{mount}/rotate-role/{role}"),
        json!({}),
    )
    .await;
    await_rotations(&api, "orders", 3, &m).await;
    let third = secret_data(&secrets, "app-orders").await;
    let creds = bao(
        vault,
        Method::GET,
        &format!("{mount}/static-creds/{role}"),
        Value::Null,
    )
    .await;
    assert_eq!(creds["data"]["password"], third["password"]);
    assert!(logs_in(pg, &db, &user, &third["password"]));
    let o = api.get("orders").await.expect("get");
    assert_eq!(
        o.status.as_ref().expect("status").recent_rotations[0].trigger,
        capstan_secret_rotation::crd::RotationTrigger::TargetRotated,
        "Vault's own rotation, delivered as such"
    );

    // Drift behind Capstan's back: the role's period and the connection's allowed
    // roles changed. Written back, reported in the condition and an Event.
    bao(
        vault,
        Method::POST,
        &format!("{mount}/static-roles/{role}"),
        json!({ "username": user, "rotation_period": 60 }),
    )
    .await;
    bao(
        vault,
        Method::POST,
        &format!("{mount}/config/{role}"),
        json!({ "allowed_roles": ["*"] }),
    )
    .await;
    await_condition(
        &api,
        "orders",
        |o: &SecretRotation| {
            condition(o, "TargetInSync").is_some_and(|(s, r)| s == "True" && r == "DriftCorrected")
        },
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("drift not reported: {e}\n{}", m.all_logs()));
    let events = common::events_about(&client, ns.name(), "orders").await;
    let drift = events
        .iter()
        .find(|(r, _)| r == "DriftCorrected")
        .unwrap_or_else(|| panic!("no DriftCorrected Event: {events:?}"));
    assert!(drift.1.contains("role.rotation_period"), "{drift:?}");
    assert!(drift.1.contains("connection.allowed_roles"), "{drift:?}");
    let role_now = bao(
        vault,
        Method::GET,
        &format!("{mount}/static-roles/{role}"),
        Value::Null,
    )
    .await;
    assert_eq!(role_now["data"]["rotation_period"], 1440 * 3600);
    let config = bao(
        vault,
        Method::GET,
        &format!("{mount}/config/{role}"),
        Value::Null,
    )
    .await;
    assert_eq!(config["data"]["allowed_roles"], json!([role]));
    // The delivered password still logs in: a repair is no rotation.
    assert!(logs_in(pg, &db, &user, &third["password"]));
    await_condition(
        &api,
        "orders",
        |o: &SecretRotation| {
            condition(o, "TargetInSync").is_some_and(|(s, r)| s == "True" && r == "InSync")
        },
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("not back in sync: {e}\n{}", m.all_logs()));

    // A Vault role this object did not declare is not adopted, and nothing is written.
    let squat_user = format!("squat_{}", ns.name().replace('-', "_"));
    bao(
        vault,
        Method::POST,
        &format!("{mount}/config/{squatter}"),
        json!({
            "plugin_name": "postgresql-database-plugin",
            "connection_url": format!("postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{}/{db}?sslmode=disable", pg.port()),
            "username": pg.admin_user(), "password": pg.admin_password(),
            "allowed_roles": [squatter.clone()],
        }),
    )
    .await;
    bao(
        vault,
        Method::POST,
        &format!("{mount}/static-roles/{squatter}"),
        json!({ "db_name": squatter, "username": squat_user, "rotation_period": 86400 }),
    )
    .await;
    let before = bao(
        vault,
        Method::GET,
        &format!("{mount}/static-creds/{squatter}"),
        Value::Null,
    )
    .await;
    common::rotation::create_rotation(&api, "squatter", spec("squatter", &mount, &squat_user))
        .await;
    let refused = await_condition(
        &api,
        "squatter",
        |o: &SecretRotation| {
            common::rotation::ready_reason(o)
                .is_some_and(|(s, r)| s == "False" && r == "TargetClaimed")
        },
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("squatter adopted: {e}\n{}", m.all_logs()));
    assert!(
        serde_json::to_string(&refused.status)
            .expect("json")
            .contains("not adopted")
    );
    let after = bao(
        vault,
        Method::GET,
        &format!("{mount}/static-creds/{squatter}"),
        Value::Null,
    )
    .await;
    assert_eq!(
        before["data"]["last_vault_rotation"], after["data"]["last_vault_rotation"],
        "the squatter's role was not rotated"
    );

    // A mount outside the namespace's scope: refused before anything is written.
    common::rotation::create_rotation(&api, "foreign", spec("foreign", "database", &user)).await;
    let foreign = await_condition(
        &api,
        "foreign",
        |o: &SecretRotation| {
            common::rotation::ready_reason(o)
                .is_some_and(|(s, r)| s == "False" && r == "ResourceNotAllowed")
        },
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("foreign: {e}\n{}", m.all_logs()));
    let message = serde_json::to_string(&foreign.status).expect("json");
    assert!(
        message.contains(&format!("database/{}-foreign", ns.name())),
        "{message}"
    );
    assert!(
        !exists(
            vault,
            &format!("database/static-roles/{}-foreign", ns.name())
        )
        .await,
        "nothing written outside the scope"
    );

    // No password in the manager's logs.
    let logs = m.all_logs();
    for p in [&delivered, &second, &third] {
        assert!(
            !logs.contains(p["password"].as_str()),
            "a password was logged"
        );
    }
    assert!(
        !logs.contains(pg.admin_password()),
        "the admin password was logged"
    );
    m.assert_no_forbidden();
}
