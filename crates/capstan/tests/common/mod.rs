//! Runs `capstan run` as a real process against the test environment, as the Helm chart
//! installs it, and reads its JSON log lines.
//!
//! Every manager runs as the chart's ServiceAccount with the chart's RBAC, rendered by
//! `helm template` for the values its arguments imply (`--namespaces` becomes
//! `watchNamespaces`, `--controllers` `controllers`, ...), and with the arguments the
//! chart's Deployment passes; the test's own arguments override or extend them. The admin
//! identity is used only by the test's own setup. When a [`Manager`] is dropped (at the
//! end of its test) the API server's audit log is read, and any request the manager was
//! refused with 403 Forbidden fails the test.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capstan_testenv::{AuditedRequest, InstallOptions, Installation, Kube};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub mod pipeline;
pub mod postgres;
pub mod rotation;
pub mod scaling;
pub mod ux;

/// A running manager process.
pub struct Manager {
    pub child: Child,
    pub identity: String,
    pub admin: SocketAddr,
    /// Every log line so far.
    pub logs: Arc<Mutex<Vec<String>>>,
    /// The chart's identity and permissions it runs with.
    pub installation: Installation,
    kube: &'static Kube,
}

/// Starts `capstan run` under the chart's RBAC with extra arguments (which must include
/// `--own-namespace`, the release namespace); waits until its admin server listens.
pub async fn start(kube: &'static Kube, identity: &str, extra: &[&str]) -> Manager {
    start_with_level(kube, identity, DEFAULT_LEVEL, extra, &[]).await
}

/// The log filter the tests run the manager at.
const DEFAULT_LEVEL: &str = "info,capstan=debug";

