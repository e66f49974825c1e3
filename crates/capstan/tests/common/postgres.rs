//! PostgreSQL as the SecretRotation tests use it: psql from the server's bin directory
//! (no extra client crate), a database and login role per test, and the spec of a
//! PostgreSQL-target rotation.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

pub fn logs_in(pg: &capstan_testenv::Postgres, db: &str, user: &str, password: &str) -> bool {
    let url = format!(
        "postgres://{user}:{}@127.0.0.1:{}/{db}",
        super::pct(password),
        pg.port()
    );
    super::psql(pg, &url, "select 1").is_ok()
}

/// A database and a login role named after the namespace, plus the admin Secret.
pub async fn pg_setup(
    pg: &capstan_testenv::Postgres,
    secrets: &Api<Secret>,
    ns: &str,
) -> (String, String) {
    let id = ns.replace('-', "_");
    let db = format!("db_{id}");
    let user = format!("app_{id}");
    super::psql(pg, &pg.admin_url(), &format!("CREATE DATABASE {db}")).expect("create db");
    super::psql(
        pg,
        &pg.admin_url(),
        &format!("CREATE ROLE {user} LOGIN PASSWORD 'initial-{id}'"),
    )
    .expect("create role");
    let admin: Secret = serde_json::from_value(json!({
        "metadata": { "name": "pg-admin" },
        "stringData": { "username": pg.admin_user(), "password": pg.admin_password() }
    }))
    .expect("secret");
    secrets
        .create(&PostParams::default(), &admin)
        .await
        .expect("admin secret");
    (db, user)
}

pub fn pg_spec(pg: &capstan_testenv::Postgres, db: &str, user: &str, strategy: Value) -> Value {
    json!({
        "backend": { "kubernetes": { "secretName": "db-store" } },
        "target": { "postgres": {
            "host": "127.0.0.1", "port": pg.port(), "database": db, "sslMode": "disable",
            "username": user, "adminSecretRef": { "name": "pg-admin" } } },
        "strategy": strategy,
        "schedule": { "interval": "720h" },
        "delivery": { "secret": { "name": "db-app" } }
    })
}
