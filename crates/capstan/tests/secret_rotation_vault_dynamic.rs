//! SecretRotation's `vaultDatabaseDynamicRole` target end to end: the manager (with the
//! chart's RBAC) against the real API server, OpenBao's database secrets engine and a
//! local PostgreSQL, with second-scale TTLs. Capstan declares the role, delivers the
//! credentials Vault issues, renews the lease on its deadline, obtains new credentials
//! before the maximum TTL, revokes the previous lease only after the delivery (the old
//! user can no longer log in), and replaces a lease revoked behind its back.

mod common;

use common::postgres::logs_in;
use common::rotation::{await_rotations_within, start};
use common::{bao, secret_data};

use std::time::Duration;

use capstan_secret_rotation::crd::{Lease, SecretRotation};
use capstan_testenv::{TempNamespace, TestEnv, await_condition};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use reqwest::Method;
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(60);

fn lease(o: &SecretRotation) -> Option<Lease> {
    o.status.as_ref()?.lease.clone()
}

/// The ids of the role's leases, listed as root.
async fn leases(vault: &capstan_testenv::Vault, prefix: &str) -> Vec<String> {
    let resp = reqwest::Client::new()
        .request(
            Method::from_bytes(b"LIST").expect("LIST"),
            format!("{}/v1/sys/leases/lookup/{prefix}/", vault.addr()),
        )
        .header("X-Vault-Token", vault.root_token())
        .send()
        .await
        .expect("list");
    if !resp.status().is_success() {
        return Vec::new();
    }
    let v: Value = resp.json().await.expect("json");
    v["data"]["keys"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(Value::as_str)
        .map(|k| format!("{prefix}/{k}"))
        .collect()
}

/// A namespace with a database mount of its own, PostgreSQL's admin Secret, and a
/// Vault connection scoped to the mount's roles named after this namespace.
struct Setup {
    kube: &'static capstan_testenv::Kube,
    vault: &'static capstan_testenv::Vault,
    pg: &'static capstan_testenv::Postgres,
    ns: TempNamespace,
    client: kube::Client,
    api: Api<SecretRotation>,
    secrets: Api<Secret>,
    db: String,
    mount: String,
    conn: String,
}

impl Setup {
    async fn new() -> Self {
        let env = TestEnv::get();
        let kube = env.kube().await.expect("kube");
        let vault = env.vault().await.expect("vault");
        let pg = env.postgres().await.expect("postgres");
        let ns = TempNamespace::create(kube).await.expect("ns");
        let client = kube.client().await;
        let api: Api<SecretRotation> = ns.api(client.clone());
        let secrets: Api<Secret> = ns.api(client.clone());
        let (db, _) = common::postgres::pg_setup(pg, &secrets, ns.name()).await;
        let mount = format!("dyn-{}", ns.name());
        bao(
            vault,
            Method::POST,
            &format!("sys/mounts/{mount}"),
            json!({ "type": "database" }),
        )
        .await;
        let conn = common::vault_connection(
            &client,
            vault,
            ns.name(),
            Some(json!([ { "vaultDatabase": { "roles": ["dyn-${namespace}/${namespace}-*"] } } ])),
        )
        .await;
        Self {
            kube,
            vault,
            pg,
            ns,
            client,
            api,
            secrets,
            db,
            mount,
            conn,
        }
    }

    /// A dynamic-credentials SecretRotation `name` delivering to Secret `name`.
    async fn rotation(&self, name: &str, ttl: &str, max_ttl: &str, renew_before: &str) {
        common::rotation::create_rotation(
            &self.api,
            name,
            json!({
                "backend": { "kubernetes": { "secretName": format!("{name}-store") } },
                "target": { "vaultDatabaseDynamicRole": {
                    "connectionRef": { "name": self.conn }, "mount": self.mount,
                    "host": "127.0.0.1", "port": self.pg.port(), "database": self.db, "sslMode": "disable",
                    "adminSecretRef": { "name": "pg-admin" },
                    "creationStatements": [
                        "CREATE ROLE \"{{name}}\" LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
                        format!("GRANT CONNECT ON DATABASE {} TO \"{{{{name}}}}\"", self.db)
                    ],
                    "defaultTtl": ttl, "maxTtl": max_ttl, "renewBefore": renew_before } },
                "strategy": { "singleUser": {} },
                "schedule": { "interval": "720h" },
                "delivery": { "secret": { "name": name } }
            }),
        )
        .await;
    }

    /// The role's lease prefix of SecretRotation `name`.
    fn prefix(&self, name: &str) -> String {
        format!("{}/creds/{}-{name}", self.mount, self.ns.name())
    }
}

#[tokio::test]
async fn dynamic_credentials_are_renewed_replaced_before_expiry_and_revoked_after_delivery() {
    let t = Setup::new().await;
    let (kube, vault, pg, ns, client, api, secrets, db) = (
        t.kube, t.vault, t.pg, &t.ns, &t.client, &t.api, &t.secrets, &t.db,
    );
    t.rotation("reports", "12s", "30s", "4s").await;
    let m = start(kube, ns.name(), "sr-vault-dynamic").await;
    let prefix = t.prefix("reports");

    // Rotation 1: Vault's user delivered and logging in; the lease in status by its
    // times and a hash, never its id.
    await_rotations_within(api, "reports", 1, &m, TIMEOUT).await;
    let first = secret_data(secrets, "reports").await;
    assert!(
        first["username"].starts_with("v-"),
        "a user Vault made: {first:?}"
    );
    assert!(logs_in(pg, db, &first["username"], &first["password"]));
    let o = api.get("reports").await.expect("get");
    let l1 = lease(&o).expect("lease in status");
    assert_eq!(
        (l1.max_expire_time - l1.issue_time).num_seconds(),
        30,
        "{l1:?}"
    );
    assert!(l1.next_renewal_time.is_some_and(|t| t < l1.expire_time));
    let ids = leases(vault, &prefix).await;
    assert_eq!(ids.len(), 1, "{ids:?}");
    let status = serde_json::to_string(&o.status).expect("json");
    let suffix = ids[0].rsplit('/').next().expect("suffix");
    assert!(!status.contains(suffix), "the lease id is in status");
    assert_eq!(
        l1.id_hash,
        capstan_secret_rotation::targets::lease_hash(&ids[0])
    );

    // Its deadline renews it: same lease, later expiry.
    let renewed = await_condition(
        api,
        "reports",
        |o: &SecretRotation| {
            lease(o).is_some_and(|l| l.id_hash == l1.id_hash && l.expire_time > l1.expire_time)
        },
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("not renewed: {e}\n{}", m.all_logs()));
    assert_eq!(
        lease(&renewed).map(|l| l.max_expire_time),
        Some(l1.max_expire_time)
    );
    assert!(logs_in(pg, db, &first["username"], &first["password"]));

    // Before the maximum TTL: new credentials delivered, then the previous lease
    // revoked (its user dropped).
    await_rotations_within(api, "reports", 2, &m, TIMEOUT).await;
    let second = secret_data(secrets, "reports").await;
    assert_ne!(second["username"], first["username"]);
    assert!(logs_in(pg, db, &second["username"], &second["password"]));
    let gone = async {
        for _ in 0..100 {
            if !logs_in(pg, db, &first["username"], &first["password"]) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    };
    assert!(gone.await, "the previous user still logs in");
    let o = api.get("reports").await.expect("get");
    let l2 = lease(&o).expect("lease");
    assert_ne!(l2.id_hash, l1.id_hash);
    let ids = leases(vault, &prefix).await;
    assert_eq!(ids.len(), 1, "only the delivered lease is left: {ids:?}");
    // Revoked only once the delivery completed: in the manager's log, the
    // revocation follows rotation 2's Deliver step.
    let lines: Vec<String> = m.all_logs().lines().map(str::to_owned).collect();
    let revoked_at = lines
        .iter()
        .position(|l| l.contains("revoked now that the new credentials are delivered"))
        .unwrap_or_else(|| panic!("no revocation logged:\n{}", m.all_logs()));
    let object = format!("{}/reports", ns.name());
    let delivered_before = common::rotation::step_lines(&lines[..revoked_at], &object)
        .into_iter()
        .filter(|l| l["step"] == "Deliver" && l["outcome"] == "done")
        .count();
    assert_eq!(
        delivered_before, 2,
        "the previous lease was revoked before the new credentials were delivered"
    );

    // Vault revokes the lease behind Capstan's back: noticed at its deadline and
    // replaced.
    bao(
        vault,
        Method::PUT,
        &format!("sys/leases/revoke-prefix/{prefix}"),
        json!({}),
    )
    .await;
    await_rotations_within(api, "reports", 3, &m, TIMEOUT).await;
    let third = secret_data(secrets, "reports").await;
    assert!(logs_in(pg, db, &third["username"], &third["password"]));
    let events = common::events_about(client, ns.name(), "reports").await;
    assert!(events.iter().any(|(r, _)| r == "LeaseLost"), "{events:?}");

    // Renewals counted; no deadline was reached only after its lease had expired.
    let (_, metrics) = m.get("/metrics").await;
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse::<f64>().ok())
    };
    assert!(
        value("capstan_secret_rotation_lease_renewals_total").is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    assert_eq!(
        value("capstan_secret_rotation_lease_deadlines_missed_total"),
        Some(0.0),
        "{metrics}"
    );

    // No password or lease id in the logs.
    let logs = m.all_logs();
    for p in [&first, &second, &third] {
        assert!(
            !logs.contains(p["password"].as_str()),
            "a password was logged"
        );
    }
    assert!(!logs.contains(suffix), "a lease id was logged");
    m.assert_no_forbidden();
}

/// Crash safety: a manager aborted right after Vault issued credentials (not yet
/// recorded), after their delivery (not yet finished), and after it revoked the
/// previous lease is followed by one that finishes: the delivered credentials log in
/// and, once the rotation is done, the role has exactly one lease, the delivered one.
/// The lease an interrupted attempt issued is revoked too: none is left unrecorded.
#[tokio::test]
async fn a_kill_after_issue_deliver_or_revoke_leaves_no_lease_behind() {
    let t = Setup::new().await;
    t.rotation("crash", "1h", "24h", "20m").await;
    let ns = t.ns.name().to_owned();
    let args = common::rotation::manager_args(&ns);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let prefix = t.prefix("crash");
    let points = [
        "secret-rotation::vault-dynamic-after-issue",
        "secret-rotation::after-Deliver",
        "secret-rotation::vault-dynamic-after-revoke",
    ];
    let mut previous: Option<std::collections::BTreeMap<String, String>> = None;
    for (i, point) in points.iter().enumerate() {
        let n = i64::try_from(i).expect("small") + 1;
        if n > 1 {
            common::rotation::rotate_now(&t.api, "crash", &format!("crash-{n}")).await;
        }
        common::crash_at(t.kube, &format!("sr-dyn-crash-{n}"), &args, point).await;
        let m = start(t.kube, &ns, &format!("sr-dyn-resume-{n}")).await;
        await_rotations_within(&t.api, "crash", n, &m, TIMEOUT).await;
        let delivered = secret_data(&t.secrets, "crash").await;
        assert!(
            logs_in(t.pg, &t.db, &delivered["username"], &delivered["password"]),
            "{point}: the delivered user logs in"
        );
        let o = await_condition(
            &t.api,
            "crash",
            |o: &SecretRotation| o.status.as_ref().is_some_and(|s| s.retiring.is_none()),
            TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| panic!("{point}: not retired: {e}\n{}", m.all_logs()));
        let ids = leases(t.vault, &prefix).await;
        assert_eq!(ids.len(), 1, "{point}: one lease left: {ids:?}");
        assert_eq!(
            lease(&o).map(|l| l.id_hash),
            Some(capstan_secret_rotation::targets::lease_hash(&ids[0])),
            "{point}: the one left is the delivered one"
        );
        if let Some(p) = &previous {
            assert!(
                !logs_in(t.pg, &t.db, &p["username"], &p["password"]),
                "{point}: the previous user is dropped"
            );
        }
        previous = Some(delivered);
        m.assert_no_forbidden();
    }
}
