//! SecretRotation with the Vault/OpenBao KV v2 and AWS Secrets Manager backends, end to
//! end: the manager as a real process against the real API server, OpenBao, the moto
//! AWS emulator and PostgreSQL of the test environment (AppRole and Kubernetes auth
//! included). The Kubernetes-Secret backend and delivery are in `secret_rotation.rs`.

mod common;

use common::postgres::{logs_in, pg_setup, pg_spec};
use common::rotation::{await_rotations, create, manager_args, ready_reason, rotate_now, start};
use common::secret_data;

use std::time::Duration;

use capstan_secret_rotation::crd::SecretRotation;
use capstan_testenv::{TempNamespace, TestEnv, await_condition};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(60);

/// A ClusterConnection allowing `ns`, with its credentials Secret in `ns` (the tests use
/// the object's namespace as Capstan's own).
async fn connection(client: &kube::Client, ns: &str, name: &str, spec: Value, creds: Value) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let s: Secret = serde_json::from_value(json!({
        "metadata": { "name": format!("{name}-creds") }, "stringData": creds
    }))
    .expect("secret");
    secrets
        .create(&PostParams::default(), &s)
        .await
        .expect("creds");
    let mut spec = spec;
    spec["allowedNamespaces"] = json!({ "names": [ns] });
    let conn: capstan_core::connection::ClusterConnection = serde_json::from_value(json!({
        "apiVersion": "capstan.dev/v1alpha1", "kind": "ClusterConnection",
        "metadata": { "name": name }, "spec": spec
    }))
    .expect("connection");
    Api::<capstan_core::connection::ClusterConnection>::all(client.clone())
        .create(&PostParams::default(), &conn)
        .await
        .expect("create connection");
}

/// Vault/OpenBao KV v2 backend with the PostgreSQL target: each rotation's current value
/// logs in, and the value consumers read at `path` is the one delivered.
#[tokio::test]
async fn vault_backend_with_postgres_rotates() {
    let env = TestEnv::get();
    let kube = env.kube().await.expect("kube");
    let pg = env.postgres().await.expect("postgres");
    let vault = env.vault().await.expect("vault");
    let ns = TempNamespace::create(kube).await.expect("ns");
    let client = kube.client().await;
    let api: Api<SecretRotation> = ns.api(client.clone());
    let secrets: Api<Secret> = ns.api(client.clone());
    let (db, user) = pg_setup(pg, &secrets, ns.name()).await;
    let conn = format!("vault-{}", ns.name());
    connection(
        &client,
        ns.name(),
        &conn,
        json!({ "vault": { "address": vault.addr(), "auth": { "token": { "secretRef": { "name": format!("{conn}-creds") } } } } }),
        json!({ "token": vault.root_token() }),
    )
    .await;
    let mut spec = pg_spec(pg, &db, &user, json!({"singleUser": {}}));
    spec["backend"] =
        json!({ "vault": { "mount": "secret", "path": format!("{}/db", ns.name()) } });
    spec["connectionRef"] = json!({ "name": conn });
    create(
        &api,
        json!({ "apiVersion": "capstan.dev/v1alpha1", "kind": "SecretRotation",
                "metadata": { "name": "db" }, "spec": spec }),
    )
    .await;
    let m = start(kube, ns.name(), "sr-vault").await;
    let http = reqwest::Client::new();
    for n in 1..=2 {
        if n > 1 {
            rotate_now(&api, "db", "again").await;
        }
        await_rotations(&api, "db", n, &m).await;
        let password = secret_data(&secrets, "db-app").await["password"].clone();
        assert!(logs_in(pg, &db, &user, &password), "rotation {n}");
        let kv: Value = http
            .get(format!("{}/v1/secret/data/{}/db", vault.addr(), ns.name()))
            .header("X-Vault-Token", vault.root_token())
            .send()
            .await
            .expect("vault read")
            .json()
            .await
            .expect("json");
        assert_eq!(
            kv["data"]["data"]["password"],
            json!(password),
            "rotation {n}"
        );
    }
}

