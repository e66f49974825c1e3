//! Crash safety: the manager is killed (aborted by a failpoint, as a crash would) right
//! after each side effect of a rotation, before recording it; a new manager resumes from
//! what the backend and PostgreSQL show. After each: exactly one new version, the
//! current value logs in, nothing left pending.
//!
//! The test build of the manager has the failpoints compiled in (a dev-dependency
//! feature); they act only when `FAILPOINTS` is set, as here.

mod common;

use common::secret_data as data;

use std::time::Duration;

use capstan_secret_rotation::crd::SecretRotation;
use capstan_testenv::{TempNamespace, TestEnv, await_condition};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);

fn psql(pg: &capstan_testenv::Postgres, url: &str, sql: &str) -> bool {
    common::psql(pg, url, sql).is_ok()
}

/// Killed after each of the five steps, then restarted: never a double rotation, never
/// a lost credential.
#[tokio::test]
async fn a_crash_after_any_step_resumes_to_exactly_one_new_version() {
    let env = TestEnv::get();
    let kube = env.kube().await.expect("kube");
    let pg = env.postgres().await.expect("postgres");
    let ns = TempNamespace::create(kube).await.expect("ns");
    let client = kube.client().await;
    let api: Api<SecretRotation> = ns.api(client.clone());
    let secrets: Api<Secret> = ns.api(client.clone());
    let id = ns.name().replace('-', "_");
    let (db, user) = (format!("db_{id}"), format!("app_{id}"));
    assert!(psql(pg, &pg.admin_url(), &format!("CREATE DATABASE {db}")));
    assert!(psql(
        pg,
        &pg.admin_url(),
        &format!("CREATE ROLE {user} LOGIN")
    ));
    let admin: Secret = serde_json::from_value(json!({
        "metadata": { "name": "pg-admin" },
        "stringData": { "username": pg.admin_user(), "password": pg.admin_password() }
    }))
    .expect("secret");
    secrets
        .create(&PostParams::default(), &admin)
        .await
        .expect("admin");
    let obj: SecretRotation = serde_json::from_value(json!({
        "apiVersion": "capstan.dev/v1alpha1", "kind": "SecretRotation",
        "metadata": { "name": "db" },
        "spec": {
            "backend": { "kubernetes": { "secretName": "db-store" } },
            "target": { "postgres": {
                "host": "127.0.0.1", "port": pg.port(), "database": db, "sslMode": "disable",
                "username": user, "adminSecretRef": { "name": "pg-admin" } } },
            "schedule": { "interval": "720h" },
            "delivery": { "secret": { "name": "db-app" } }
        }
    }))
    .expect("object");
    api.create(&PostParams::default(), &obj)
        .await
        .expect("create");
    let args = [
        "--leader-elect=false",
        "--namespaces",
        ns.name(),
        "--own-namespace",
        ns.name(),
        "--controllers",
        "secret-rotation",
    ];
    let steps = [
        "CreatePending",
        "SetTarget",
        "TestTarget",
        "Finish",
        "Deliver",
    ];
    let mut expected_count = 0;
    let mut previous_version: Option<String> = None;
    for (i, step) in steps.iter().enumerate() {
        if i > 0 {
            api.patch(
                "db",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"annotations": {"capstan.dev/rotate-now": step}}}),
                ),
            )
            .await
            .expect("rotate-now");
        }
        let fp = format!("secret-rotation::after-{step}=return");
        let mut crashing = common::start_with_env(
            kube,
            &format!("crash-{i}"),
            &args,
            &[("FAILPOINTS", fp.as_str())],
        )
        .await;
        let status = tokio::time::timeout(TIMEOUT, crashing.child.wait())
            .await
            .unwrap_or_else(|_| panic!("not crashed after {step}:\n{}", crashing.all_logs()))
            .expect("wait");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(6), "aborted (SIGABRT) after {step}");

        let m = common::start(kube, &format!("resume-{i}"), &args).await;
        expected_count += 1;
        let o = await_condition(
            &api,
            "db",
            |o: &SecretRotation| {
                o.status
                    .as_ref()
                    .is_some_and(|s| s.rotation.is_none() && s.rotation_count >= expected_count)
            },
            TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| panic!("no resume after {step}: {e}\n{}", m.all_logs()));
        let st = o.status.expect("status");
        assert_eq!(
            st.rotation_count, expected_count,
            "exactly one rotation after {step}"
        );
        assert_eq!(st.previous_version, previous_version, "after {step}");
        let current = data(&secrets, "db-store").await;
        let delivered = data(&secrets, "db-app").await;
        assert_eq!(current["password"], delivered["password"], "after {step}");
        let url = format!(
            "postgres://{user}:{}@127.0.0.1:{}/{db}",
            current["password"],
            pg.port()
        );
        assert!(psql(pg, &url, "select 1"), "current logs in after {step}");
        assert!(
            data(&secrets, "db-store-pending").await.is_empty(),
            "nothing pending after {step}"
        );
        eprintln!(
            "crash after {step}: resumed to version {:?}",
            st.current_version
        );
        previous_version = st.current_version;
        drop(m);
    }
}
