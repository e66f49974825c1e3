//! SecretRotation with a MySQL target, through the controller: the manager as a real
//! process against the real API server and the test environment's MariaDB, Kubernetes
//! Secret backend. After each rotation the delivered credential logs in; the previous
//! one does not (single user) or still does (alternating users: it is the other user).

mod common;

use common::rotation::{
    await_rotations as await_named, create_rotation, rotate_now as rotate_named,
};

/// This file's object is always `db`.
async fn create(api: &Api<SecretRotation>, spec: Value) {
    create_rotation(api, "db", spec).await;
}

async fn rotate_now(api: &Api<SecretRotation>, token: &str) {
    rotate_named(api, "db", token).await;
}

async fn await_rotations(api: &Api<SecretRotation>, n: i64, m: &common::Manager) -> SecretRotation {
    await_named(api, "db", n, m).await
}

use std::collections::BTreeMap;

use capstan_secret_rotation::crd::SecretRotation;
use capstan_testenv::{MariaDb, TempNamespace, TestEnv};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use mysql_async::prelude::Queryable;
use serde_json::{Value, json};

async fn start(kube: &'static capstan_testenv::Kube, ns: &str, identity: &str) -> common::Manager {
    let args = [
        "--leader-elect=false",
        "--namespaces",
        ns,
        "--own-namespace",
        ns,
        "--controllers",
        "secret-rotation",
    ];
    common::start(kube, identity, &args).await
}

fn opts(db: &MariaDb, user: &str, password: &str) -> mysql_async::Opts {
    // Over TCP, as the target does (mysql_async would otherwise prefer the Unix socket).
    mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(db.port())
        .user(Some(user))
        .pass(Some(password))
        .prefer_socket(false)
        .into()
}

async fn logs_in(db: &MariaDb, user: &str, password: &str) -> bool {
    match mysql_async::Conn::new(opts(db, user, password)).await {
        Ok(mut c) => {
            let one: Option<i32> = c.query_first("SELECT 1").await.ok().flatten();
            let _ = c.disconnect().await;
            one == Some(1)
        }
        Err(_) => false,
    }
}

/// A database and a user named after the namespace (the user may use the database),
/// plus the admin Secret.
async fn setup(db: &MariaDb, secrets: &Api<Secret>, ns: &str) -> (String, String) {
    let id = ns.replace('-', "_");
    let (database, user) = (format!("db_{id}"), format!("app_{id}"));
    let mut admin = mysql_async::Conn::new(opts(db, db.admin_user(), db.admin_password()))
        .await
        .expect("admin login");
    admin
        .query_drop(format!(
            "CREATE DATABASE {database}; \
             CREATE USER '{user}'@'%' IDENTIFIED BY 'initial-{id}'; \
             GRANT SELECT ON {database}.* TO '{user}'@'%'"
        ))
        .await
        .expect("create user");
    let s: Secret = serde_json::from_value(json!({
        "metadata": { "name": "my-admin" },
        "stringData": { "username": db.admin_user(), "password": db.admin_password() }
    }))
    .expect("secret");
    secrets
        .create(&PostParams::default(), &s)
        .await
        .expect("admin secret");
    (database, user)
}

fn spec(db: &MariaDb, database: &str, user: &str, strategy: Value) -> Value {
    json!({
        "backend": { "kubernetes": { "secretName": "db-store" } },
        "target": { "mysql": {
            "host": "127.0.0.1", "port": db.port(), "database": database,
            "sslMode": "disabled", "username": user,
            "adminSecretRef": { "name": "my-admin" } } },
        "strategy": strategy,
        "schedule": { "interval": "720h" },
        "delivery": { "secret": { "name": "db-app" } }
    })
}

async fn delivered(secrets: &Api<Secret>) -> BTreeMap<String, String> {
    secrets
        .get("db-app")
        .await
        .expect("delivered")
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v.0).expect("utf8")))
        .collect()
}

