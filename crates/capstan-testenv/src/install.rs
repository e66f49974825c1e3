//! Capstan as the Helm chart installs it: the chart's ServiceAccount, ClusterRole, Roles and
//! bindings, a token for that ServiceAccount, and the arguments the chart's Deployment
//! passes to `capstan run`.
//!
//! Every manager the tests, the benches and the demo start runs with this identity, never
//! as `system:masters`, so a rule the chart lacks fails a test instead of a user's install.
//! The API server writes an audit log of every request a ServiceAccount makes
//! ([`Kube::forbidden`]): a 403 returned to the manager fails the test that started it.
//!
//! ```text
//! helm template <release> charts/capstan --namespace <own> --set fullnameOverride=...
//!     --set watchNamespaces={...} --set controllers={...} --set leaderElection...
//!   -> ServiceAccount, ClusterRole(Binding), Role(Binding)s: applied with the admin client
//!   -> Deployment's container args: what `capstan run` gets
//! TokenRequest for the ServiceAccount -> a kubeconfig with that token
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde::Deserialize as _;

use crate::error::{Error, Result};
use crate::k8s::Kube;
use crate::paths;

/// The field manager of the RBAC objects the harness applies.
const FIELD_MANAGER: &str = "capstan-testenv-install";

/// The kinds of the chart's rendered objects that an install applies: the identity and
/// its permissions. The Deployment is not applied (no kubelet runs here): its container
/// arguments are read instead, and the manager runs as a local process.
const APPLIED_KINDS: &[&str] = &[
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
];

/// What to install: the chart values a test's `capstan run` arguments imply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstallOptions {
    /// The release namespace: Capstan's own namespace (`--own-namespace`), where the
    /// ServiceAccount, the Lease and connection credentials live. Must exist.
    pub namespace: String,
    /// `watchNamespaces`; empty: every namespace (RBAC through the ClusterRole).
    pub watch_namespaces: Vec<String>,
    /// `controllers`; empty: the chart's default (all four).
    pub controllers: Vec<String>,
    /// `leaderElection.enabled` (with `replicaCount` 1 when false, as the chart demands).
    pub leader_elect: bool,
    /// `leaderElection.leaseName`; `None`: the chart's default.
    pub lease_name: Option<String>,
    /// `concurrency`; `None`: the chart's default.
    pub concurrency: Option<u16>,
}

