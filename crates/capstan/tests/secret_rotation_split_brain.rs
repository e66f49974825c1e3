//! Split brain: two managers with leader election (3 s lease) against the real API server
//! and PostgreSQL or MariaDB. The leader is held by a failpoint in `SetTarget`, after its claim and
//! its read of the pending value, right before the database write, and frozen there
//! (SIGSTOP); the other takes over, finishes that rotation and moves on (one
//! more rotation with a single user, two with alternating users, so the stale write
//! would hit the role that is current); then the stale leader is resumed (SIGCONT) and
//! runs its `set_password` with an old value. The target's fence must refuse it: never a
//! double rotation, the current credential logs in, the previous one as its strategy
//! says, nothing left pending. Without the fence the stale write lands and the current
//! credential stops logging in.
//!
//! `SPLIT_BRAIN_ITERATIONS` (default 5) sets the repetitions per strategy.

mod common;

use common::pct;
use common::secret_data as data;

fn psql(pg: &capstan_testenv::Postgres, url: &str, sql: &str) -> bool {
    common::psql(pg, url, sql).is_ok()
}

async fn rotate_now(api: &Api<SecretRotation>, token: &str) {
    common::rotation::rotate_now(api, "db", token).await;
}

use std::collections::BTreeMap;
use std::time::Duration;

use capstan_secret_rotation::crd::{RotationStep, SecretRotation};
use capstan_testenv::{MariaDb, TempNamespace, TestEnv, await_condition};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use mysql_async::prelude::Queryable;
use nix::sys::signal::Signal;
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);