/// A SecretRotation of a generated value (no target) kept in KV v2 at
/// `secret/<ns>/<name>`, through the Vault connection `conn`.
fn vault_object(ns: &str, name: &str, conn: &str) -> Value {
    json!({
        "apiVersion": "capstan.dev/v1alpha1", "kind": "SecretRotation",
        "metadata": { "name": name },
        "spec": {
            "connectionRef": { "name": conn },
            "backend": { "vault": { "mount": "secret", "path": format!("{ns}/{name}") } },
            "target": { "none": {} },
            "schedule": { "interval": "720h" }
        }
    })
}

/// Waits for `name` to be refused with VaultLoginFailed naming `conn`, and checks that
/// none of `secrets` is in its status or the manager's logs.
async fn assert_login_refused(
    api: &Api<SecretRotation>,
    name: &str,
    conn: &str,
    secrets: &[&str],
    m: &common::Manager,
) {
    let refused = await_condition(
        api,
        name,
        |o: &SecretRotation| {
            ready_reason(o).is_some_and(|(s, r)| s == "False" && r == "VaultLoginFailed")
        },
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("{name}: {e}\n{}", m.all_logs()));
    let text = serde_json::to_string(&refused).expect("json");
    assert!(
        text.contains(conn),
        "the condition names the connection: {text}"
    );
    let logs = m.all_logs();
    for secret in secrets {
        assert!(!text.contains(secret), "a secret in the status of {name}");
        assert!(!logs.contains(secret), "a secret in a log line");
    }
}

/// A Vault policy named `ns` allowing KV v2 under `secret/<ns>/` and its pending paths
/// only.
async fn kv_policy(vault: &capstan_testenv::Vault, n: &str) {
    let rule =
        |p: &str| format!("path \"{p}\" {{ capabilities = [\"create\", \"read\", \"update\"] }}\n");
    let policy: String = [
        format!("secret/data/{n}/*"),
        format!("secret/metadata/{n}/*"),
        format!("secret/data/capstan-pending/{n}/*"),
        format!("secret/metadata/capstan-pending/{n}/*"),
    ]
    .iter()
    .map(|p| rule(p))
    .collect();
    common::bao(
        vault,
        reqwest::Method::POST,
        &format!("sys/policies/acl/{n}"),
        json!({"policy": policy}),
    )
    .await;
}

