//! SecretRotation's `rdsMasterPassword` target end to end: the manager (with the chart's
//! RBAC, as every manager test) against the real API server, the moto AWS emulator and
//! PostgreSQL.
//!
//! moto runs no database; the harness's RDS model (`tests/env/moto_ext/
//! rds_master_password.py`) maps each instance to the test's PostgreSQL, holds a
//! password change `resetting-master-credentials` for two seconds and then applies it
//! there as RDS's administrator would. So "the master password changed" is checked by
//! logging in to PostgreSQL, and "Capstan waited" by RDS having nothing pending.

mod common;

use common::rotation::{await_rotations, ready_reason, rotate_now, start};
use common::secret_data;

use std::time::Duration;

use capstan_aws::rds::sdk as rds;
use capstan_secret_rotation::crd::SecretRotation;
use capstan_testenv::{TempNamespace, TestEnv, await_condition};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(90);

/// What each test works on.
struct Setup {
    kube: &'static capstan_testenv::Kube,
    pg: &'static capstan_testenv::Postgres,
    ns: TempNamespace,
    api: Api<SecretRotation>,
    secrets: Api<Secret>,
    rds: rds::Client,
    /// The AWS ClusterConnection, scoped to instances named `<namespace>-*`.
    conn: String,
}

impl Setup {
    async fn new() -> Self {
        let env = TestEnv::get();
        let kube = env.kube().await.expect("kube");
        let pg = env.postgres().await.expect("postgres");
        let aws = env.aws().await.expect("aws");
        let ns = TempNamespace::create(kube).await.expect("ns");
        let client = kube.client().await;
        let conn = format!("aws-{}", ns.name());
        common::aws_connection(&client, aws, ns.name(), &conn, &[ns.name()]).await;
        // Only the namespace's own instances: `<namespace>-*` in any region of the
        // emulator's account.
        Api::<capstan_core::connection::ClusterConnection>::all(client.clone())
            .patch(
                &conn,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "scopes": [ { "rds": { "resources": [
                    "arn:aws:rds:*:123456789012:db:${namespace}-*"
                ] } } ] } })),
            )
            .await
            .expect("scope the connection");
        let config = aws.sdk_config().await;
        // The login the harness's RDS model changes passwords with (RDS's `rdsadmin`).
        let sm = aws_sdk_secretsmanager::Client::new(&config);
        let admin = json!({ "username": pg.admin_user(), "password": pg.admin_password() });
        match sm
            .create_secret()
            .name("moto-postgres-admin")
            .secret_string(admin.to_string())
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) if format!("{e:?}").contains("ResourceExists") => {}
            Err(e) => panic!("admin secret: {e:?}"),
        }
        Self {
            kube,
            pg,
            api: ns.api(client.clone()),
            secrets: ns.api(client.clone()),
            ns,
            rds: rds::Client::new(&config),
            conn,
        }
    }

    /// A PostgreSQL role playing the master user of RDS instance `id` (created in the
    /// emulator, mapped to the test's PostgreSQL), with `initial` as its password.
    async fn instance(&self, id: &str, master: &str, initial: &str, managed: bool) {
        common::psql(
            self.pg,
            &self.pg.admin_url(),
            &format!("CREATE ROLE {master} LOGIN PASSWORD '{initial}'"),
        )
        .expect("create role");
        let tag = |k: &str, v: String| rds::types::Tag::builder().key(k).value(v).build();
        let mut create = self
            .rds
            .create_db_instance()
            .db_instance_identifier(id)
            .db_instance_class("db.t3.micro")
            .engine("postgres")
            .master_username(master)
            .tags(tag(
                "capstan.dev/moto-postgres",
                format!("127.0.0.1:{}", self.pg.port()),
            ))
            .tags(tag(
                "capstan.dev/moto-postgres-admin",
                "moto-postgres-admin".into(),
            ))
            .tags(tag("capstan.dev/moto-apply-seconds", "2".into()));
        create = if managed {
            create.manage_master_user_password(true)
        } else {
            create.master_user_password(initial)
        };
        create.send().await.expect("create instance");
    }

    fn logs_in(&self, user: &str, password: &str) -> bool {
        let url = format!(
            "postgres://{user}:{}@127.0.0.1:{}/postgres",
            common::pct(password),
            self.pg.port()
        );
        common::psql(self.pg, &url, "select 1").is_ok()
    }

    async fn describe(&self, id: &str) -> rds::types::DbInstance {
        self.rds
            .describe_db_instances()
            .db_instance_identifier(id)
            .send()
            .await
            .expect("describe")
            .db_instances()[0]
            .clone()
    }

    /// A SecretRotation `name` of instance `id`'s master password, kept in Secret
    /// `<name>-store` and delivered to `<name>-app` (with a connection string).
    async fn rotation(&self, name: &str, id: &str, master: &str, extra: Value) {
        let mut target = json!({
            "connectionRef": { "name": self.conn },
            "dbInstanceIdentifier": id,
            "masterUsername": master,
            "endpoint": { "host": "127.0.0.1", "port": self.pg.port() },
            "tls": "disable"
        });
        if let (Some(t), Some(e)) = (target.as_object_mut(), extra.as_object()) {
            t.extend(e.clone());
        }
        common::rotation::create_rotation(
            &self.api,
            name,
            json!({
                "backend": { "kubernetes": { "secretName": format!("{name}-store") } },
                "target": { "rdsMasterPassword": target },
                "strategy": { "singleUser": {} },
                "schedule": { "interval": "720h" },
                "delivery": { "secret": {
                    "name": format!("{name}-app"),
                    "template": {
                        "url": "postgres://{{ username }}:{{ password | urlencode }}@{{ host }}:{{ port }}/{{ database }}"
                    }
                } }
            }),
        )
        .await;
    }

    async fn await_ready(&self, name: &str, reason: &str, m: &common::Manager) -> SecretRotation {
        await_condition(
            &self.api,
            name,
            |o: &SecretRotation| ready_reason(o).is_some_and(|(s, r)| s == "False" && r == reason),
            TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: not Ready=False {reason}: {e}\n{}", m.all_logs()))
    }

    async fn events(&self, name: &str) -> Vec<(String, String)> {
        common::events_about(&self.kube.client().await, self.ns.name(), name).await
    }
}

