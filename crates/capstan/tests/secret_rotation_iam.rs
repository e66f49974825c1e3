//! SecretRotation's `iamAccessKey` target end to end: the manager (with the chart's
//! RBAC) against the real API server and a moto server that enforces IAM
//! authentication (`TestEnv::aws_iam_enforced`: unknown, deleted and, through the
//! harness's model, inactive keys are refused; signatures are checked). So "the old key
//! no longer works" is a real STS call refused, not a flag read back.

mod common;

use common::rotation::{await_rotations, ready_reason, rotate_now, start};
use common::secret_data;

use std::time::Duration;

use capstan_aws::iam::sdk as iam;
use capstan_secret_rotation::crd::SecretRotation;
use capstan_testenv::{TempNamespace, TestEnv, await_condition};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(90);

struct Setup {
    kube: &'static capstan_testenv::Kube,
    aws: &'static capstan_testenv::Aws,
    ns: TempNamespace,
    api: Api<SecretRotation>,
    secrets: Api<Secret>,
    iam: iam::Client,
    conn: String,
}

impl Setup {
    async fn new() -> Self {
        let env = TestEnv::get();
        let kube = env.kube().await.expect("kube");
        let aws = env.aws_iam_enforced().await.expect("aws with IAM enforced");
        let ns = TempNamespace::create(kube).await.expect("ns");
        let client = kube.client().await;
        let secrets: Api<Secret> = ns.api(client.clone());
        let (id, secret) = aws.access_key();
        let creds: Secret = serde_json::from_value(json!({
            "metadata": { "name": "aws-iam-creds" },
            "stringData": { "AWS_ACCESS_KEY_ID": id, "AWS_SECRET_ACCESS_KEY": secret }
        }))
        .expect("secret");
        secrets
            .create(&PostParams::default(), &creds)
            .await
            .expect("creds");
        let conn = format!("aws-iam-{}", ns.name());
        let c: capstan_core::connection::ClusterConnection = serde_json::from_value(json!({
            "apiVersion": "capstan.dev/v1alpha1", "kind": "ClusterConnection",
            "metadata": { "name": conn },
            "spec": {
                "allowedNamespaces": { "names": [ns.name()] },
                // Each namespace only its own service users: never an administrator.
                "scopes": [ { "iam": { "users": ["/services/${namespace}/*"] } } ],
                "aws": {
                    "region": aws.region(),
                    "endpointUrl": aws.endpoint_url(),
                    "credentialsSecretRef": { "name": "aws-iam-creds" }
                }
            }
        }))
        .expect("connection");
        Api::<capstan_core::connection::ClusterConnection>::all(client.clone())
            .create(&PostParams::default(), &c)
            .await
            .expect("create connection");
        Self {
            kube,
            aws,
            api: ns.api(client.clone()),
            secrets,
            iam: iam::Client::new(&aws.sdk_config().await),
            ns,
            conn,
        }
    }

