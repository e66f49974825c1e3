//! Crash safety: the manager is killed (aborted by a failpoint, as a crash would) right
//! after each side effect of a rotation, before recording it; a new manager resumes from
//! what the backend and PostgreSQL show. After each: exactly one new version, the
//! current value logs in, nothing left pending, and the audit trail holds exactly one
//! `done` line per step of the rotation, the step the dead manager did not record
//! marked `recovered` (a chain of managers each killed at the next step repeats no
//! recovered line). Without kills, a run of rotations writes no step twice and no
//! `reconcile failed` warning.
//!
//! The test build of the manager has the failpoints compiled in (a dev-dependency
//! feature); they act only when `FAILPOINTS` is set, as here.

mod common;

use common::postgres::{pg_setup, pg_spec};
use common::rotation::{done_counts, step_lines};
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

/// What each test works on: a database and its user, the admin Secret, and the
/// SecretRotation `db` (Kubernetes Secret backend, PostgreSQL target, delivered to
/// Secret `db-app`).
struct Setup {
    kube: &'static capstan_testenv::Kube,
    pg: &'static capstan_testenv::Postgres,
    ns: TempNamespace,
    api: Api<SecretRotation>,
    secrets: Api<Secret>,
    db: String,
    user: String,
}

impl Setup {
    async fn new() -> Self {
        let env = TestEnv::get();
        let kube = env.kube().await.expect("kube");
        let pg = env.postgres().await.expect("postgres");
        let ns = TempNamespace::create(kube).await.expect("ns");
        let client = kube.client().await;
        let api: Api<SecretRotation> = ns.api(client.clone());
        let secrets: Api<Secret> = ns.api(client.clone());
        let (db, user) = pg_setup(pg, &secrets, ns.name()).await;
        let spec = pg_spec(pg, &db, &user, json!({ "singleUser": {} }));
        let obj: SecretRotation = serde_json::from_value(json!({
            "apiVersion": "capstan.dev/v1alpha1", "kind": "SecretRotation",
            "metadata": { "name": "db" }, "spec": spec
        }))
        .expect("object");
        api.create(&PostParams::default(), &obj)
            .await
            .expect("create");
        Self {
            kube,
            pg,
            ns,
            api,
            secrets,
            db,
            user,
        }
    }

    fn args(&self) -> [&str; 7] {
        [
            "--leader-elect=false",
            "--namespaces",
            self.ns.name(),
            "--own-namespace",
            self.ns.name(),
            "--controllers",
            "secret-rotation",
        ]
    }

    fn object(&self) -> String {
        format!("{}/db", self.ns.name())
    }

    /// Starts a manager that aborts after `step`'s side effect, and waits for it.
    async fn crash_after(&self, step: &str, identity: &str) -> common::Manager {
        let point = format!("secret-rotation::after-{step}");
        common::crash_at(self.kube, identity, &self.args(), &point).await
    }

    /// Waits until `count` rotations have finished and none is in progress.
    async fn await_count(&self, count: i64, m: &common::Manager) -> SecretRotation {
        await_condition(
            &self.api,
            "db",
            |o: &SecretRotation| {
                o.status
                    .as_ref()
                    .is_some_and(|s| s.rotation.is_none() && s.rotation_count >= count)
            },
            TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| panic!("rotation {count} not finished: {e}\n{}", m.all_logs()))
    }

    /// The current value is delivered and logs in; nothing is pending.
    async fn assert_current(&self, when: &str) {
        let current = data(&self.secrets, "db-store").await;
        let delivered = data(&self.secrets, "db-app").await;
        assert_eq!(current["password"], delivered["password"], "{when}");
        let url = format!(
            "postgres://{}:{}@127.0.0.1:{}/{}",
            self.user,
            current["password"],
            self.pg.port(),
            self.db
        );
        assert!(psql(self.pg, &url, "select 1"), "current logs in {when}");
        assert!(
            data(&self.secrets, "db-store-pending").await.is_empty(),
            "nothing pending {when}"
        );
    }
}

fn logs_of(managers: &[&common::Manager]) -> Vec<String> {
    managers
        .iter()
        .flat_map(|m| m.logs.lock().expect("logs").clone())
        .collect()
}

/// The five steps, as audit lines and failpoints name them.
const STEPS: [&str; 5] = [
    "CreatePending",
    "SetTarget",
    "TestTarget",
    "Finish",
    "Deliver",
];

