//! The storage backends against real services: moto (AWS Secrets Manager), OpenBao (KV
//! v2) and kube-apiserver (Secrets). Every test uses its own secret, path or namespace.
//!
//! Each behaviour is one generic check run on each backend: `put_pending` is idempotent,
//! `promote` moves current to previous and is idempotent, `discard_pending` leaves current
//! alone, and a stale writer loses with `Conflict`. Every `Version` and error these calls
//! return is printed with `{:?}` and checked for the values.

use std::error::Error;

use capstan_core::redact::SecretValue;
use capstan_secret_rotation::backend::{
    AwsSecretsManagerBackend, BackendError, Credential, KubernetesSecretBackend, RotationId,
    SecretBackend, VaultClient, VaultKvBackend, Version,
};
use capstan_secret_rotation::crd;
use capstan_testenv::{TempNamespace, TestEnv};
use k8s_openapi::api::core::v1::Secret;
use rand::Rng;

type TestResult = Result<(), Box<dyn Error>>;

fn unique(prefix: &str) -> String {
    let n: u64 = rand::rng().random();
    format!("{prefix}-{n:016x}")
}

fn credential(tag: &str) -> Credential {
    Credential::new(
        Some("app_user".into()),
        SecretValue::new(unique(&format!("canary-{tag}"))),
    )
}

/// Collects `{:?}` of everything a backend returned, to check for values at the end.
#[derive(Default)]
struct Printed(Vec<String>);

impl Printed {
    fn version(&mut self, v: &Version) -> Version {
        self.0.push(format!("{v:?}"));
        v.clone()
    }

    fn error(&mut self, e: &BackendError) {
        self.0.push(format!("{e:?}"));
        self.0.push(e.to_string());
    }

    fn assert_no_value(&self, creds: &[&Credential]) {
        assert!(!self.0.is_empty());
        for p in &self.0 {
            for c in creds {
                assert!(!p.contains(c.value.expose()), "a value leaked into: {p}");
            }
        }
    }
}

/// The first rotation of a fresh backend: `c0` becomes current.
async fn first_rotation(
    b: &dyn SecretBackend,
    uid: &str,
    c0: &Credential,
) -> Result<Version, BackendError> {
    let id = RotationId::new(uid, 1, 1);
    b.put_pending(&id, c0).await?;
    let v = b.promote(&id).await?;
    assert_eq!(v.credential, *c0);
    Ok(v)
}

/// `put_pending` twice with the same id stores one value (the first), `pending` answers
/// only for that token, and readers still see the old current.
async fn put_pending_is_idempotent(
    b: &dyn SecretBackend,
) -> Result<(Version, Version), Box<dyn Error>> {
    let uid = unique("uid");
    let mut printed = Printed::default();
    let (c0, c1, other) = (credential("c0"), credential("c1"), credential("other"));
    let first = printed.version(&first_rotation(b, &uid, &c0).await?);
    let id = RotationId::new(&uid, 2, 1);
    let stored = printed.version(&b.put_pending(&id, &c1).await?);
    // A retry after a crash may come with a freshly generated value: the stored one wins.
    let again = printed.version(&b.put_pending(&id, &other).await?);
    assert_eq!(stored.id, again.id);
    assert_eq!(again.credential, c1);
    assert_eq!(stored.rotation_token.as_deref(), Some(id.token().as_str()));
    let pending = b
        .pending(&id)
        .await?
        .expect("pending value of the same token");
    assert_eq!(printed.version(&pending).credential, c1);
    assert!(b.pending(&RotationId::new(&uid, 2, 2)).await?.is_none());
    assert!(b.pending(&RotationId::new(&uid, 1, 1)).await?.is_none());
    let current = b.current().await?.expect("current");
    assert_eq!(
        printed.version(&current).credential,
        c0,
        "readers must not see pending"
    );
    printed.assert_no_value(&[&c0, &c1, &other]);
    Ok((first, stored))
}