    /// A user at `path` with `keys` access keys (their ids and secrets, oldest first).
    async fn user(&self, name: &str, path: &str, keys: usize) -> Vec<(String, String)> {
        self.iam
            .create_user()
            .user_name(name)
            .path(path)
            .send()
            .await
            .expect("create user");
        let mut out = Vec::new();
        for _ in 0..keys {
            let k = self
                .iam
                .create_access_key()
                .user_name(name)
                .send()
                .await
                .expect("create key");
            let k = k.access_key().expect("key");
            out.push((
                k.access_key_id().to_owned(),
                k.secret_access_key().to_owned(),
            ));
            // Distinct CreateDates (whole seconds) for the older/newer rules.
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        out
    }

    async fn keys(&self, user: &str) -> Vec<(String, bool)> {
        self.iam
            .list_access_keys()
            .user_name(user)
            .send()
            .await
            .expect("list keys")
            .access_key_metadata()
            .iter()
            .map(|k| {
                (
                    k.access_key_id().unwrap_or_default().to_owned(),
                    k.status() == Some(&iam::types::StatusType::Active),
                )
            })
            .collect()
    }

    /// Whether STS accepts a call signed with this key (as the user it belongs to).
    async fn works(&self, id: &str, secret: &str) -> bool {
        let creds = aws_credential_types::Credentials::new(id, secret, None, None, "test");
        let config = self
            .aws
            .sdk_config()
            .await
            .into_builder()
            .credentials_provider(
                aws_credential_types::provider::SharedCredentialsProvider::new(creds),
            )
            .build();
        aws_sdk_sts::Client::new(&config)
            .get_caller_identity()
            .send()
            .await
            .is_ok()
    }

    async fn rotation(&self, name: &str, user: &str, grace: &str) {
        common::rotation::create_rotation(
            &self.api,
            name,
            json!({
                "backend": { "kubernetes": { "secretName": format!("{name}-store") } },
                "target": { "iamAccessKey": {
                    "connectionRef": { "name": self.conn },
                    "userName": user,
                    "gracePeriod": grace
                } },
                "strategy": { "singleUser": {} },
                "schedule": { "interval": "1h" },
                "delivery": { "secret": {
                    "name": format!("{name}-app"),
                    "template": {
                        "AWS_ACCESS_KEY_ID": "{{ username }}",
                        "AWS_SECRET_ACCESS_KEY": "{{ password }}"
                    }
                } }
            }),
        )
        .await;
    }

    async fn status_until(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&SecretRotation) -> bool,
        m: &common::Manager,
    ) -> SecretRotation {
        await_condition(&self.api, name, pred, TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{name}: not {what}: {e}\n{}", m.all_logs()))
    }

    async fn events(&self, name: &str) -> Vec<(String, String)> {
        common::events_about(&self.kube.client().await, self.ns.name(), name).await
    }
}

fn retiring(o: &SecretRotation) -> Option<Value> {
    o.status
        .as_ref()
        .and_then(|s| s.retiring.as_ref())
        .map(|r| serde_json::to_value(r).expect("json"))
}

/// A user's key is rotated: the new key is stored, tested and delivered; the old one is
/// deactivated (STS refuses it) and deleted after the grace period (refused again),
/// not before; twice; no secret anywhere Capstan reports.
#[tokio::test]
async fn an_access_key_rotates_and_the_old_one_is_refused_once_deactivated_and_deleted() {
    let t = Setup::new().await;
    let ns = t.ns.name().to_owned();
    let user = format!("reporting-{ns}");
    let initial = t.user(&user, &format!("/services/{ns}/"), 1).await;
    assert!(t.works(&initial[0].0, &initial[0].1).await);
    t.rotation("reporting", &user, "4s").await;
    let m = start(t.kube, &ns, "sr-iam").await;
    let mut old = initial[0].clone();
    let mut secrets = vec![];
    for n in 1..=2 {
        if n > 1 {
            rotate_now(&t.api, "reporting", "again").await;
        }
        await_rotations(&t.api, "reporting", n, &m).await;
        let store = secret_data(&t.secrets, "reporting-store").await;
        let app = secret_data(&t.secrets, "reporting-app").await;
        let new = (store["username"].clone(), store["password"].clone());
        assert_eq!(app["AWS_ACCESS_KEY_ID"], new.0, "rotation {n}: delivered");
        assert_eq!(
            app["AWS_SECRET_ACCESS_KEY"], new.1,
            "rotation {n}: delivered"
        );
        assert_ne!(new.0, old.0, "rotation {n}: a new key");
        assert!(
            t.works(&new.0, &new.1).await,
            "rotation {n}: the new key works"
        );
        let deactivated = t
            .status_until(
                "reporting",
                "deactivated",
                |o| retiring(o).is_some_and(|r| r["deactivated"] == json!(true)),
                &m,
            )
            .await;
        let delete_after = retiring(&deactivated).expect("retiring")["deleteAfter"].clone();
        assert!(
            !t.works(&old.0, &old.1).await,
            "rotation {n}: the old key is refused once deactivated"
        );
        let keys: std::collections::BTreeSet<_> = t.keys(&user).await.into_iter().collect();
        assert_eq!(
            keys,
            [(old.0.clone(), false), (new.0.clone(), true)].into(),
            "rotation {n}: the old key is kept, inactive, during the grace period"
        );
        t.status_until("reporting", "retired", |o| retiring(o).is_none(), &m)
            .await;
        let deleted_at = chrono::Utc::now();
        let due: chrono::DateTime<chrono::Utc> =
            serde_json::from_value(delete_after).expect("time");
        assert!(
            deleted_at >= due,
            "rotation {n}: deleted before its grace ended"
        );
        assert_eq!(t.keys(&user).await, vec![(new.0.clone(), true)]);
        assert!(
            !t.works(&old.0, &old.1).await,
            "rotation {n}: the old key is refused once deleted"
        );
        secrets.push(new.1.clone());
        old = new;
    }
    let reasons: Vec<String> = t
        .events("reporting")
        .await
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert!(
        reasons.iter().any(|r| r == "PreviousCredentialDeactivated"),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r == "PreviousCredentialDeleted"),
        "{reasons:?}"
    );
    let obj = t.api.get("reporting").await.expect("get");
    let status = serde_json::to_string(&obj.status).expect("json");
    let events = format!("{:?}", t.events("reporting").await);
    let logs = m.all_logs();
    for s in &secrets {
        assert!(!status.contains(s.as_str()), "a secret key in the status");
        assert!(!events.contains(s.as_str()), "a secret key in an Event");
        assert!(!logs.contains(s.as_str()), "a secret key in the logs");
    }
    m.assert_no_forbidden();
}

