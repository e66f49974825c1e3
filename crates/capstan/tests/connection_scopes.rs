//! Tenant scope inside a connection: a namespace that a ClusterConnection allows may
//! still touch only the Secrets Manager secrets, Vault KV paths and ECS services its
//! `scopes` grant. Each test plays a tenant reaching for another team's resource through
//! a shared connection, with the manager as a real process against the real API server,
//! moto and OpenBao: the object gets `Ready=False`, reason `ResourceNotAllowed`, naming
//! the connection and the resource, and nothing changes in the backend or the service;
//! the tenant's own resources, in the same connection, work.

#![allow(clippy::unwrap_used)]

mod common;

use common::rotation::create;

use std::time::Duration;

use aws_sdk_secretsmanager as sm;
use capstan_aws::ecs::sdk as ecs;
use capstan_core::conditions::find;
use capstan_core::connection::ClusterConnection;
use capstan_secret_rotation::crd::SecretRotation;
use capstan_service_scaling::crd::ServiceScaling;
use capstan_testenv::{TempNamespace, TestEnv, await_condition};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(60);
/// How long the tests watch for a late side effect after a refusal.
const SETTLE: Duration = Duration::from_secs(3);
const REFUSED: &str = "ResourceNotAllowed";

fn ready(conditions: Option<&Vec<Condition>>) -> Option<Condition> {
    conditions.and_then(|c| find(c, "Ready")).cloned()
}

fn srot_ready(o: &SecretRotation) -> Option<Condition> {
    ready(o.status.as_ref().map(|s| &s.conditions))
}

fn refused_srot(o: &SecretRotation) -> bool {
    srot_ready(o).is_some_and(|c| c.status == "False" && c.reason == REFUSED)
}

fn current_srot(o: &SecretRotation) -> bool {
    srot_ready(o).is_some_and(|c| c.status == "True" && c.reason == "CredentialCurrent")
}