/// Exactly one `done` line for each step of rotation `rotation` (one attempt), and
/// which were recovered.
fn assert_one_line_per_step(
    lines: &[serde_json::Value],
    rotation: &str,
    recovered: &[&str],
    when: &str,
) {
    let counts = done_counts(lines);
    for step in STEPS {
        let (n, r) = counts
            .get(&(rotation.to_owned(), 1, step.to_owned()))
            .copied()
            .unwrap_or_default();
        assert_eq!(
            n, 1,
            "{step} lines of rotation {rotation} {when}: {lines:#?}"
        );
        assert_eq!(
            r,
            usize::from(recovered.contains(&step)),
            "{step} recovered {when}: {lines:#?}"
        );
    }
    let others: Vec<_> = counts
        .keys()
        .filter(|(r, _, _)| r == rotation)
        .filter(|(_, a, _)| *a != 1)
        .collect();
    assert!(others.is_empty(), "a second attempt {when}: {others:?}");
}

/// Killed after each of the five steps, then restarted: never a double rotation, never
/// a lost credential, and one audit line per step, the unrecorded one recovered.
#[tokio::test]
async fn a_crash_after_any_step_resumes_to_exactly_one_new_version() {
    let t = Setup::new().await;
    // The step the killed manager did not record, whose line the next one writes as
    // recovered. After TestTarget, too, it is SetTarget: TestTarget is not claimed, the
    // next manager finds the target already accepting the pending value, and that login
    // is its own TestTarget. After Deliver, the next manager checks the delivery again
    // (nothing to write) and records Deliver itself.
    let recovered: [&[&str]; 5] = [
        &["CreatePending"],
        &["SetTarget"],
        &["SetTarget"],
        &["Finish"],
        &[],
    ];
    let mut previous_version: Option<String> = None;
    for (i, step) in STEPS.iter().enumerate() {
        if i > 0 {
            rotate_now(&t.api, step).await;
        }
        let crashed = t.crash_after(step, &format!("crash-{i}")).await;
        let m = common::start(t.kube, &format!("resume-{i}"), &t.args()).await;
        let expected = i64::try_from(i).expect("small") + 1;
        let o = t.await_count(expected, &m).await;
        let st = o.status.expect("status");
        assert_eq!(
            st.rotation_count, expected,
            "exactly one rotation after {step}"
        );
        assert_eq!(st.previous_version, previous_version, "after {step}");
        t.assert_current(&format!("after {step}")).await;
        let rotation = st.recent_rotations.first().expect("recorded").id.clone();
        let lines = step_lines(&logs_of(&[&crashed, &m]), &t.object());
        assert_one_line_per_step(
            &lines,
            &rotation,
            recovered[i],
            &format!("after a crash after {step}"),
        );
        eprintln!(
            "crash after {step}: resumed to version {:?}",
            st.current_version
        );
        previous_version = st.current_version;
        drop(m);
    }
}

/// A chain: each manager is killed after the next step, the last one finishes. Every
/// step is recorded exactly once over all of them: a manager that wrote a recovered
/// line and then died does not make the next write it again.
#[tokio::test]
async fn a_chain_of_crashes_records_each_step_once() {
    let t = Setup::new().await;
    let mut managers = Vec::new();
    for (i, step) in STEPS.iter().enumerate() {
        managers.push(t.crash_after(step, &format!("chain-{i}")).await);
    }
    let last = common::start(t.kube, "chain-end", &t.args()).await;
    let o = t.await_count(1, &last).await;
    t.assert_current("after the chain").await;
    let rotation = o.status.expect("status").recent_rotations[0].id.clone();
    managers.push(last);
    let all: Vec<&common::Manager> = managers.iter().collect();
    let lines = step_lines(&logs_of(&all), &t.object());
    // Killed after CreatePending: the next records it (recovered), then runs SetTarget
    // and is killed; the next finds the target set (SetTarget recovered) and tests
    // it; ... after Finish, the next records it (recovered) and delivers.
    assert_one_line_per_step(
        &lines,
        &rotation,
        &["CreatePending", "SetTarget", "Finish"],
        "after the chain",
    );
}