/// `promote` moves pending to current and current to previous, twice gives the same.
async fn promote_moves_current_to_previous(b: &dyn SecretBackend) -> TestResult {
    let uid = unique("uid");
    let mut printed = Printed::default();
    let (c0, c1) = (credential("c0"), credential("c1"));
    let v0 = printed.version(&first_rotation(b, &uid, &c0).await?);
    let id = RotationId::new(&uid, 2, 1);
    b.put_pending(&id, &c1).await?;
    let promoted = printed.version(&b.promote(&id).await?);
    assert_eq!(promoted.credential, c1);
    assert_eq!(
        promoted.rotation_token.as_deref(),
        Some(id.token().as_str())
    );
    let current = printed.version(&b.current().await?.expect("current"));
    assert_eq!(current.id, promoted.id);
    assert_eq!(current.credential, c1);
    let previous = printed.version(&b.previous().await?.expect("previous"));
    assert_eq!(previous.credential, c0);
    assert_eq!(previous.id, v0.id);
    // Idempotent: a retry after a crash returns the current version, changes nothing.
    let again = printed.version(&b.promote(&id).await?);
    assert_eq!(again.id, promoted.id);
    assert_eq!(again.credential, c1);
    let again_with_old_expectation = b.promote_if_current(&id, Some(&v0.id)).await?;
    assert_eq!(printed.version(&again_with_old_expectation).id, promoted.id);
    assert!(b.pending(&id).await?.is_none());
    let previous = printed.version(&b.previous().await?.expect("previous"));
    assert_eq!(
        previous.credential, c0,
        "a repeated promote must not shift history"
    );
    printed.assert_no_value(&[&c0, &c1]);
    Ok(())
}

/// `discard_pending` drops the pending value and never touches current or previous.
async fn discard_leaves_current(b: &dyn SecretBackend) -> TestResult {
    let uid = unique("uid");
    let mut printed = Printed::default();
    let (c0, c1, c2) = (credential("c0"), credential("c1"), credential("c2"));
    first_rotation(b, &uid, &c0).await?;
    let id1 = RotationId::new(&uid, 2, 1);
    b.put_pending(&id1, &c1).await?;
    b.promote(&id1).await?;
    let id2 = RotationId::new(&uid, 3, 1);
    b.put_pending(&id2, &c2).await?;
    b.discard_pending(&id2).await?;
    assert!(b.pending(&id2).await?.is_none());
    // Idempotent, and a discard of another token changes nothing.
    b.discard_pending(&id2).await?;
    b.discard_pending(&RotationId::new(&uid, 9, 9)).await?;
    let current = printed.version(&b.current().await?.expect("current"));
    assert_eq!(current.credential, c1);
    let previous = printed.version(&b.previous().await?.expect("previous"));
    assert_eq!(previous.credential, c0);
    // A discarded attempt cannot be promoted.
    let err = b.promote(&id2).await.expect_err("discarded value promoted");
    printed.error(&err);
    assert!(err.is_conflict(), "{err:?}");
    printed.assert_no_value(&[&c0, &c1, &c2]);
    Ok(())
}

/// A stale Capstan whose pending value was replaced by a newer attempt, or that expects
/// a current version that changed, loses with `Conflict` and changes nothing.
async fn stale_writer_loses(b: &dyn SecretBackend) -> TestResult {
    let uid = unique("uid");
    let mut printed = Printed::default();
    let (c0, stale, fresh) = (credential("c0"), credential("stale"), credential("fresh"));
    let v0 = printed.version(&first_rotation(b, &uid, &c0).await?);
    let stale_id = RotationId::new(&uid, 2, 1);
    let fresh_id = RotationId::new(&uid, 2, 2);
    b.put_pending(&stale_id, &stale).await?;
    // The new leader gives up attempt 1 and stores attempt 2's value.
    b.put_pending(&fresh_id, &fresh).await?;
    assert!(b.pending(&stale_id).await?.is_none());
    let err = b.promote(&stale_id).await.expect_err("stale promote won");
    printed.error(&err);
    assert!(err.is_conflict() && !err.is_transient(), "{err:?}");
    assert_eq!(err.reason(), "BackendConflict");
    let err = b
        .promote_if_current(&fresh_id, Some("not-the-current-version"))
        .await
        .expect_err("promote with a wrong expected current won");
    printed.error(&err);
    assert!(err.is_conflict(), "{err:?}");
    let err = b
        .promote_if_current(&fresh_id, None)
        .await
        .expect_err("promote expecting no current value won");
    assert!(err.is_conflict(), "{err:?}");
    let current = printed.version(&b.current().await?.expect("current"));
    assert_eq!(current.credential, c0, "a lost claim must change nothing");
    let promoted = printed.version(&b.promote_if_current(&fresh_id, Some(&v0.id)).await?);
    assert_eq!(promoted.credential, fresh);
    assert_eq!(b.previous().await?.expect("previous").credential, c0);
    printed.assert_no_value(&[&c0, &stale, &fresh]);
    Ok(())
}