impl InstallOptions {
    /// The chart values a `capstan run` argument list implies (`--namespaces`,
    /// `--own-namespace`, `--controllers`, `--leader-elect`, `--lease-name`,
    /// `--concurrency`); `default_namespace` when it names no own namespace.
    pub fn from_run_args(args: &[&str], default_namespace: &str) -> InstallOptions {
        let parsed = parse_args(args);
        let value = |name: &str| {
            parsed
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .and_then(|(_, v)| v.clone())
        };
        let list = |name: &str| {
            value(name)
                .map(|v| {
                    v.split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        InstallOptions {
            namespace: value("--own-namespace").unwrap_or_else(|| default_namespace.to_owned()),
            watch_namespaces: list("--namespaces"),
            controllers: list("--controllers"),
            leader_elect: value("--leader-elect").is_none_or(|v| v != "false"),
            lease_name: value("--lease-name"),
            concurrency: value("--concurrency").and_then(|v| v.parse().ok()),
        }
    }
}

/// An installed identity: what a manager process runs with.
#[derive(Debug, Clone)]
pub struct Installation {
    /// The chart's full name (every object's name prefix), unique per install.
    pub fullname: String,
    /// The ServiceAccount's user name, `system:serviceaccount:<ns>:<name>`.
    pub username: String,
    /// A kubeconfig that authenticates as the ServiceAccount (a TokenRequest token).
    pub kubeconfig_path: PathBuf,
    /// The arguments the chart's Deployment passes to the container, `run` first.
    pub args: Vec<String>,
    /// The environment the chart's Deployment sets from the downward API
    /// (`POD_NAMESPACE`); `POD_NAME` is the caller's identity.
    pub namespace: String,
}

impl Installation {
    /// The final `capstan run` arguments: the chart's, with each flag that `overrides`
    /// names replaced by the override, and the overrides the chart does not pass
    /// appended. Overrides are `--flag=value`, `--flag value` or a bare `--flag`.
    pub fn run_args(&self, overrides: &[&str]) -> Vec<String> {
        merge_args(&self.args, overrides)
    }
}

/// The helm binary (built by `tests/helm/build.sh` on first use; cached after).
pub fn helm_binary() -> Result<PathBuf> {
    static HELM: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    HELM.get_or_init(|| {
        let script = paths::repo_root().join("tests/helm/build.sh");
        let out = Command::new("bash")
            .arg(&script)
            .env("GOTOOLCHAIN", "local")
            .output()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed: {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(PathBuf::from(
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        ))
    })
    .clone()
    .map_err(|detail| Error::Missing {
        what: "helm".to_owned(),
        detail,
        install: paths::INSTALL_HINT.to_owned(),
    })
}

/// Renders the chart with `opts` under the full name `fullname`.
pub fn render(opts: &InstallOptions, fullname: &str) -> Result<Vec<serde_json::Value>> {
    let helm = helm_binary()?;
    let chart = paths::repo_root().join("charts/capstan");
    let mut cmd = Command::new(&helm);
    cmd.arg("template")
        .arg("capstan")
        .arg(&chart)
        .arg("--namespace")
        .arg(&opts.namespace)
        .arg("--set")
        .arg(format!("fullnameOverride={fullname}"));
    if !opts.watch_namespaces.is_empty() {
        cmd.arg("--set").arg(format!(
            "watchNamespaces={{{}}}",
            opts.watch_namespaces.join(",")
        ));
    }
    if !opts.controllers.is_empty() {
        cmd.arg("--set")
            .arg(format!("controllers={{{}}}", opts.controllers.join(",")));
    }
    if !opts.leader_elect {
        cmd.args([
            "--set",
            "leaderElection.enabled=false",
            "--set",
            "replicaCount=1",
        ]);
    }
    if let Some(lease) = &opts.lease_name {
        cmd.arg("--set-string")
            .arg(format!("leaderElection.leaseName={lease}"));
    }
    if let Some(c) = opts.concurrency {
        cmd.arg("--set").arg(format!("concurrency={c}"));
    }
    let out = cmd
        .output()
        .map_err(|e| Error::other(format!("running {}", helm.display()), e))?;
    if !out.status.success() {
        return Err(Error::other(
            "helm template charts/capstan",
            String::from_utf8_lossy(&out.stderr).trim(),
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_json::Value::deserialize(doc)
            .map_err(|e| Error::other("parsing helm template's output", e))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// The container arguments of the rendered Deployment.
fn deployment_args(docs: &[serde_json::Value]) -> Result<Vec<String>> {
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .ok_or_else(|| Error::other("reading the chart's render", "it has no Deployment"))?;
    let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .ok_or_else(|| Error::other("reading the chart's Deployment", "no container args"))?;
    Ok(args
        .iter()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect())
}

/// A name unique within this API server for one install.
fn unique_fullname() -> String {
    use rand::Rng as _;
    let suffix: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(6)
        .map(|c| char::from(c).to_ascii_lowercase())
        .collect();
    format!("capstan-{suffix}")
}

impl Kube {
    /// Installs Capstan's identity and permissions as the chart renders them for `opts`
    /// (a unique full name each time, so installs never collide), and returns a
    /// kubeconfig for its ServiceAccount and the chart's `capstan run` arguments.
    pub async fn install_capstan(&self, opts: &InstallOptions) -> Result<Installation> {
        let fullname = unique_fullname();
        let docs = render(opts, &fullname)?;
        let args = deployment_args(&docs)?;
        let client = self.client().await;
        let mut sa_name = None;
        for doc in docs.iter().filter(|d| {
            d["kind"]
                .as_str()
                .is_some_and(|k| APPLIED_KINDS.contains(&k))
        }) {
            apply_rendered(&client, doc).await?;
            if doc["kind"] == "ServiceAccount" {
                sa_name = doc["metadata"]["name"].as_str().map(str::to_owned);
            }
        }
        let sa_name = sa_name.ok_or_else(|| {
            Error::other("reading the chart's render", "it has no ServiceAccount")
        })?;
        let token = self
            .service_account_token(&opts.namespace, &sa_name, 4 * 3600)
            .await?;
        let kubeconfig_path = self.audit_dir().join(format!("{fullname}.kubeconfig"));
        crate::process::write_private(
            &kubeconfig_path,
            self.token_kubeconfig(&token, &opts.namespace).as_bytes(),
        )?;
        Ok(Installation {
            username: format!("system:serviceaccount:{}:{sa_name}", opts.namespace),
            fullname,
            kubeconfig_path,
            args,
            namespace: opts.namespace.clone(),
        })
    }

    /// A TokenRequest token for ServiceAccount `namespace/name`, valid `seconds`.
    pub async fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
        seconds: i64,
    ) -> Result<String> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client().await, namespace);
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(seconds),
                ..TokenRequestSpec::default()
            }),
            ..TokenRequest::default()
        };
        let answer = api
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .map_err(|e| Error::other(format!("TokenRequest for {namespace}/{name}"), e))?;
        answer
            .status
            .and_then(|s| s.token)
            .ok_or_else(|| Error::other(format!("TokenRequest for {namespace}/{name}"), "no token"))
    }

    /// A kubeconfig for this API server that authenticates with a bearer `token`.
    pub fn token_kubeconfig(&self, token: &str, namespace: &str) -> String {
        let ca = base64::engine::general_purpose::STANDARD.encode(self.ca_pem().as_bytes());
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: capstan-testenv
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: capstan
  user:
    token: {token}
contexts:
- name: capstan
  context:
    cluster: capstan-testenv
    user: capstan
    namespace: {namespace}
current-context: capstan
",
            server = self.api_server_url(),
        )
    }
}

/// Server-side applies one rendered object with the admin client.
async fn apply_rendered(client: &kube::Client, doc: &serde_json::Value) -> Result<()> {
    let api_version = doc["apiVersion"].as_str().unwrap_or_default();
    let kind = doc["kind"].as_str().unwrap_or_default();
    let name = doc["metadata"]["name"].as_str().unwrap_or_default();
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    let api: Api<DynamicObject> = match doc["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(doc),
    )
    .await
    .map_err(|e| Error::other(format!("applying the chart's {kind} {name}"), e))?;
    Ok(())
}

/// `--flag=value`, `--flag value` and bare `--flag` tokens as (flag, value) pairs. A token
/// that does not start with `--` after a flag is that flag's value; `run` and other
/// positional words are kept as flags with no value.
fn parse_args<S: AsRef<str>>(args: &[S]) -> Vec<(String, Option<String>)> {
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_ref();
        if let Some((flag, value)) = a.split_once('=').filter(|_| a.starts_with("--")) {
            out.push((flag.to_owned(), Some(value.to_owned())));
        } else if a.starts_with("--")
            && args
                .get(i + 1)
                .is_some_and(|next| !next.as_ref().starts_with("--"))
        {
            out.push((a.to_owned(), Some(args[i + 1].as_ref().to_owned())));
            i += 1;
        } else {
            out.push((a.to_owned(), None));
        }
        i += 1;
    }
    out
}