/// Waits until `name` is refused; checks both conditions and that the message names
/// the connection and every one of `names`; returns the message.
async fn await_refused(
    api: &Api<SecretRotation>,
    name: &str,
    connection: &str,
    names: &[&str],
    m: &common::Manager,
) -> String {
    let o = await_condition(api, name, refused_srot, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{name} not refused: {e}\n{}", m.all_logs()));
    let conditions = &o.status.as_ref().expect("status").conditions;
    let conn_ready = find(conditions, "ConnectionReady").expect("ConnectionReady");
    assert_eq!(
        (conn_ready.status.as_str(), conn_ready.reason.as_str()),
        ("False", REFUSED)
    );
    let msg = srot_ready(&o).expect("Ready").message;
    assert!(msg.contains(connection), "{name}: {msg}");
    for n in names {
        assert!(msg.contains(n), "{name}: {msg} does not name {n}");
    }
    msg
}

/// A ClusterConnection `name` allowing `namespace`, with `scopes` and `system` (`aws` or
/// `vault` settings).
async fn connection(
    client: &kube::Client,
    name: &str,
    namespace: &str,
    scopes: Value,
    system: Value,
) {
    let mut spec = json!({ "allowedNamespaces": { "names": [namespace] }, "scopes": scopes });
    for (k, v) in system.as_object().expect("system") {
        spec[k] = v.clone();
    }
    create(
        &Api::<ClusterConnection>::all(client.clone()),
        json!({
            "apiVersion": "capstan.dev/v1alpha1", "kind": "ClusterConnection",
            "metadata": { "name": name }, "spec": spec
        }),
    )
    .await;
}

fn aws_settings(aws: &capstan_testenv::Aws) -> Value {
    json!({ "aws": {
        "region": aws.region(),
        "endpointUrl": aws.endpoint_url(),
        "credentialsSecretRef": { "name": "aws-creds" }
    } })
}

async fn start(
    kube: &'static capstan_testenv::Kube,
    identity: &str,
    ns: &str,
    own: &str,
    controller: &str,
) -> common::Manager {
    common::start(
        kube,
        identity,
        &[
            "--leader-elect=false",
            "--controllers",
            controller,
            "--namespaces",
            ns,
            "--own-namespace",
            own,
        ],
    )
    .await
}

fn rotation(name: &str, connection: &str, backend: Value) -> Value {
    json!({
        "apiVersion": "capstan.dev/v1alpha1", "kind": "SecretRotation",
        "metadata": { "name": name },
        "spec": {
            "connectionRef": { "name": connection },
            "backend": backend,
            "target": { "none": {} },
            "schedule": { "interval": "720h" }
        }
    })
}

/// Every version of a secret with its staging labels.
async fn versions(client: &sm::Client, id: &str) -> Vec<(String, Vec<String>)> {
    let mut v: Vec<(String, Vec<String>)> = client
        .list_secret_version_ids()
        .secret_id(id)
        .include_deprecated(true)
        .send()
        .await
        .expect("list versions")
        .versions()
        .iter()
        .map(|v| {
            (
                v.version_id().unwrap_or_default().to_owned(),
                v.version_stages().to_vec(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Secrets Manager: with `${namespace}/*` granted, a tenant rotates its own secret; the
/// other team's secret, named by name or by ARN, and a secret it would create under the
/// other team's prefix are refused, and the other team's secret keeps its one version
/// and value (no AWSPENDING) while the second is never created.
#[tokio::test]
async fn secrets_manager_outside_the_scope_is_refused_and_untouched() {
    let env = TestEnv::get();
    let kube = env.kube().await.expect("kube");
    let aws = env.aws().await.expect("aws");
    let client = kube.client().await;
    let own = TempNamespace::create(kube).await.expect("own namespace");
    let ns = TempNamespace::create(kube).await.expect("tenant namespace");
    let n = ns.name().to_owned();
    common::aws_creds_secret(&client, own.name()).await;
    let conn = format!("scope-sm-{n}");
    connection(
        &client,
        &conn,
        &n,
        json!([{ "secretsManager": { "secrets": ["${namespace}/*"] } }]),
        aws_settings(aws),
    )
    .await;

    // The other team's secret, in the same account.
    let secrets = sm::Client::new(&aws.sdk_config().await);
    let victim = format!("victim-{n}/db");
    let created = secrets
        .create_secret()
        .name(&victim)
        .secret_string("the other team's password")
        .send()
        .await
        .expect("create victim secret");
    let victim_arn = created.arn().expect("arn").to_owned();
    let before = versions(&secrets, &victim).await;
    assert_eq!(before.len(), 1);
    let unborn = format!("victim-{n}/new");

    let api: Api<SecretRotation> = ns.api(client.clone());
    let sm_backend = |id: &str| json!({ "awsSecretsManager": { "secretId": id } });
    create(
        &api,
        rotation("mine", &conn, sm_backend(&format!("{n}/key"))),
    )
    .await;
    create(&api, rotation("by-name", &conn, sm_backend(&victim))).await;
    create(&api, rotation("by-arn", &conn, sm_backend(&victim_arn))).await;
    create(&api, rotation("unborn", &conn, sm_backend(&unborn))).await;
    // Nested below the tenant's prefix: `*` does not cross `/`.
    create(
        &api,
        rotation("nested", &conn, sm_backend(&format!("{n}/a/b"))),
    )
    .await;
    let m = start(kube, "scope-sm", &n, own.name(), "secret-rotation").await;

    await_condition(&api, "mine", current_srot, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("own secret not rotated: {e}\n{}", m.all_logs()));
    let msg = await_refused(&api, "by-name", &conn, &[&victim, &n], &m).await;
    assert_eq!(
        msg,
        format!(
            "ClusterConnection {conn:?} does not allow namespace {n:?} to use Secrets Manager secret {victim:?}"
        )
    );
    await_refused(&api, "by-arn", &conn, &[&victim_arn], &m).await;
    await_refused(&api, "unborn", &conn, &[&unborn], &m).await;
    await_refused(&api, "nested", &conn, &[&format!("{n}/a/b")], &m).await;

    tokio::time::sleep(SETTLE).await;
    assert_eq!(
        versions(&secrets, &victim).await,
        before,
        "versions changed"
    );
    let value = secrets
        .get_secret_value()
        .secret_id(&victim)
        .send()
        .await
        .expect("read victim");
    assert_eq!(value.secret_string(), Some("the other team's password"));
    for id in [unborn, format!("{n}/a/b")] {
        let err = secrets.describe_secret().secret_id(&id).send().await;
        assert!(err.is_err(), "{id} was created");
    }
    for name in ["by-name", "by-arn", "unborn", "nested"] {
        let o = api.get(name).await.expect("get");
        let st = o.status.expect("status");
        assert!(
            st.rotation.is_none() && st.rotation_count == 0,
            "{name}: {st:?}"
        );
    }
}

/// A Vault AppRole whose policy allows the whole `secret/` mount (the connection, not
/// Vault, is what separates the teams); returns the role ID and a secret ID.
async fn approle(vault: &capstan_testenv::Vault, mount: &str) -> (String, String) {
    let post = reqwest::Method::POST;
    let policy =
        "path \"secret/*\" { capabilities = [\"create\", \"read\", \"update\", \"list\"] }";
    common::bao(
        vault,
        post.clone(),
        &format!("sys/policies/acl/{mount}"),
        json!({ "policy": policy }),
    )
    .await;
    common::bao(
        vault,
        post.clone(),
        &format!("sys/auth/{mount}"),
        json!({ "type": "approle" }),
    )
    .await;
    common::bao(
        vault,
        post.clone(),
        &format!("auth/{mount}/role/capstan"),
        json!({ "token_ttl": "1h", "token_policies": [mount] }),
    )
    .await;
    let role_id = common::bao(
        vault,
        reqwest::Method::GET,
        &format!("auth/{mount}/role/capstan/role-id"),
        json!(null),
    )
    .await["data"]["role_id"]
        .as_str()
        .expect("role id")
        .to_owned();
    let secret_id = common::bao(
        vault,
        post,
        &format!("auth/{mount}/role/capstan/secret-id"),
        json!({}),
    )
    .await["data"]["secret_id"]
        .as_str()
        .expect("secret id")
        .to_owned();
    (role_id, secret_id)
}

/// The KV v2 metadata of `secret/<path>` (`Null` when it does not exist).
async fn kv_metadata(vault: &capstan_testenv::Vault, path: &str) -> Value {
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/secret/metadata/{path}", vault.addr()))
        .header("X-Vault-Token", vault.root_token())
        .send()
        .await
        .expect("metadata");
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Value::Null;
    }
    resp.json().await.expect("json")
}

/// Vault/OpenBao KV: with `secret/${namespace}/**` granted, the other team's path, an
/// explicit pendingPath onto it, and a `..` path out of the tenant's prefix (which the
/// HTTP client would resolve to the other team's path) are refused before Capstan even
/// logs in (no AppRole token exists while only refused objects exist); the other team's
/// secret keeps its version and value and gets no pending copy. Then the tenant's own
/// path rotates, through the same connection.
#[tokio::test]
async fn vault_outside_the_scope_is_refused_before_any_vault_call() {
    let env = TestEnv::get();
    let kube = env.kube().await.expect("kube");
    let vault = env.vault().await.expect("vault");
    let client = kube.client().await;
    let own = TempNamespace::create(kube).await.expect("own namespace");
    let ns = TempNamespace::create(kube).await.expect("tenant namespace");
    let n = ns.name().to_owned();
    let mount = format!("approle-scope-{n}");
    let (role_id, secret_id) = approle(vault, &mount).await;
    let creds: Secret = serde_json::from_value(json!({
        "metadata": { "name": "approle" }, "stringData": { "secret_id": secret_id }
    }))
    .expect("secret");
    Api::<Secret>::namespaced(client.clone(), own.name())
        .create(&PostParams::default(), &creds)
        .await
        .expect("secret id");
    let conn = format!("scope-vault-{n}");
    connection(
        &client,
        &conn,
        &n,
        json!([{ "vault": { "paths": ["secret/${namespace}/**"] } }]),
        json!({ "vault": { "address": vault.addr(), "auth": { "appRole": {
            "mountPath": mount, "roleId": role_id, "secretIdRef": { "name": "approle" }
        } } } }),
    )
    .await;
    // The other team's secret.
    let victim = format!("victim-{n}/card-key");
    common::bao(
        vault,
        reqwest::Method::POST,
        &format!("secret/data/{victim}"),
        json!({ "data": { "password": "the other team's key" } }),
    )
    .await;
    let before = kv_metadata(vault, &victim).await;
    assert_eq!(before["data"]["current_version"], json!(1));

    let api: Api<SecretRotation> = ns.api(client.clone());
    let kv = |path: &str| json!({ "vault": { "mount": "secret", "path": path } });
    create(&api, rotation("theirs", &conn, kv(&victim))).await;
    let mut pending_onto_theirs = kv(&format!("{n}/key"));
    pending_onto_theirs["vault"]["pendingPath"] = json!(victim);
    create(
        &api,
        rotation("pending-onto-theirs", &conn, pending_onto_theirs),
    )
    .await;
    // `**` grants everything below the tenant's prefix, but not a way out of it.
    let traversal = format!("{n}/../{victim}");
    create(&api, rotation("traversal", &conn, kv(&traversal))).await;
    let m = start(kube, "scope-vault", &n, own.name(), "secret-rotation").await;

    await_refused(&api, "theirs", &conn, &[&format!("secret/{victim}")], &m).await;
    await_refused(
        &api,
        "pending-onto-theirs",
        &conn,
        &[&format!("secret/{victim}")],
        &m,
    )
    .await;
    await_refused(
        &api,
        "traversal",
        &conn,
        &[&format!("secret/{traversal}")],
        &m,
    )
    .await;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(
        common::vault_tokens_from(vault, &mount).await,
        0,
        "Capstan logged in to Vault for a refused object"
    );
    let after = kv_metadata(vault, &victim).await;
    assert_eq!(after["data"]["current_version"], json!(1));
    assert_eq!(after["data"]["versions"], before["data"]["versions"]);
    let value = common::bao(
        vault,
        reqwest::Method::GET,
        &format!("secret/data/{victim}"),
        json!(null),
    )
    .await;
    assert_eq!(
        value["data"]["data"]["password"],
        json!("the other team's key")
    );
    assert_eq!(
        kv_metadata(vault, &format!("capstan-pending/{victim}")).await,
        Value::Null
    );

    // The tenant's own path, through the same connection: logs in and rotates.
    create(&api, rotation("mine", &conn, kv(&format!("{n}/key")))).await;
    await_condition(&api, "mine", current_srot, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("own path not rotated: {e}\n{}", m.all_logs()));
    assert_eq!(
        kv_metadata(vault, &format!("{n}/key")).await["data"]["current_version"],
        json!(1)
    );
}

async fn ecs_service(client: &ecs::Client, cluster: &str, service: &str, desired: i32) {
    client
        .create_cluster()
        .cluster_name(cluster)
        .send()
        .await
        .expect("create cluster");
    client
        .create_service()
        .cluster(cluster)
        .service_name(service)
        .desired_count(desired)
        .send()
        .await
        .expect("create service");
}

/// The desired count and deployment ids of a service.
async fn ecs_state(client: &ecs::Client, cluster: &str, service: &str) -> (i32, Vec<String>) {
    let out = client
        .describe_services()
        .cluster(cluster)
        .services(service)
        .send()
        .await
        .expect("describe");
    let s = out.services().first().expect("service");
    let mut ids: Vec<String> = s
        .deployments()
        .iter()
        .filter_map(|d| d.id().map(str::to_owned))
        .collect();
    ids.sort();
    (s.desired_count(), ids)
}

fn scaling(name: &str, connection: &str, cluster: &str, service: &str) -> Value {
    json!({
        "apiVersion": "capstan.dev/v1alpha1", "kind": "ServiceScaling",
        "metadata": { "name": name },
        "spec": {
            "connectionRef": { "name": connection },
            "service": { "cluster": cluster, "service": service },
            "minReplicas": 3,
            "maxReplicas": 4,
            "metrics": [{ "cpuUtilization": { "targetPercent": 50 } }],
            "evaluationInterval": "1s",
            "metricPeriodSeconds": 1,
            "metricLookbackSeconds": 3
        }
    })
}

/// ServiceScaling: with `${namespace}/*` granted, the tenant's own service is raised to
/// its minimum; the other team's service, named by name or by cluster ARN, is refused,
/// never read (no count in status) and keeps its desired count and deployments.
#[tokio::test]
async fn service_scaling_outside_the_scope_is_refused_and_the_service_untouched() {
    let env = TestEnv::get();
    let kube = env.kube().await.expect("kube");
    let aws = env.aws().await.expect("aws");
    let client = kube.client().await;
    let own = TempNamespace::create(kube).await.expect("own namespace");
    let ns = TempNamespace::create(kube).await.expect("tenant namespace");
    let n = ns.name().to_owned();
    common::aws_creds_secret(&client, own.name()).await;
    let conn = format!("scope-ss-{n}");
    connection(
        &client,
        &conn,
        &n,
        json!([{ "ecs": { "services": ["${namespace}/*"] } }]),
        aws_settings(aws),
    )
    .await;
    let ecs = ecs::Client::new(&aws.sdk_config().await);
    let victim = format!("victim-{n}");
    ecs_service(&ecs, &n, "web", 1).await;
    ecs_service(&ecs, &victim, "web", 1).await;
    let before = ecs_state(&ecs, &victim, "web").await;
    let victim_arn = format!(
        "arn:aws:ecs:{}:{}:cluster/{victim}",
        aws.region(),
        capstan_testenv::TEST_ACCOUNT_ID
    );

    let api: Api<ServiceScaling> = ns.api(client.clone());
    create(&api, scaling("mine", &conn, &n, "web")).await;
    create(&api, scaling("theirs", &conn, &victim, "web")).await;
    create(&api, scaling("theirs-by-arn", &conn, &victim_arn, "web")).await;
    let m = start(kube, "scope-ss", &n, own.name(), "service-scaling").await;

    // Own service: evaluated and raised to its minimum.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while ecs_state(&ecs, &n, "web").await.0 != 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "own service not scaled to its minimum\n{}",
            m.all_logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for name in ["theirs", "theirs-by-arn"] {
        let o = await_condition(
            &api,
            name,
            |o: &ServiceScaling| {
                ready(o.status.as_ref().map(|s| &s.conditions))
                    .is_some_and(|c| c.status == "False" && c.reason == REFUSED)
            },
            TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| panic!("{name} not refused: {e}\n{}", m.all_logs()));
        let st = o.status.as_ref().expect("status");
        let msg = &find(&st.conditions, "Ready").expect("Ready").message;
        assert!(
            msg.contains(&conn) && msg.contains(&n) && msg.contains("web"),
            "{msg}"
        );
        assert!(msg.contains(&victim), "{msg}");
        assert_eq!(st.current_replicas, None, "{name}: the service was read");
    }
    tokio::time::sleep(SETTLE).await;
    assert_eq!(ecs_state(&ecs, &victim, "web").await, before);
}

/// SecretRotation ECS delivery: a redeploy of the other team's service is refused before
/// anything is rotated, whether the ECS services go through a separate connection
/// (Kubernetes backend: not even the backend Secret is written) or through the object's
/// Secrets Manager connection (the secret is not created); the service keeps its
/// deployments. The tenant's own service, through the same connection, is redeployed.
#[tokio::test]
async fn ecs_delivery_outside_the_scope_is_refused_and_nothing_redeployed() {
    let env = TestEnv::get();
    let kube = env.kube().await.expect("kube");
    let aws = env.aws().await.expect("aws");
    let client = kube.client().await;
    let own = TempNamespace::create(kube).await.expect("own namespace");
    let ns = TempNamespace::create(kube).await.expect("tenant namespace");
    let n = ns.name().to_owned();
    common::aws_creds_secret(&client, own.name()).await;
    let conn = format!("scope-ecs-{n}");
    connection(
        &client,
        &conn,
        &n,
        json!([{
            "secretsManager": { "secrets": ["${namespace}/*"] },
            "ecs": { "services": ["${namespace}/*"] }
        }]),
        aws_settings(aws),
    )
    .await;
    let ecs = ecs::Client::new(&aws.sdk_config().await);
    let victim = format!("victim-{n}");
    ecs_service(&ecs, &n, "api", 1).await;
    ecs_service(&ecs, &victim, "api", 1).await;
    let before = ecs_state(&ecs, &victim, "api").await;
    let mine_before = ecs_state(&ecs, &n, "api").await;
    let secrets = sm::Client::new(&aws.sdk_config().await);

    let api: Api<SecretRotation> = ns.api(client.clone());
    let delivered = |name: &str, cluster: &str, separate: bool, backend: Value| {
        let mut o = rotation(name, &conn, backend);
        o["spec"]["strategy"] =
            json!({ "singleUser": { "acceptLoginFailuresUntilRestart": true } });
        o["spec"]["delivery"] =
            json!({ "ecsServices": [{ "cluster": cluster, "service": "api" }] });
        if separate {
            o["spec"]["delivery"]["ecsConnectionRef"] = json!({ "name": conn });
            o["spec"]
                .as_object_mut()
                .expect("spec")
                .remove("connectionRef");
        }
        o
    };
    let k8s = json!({ "kubernetes": { "secretName": "store" } });
    let own_secret = format!("{n}/key");
    create(&api, delivered("separate", &victim, true, k8s.clone())).await;
    create(
        &api,
        delivered(
            "same",
            &victim,
            false,
            json!({ "awsSecretsManager": { "secretId": own_secret } }),
        ),
    )
    .await;
    let m = start(kube, "scope-ecs", &n, own.name(), "secret-rotation").await;

    let service = format!("ECS service \"api\" of cluster \"{victim}\"");
    await_refused(&api, "separate", &conn, &[&service], &m).await;
    await_refused(&api, "same", &conn, &[&service], &m).await;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(ecs_state(&ecs, &victim, "api").await, before, "redeployed");
    let store = Api::<Secret>::namespaced(client.clone(), &n)
        .get_opt("store")
        .await
        .expect("get");
    assert!(store.is_none(), "the backend Secret was written");
    assert!(
        secrets
            .describe_secret()
            .secret_id(&own_secret)
            .send()
            .await
            .is_err(),
        "the Secrets Manager secret was created"
    );

    // The tenant's own service: delivered with one forced deployment.
    create(&api, delivered("mine", &n, true, k8s)).await;
    await_condition(
        &api,
        "mine",
        |o: &SecretRotation| o.status.as_ref().is_some_and(|s| s.rotation_count >= 1),
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("own service not delivered: {e}\n{}", m.all_logs()));
    let (_, ids) = ecs_state(&ecs, &n, "api").await;
    assert_ne!(ids, mine_before.1, "own service not redeployed");
    assert_eq!(ecs_state(&ecs, &victim, "api").await, before);
}

/// What admission refuses in `scopes`, with the message, and that a well-formed scope is
/// accepted (server-side dry run against the real API server).
#[tokio::test]
async fn malformed_scopes_are_refused_at_admission() {
    let kube = TestEnv::get().kube().await.expect("kube");
    let client = kube.client().await;
    let api: Api<ClusterConnection> = Api::all(client);
    let aws = json!({ "region": "eu-west-1" });
    let vault = json!({ "address": "https://vault.example.com", "auth": { "kubernetes": { "role": "capstan" } } });
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let attempt = |system: &str, settings: &Value, scopes: Value| {
        json!({
            "apiVersion": "capstan.dev/v1alpha1", "kind": "ClusterConnection",
            "metadata": { "name": "scope-admission" },
            "spec": { "allowedNamespaces": { "names": ["shop"] }, system: settings, "scopes": scopes }
        })
    };
    let cases = [
        (
            attempt("aws", &aws, json!([{ "vault": { "paths": ["secret/*"] } }])),
            "an aws connection's scopes grant secretsManager, ecs, rds and iam, not vault, transit or vaultDatabase",
        ),
        (
            attempt(
                "aws",
                &aws,
                json!([{ "vaultDatabase": { "roles": ["database/*"] } }]),
            ),
            "an aws connection's scopes grant secretsManager, ecs, rds and iam, not vault, transit or vaultDatabase",
        ),
        (
            attempt("vault", &vault, json!([{ "ecs": { "services": ["a/b"] } }])),
            "a vault connection's scopes grant vault, transit and vaultDatabase, not secretsManager, ecs, rds or iam",
        ),
        (
            attempt(
                "aws",
                &aws,
                json!([{ "secretsManager": { "secrets": ["a/***"] } }]),
            ),
            "*** is ambiguous",
        ),
        (
            attempt(
                "aws",
                &aws,
                json!([{ "secretsManager": { "secrets": ["${ns}/*"] } }]),
            ),
            "spec.scopes[0].secretsManager.secrets[0]",
        ),
        (
            attempt("aws", &aws, json!([{ "ecs": { "services": ["web"] } }])),
            "spec.scopes[0].ecs.services[0]",
        ),
        (
            attempt(
                "vault",
                &vault,
                json!([{ "vault": { "paths": ["/secret/x"] } }]),
            ),
            "spec.scopes[0].vault.paths[0]",
        ),
        (
            attempt(
                "aws",
                &aws,
                json!([{ "namespaces": { "names": ["shop"] } }]),
            ),
            "a scope must grant secretsManager, vault, ecs, rds, iam, transit or vaultDatabase",
        ),
        (
            attempt(
                "aws",
                &aws,
                json!([{ "namespaces": {}, "ecs": { "services": ["a/b"] } }]),
            ),
            "namespaces must list names or a selector",
        ),
        (attempt("aws", &aws, json!([])), "spec.scopes"),
        (
            attempt(
                "aws",
                &aws,
                json!([{ "secretsManager": { "secrets": [] } }]),
            ),
            "spec.scopes[0].secretsManager.secrets",
        ),
    ];
    for (obj, needle) in cases {
        let obj: ClusterConnection =
            serde_json::from_value(obj.clone()).unwrap_or_else(|e| panic!("{obj}: {e}"));
        let err = api
            .create(&dry, &obj)
            .await
            .expect_err(&format!("accepted: {needle}"));
        let msg = err.to_string();
        assert!(msg.contains(needle), "{needle}: {msg}");
    }
    let good = attempt(
        "aws",
        &aws,
        json!([
            { "secretsManager": { "secrets": ["${namespace}/*", "arn:aws:secretsmanager:eu-west-1:123456789012:secret:shared/**"] },
              "ecs": { "services": ["${namespace}/*", "shop/${namespace}-*"] } },
            { "namespaces": { "selector": { "matchLabels": { "team": "payments" } } },
              "secretsManager": { "secrets": ["payments/**"] } }
        ]),
    );
    let good: ClusterConnection = serde_json::from_value(good).expect("good");
    api.create(&dry, &good).await.expect("a well-formed scope");
}