// ---- AWS Secrets Manager ----

async fn aws_backend()
-> Result<(AwsSecretsManagerBackend, aws_sdk_secretsmanager::Client), Box<dyn Error>> {
    let aws = TestEnv::get().aws().await?;
    let client = aws_sdk_secretsmanager::Client::new(&aws.sdk_config().await);
    let spec = crd::AwsSecretsManagerBackend {
        secret_id: unique("capstan-test"),
        kms_key_id: None,
    };
    Ok((
        AwsSecretsManagerBackend::from_client(client.clone(), &spec),
        client,
    ))
}

async fn aws_versions(
    client: &aws_sdk_secretsmanager::Client,
    id: &str,
) -> Result<Vec<(String, Vec<String>)>, Box<dyn Error>> {
    let out = client
        .list_secret_version_ids()
        .secret_id(id)
        .include_deprecated(true)
        .send()
        .await?;
    Ok(out
        .versions()
        .iter()
        .map(|v| {
            (
                v.version_id().unwrap_or_default().to_owned(),
                v.version_stages().to_vec(),
            )
        })
        .collect())
}

/// Twice the same ClientRequestToken: ListSecretVersionIds shows one new version, labelled
/// AWSPENDING only, whose VersionId is the token.
#[tokio::test]
async fn aws_put_pending_is_idempotent_one_version_per_token() -> TestResult {
    let (b, client) = aws_backend().await?;
    let (first, stored) = put_pending_is_idempotent(&b).await?;
    let versions = aws_versions(&client, b.secret_id()).await?;
    assert_eq!(versions.len(), 2, "{versions:?}");
    let new = versions
        .iter()
        .find(|(id, _)| *id == stored.id)
        .expect("the pending version is listed");
    assert_eq!(new.1, vec!["AWSPENDING".to_owned()]);
    assert_eq!(Some(&stored.id), stored.rotation_token.as_ref());
    let old = versions
        .iter()
        .find(|(id, _)| *id == first.id)
        .expect("first");
    assert_eq!(old.1, vec!["AWSCURRENT".to_owned()]);
    Ok(())
}

#[tokio::test]
async fn aws_promote_moves_awscurrent_and_awsprevious() -> TestResult {
    let (b, client) = aws_backend().await?;
    promote_moves_current_to_previous(&b).await?;
    let versions = aws_versions(&client, b.secret_id()).await?;
    let labels: Vec<_> = versions.iter().flat_map(|(_, s)| s.clone()).collect();
    assert!(!labels.iter().any(|l| l == "AWSPENDING"), "{versions:?}");
    assert_eq!(labels.iter().filter(|l| *l == "AWSCURRENT").count(), 1);
    assert_eq!(labels.iter().filter(|l| *l == "AWSPREVIOUS").count(), 1);
    Ok(())
}

#[tokio::test]
async fn aws_discard_pending_leaves_current() -> TestResult {
    let (b, _) = aws_backend().await?;
    discard_leaves_current(&b).await
}

#[tokio::test]
async fn aws_stale_writer_loses_the_awspending_claim() -> TestResult {
    let (b, _) = aws_backend().await?;
    stale_writer_loses(&b).await
}

/// AWS's own layout: keys of the current value other than username/password (host,
/// port, ...) are carried into the new version.
#[tokio::test]
async fn aws_new_versions_keep_the_other_keys_of_the_current_value() -> TestResult {
    let (b, client) = aws_backend().await?;
    client
        .create_secret()
        .name(b.secret_id())
        .secret_string(
            r#"{"username":"app_user","password":"initial-x","host":"db.internal","port":5432}"#,
        )
        .send()
        .await?;
    let uid = unique("uid");
    let id = RotationId::new(&uid, 1, 1);
    let c1 = credential("c1");
    b.put_pending(&id, &c1).await?;
    b.promote(&id).await?;
    // By label: moto answers a GetSecretValue without one from a default it does not move.
    let now = client
        .get_secret_value()
        .secret_id(b.secret_id())
        .version_stage("AWSCURRENT")
        .send()
        .await?;
    let doc: serde_json::Value = serde_json::from_str(now.secret_string().unwrap_or_default())?;
    assert_eq!(doc["host"], "db.internal");
    assert_eq!(doc["port"], 5432);
    assert_eq!(doc["password"], c1.value.expose());
    assert_eq!(
        b.previous()
            .await?
            .expect("previous")
            .credential
            .value
            .expose(),
        "initial-x"
    );
    Ok(())
}