fn iterations() -> usize {
    std::env::var("SPLIT_BRAIN_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .clamp(1, 50)
}

/// The database of one run.
enum Db {
    Postgres(&'static capstan_testenv::Postgres),
    MariaDb(&'static MariaDb),
}

impl Db {
    async fn logs_in(&self, database: &str, user: &str, password: &str) -> bool {
        match self {
            Db::Postgres(pg) => {
                let url = format!(
                    "postgres://{}:{}@127.0.0.1:{}/{database}",
                    pct(user),
                    pct(password),
                    pg.port()
                );
                psql(pg, &url, "select 1")
            }
            Db::MariaDb(m) => match mysql_async::Conn::new(mysql_opts(m, user, password)).await {
                Ok(mut c) => {
                    let one: Option<i32> = c.query_first("SELECT 1").await.ok().flatten();
                    let _ = c.disconnect().await;
                    one == Some(1)
                }
                Err(_) => false,
            },
        }
    }

    /// A database and a login user, plus the admin Secret `db-admin`; the target spec.
    async fn setup(&self, secrets: &Api<Secret>, database: &str, user: &str) -> serde_json::Value {
        let (admin_user, admin_password) = match self {
            Db::Postgres(pg) => {
                assert!(psql(
                    pg,
                    &pg.admin_url(),
                    &format!("CREATE DATABASE {database}")
                ));
                assert!(psql(
                    pg,
                    &pg.admin_url(),
                    &format!("CREATE ROLE {user} LOGIN")
                ));
                (pg.admin_user().to_owned(), pg.admin_password().to_owned())
            }
            Db::MariaDb(m) => {
                let mut admin =
                    mysql_async::Conn::new(mysql_opts(m, m.admin_user(), m.admin_password()))
                        .await
                        .expect("admin login");
                admin
                    .query_drop(format!(
                        "CREATE DATABASE {database}; \
                         CREATE USER '{user}'@'%' IDENTIFIED BY 'initial-{user}'; \
                         GRANT SELECT ON {database}.* TO '{user}'@'%'"
                    ))
                    .await
                    .expect("create user");
                let _ = admin.disconnect().await;
                (m.admin_user().to_owned(), m.admin_password().to_owned())
            }
        };
        let admin: Secret = serde_json::from_value(json!({
            "metadata": { "name": "db-admin" },
            "stringData": { "username": admin_user, "password": admin_password }
        }))
        .expect("secret");
        secrets
            .create(&PostParams::default(), &admin)
            .await
            .expect("admin");
        match self {
            Db::Postgres(pg) => json!({ "postgres": {
                "host": "127.0.0.1", "port": pg.port(), "database": database,
                "sslMode": "disable", "username": user,
                "adminSecretRef": { "name": "db-admin" } } }),
            Db::MariaDb(m) => json!({ "mysql": {
                "host": "127.0.0.1", "port": m.port(), "database": database,
                "sslMode": "disabled", "username": user,
                "adminSecretRef": { "name": "db-admin" } } }),
        }
    }
}

fn mysql_opts(m: &MariaDb, user: &str, password: &str) -> mysql_async::Opts {
    // Over TCP, as the target does.
    mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(m.port())
        .user(Some(user))
        .pass(Some(password))
        .prefer_socket(false)
        .into()
}

fn count(o: &SecretRotation) -> i64 {
    o.status.as_ref().map_or(0, |s| s.rotation_count)
}

/// Waits for `n` finished rotations and nothing in progress.
async fn await_count(api: &Api<SecretRotation>, n: i64, logs: &dyn Fn() -> String) {
    await_condition(
        api,
        "db",
        |o: &SecretRotation| {
            count(o) >= n && o.status.as_ref().is_some_and(|s| s.rotation.is_none())
        },
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("not {n} rotations: {e}\n{}", logs()));
}

async fn holder(leases: &Api<Lease>, name: &str) -> Option<String> {
    leases
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

async fn await_holder(leases: &Api<Lease>, name: &str, who: &str) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while holder(leases, name).await.as_deref() != Some(who) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{who} never held lease {name}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One strategy's run: setup, a first rotation, then `iterations()` freezes. Returns the
/// violations found (empty when safe).
async fn split_brain(mariadb: bool, strategy: &str) -> (usize, Vec<String>) {
    let env = TestEnv::get();
    let kube = env.kube().await.expect("kube");
    let db = if mariadb {
        Db::MariaDb(env.mariadb().await.expect("mariadb"))
    } else {
        Db::Postgres(env.postgres().await.expect("postgres"))
    };
    let ns = TempNamespace::create(kube).await.expect("ns");
    let client = kube.client().await;
    let api: Api<SecretRotation> = ns.api(client.clone());
    let secrets: Api<Secret> = ns.api(client.clone());
    let leases: Api<Lease> = ns.api(client.clone());
    let id = ns.name().replace('-', "_");
    let (database, user) = (format!("db_{id}"), format!("app_{id}"));
    let target = db.setup(&secrets, &database, &user).await;
    let alternating = strategy == "alternatingUsers";
    let obj: SecretRotation = serde_json::from_value(json!({
        "apiVersion": "capstan.dev/v1alpha1", "kind": "SecretRotation",
        "metadata": { "name": "db" },
        "spec": {
            "backend": { "kubernetes": { "secretName": "db-store" } },
            "target": target,
            "strategy": { strategy: {} },
            "schedule": { "interval": "720h" },
            "delivery": { "secret": { "name": "db-app" } }
        }
    }))
    .expect("object");
    api.create(&PostParams::default(), &obj)
        .await
        .expect("create");

    let base = |lease: &str| -> Vec<String> {
        [
            "--namespaces",
            ns.name(),
            "--own-namespace",
            ns.name(),
            "--lease-namespace",
            ns.name(),
            "--lease-name",
            lease,
            "--lease-duration",
            "3",
            "--lease-grace",
            "1",
            "--controllers",
            "secret-rotation",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    };
    // The first rotation, undisturbed.
    {
        let args = base("sb-initial");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let m = common::start(kube, "sb-initial", &args).await;
        await_count(&api, 1, &|| m.all_logs()).await;
    }
    // Rotations the takeover runs after the frozen one's: the stale write must meet a
    // newer fence on the role it targets.
    let moves = if alternating { 2 } else { 1 };
    let mut expected = 1;
    let mut violations = Vec::new();
    let n = iterations();
    for i in 0..n {
        let lease = format!("sb-{i}");
        let args = base(&lease);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (a_id, b_id) = (format!("sb-{i}-a"), format!("sb-{i}-b"));
        // Only the first leader is held after its claim of SetTarget (once).
        let stale = common::start_with_env(
            kube,
            &a_id,
            &args,
            &[(
                "FAILPOINTS",
                "secret-rotation::before-set-password=1*sleep(8000)",
            )],
        )
        .await;
        await_holder(&leases, &lease, &a_id).await;
        let other = common::start(kube, &b_id, &args).await;
        let logs = || format!("A:\n{}\nB:\n{}", stale.all_logs(), other.all_logs());

        rotate_now(&api, &format!("freeze-{i}")).await;
        await_condition(
            &api,
            "db",
            |o: &SecretRotation| {
                o.status
                    .as_ref()
                    .and_then(|s| s.rotation.as_ref())
                    .is_some_and(|r| r.step == RotationStep::SetTarget)
            },
            TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| panic!("no SetTarget claim: {e}\n{}", logs()));
        // The claim is visible before the leader reaches the failpoint (it still reads
        // the pending value): let it get there, well within its 8 s hold.
        tokio::time::sleep(Duration::from_secs(1)).await;
        stale.signal(Signal::SIGSTOP);
        // The lease runs out; the other finishes the frozen rotation and moves on.
        await_holder(&leases, &lease, &b_id).await;
        expected += 1;
        await_count(&api, expected, &logs).await;
        let mut prev = BTreeMap::new();
        for k in 0..moves {
            prev = data(&secrets, "db-app").await;
            rotate_now(&api, &format!("move-{i}-{k}")).await;
            expected += 1;
            await_count(&api, expected, &logs).await;
        }
        let before = data(&secrets, "db-app").await;
        stale.signal(Signal::SIGCONT);
        // The stale one wakes, runs its SetTarget and must be fenced out.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !stale.logged("newer fence") {
            if tokio::time::Instant::now() > deadline {
                violations.push(format!(
                    "iteration {i}: the stale leader was not fenced\n{}",
                    stale.all_logs()
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Give a stale writer that got through time to do damage.
        tokio::time::sleep(Duration::from_secs(2)).await;

        let o = api.get("db").await.expect("get");
        let st = o.status.clone().unwrap_or_default();
        if st.rotation_count != expected || st.rotation.is_some() {
            violations.push(format!(
                "iteration {i}: {} rotations (expected {expected}), in progress {:?}",
                st.rotation_count, st.rotation
            ));
        }
        let current = data(&secrets, "db-store").await;
        let delivered = data(&secrets, "db-app").await;
        if current.get("password") != delivered.get("password") || delivered != before {
            violations.push(format!("iteration {i}: stored and delivered differ"));
        }
        let (u, p) = (
            delivered.get("username").cloned().unwrap_or_default(),
            delivered.get("password").cloned().unwrap_or_default(),
        );
        if !db.logs_in(&database, &u, &p).await {
            violations.push(format!(
                "iteration {i}: the current credential of {u} does not log in"
            ));
        }
        if !data(&secrets, "db-store-pending").await.is_empty() {
            violations.push(format!(
                "iteration {i}: a pending value is left\n{}",
                logs()
            ));
        }
        let (pu, pp) = (
            prev.get("username").cloned().unwrap_or_default(),
            prev.get("password").cloned().unwrap_or_default(),
        );
        let previous_logs_in = db.logs_in(&database, &pu, &pp).await;
        if alternating && (pu == u || !previous_logs_in) {
            violations.push(format!(
                "iteration {i}: previous {pu} (current {u}) should be the other role and log in"
            ));
        }
        if !alternating && previous_logs_in {
            violations.push(format!("iteration {i}: the previous value still logs in"));
        }
        eprintln!(
            "split-brain {strategy} iteration {i}: {} rotations, current {:?}, stale fenced: {}",
            st.rotation_count,
            st.current_version,
            stale.logged("newer fence")
        );
        drop(other);
        drop(stale);
    }
    (n, violations)
}

/// Single user: the stale leader's old value never replaces the current one.
#[tokio::test]
async fn a_frozen_leader_resumed_after_a_takeover_cannot_set_an_old_password_single_user() {
    let (n, violations) = split_brain(false, "singleUser").await;
    println!(
        "FIGURE split-brain iterations: {n}, violations: {} (single user)",
        violations.len()
    );
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

/// Alternating users: the stale write targets the role that is current again two
/// rotations later; it is refused and both roles keep their credentials.
#[tokio::test]
async fn a_frozen_leader_resumed_after_a_takeover_cannot_set_an_old_password_alternating() {
    let (n, violations) = split_brain(false, "alternatingUsers").await;
    println!(
        "FIGURE split-brain iterations: {n}, violations: {} (alternating users)",
        violations.len()
    );
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

/// MariaDB, single user: the fence (GET_LOCK and `capstan.fences`) refuses the stale
/// write too.
#[tokio::test]
async fn a_frozen_leader_resumed_after_a_takeover_cannot_set_an_old_password_mariadb() {
    let (n, violations) = split_brain(true, "singleUser").await;
    println!(
        "FIGURE split-brain iterations: {n}, violations: {} (MariaDB, single user)",
        violations.len()
    );
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}