/// AppRole auth: Capstan logs in with the role ID and the secret ID from a Secret, with a
/// policy limited to the object's paths, rotates twice on one login (the token is reused,
/// not one login per reconcile), and a wrong secret ID gives Ready=False naming the
/// connection, with the secret ID in no status or log.
#[tokio::test]
async fn vault_approle_login_is_reused_and_a_bad_secret_id_is_reported() {
    use reqwest::Method;
    let env = TestEnv::get();
    let kube = env.kube().await.expect("kube");
    let vault = env.vault().await.expect("vault");
    let ns = TempNamespace::create(kube).await.expect("ns");
    let n = ns.name();
    let client = kube.client().await;
    let api: Api<SecretRotation> = ns.api(client.clone());
    let mount = format!("approle-{n}");
    common::bao(
        vault,
        Method::POST,
        &format!("sys/auth/{mount}"),
        json!({"type": "approle"}),
    )
    .await;
    kv_policy(vault, n).await;
    common::bao(
        vault,
        Method::POST,
        &format!("auth/{mount}/role/capstan"),
        json!({"token_policies": [n], "token_ttl": "1h"}),
    )
    .await;
    let role_id = common::bao(
        vault,
        Method::GET,
        &format!("auth/{mount}/role/capstan/role-id"),
        Value::Null,
    )
    .await["data"]["role_id"]
        .as_str()
        .expect("role id")
        .to_owned();
    let secret_id = common::bao(
        vault,
        Method::POST,
        &format!("auth/{mount}/role/capstan/secret-id"),
        json!({}),
    )
    .await["data"]["secret_id"]
        .as_str()
        .expect("secret id")
        .to_owned();
    let approle = |conn: &str| {
        json!({ "vault": { "address": vault.addr(), "auth": { "appRole": {
        "mountPath": mount, "roleId": role_id, "secretIdRef": { "name": format!("{conn}-creds") } } } } })
    };
    let good = format!("approle-{n}");
    connection(
        &client,
        n,
        &good,
        approle(&good),
        json!({ "secret_id": secret_id }),
    )
    .await;
    let bad = format!("approle-bad-{n}");
    let wrong_id = "00000000-dead-beef-0000-000000000000";
    connection(
        &client,
        n,
        &bad,
        approle(&bad),
        json!({ "secret_id": wrong_id }),
    )
    .await;
    create(&api, vault_object(n, "key", &good)).await;
    create(&api, vault_object(n, "refused", &bad)).await;
    let m = start(kube, n, "sr-approle").await;
    await_rotations(&api, "key", 1, &m).await;
    rotate_now(&api, "key", "again").await;
    await_rotations(&api, "key", 2, &m).await;
    assert_eq!(
        common::vault_tokens_from(vault, &mount).await,
        1,
        "two rotations, one AppRole login (its token reused)"
    );
    let kv = common::bao(
        vault,
        Method::GET,
        &format!("secret/data/{n}/key"),
        Value::Null,
    )
    .await;
    assert_eq!(
        kv["data"]["metadata"]["version"],
        json!(2),
        "two rotations, two versions"
    );

    assert_login_refused(&api, "refused", &bad, &[wrong_id, &secret_id], &m).await;
}

/// Kubernetes auth: OpenBao reviews Capstan's service account token with this API server
/// (TokenReview), Capstan logs in as a role bound to its service account and rotates; a
/// role the account is not bound to gives Ready=False, VaultLoginFailed, naming the
/// connection.
#[tokio::test]
async fn vault_kubernetes_auth_logs_in_with_the_service_account_token() {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
    use reqwest::Method;
    let env = TestEnv::get();
    let kube = env.kube().await.expect("kube");
    let vault = env.vault().await.expect("vault");
    let ns = TempNamespace::create(kube).await.expect("ns");
    let n = ns.name();
    let client = kube.client().await;
    let api: Api<SecretRotation> = ns.api(client.clone());

    // Capstan's service account; OpenBao sends its token to TokenReview, which needs
    // system:auth-delegator.
    let sas: Api<ServiceAccount> = ns.api(client.clone());
    let sa: ServiceAccount =
        serde_json::from_value(json!({ "metadata": { "name": "capstan" } })).expect("sa");
    sas.create(&PostParams::default(), &sa)
        .await
        .expect("create sa");
    let binding_name = format!("{n}-auth-delegator");
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": { "name": binding_name },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator" },
        "subjects": [{ "kind": "ServiceAccount", "name": "capstan", "namespace": n }]
    }))
    .expect("binding");
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .expect("create binding");
    let request: TokenRequest =
        serde_json::from_value(json!({ "spec": { "expirationSeconds": 3600 } })).expect("tr");
    let issued: TokenRequest = sas
        .create_subresource("token", "capstan", &PostParams::default(), &request)
        .await
        .expect("token request");
    let jwt = issued.status.and_then(|s| s.token).expect("token");
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &jwt).expect("write token");

    let mount = format!("kubernetes-{n}");
    common::bao(
        vault,
        Method::POST,
        &format!("sys/auth/{mount}"),
        json!({"type": "kubernetes"}),
    )
    .await;
    common::bao(
        vault,
        Method::POST,
        &format!("auth/{mount}/config"),
        json!({
            "kubernetes_host": kube.api_server_url(),
            "kubernetes_ca_cert": kube.ca_pem(),
            "disable_local_ca_jwt": true
        }),
    )
    .await;
    kv_policy(vault, n).await;
    for (role, sa_name) in [("capstan", "capstan"), ("other", "someone-else")] {
        common::bao(
            vault,
            Method::POST,
            &format!("auth/{mount}/role/{role}"),
            json!({
                "bound_service_account_names": [sa_name],
                "bound_service_account_namespaces": [n],
                "token_policies": [n],
                "token_ttl": "1h"
            }),
        )
        .await;
    }
    let good = format!("k8s-{n}");
    let bad = format!("k8s-bad-{n}");
    for (conn, role) in [(&good, "capstan"), (&bad, "other")] {
        connection(
            &client,
            n,
            conn,
            json!({ "vault": { "address": vault.addr(), "auth": { "kubernetes": { "mountPath": mount, "role": role } } } }),
            json!({}),
        )
        .await;
    }
    create(&api, vault_object(n, "key", &good)).await;
    create(&api, vault_object(n, "refused", &bad)).await;
    let args = manager_args(n);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let token_path = token_file.to_str().expect("utf8 path");
    let m = common::start_with_env(
        kube,
        "sr-k8s-auth",
        &args,
        &[("CAPSTAN_SERVICE_ACCOUNT_TOKEN_FILE", token_path)],
    )
    .await;
    await_rotations(&api, "key", 1, &m).await;
    let kv = common::bao(
        vault,
        Method::GET,
        &format!("secret/data/{n}/key"),
        Value::Null,
    )
    .await;
    assert_eq!(kv["data"]["metadata"]["version"], json!(1), "{kv}");
    assert_login_refused(&api, "refused", &bad, &[&jwt], &m).await;
    bindings
        .delete(&binding_name, &DeleteParams::default())
        .await
        .expect("delete binding");
}