/// The master password really changes on the database behind the instance: Capstan
/// waits out RDS's `resetting-master-credentials`, tests the login, stores and delivers
/// it, twice; the old password stops working; the fence tag names the last attempt; no
/// value is in the status, the Events or the logs.
#[tokio::test]
async fn rds_master_password_changes_on_the_database() {
    let t = Setup::new().await;
    let ns = t.ns.name().to_owned();
    let id = format!("{ns}-shop");
    let master = format!("master_{}", ns.replace('-', "_"));
    t.instance(&id, &master, "initial-pass-1", false).await;
    t.rotation("shop", &id, &master, json!({})).await;
    let m = start(t.kube, &ns, "sr-rds").await;
    let mut seen = vec!["initial-pass-1".to_owned()];
    for n in 1..=2 {
        if n > 1 {
            rotate_now(&t.api, "shop", "again").await;
        }
        await_rotations(&t.api, "shop", n, &m).await;
        let store = secret_data(&t.secrets, "shop-store").await;
        let app = secret_data(&t.secrets, "shop-app").await;
        let password = store["password"].clone();
        assert!(
            t.logs_in(&master, &password),
            "rotation {n}: the new password logs in"
        );
        for old in &seen {
            assert!(
                !t.logs_in(&master, old),
                "rotation {n}: an old password still logs in"
            );
        }
        assert_eq!(
            app["url"],
            format!(
                "postgres://{master}:{}@127.0.0.1:{}/postgres",
                common::pct(&password),
                t.pg.port()
            )
        );
        let db = t.describe(&id).await;
        assert_eq!(db.db_instance_status(), Some("available"), "rotation {n}");
        assert!(
            db.pending_modified_values()
                .and_then(|p| p.master_user_password())
                .is_none(),
            "rotation {n}: nothing pending once rotated"
        );
        let fence = db
            .tag_list()
            .iter()
            .find(|t| t.key() == Some("capstan.dev/fence"))
            .and_then(|t| t.value())
            .unwrap_or_default()
            .to_owned();
        assert!(
            fence.starts_with("capstan-fence:v1:"),
            "fence tag: {fence:?}"
        );
        seen.push(password);
    }
    let obj = t.api.get("shop").await.expect("get");
    let status = serde_json::to_string(&obj.status).expect("json");
    assert!(status.contains("rdsMasterPassword"), "{status}");
    let events = format!("{:?}", t.events("shop").await);
    let logs = m.all_logs();
    for value in &seen[1..] {
        assert!(!status.contains(value.as_str()), "a password in the status");
        assert!(!events.contains(value.as_str()), "a password in an Event");
        assert!(!logs.contains(value.as_str()), "a password in the logs");
    }
    m.assert_no_forbidden();
}