// ---- Vault / OpenBao KV v2 ----

async fn vault_backend(path: &str) -> Result<VaultKvBackend, Box<dyn Error>> {
    let vault = TestEnv::get().vault().await?;
    let client = VaultClient::new(
        vault.addr(),
        SecretValue::new(vault.root_token()),
        None,
        None,
    )?;
    let spec = crd::VaultBackend {
        mount: "secret".into(),
        path: path.to_owned(),
        pending_path: None,
    };
    Ok(VaultKvBackend::new(client, &spec)?)
}

async fn vault_http(
    method: reqwest::Method,
    api: &str,
    body: Option<serde_json::Value>,
) -> Result<(u16, serde_json::Value), Box<dyn Error>> {
    let vault = TestEnv::get().vault().await?;
    let mut req = reqwest::Client::new()
        .request(method, format!("{}/v1/{api}", vault.addr()))
        .header("X-Vault-Token", vault.root_token());
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or_default()))
}

#[tokio::test]
async fn vault_put_pending_is_idempotent_and_never_writes_the_real_path() -> TestResult {
    let path = unique("apps/db");
    let b = vault_backend(&path).await?;
    put_pending_is_idempotent(&b).await?;
    // The real path has exactly the one promoted version; the pending value is elsewhere.
    let (_, meta) = vault_http(
        reqwest::Method::GET,
        &format!("secret/metadata/{path}"),
        None,
    )
    .await?;
    assert_eq!(meta["data"]["current_version"], 1, "{meta}");
    Ok(())
}

#[tokio::test]
async fn vault_promote_writes_one_new_version_with_cas() -> TestResult {
    let path = unique("apps/db");
    let b = vault_backend(&path).await?;
    promote_moves_current_to_previous(&b).await?;
    let (_, meta) = vault_http(
        reqwest::Method::GET,
        &format!("secret/metadata/{path}"),
        None,
    )
    .await?;
    assert_eq!(meta["data"]["current_version"], 2, "{meta}");
    Ok(())
}

#[tokio::test]
async fn vault_discard_pending_leaves_current() -> TestResult {
    let b = vault_backend(&unique("apps/db")).await?;
    discard_leaves_current(&b).await
}

#[tokio::test]
async fn vault_stale_writer_loses() -> TestResult {
    let b = vault_backend(&unique("apps/db")).await?;
    stale_writer_loses(&b).await
}

/// With `max_versions = 3` on the real path, many failed attempts (put_pending then
/// discard) never push current or previous out of its history; the pending key keeps one
/// version, so values of failed attempts do not linger there either.
#[tokio::test]
async fn vault_failed_attempts_never_push_current_or_previous_out_of_history() -> TestResult {
    let path = unique("apps/db");
    let b = vault_backend(&path).await?;
    let (status, body) = vault_http(
        reqwest::Method::POST,
        &format!("secret/metadata/{path}"),
        Some(serde_json::json!({ "max_versions": 3 })),
    )
    .await?;
    assert!((200..300).contains(&status), "{status} {body}");
    let uid = unique("uid");
    let (c0, c1) = (credential("c0"), credential("c1"));
    first_rotation(&b, &uid, &c0).await?;
    let id = RotationId::new(&uid, 2, 1);
    b.put_pending(&id, &c1).await?;
    b.promote(&id).await?;
    let mut failed = Vec::new();
    for attempt in 1..=8 {
        let id = RotationId::new(&uid, 3, attempt);
        let c = credential(&format!("failed{attempt}"));
        b.put_pending(&id, &c).await?;
        b.discard_pending(&id).await?;
        failed.push(c);
    }
    assert_eq!(b.current().await?.expect("current").credential, c1);
    assert_eq!(b.previous().await?.expect("previous").credential, c0);
    let (_, meta) = vault_http(
        reqwest::Method::GET,
        &format!("secret/metadata/{path}"),
        None,
    )
    .await?;
    assert_eq!(meta["data"]["current_version"], 2, "{meta}");
    // The pending key: one version kept, and it holds none of the failed values.
    let pending = b.pending_path().to_owned();
    let (_, pmeta) = vault_http(
        reqwest::Method::GET,
        &format!("secret/metadata/{pending}"),
        None,
    )
    .await?;
    assert_eq!(pmeta["data"]["max_versions"], 1, "{pmeta}");
    let live = pmeta["data"]["versions"]
        .as_object()
        .map(|v| {
            v.values()
                .filter(|x| x["destroyed"] == false && x["deletion_time"] == "")
                .count()
        })
        .unwrap_or(0);
    assert_eq!(live, 1, "{pmeta}");
    let (_, latest) = vault_http(
        reqwest::Method::GET,
        &format!("secret/data/{pending}"),
        None,
    )
    .await?;
    for c in &failed {
        assert!(!latest.to_string().contains(c.value.expose()));
    }
    Ok(())
}