/// AWS Secrets Manager backend (the emulator) without a target: the secret is created,
/// its AWSCURRENT value is the one delivered, and a rotate-now moves it.
#[tokio::test]
async fn aws_secrets_manager_backend_rotates() {
    let env = TestEnv::get();
    let kube = env.kube().await.expect("kube");
    let aws = env.aws().await.expect("aws");
    let ns = TempNamespace::create(kube).await.expect("ns");
    let client = kube.client().await;
    let api: Api<SecretRotation> = ns.api(client.clone());
    let secrets: Api<Secret> = ns.api(client.clone());
    let conn = format!("aws-{}", ns.name());
    connection(
        &client,
        ns.name(),
        &conn,
        json!({ "aws": { "region": aws.region(), "endpointUrl": aws.endpoint_url(),
                         "credentialsSecretRef": { "name": format!("{conn}-creds") } } }),
        json!({ "AWS_ACCESS_KEY_ID": capstan_testenv::TEST_ACCESS_KEY_ID,
                "AWS_SECRET_ACCESS_KEY": capstan_testenv::TEST_SECRET_ACCESS_KEY }),
    )
    .await;
    create(
        &api,
        json!({ "apiVersion": "capstan.dev/v1alpha1", "kind": "SecretRotation",
                "metadata": { "name": "key" },
                "spec": {
                    "connectionRef": { "name": conn },
                    "backend": { "awsSecretsManager": { "secretId": format!("{}/key", ns.name()) } },
                    "target": { "none": {} },
                    "schedule": { "interval": "720h" },
                    "delivery": { "secret": { "name": "key" } }
                } }),
    )
    .await;
    let m = start(kube, ns.name(), "sr-aws").await;
    let first = await_rotations(&api, "key", 1, &m).await;
    let v1 = first.status.and_then(|s| s.current_version).expect("v1");
    rotate_now(&api, "key", "again").await;
    let second = await_rotations(&api, "key", 2, &m).await;
    let st = second.status.expect("status");
    assert_eq!(st.previous_version.as_deref(), Some(v1.as_str()));
    let v2 = st.current_version.expect("v2");
    assert_ne!(v2, v1);
    let delivered = secrets.get("key").await.expect("delivered");
    assert_eq!(
        delivered.metadata.annotations.unwrap_or_default()["capstan.dev/version"],
        v2
    );
}