/// An instance whose password RDS manages itself is refused with `RdsManagesPassword`,
/// and nothing changes; with `turnOffRdsManagedPassword` Capstan turns RDS's management
/// off in the same call that sets its password, which then logs in.
#[tokio::test]
async fn an_rds_managed_password_is_refused_unless_the_spec_turns_it_off() {
    let t = Setup::new().await;
    let ns = t.ns.name().to_owned();
    let id = format!("{ns}-managed");
    let master = format!("managed_{}", ns.replace('-', "_"));
    t.instance(&id, &master, "initial-pass-2", true).await;
    assert!(t.describe(&id).await.master_user_secret().is_some());
    t.rotation("managed", &id, &master, json!({})).await;
    let m = start(t.kube, &ns, "sr-rds-managed").await;
    let refused = t.await_ready("managed", "RdsManagesPassword", &m).await;
    let message = serde_json::to_string(&refused.status).expect("json");
    assert!(message.contains("turnOffRdsManagedPassword"), "{message}");
    assert!(
        t.events("managed")
            .await
            .iter()
            .any(|(_, note)| note.contains("ManageMasterUserPassword")),
        "a Warning Event says why"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let db = t.describe(&id).await;
    assert!(db.master_user_secret().is_some(), "still managed by RDS");
    assert!(
        !db.tag_list()
            .iter()
            .any(|t| t.key() == Some("capstan.dev/fence")),
        "nothing written to the instance"
    );
    assert!(t.logs_in(&master, "initial-pass-2"), "password unchanged");

    t.api
        .patch(
            "managed",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "target": { "rdsMasterPassword": {
                "turnOffRdsManagedPassword": true } } } })),
        )
        .await
        .expect("turn it off");
    await_rotations(&t.api, "managed", 1, &m).await;
    let password = secret_data(&t.secrets, "managed-store").await["password"].clone();
    assert!(t.logs_in(&master, &password));
    assert!(!t.logs_in(&master, "initial-pass-2"));
    assert!(
        t.describe(&id).await.master_user_secret().is_none(),
        "RDS no longer manages it"
    );
}

/// A namespace cannot reach an instance its connection's scopes do not grant: another
/// namespace's instance is refused with `ResourceNotAllowed` before anything is
/// written to it; a missing instance is reported, not retried into a change.
#[tokio::test]
async fn another_namespaces_instance_is_not_allowed() {
    let t = Setup::new().await;
    let ns = t.ns.name().to_owned();
    let other = format!("other-{}", ns.trim_start_matches("test-"));
    let master = format!("other_{}", ns.replace('-', "_"));
    t.instance(&other, &master, "initial-pass-3", false).await;
    t.rotation("foreign", &other, &master, json!({})).await;
    t.rotation("missing", &format!("{ns}-missing"), "nobody", json!({}))
        .await;
    let m = start(t.kube, &ns, "sr-rds-scope").await;
    let refused = t.await_ready("foreign", "ResourceNotAllowed", &m).await;
    let message = serde_json::to_string(&refused.status).expect("json");
    assert!(
        message.contains(&format!(":db:{other}")),
        "names the ARN: {message}"
    );
    t.await_ready("missing", "TargetInvalid", &m).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let db = t.describe(&other).await;
    assert!(
        !db.tag_list()
            .iter()
            .any(|t| t.key() == Some("capstan.dev/fence")),
        "nothing written to the other namespace's instance"
    );
    assert!(
        t.logs_in(&master, "initial-pass-3"),
        "its password unchanged"
    );
    m.assert_no_forbidden();
}