/// Without kills: a run of rotations writes each step's line once (no pass works from
/// a snapshot older than its own last write), and no `reconcile failed` warning or lost
/// claim comes up. Forty more objects (no target, delivered to a Secret) rotate at the
/// same time, so that watch events lag behind the writes, as under load.
#[tokio::test]
async fn rotations_without_crashes_write_each_step_once() {
    const KEYS: usize = 40;
    const ROUNDS: i64 = 4;
    let t = Setup::new().await;
    for k in 0..KEYS {
        common::rotation::create_rotation(
            &t.api,
            &format!("key-{k}"),
            json!({
                "backend": { "kubernetes": { "secretName": format!("key-{k}-store") } },
                "target": { "none": {} },
                "schedule": { "interval": "720h" },
                "delivery": { "secret": { "name": format!("key-{k}") } }
            }),
        )
        .await;
    }
    let mut args = t.args().to_vec();
    args.extend(["--concurrency", "16"]);
    let m = common::start(t.kube, "steady", &args).await;
    let all_done = |n: i64| {
        move |list: &[SecretRotation]| {
            list.len() == KEYS + 1
                && list.iter().all(|o| {
                    o.status
                        .as_ref()
                        .is_some_and(|s| s.rotation.is_none() && s.rotation_count >= n)
                })
        }
    };
    await_all(&t.api, all_done(1), &m).await;
    for round in 2..=ROUNDS {
        for o in t.api.list(&Default::default()).await.expect("list").items {
            let name = o.metadata.name.expect("name");
            common::rotation::rotate_now(&t.api, &name, &format!("steady-{round}")).await;
        }
        await_all(&t.api, all_done(round), &m).await;
    }
    t.assert_current("after the run").await;
    let logs = logs_of(&[&m]);
    let objects = std::iter::once("db".to_owned()).chain((0..KEYS).map(|k| format!("key-{k}")));
    for name in objects {
        let object = format!("{}/{name}", t.ns.name());
        let lines = step_lines(&logs, &object);
        let counts = done_counts(&lines);
        let rotations: std::collections::BTreeSet<&String> =
            counts.keys().map(|(r, _, _)| r).collect();
        assert_eq!(
            rotations.len(),
            usize::try_from(ROUNDS).expect("small"),
            "{object}: {lines:#?}"
        );
        for (key, (n, recovered)) in &counts {
            assert_eq!((*n, *recovered), (1, 0), "{object} {key:?}: {lines:#?}");
        }
        let steps = if name == "db" { STEPS.len() } else { 3 };
        assert_eq!(
            counts.len(),
            steps * rotations.len(),
            "{object}: {counts:?}"
        );
        let others: Vec<&serde_json::Value> =
            lines.iter().filter(|v| v["outcome"] != "done").collect();
        assert!(
            others.is_empty(),
            "{object}: steps that did not end done: {others:#?}"
        );
    }
    let failed: Vec<&String> = logs
        .iter()
        .filter(|l| l.contains("reconcile failed"))
        .collect();
    assert!(
        failed.is_empty(),
        "failed reconciles in normal operation:\n{failed:#?}"
    );
    let (_, metrics) = m.get("/metrics").await;
    let lost = metrics
        .lines()
        .find(|l| l.starts_with("capstan_secret_rotation_claims_lost_total "))
        .map(str::to_owned);
    assert_eq!(
        lost.as_deref(),
        Some("capstan_secret_rotation_claims_lost_total 0"),
        "{metrics}"
    );
}

/// Waits until `done` holds for the list of SecretRotations.
async fn await_all(
    api: &Api<SecretRotation>,
    done: impl Fn(&[SecretRotation]) -> bool,
    m: &common::Manager,
) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let list = api.list(&Default::default()).await.expect("list").items;
        if done(&list) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rotations not finished\n{}",
            m.all_logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn rotate_now(api: &Api<SecretRotation>, token: &str) {
    api.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"capstan.dev/rotate-now": token}}})),
    )
    .await
    .expect("rotate-now");
}

/// Without a target (`target.none`) there is nothing to set or test: killed after
/// CreatePending, the next manager records it (recovered) and goes on to Finish, with
/// no SetTarget or TestTarget line.
#[tokio::test]
async fn a_value_only_rotation_resumes_at_finish() {
    let t = Setup::new().await;
    common::rotation::create_rotation(
        &t.api,
        "key",
        json!({
            "backend": { "kubernetes": { "secretName": "key-store" } },
            "target": { "none": {} },
            "schedule": { "interval": "720h" },
            "delivery": { "secret": { "name": "key" } }
        }),
    )
    .await;
    // The PostgreSQL object `db` stays still, so the crash is `key`'s.
    t.api
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "suspend": true } })),
        )
        .await
        .expect("suspend db");
    let crashed = t.crash_after("CreatePending", "value-crash").await;
    let m = common::start(t.kube, "value-resume", &t.args()).await;
    let o = await_condition(
        &t.api,
        "key",
        |o: &SecretRotation| {
            o.status
                .as_ref()
                .is_some_and(|s| s.rotation.is_none() && s.rotation_count >= 1)
        },
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("no resume: {e}\n{}", m.all_logs()));
    let rotation = o.status.expect("status").recent_rotations[0].id.clone();
    let object = format!("{}/key", t.ns.name());
    let lines = step_lines(&logs_of(&[&crashed, &m]), &object);
    let counts = done_counts(&lines);
    let steps: Vec<(&str, (usize, usize))> = counts
        .iter()
        .filter(|((r, _, _), _)| *r == rotation)
        .map(|((_, _, s), n)| (s.as_str(), *n))
        .collect();
    assert_eq!(
        steps,
        [
            ("CreatePending", (1, 1)),
            ("Deliver", (1, 0)),
            ("Finish", (1, 0))
        ],
        "{lines:#?}"
    );
    assert_eq!(
        data(&t.secrets, "key").await,
        data(&t.secrets, "key-store").await
    );
}