/// MariaDB, single user: after every rotation the delivered value logs in, the previous
/// value and the initial password no longer do, and the delivered Secret names the
/// user, database and port.
#[tokio::test]
async fn mariadb_single_user_current_logs_in_previous_does_not() {
    let env = TestEnv::get();
    let kube = env.kube().await.expect("kube");
    let db = env.mariadb().await.expect("mariadb");
    let ns = TempNamespace::create(kube).await.expect("ns");
    let client = kube.client().await;
    let api: Api<SecretRotation> = ns.api(client.clone());
    let secrets: Api<Secret> = ns.api(client.clone());
    let (database, user) = setup(db, &secrets, ns.name()).await;
    create(&api, spec(db, &database, &user, json!({"singleUser": {}}))).await;
    let m = start(kube, ns.name(), "sr-mariadb-single").await;
    let initial = format!("initial-{}", ns.name().replace('-', "_"));
    let mut previous: Option<String> = None;
    for n in 1..=3 {
        if n > 1 {
            rotate_now(&api, &format!("t{n}")).await;
        }
        await_rotations(&api, n, &m).await;
        let d = delivered(&secrets).await;
        assert_eq!(d["username"], user);
        assert_eq!(d["database"], database);
        assert_eq!(d["port"], db.port().to_string());
        assert!(
            logs_in(db, &user, &d["password"]).await,
            "rotation {n}: current logs in"
        );
        assert!(!logs_in(db, &user, &initial).await, "initial still logs in");
        if let Some(p) = &previous {
            assert_ne!(p, &d["password"]);
            assert!(
                !logs_in(db, &user, p).await,
                "rotation {n}: previous still logs in"
            );
        }
        previous = Some(d["password"].clone());
    }
}

/// MariaDB, alternating users: rotations switch between the user and its `_b` twin
/// (created by Capstan with the same grants); after each, the current credential logs
/// in and the previous one still does, until the rotation after sets a new value on
/// its user.
#[tokio::test]
async fn mariadb_alternating_users_previous_keeps_working() {
    let env = TestEnv::get();
    let kube = env.kube().await.expect("kube");
    let db = env.mariadb().await.expect("mariadb");
    let ns = TempNamespace::create(kube).await.expect("ns");
    let client = kube.client().await;
    let api: Api<SecretRotation> = ns.api(client.clone());
    let secrets: Api<Secret> = ns.api(client.clone());
    let (database, user) = setup(db, &secrets, ns.name()).await;
    create(
        &api,
        spec(db, &database, &user, json!({"alternatingUsers": {}})),
    )
    .await;
    let m = start(kube, ns.name(), "sr-mariadb-alt").await;
    let mut history: Vec<(String, String)> = Vec::new();
    for n in 1..=4 {
        if n > 1 {
            rotate_now(&api, &format!("t{n}")).await;
        }
        let o = await_rotations(&api, n, &m).await;
        let d = delivered(&secrets).await;
        let (u, p) = (d["username"].clone(), d["password"].clone());
        assert_eq!(
            o.status.as_ref().and_then(|s| s.active_username.as_deref()),
            Some(u.as_str())
        );
        assert!(
            logs_in(db, &u, &p).await,
            "rotation {n}: current {u} logs in"
        );
        if let Some((pu, pp)) = history.last() {
            assert_ne!(pu, &u, "users alternate");
            assert!(
                logs_in(db, pu, pp).await,
                "rotation {n}: previous {pu} still logs in"
            );
        }
        // The value from two rotations ago was replaced on the same user.
        if n >= 3 {
            let (ou, op) = &history[history.len() - 2];
            assert_eq!(ou, &u);
            assert!(
                !logs_in(db, ou, op).await,
                "rotation {n}: the value of two rotations ago still logs in"
            );
        }
        // The clone may read the database like the original user.
        let mut c = mysql_async::Conn::new(opts(db, &u, &p))
            .await
            .expect("login");
        c.query_drop(format!("SHOW TABLES FROM {database}"))
            .await
            .unwrap_or_else(|e| panic!("rotation {n}: {u} cannot read {database}: {e}"));
        let _ = c.disconnect().await;
        history.push((u, p));
    }
    let users: Vec<&str> = history.iter().map(|(u, _)| u.as_str()).collect();
    let b = format!("{user}_b");
    assert_eq!(
        users,
        [user.as_str(), b.as_str(), user.as_str(), b.as_str()]
    );
}