fn merge_args(base: &[String], overrides: &[&str]) -> Vec<String> {
    let over = parse_args(overrides);
    let mut out: Vec<(String, Option<String>)> = parse_args(base);
    for (flag, value) in over {
        if let Some(slot) = out.iter_mut().find(|(f, _)| *f == flag) {
            slot.1 = value;
        } else {
            out.push((flag, value));
        }
    }
    out.into_iter()
        .map(|(f, v)| match v {
            Some(v) => format!("{f}={v}"),
            None => f,
        })
        .collect()
}

/// One request the audit log recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditedRequest {
    /// The verb (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`).
    pub verb: String,
    /// The request URI.
    pub uri: String,
    /// The response code.
    pub code: u16,
}

impl std::fmt::Display for AuditedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} -> {}", self.verb, self.uri, self.code)
    }
}

/// The requests by `username` in the audit log at `path` that got `code`.
pub(crate) fn audited(path: &Path, username: &str, code: u16) -> Result<Vec<AuditedRequest>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::other(format!("reading {}", path.display()), e)),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["user"]["username"] == username)
        .filter(|e| e["responseStatus"]["code"].as_u64() == Some(u64::from(code)))
        .map(|e| AuditedRequest {
            verb: e["verb"].as_str().unwrap_or_default().to_owned(),
            uri: e["requestURI"].as_str().unwrap_or_default().to_owned(),
            code,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_follow_the_run_arguments() {
        let o = InstallOptions::from_run_args(
            &[
                "--leader-elect=false",
                "--namespaces",
                "a,b",
                "--own-namespace",
                "own",
                "--controllers",
                "secret-rotation",
                "--concurrency",
                "32",
            ],
            "fallback",
        );
        assert_eq!(
            o,
            InstallOptions {
                namespace: "own".into(),
                watch_namespaces: vec!["a".into(), "b".into()],
                controllers: vec!["secret-rotation".into()],
                leader_elect: false,
                lease_name: None,
                concurrency: Some(32),
            }
        );
        let d = InstallOptions::from_run_args(&["--lease-name", "pair"], "fallback");
        assert_eq!(d.namespace, "fallback");
        assert!(d.leader_elect);
        assert_eq!(d.lease_name.as_deref(), Some("pair"));
        assert!(d.watch_namespaces.is_empty());
    }

    #[test]
    fn overrides_replace_the_charts_flags_and_the_rest_are_appended() {
        let base: Vec<String> = [
            "run",
            "--log-format=json",
            "--metrics-addr=0.0.0.0:8080",
            "--controllers=secret-rotation",
            "--leader-elect=false",
        ]
        .map(String::from)
        .to_vec();
        let merged = merge_args(
            &base,
            &[
                "--metrics-addr",
                "127.0.0.1:0",
                "--own-namespace",
                "own",
                "--leader-elect=false",
                "--verbose",
            ],
        );
        assert_eq!(
            merged,
            [
                "run",
                "--log-format=json",
                "--metrics-addr=127.0.0.1:0",
                "--controllers=secret-rotation",
                "--leader-elect=false",
                "--own-namespace=own",
                "--verbose",
            ]
        );
    }

    #[test]
    fn audit_lines_are_filtered_by_user_and_code() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let line = |user: &str, code: u16, verb: &str| {
            serde_json::json!({
                "user": { "username": user }, "verb": verb,
                "requestURI": "/api/v1/secrets", "responseStatus": { "code": code }
            })
            .to_string()
        };
        std::fs::write(
            &path,
            [
                line("system:serviceaccount:a:capstan", 403, "list"),
                line("system:serviceaccount:a:capstan", 200, "get"),
                line("system:serviceaccount:b:other", 403, "list"),
                "not json".to_owned(),
            ]
            .join("\n"),
        )
        .expect("write");
        let got = audited(&path, "system:serviceaccount:a:capstan", 403).expect("read");
        assert_eq!(
            got,
            [AuditedRequest {
                verb: "list".into(),
                uri: "/api/v1/secrets".into(),
                code: 403
            }]
        );
        assert!(
            audited(&dir.path().join("none"), "x", 403)
                .expect("read")
                .is_empty()
        );
    }
}