impl Manager {
    /// GETs a path of the admin server: (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        let resp = reqwest::get(format!("http://{}{path}", self.admin))
            .await
            .expect("admin GET");
        let code = resp.status().as_u16();
        (code, resp.text().await.unwrap_or_default())
    }

    /// Polls `/readyz` until it answers 200.
    pub async fn await_ready(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (code, body) = self.get("/readyz").await;
            if code == 200 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} not ready after {timeout:?}: {body}\nlogs:\n{}",
                self.identity,
                self.all_logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every log line so far, and then any request the API server refused (403), so
    /// a test that times out waiting says when RBAC was the cause.
    pub fn all_logs(&self) -> String {
        let mut text = self.logs.lock().unwrap().join("\n");
        let refused = self.forbidden();
        if !refused.is_empty() {
            text.push_str("\nrefused by the API server under the chart's RBAC:");
            for r in refused {
                text.push_str(&format!("\n  {r}"));
            }
        }
        text
    }

    pub fn logged(&self, needle: &str) -> bool {
        self.logs.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// The requests the API server refused this manager with 403, from its audit log.
    pub fn forbidden(&self) -> Vec<AuditedRequest> {
        self.kube
            .forbidden(&self.installation.username)
            .expect("reading the API server's audit log")
    }

    /// Panics, listing them, if the API server refused this manager any request.
    pub fn assert_no_forbidden(&self) {
        let refused = self.forbidden();
        assert!(
            refused.is_empty(),
            "the API server refused manager {} ({}) {} request(s) under the chart's RBAC:\n  {}",
            self.identity,
            self.installation.username,
            refused.len(),
            refused
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    }

    pub fn pid(&self) -> i32 {
        self.child.id().expect("running") as i32
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("kill");
    }
}

impl Drop for Manager {
    /// A manager that was refused anything fails its test (unless it is failing already),
    /// and so does one whose own code logged an API error as kube's debug dump of its
    /// Status instead of the API server's message.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.assert_no_forbidden();
            let logs = self.logs.lock().unwrap();
            // Capstan's own lines (the kube client's debug lines, seen by the leak
            // canary's `debug` filter, are the library's business).
            let dumped: Vec<&String> = logs
                .iter()
                .filter(|l| l.contains("Status { status: Some(") || l.contains("ErrorResponse {"))
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v["target"].as_str().map(|t| t.starts_with("capstan")))
                        .unwrap_or(true)
                })
                .collect();
            assert!(
                dumped.is_empty(),
                "manager {} logged a debug dump of an API Status:\n{}",
                self.identity,
                dumped
                    .iter()
                    .map(|l| l.as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

/// Like [`start`], with extra environment variables (e.g. `FAILPOINTS`) for the process.
pub async fn start_with_env(
    kube: &'static Kube,
    identity: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Manager {
    start_with_level(kube, identity, DEFAULT_LEVEL, extra, env).await
}

/// Starts a manager with the failpoint `point=return` and waits until it aborts there
/// (SIGABRT), as a crash right after that side effect would; returns it for its logs.
#[allow(dead_code)]
pub async fn crash_at(kube: &'static Kube, identity: &str, extra: &[&str], point: &str) -> Manager {
    let fp = format!("{point}=return");
    let mut crashing = start_with_env(kube, identity, extra, &[("FAILPOINTS", fp.as_str())]).await;
    let status = tokio::time::timeout(Duration::from_secs(90), crashing.child.wait())
        .await
        .unwrap_or_else(|_| panic!("not crashed at {point}:\n{}", crashing.all_logs()))
        .expect("wait");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(6), "aborted (SIGABRT) at {point}");
    crashing
}

/// The Events about object `name` in `ns`, as (reason, note).
#[allow(dead_code)]
pub async fn events_about(client: &kube::Client, ns: &str, name: &str) -> Vec<(String, String)> {
    kube::Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

/// Starts `capstan run` with a chosen `--log-level` filter (the leak canary runs at plain
/// `debug`, every crate), extra arguments and environment; waits until its admin server
/// listens.
pub async fn start_with_level(
    kube: &'static Kube,
    identity: &str,
    level: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Manager {
    let opts = InstallOptions::from_run_args(extra, "");
    assert!(
        !opts.namespace.is_empty(),
        "common::start needs --own-namespace: the chart is installed into it"
    );
    let installation = kube
        .install_capstan(&opts)
        .await
        .expect("installing the chart's ServiceAccount and RBAC");
    let mut overrides = vec![
        "--metrics-addr",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--identity",
        identity,
        "--log-level",
        level,
    ];
    overrides.extend_from_slice(extra);
    let args = installation.run_args(&overrides);
    let mut child = Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args(&args)
        .env("KUBECONFIG", &installation.kubeconfig_path)
        .env("POD_NAMESPACE", &installation.namespace)
        .env("CAPSTAN_AWS_NO_RETRIES", "true")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawning capstan");
    let stderr = child.stderr.take().expect("stderr piped");
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let sink = logs.clone();
    tokio::spawn(async move {
        let mut tx = Some(tx);
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            // The metrics address: the admin server's, or the metrics server's when
            // the probes listen apart (--health-addr).
            if line.contains("admin server listening") || line.contains("metrics server listening")
            {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if let Some(addr) = v["addr"].as_str().and_then(|a| a.parse().ok())
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr);
                }
            }
            sink.lock().unwrap().push(line);
        }
    });
    let admin = match tokio::time::timeout(Duration::from_secs(60), rx).await {
        Ok(Ok(addr)) => addr,
        _ => panic!(
            "capstan {identity} did not start its admin server; logs:\n{}",
            logs.lock().unwrap().join("\n")
        ),
    };
    Manager {
        child,
        identity: identity.to_owned(),
        admin,
        logs,
        installation,
        kube,
    }
}

/// How many live Vault tokens were created by logins at `auth/<mount>/` (looked up by
/// accessor with the root token), so a test counts only its own logins.
#[allow(dead_code)]
pub async fn vault_tokens_from(vault: &capstan_testenv::Vault, mount: &str) -> usize {
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, body: serde_json::Value| {
        http.request(method, format!("{}/v1/{path}", vault.addr()))
            .header("X-Vault-Token", vault.root_token())
            .json(&body)
            .send()
    };
    let list: serde_json::Value = call(
        reqwest::Method::from_bytes(b"LIST").expect("LIST"),
        "auth/token/accessors",
        serde_json::Value::Null,
    )
    .await
    .expect("list accessors")
    .json()
    .await
    .expect("json");
    let prefix = format!("auth/{mount}/");
    let mut n = 0;
    for accessor in list["data"]["keys"].as_array().into_iter().flatten() {
        let Ok(resp) = call(
            reqwest::Method::POST,
            "auth/token/lookup-accessor",
            serde_json::json!({ "accessor": accessor }),
        )
        .await
        else {
            continue;
        };
        let v: serde_json::Value = resp.json().await.unwrap_or_default();
        if v["data"]["path"]
            .as_str()
            .is_some_and(|p| p.starts_with(&prefix))
        {
            n += 1;
        }
    }
    n
}

/// One call to OpenBao with the root token; the JSON answer (`Null` when empty). Panics
/// unless it succeeds.
#[allow(dead_code)]
pub async fn bao(
    vault: &capstan_testenv::Vault,
    method: reqwest::Method,
    path: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    let resp = reqwest::Client::new()
        .request(method, format!("{}/v1/{path}", vault.addr()))
        .header("X-Vault-Token", vault.root_token())
        .json(&body)
        .send()
        .await
        .expect("bao call");
    assert!(resp.status().is_success(), "{path}: HTTP {}", resp.status());
    let text = resp.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
}

/// Runs `sql` with psql against `url`; its output, or its error text.
#[allow(dead_code)]
pub fn psql(pg: &capstan_testenv::Postgres, url: &str, sql: &str) -> Result<String, String> {
    let out = std::process::Command::new(pg.bin_dir().join("psql"))
        .args([url, "-v", "ON_ERROR_STOP=1", "-tAc", sql])
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// `s` percent-encoded for the userinfo of a connection URL.
#[allow(dead_code)]
pub fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The data of Secret `name` as strings (empty when it does not exist).
#[allow(dead_code)]
pub async fn secret_data(
    api: &kube::Api<k8s_openapi::api::core::v1::Secret>,
    name: &str,
) -> std::collections::BTreeMap<String, String> {
    api.get_opt(name)
        .await
        .expect("get Secret")
        .and_then(|s| s.data)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v.0).expect("utf8")))
        .collect()
}