/// Two keys at the start: the inactive older one Capstan does not hold is deleted to
/// make room (never a third key); two active keys that are not Capstan's are refused
/// with a message naming them, and nothing is created or deleted.
#[tokio::test]
async fn two_keys_at_the_start_make_room_or_are_refused() {
    let t = Setup::new().await;
    let ns = t.ns.name().to_owned();
    let path = format!("/services/{ns}/");
    // One active key in use and an inactive leftover.
    let roomy = format!("roomy-{ns}");
    let keys = t.user(&roomy, &path, 2).await;
    t.iam
        .update_access_key()
        .user_name(&roomy)
        .access_key_id(&keys[0].0)
        .status(iam::types::StatusType::Inactive)
        .send()
        .await
        .expect("deactivate");
    // Two active keys Capstan knows nothing of.
    let full = format!("full-{ns}");
    let full_keys = t.user(&full, &path, 2).await;
    t.rotation("roomy", &roomy, "1h").await;
    t.rotation("full", &full, "1h").await;
    let m = start(t.kube, &ns, "sr-iam-two").await;
    await_rotations(&t.api, "roomy", 1, &m).await;
    let stored = secret_data(&t.secrets, "roomy-store").await["username"].clone();
    let now: Vec<String> = t.keys(&roomy).await.into_iter().map(|k| k.0).collect();
    assert_eq!(now.len(), 2, "never a third key: {now:?}");
    assert!(
        !now.contains(&keys[0].0),
        "the inactive leftover was deleted"
    );
    assert!(now.contains(&keys[1].0) && now.contains(&stored));
    // Refused in CreatePending, before anything is created: the rotation retries
    // (Rotating=True, Retrying) with the reason and message in lastFailure.
    let refused = t
        .status_until(
            "full",
            "refused",
            |o| {
                o.status
                    .as_ref()
                    .and_then(|s| s.last_failure.as_ref())
                    .is_some_and(|f| f.reason() == "TargetInvalid")
            },
            &m,
        )
        .await;
    let message = serde_json::to_string(&refused.status).expect("json");
    assert!(
        message.contains(&full_keys[0].0) && message.contains("IAM allows two"),
        "{message}"
    );
    let left: Vec<String> = t.keys(&full).await.into_iter().map(|k| k.0).collect();
    assert_eq!(left, vec![full_keys[0].0.clone(), full_keys[1].0.clone()]);
}

/// A user that does not exist, and one outside the namespace's path, are refused before
/// any change: `TargetInvalid` naming NoSuchEntity, and `ResourceNotAllowed` naming the
/// user; the other user's keys stay as they were.
#[tokio::test]
async fn a_missing_user_and_another_namespaces_user_change_nothing() {
    let t = Setup::new().await;
    let ns = t.ns.name().to_owned();
    let admin = format!("admin-{ns}");
    let admin_keys = t.user(&admin, "/", 1).await;
    t.rotation("admin", &admin, "1h").await;
    t.rotation("ghost", &format!("ghost-{ns}"), "1h").await;
    let m = start(t.kube, &ns, "sr-iam-refused").await;
    let refused = t
        .status_until(
            "admin",
            "refused",
            |o| ready_reason(o).is_some_and(|(s, r)| s == "False" && r == "ResourceNotAllowed"),
            &m,
        )
        .await;
    let message = serde_json::to_string(&refused.status).expect("json");
    assert!(
        message.contains(&format!("/{admin}")),
        "names the user: {message}"
    );
    t.status_until(
        "ghost",
        "refused",
        |o| ready_reason(o).is_some_and(|(s, r)| s == "False" && r == "TargetInvalid"),
        &m,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(t.keys(&admin).await, vec![(admin_keys[0].0.clone(), true)]);
    m.assert_no_forbidden();
}

/// Crash safety: a manager aborted after each side effect (the key made and not stored;
/// stored and not recorded; promoted; delivered) is followed by one that finishes the
/// rotation. After each: the stored key works, the user never has more than two keys,
/// and once retired exactly one.
#[tokio::test]
async fn a_kill_after_each_side_effect_never_makes_a_third_key() {
    let t = Setup::new().await;
    let ns = t.ns.name().to_owned();
    let user = format!("crash-{ns}");
    t.user(&user, &format!("/services/{ns}/"), 1).await;
    t.rotation("crash", &user, "1s").await;
    let args = common::rotation::manager_args(&ns);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let points = [
        "secret-rotation::iam-after-create-key",
        "secret-rotation::after-CreatePending",
        "secret-rotation::after-Finish",
        "secret-rotation::after-Deliver",
    ];
    for (i, point) in points.iter().enumerate() {
        let n = i64::try_from(i).expect("small") + 1;
        if n > 1 {
            rotate_now(&t.api, "crash", &format!("crash-{n}")).await;
        }
        common::crash_at(t.kube, &format!("sr-iam-crash-{n}"), &args, point).await;
        assert!(t.keys(&user).await.len() <= 2, "{point}: at most two keys");
        let m = start(t.kube, &ns, &format!("sr-iam-resume-{n}")).await;
        await_rotations(&t.api, "crash", n, &m).await;
        let store = secret_data(&t.secrets, "crash-store").await;
        assert!(
            t.works(&store["username"], &store["password"]).await,
            "{point}: the stored key works"
        );
        t.status_until("crash", "retired", |o| retiring(o).is_none(), &m)
            .await;
        assert_eq!(
            t.keys(&user).await,
            vec![(store["username"].clone(), true)],
            "{point}: only the stored key is left"
        );
    }
}