/// A reader of the real path only ever sees tested values: between put_pending and
/// promote it reads the old value, and the pending path is a different key.
#[tokio::test]
async fn vault_readers_of_the_path_never_see_the_pending_value() -> TestResult {
    let path = unique("apps/db");
    let b = vault_backend(&path).await?;
    assert_eq!(b.pending_path(), format!("capstan-pending/{path}"));
    let uid = unique("uid");
    let c0 = credential("c0");
    first_rotation(&b, &uid, &c0).await?;
    let c1 = credential("c1");
    b.put_pending(&RotationId::new(&uid, 2, 1), &c1).await?;
    let (_, read) = vault_http(reqwest::Method::GET, &format!("secret/data/{path}"), None).await?;
    assert_eq!(read["data"]["data"]["password"], c0.value.expose());
    assert_eq!(read["data"]["data"]["username"], "app_user");
    assert!(!read.to_string().contains(c1.value.expose()));
    Ok(())
}

// ---- Kubernetes Secrets ----

async fn kube_backend()
-> Result<(KubernetesSecretBackend, TempNamespace, kube::Client), Box<dyn Error>> {
    let kube = TestEnv::get().kube().await?;
    let ns = TempNamespace::create(kube).await?;
    let client = kube.client().await;
    let spec = crd::KubernetesBackend {
        secret_name: "db-credentials".into(),
        key: "password".into(),
        pending_secret_name: None,
    };
    let b = KubernetesSecretBackend::new(client.clone(), ns.name(), &spec);
    Ok((b, ns, client))
}

#[tokio::test]
async fn kubernetes_put_pending_is_idempotent_in_the_pending_secret() -> TestResult {
    let (b, ns, client) = kube_backend().await?;
    let (_, stored) = put_pending_is_idempotent(&b).await?;
    let pending = ns
        .api::<Secret>(client)
        .get("db-credentials-pending")
        .await?;
    assert_eq!(
        pending
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("capstan.dev/rotation-token")),
        stored.rotation_token.as_ref()
    );
    assert!(pending.metadata.owner_references.is_none());
    Ok(())
}

#[tokio::test]
async fn kubernetes_promote_keeps_previous_under_a_second_key() -> TestResult {
    let (b, ns, client) = kube_backend().await?;
    promote_moves_current_to_previous(&b).await?;
    let api = ns.api::<Secret>(client);
    let main = api.get("db-credentials").await?;
    let keys: Vec<_> = main.data.unwrap_or_default().into_keys().collect();
    assert_eq!(
        keys,
        [
            "password",
            "password.previous",
            "username",
            "username.previous"
        ]
    );
    // The pending Secret is emptied, never deleted.
    let pending = api.get("db-credentials-pending").await?;
    assert!(pending.data.unwrap_or_default().is_empty());
    Ok(())
}

#[tokio::test]
async fn kubernetes_discard_pending_leaves_current() -> TestResult {
    let (b, _ns, _) = kube_backend().await?;
    discard_leaves_current(&b).await
}

#[tokio::test]
async fn kubernetes_stale_writer_loses() -> TestResult {
    let (b, _ns, _) = kube_backend().await?;
    stale_writer_loses(&b).await
}