/// Crash safety: a manager aborted after each side effect of the RDS step (the fence
/// tag written; ModifyDBInstance accepted and not yet applied; the change applied and
/// not recorded) is followed by one that finishes the same rotation. After each: the
/// stored password logs in, the one before does not, RDS has nothing pending, and the
/// rotation took one attempt (no second password was sent over an applied one).
#[tokio::test]
async fn a_kill_after_each_rds_side_effect_loses_no_password() {
    let t = Setup::new().await;
    let ns = t.ns.name().to_owned();
    let id = format!("{ns}-crash");
    let master = format!("crash_{}", ns.replace('-', "_"));
    t.instance(&id, &master, "initial-pass-4", false).await;
    t.rotation("crash", &id, &master, json!({})).await;
    let args = common::rotation::manager_args(&ns);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut before = "initial-pass-4".to_owned();
    let points = [
        "secret-rotation::rds-before-modify",
        "secret-rotation::rds-after-modify",
        "secret-rotation::after-SetTarget",
    ];
    for (i, point) in points.iter().enumerate() {
        let n = i64::try_from(i).expect("small") + 1;
        if n > 1 {
            rotate_now(&t.api, "crash", &format!("crash-{n}")).await;
        }
        common::crash_at(t.kube, &format!("sr-rds-crash-{n}"), &args, point).await;
        let m = start(t.kube, &ns, &format!("sr-rds-resume-{n}")).await;
        let done = await_rotations(&t.api, "crash", n, &m).await;
        let password = secret_data(&t.secrets, "crash-store").await["password"].clone();
        assert!(
            t.logs_in(&master, &password),
            "{point}: the stored password logs in"
        );
        assert!(
            !t.logs_in(&master, &before),
            "{point}: the one before does not"
        );
        let db = t.describe(&id).await;
        assert_eq!(db.db_instance_status(), Some("available"), "{point}");
        let last = &done.status.as_ref().expect("status").recent_rotations[0];
        assert_eq!(last.attempts, 1, "{point}: one attempt, no value replaced");
        before = password;
    }
}

/// An Aurora cluster's master password goes through ModifyDBCluster the same way: the
/// change waits out `resetting-master-credentials` and then logs in.
#[tokio::test]
async fn an_aurora_clusters_master_password_changes() {
    let t = Setup::new().await;
    let ns = t.ns.name().to_owned();
    let id = format!("{ns}-aurora");
    let master = format!("aurora_{}", ns.replace('-', "_"));
    common::psql(
        t.pg,
        &t.pg.admin_url(),
        &format!("CREATE ROLE {master} LOGIN PASSWORD 'initial-pass-5'"),
    )
    .expect("create role");
    let tag = |k: &str, v: String| rds::types::Tag::builder().key(k).value(v).build();
    t.rds
        .create_db_cluster()
        .db_cluster_identifier(&id)
        .engine("aurora-postgresql")
        .master_username(&master)
        .master_user_password("initial-pass-5")
        .tags(tag(
            "capstan.dev/moto-postgres",
            format!("127.0.0.1:{}", t.pg.port()),
        ))
        .tags(tag(
            "capstan.dev/moto-postgres-admin",
            "moto-postgres-admin".into(),
        ))
        .tags(tag("capstan.dev/moto-apply-seconds", "2".into()))
        .send()
        .await
        .expect("create cluster");
    // The connection's scope grants instances only: widen it to this cluster.
    Api::<capstan_core::connection::ClusterConnection>::all(t.kube.client().await)
        .patch(
            &t.conn,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "scopes": [ { "rds": { "resources": [
                "arn:aws:rds:*:123456789012:cluster:${namespace}-*"
            ] } } ] } })),
        )
        .await
        .expect("scope the connection");
    common::rotation::create_rotation(
        &t.api,
        "aurora",
        json!({
            "backend": { "kubernetes": { "secretName": "aurora-store" } },
            "target": { "rdsMasterPassword": {
                "connectionRef": { "name": t.conn },
                "dbClusterIdentifier": id,
                "masterUsername": master,
                "endpoint": { "host": "127.0.0.1", "port": t.pg.port() },
                "tls": "disable"
            } },
            "strategy": { "singleUser": {} },
            "schedule": { "interval": "720h" }
        }),
    )
    .await;
    let m = start(t.kube, &ns, "sr-rds-aurora").await;
    await_rotations(&t.api, "aurora", 1, &m).await;
    let password = secret_data(&t.secrets, "aurora-store").await["password"].clone();
    assert!(t.logs_in(&master, &password));
    assert!(!t.logs_in(&master, "initial-pass-5"));
    let cluster = t
        .rds
        .describe_db_clusters()
        .db_cluster_identifier(&id)
        .send()
        .await
        .expect("describe")
        .db_clusters()[0]
        .clone();
    assert_eq!(cluster.status(), Some("available"));
}