/// The emulator's credentials as Secret `aws-creds` in Capstan's namespace `own`, where
/// AWS ClusterConnections read them (kept when a connection before created it).
#[allow(dead_code)]
pub async fn aws_creds_secret(client: &kube::Client, own: &str) {
    let creds: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "aws-creds" },
        "stringData": {
            "AWS_ACCESS_KEY_ID": capstan_testenv::TEST_ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": capstan_testenv::TEST_SECRET_ACCESS_KEY
        }
    }))
    .expect("secret");
    match kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), own)
        .create(&kube::api::PostParams::default(), &creds)
        .await
    {
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        other => {
            other.expect("creds");
        }
    }
}

/// [`aws_creds_secret`] in `own`, and the AWS ClusterConnection `name` to the emulator
/// that allows the namespaces `allowed`.
#[allow(dead_code)]
pub async fn aws_connection(
    client: &kube::Client,
    aws: &capstan_testenv::Aws,
    own: &str,
    name: &str,
    allowed: &[&str],
) {
    aws_connection_in(client, aws, own, name, allowed, None).await;
}

/// [`aws_connection`], landing in `account` (through its `roleArn` and checked by its
/// `accountId`) when one is given.
#[allow(dead_code)]
pub async fn aws_connection_in(
    client: &kube::Client,
    aws: &capstan_testenv::Aws,
    own: &str,
    name: &str,
    allowed: &[&str],
    account: Option<&str>,
) {
    aws_creds_secret(client, own).await;
    let mut spec = serde_json::json!({
        "allowedNamespaces": { "names": allowed },
        "aws": {
            "region": aws.region(),
            "endpointUrl": aws.endpoint_url(),
            "credentialsSecretRef": { "name": "aws-creds" }
        }
    });
    if let Some(account) = account {
        spec["aws"]["roleArn"] = serde_json::json!(capstan_testenv::Aws::role_in(account));
        spec["aws"]["accountId"] = serde_json::json!(account);
    }
    let conn: capstan_core::connection::ClusterConnection =
        serde_json::from_value(serde_json::json!({
            "apiVersion": "capstan.dev/v1alpha1", "kind": "ClusterConnection",
            "metadata": { "name": name },
            "spec": spec
        }))
        .expect("connection");
    kube::Api::<capstan_core::connection::ClusterConnection>::all(client.clone())
        .create(&kube::api::PostParams::default(), &conn)
        .await
        .expect("create connection");
}

/// A Vault ClusterConnection `vault-<ns>` reaching OpenBao with its root token (Secret
/// `vault-token` in `ns`, the manager's own namespace in these tests), allowed to `ns`
/// and, when given, limited by `scopes`; its name.
#[allow(dead_code)]
pub async fn vault_connection(
    client: &kube::Client,
    vault: &capstan_testenv::Vault,
    ns: &str,
    scopes: Option<serde_json::Value>,
) -> String {
    use kube::api::{Api, PostParams};
    let token: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "vault-token" }, "stringData": { "token": vault.root_token() }
    }))
    .expect("secret");
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &token)
        .await
        .expect("token");
    let name = format!("vault-{ns}");
    let mut spec = serde_json::json!({
        "allowedNamespaces": { "names": [ns] },
        "vault": { "address": vault.addr(), "auth": { "token": { "secretRef": { "name": "vault-token" } } } }
    });
    if let Some(scopes) = scopes {
        spec["scopes"] = scopes;
    }
    let c: capstan_core::connection::ClusterConnection =
        serde_json::from_value(serde_json::json!({
            "apiVersion": "capstan.dev/v1alpha1", "kind": "ClusterConnection",
            "metadata": { "name": name }, "spec": spec
        }))
        .expect("connection");
    Api::<capstan_core::connection::ClusterConnection>::all(client.clone())
        .create(&PostParams::default(), &c)
        .await
        .expect("connection");
    name
}
