//! The Kubernetes control plane: etcd, kube-apiserver and kube-controller-manager.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};

use crate::Ctx;
use crate::error::{Error, Result};
use crate::paths;
use crate::pki;
use crate::process::{http_ok, probe_client, wait_ready, with_port_retry, write_private};

/// The controllers kube-controller-manager runs. The garbage collector and the namespace
/// controller do for tests what they do in a real cluster (owner-referenced objects go
/// away; deleting a namespace empties it and finishes); clusterrole-aggregation fills
/// aggregated ClusterRoles; the Job controller runs Pipeline stages' Jobs (creates their
/// Pods, marks them Complete or Failed), and the serviceaccount controller gives each
/// namespace the `default` ServiceAccount those Pods run as. No kubelet runs: a test
/// that needs a Pod to finish plays that part (it sets the Pod's status).
pub const CONTROLLERS: &str =
    "garbagecollector,namespace,clusterrole-aggregation,job,serviceaccount";

/// The field manager of the CRDs the environment applies.
pub const FIELD_MANAGER: &str = "capstan-testenv";

/// A running Kubernetes control plane (see [`TestEnv::kube`](crate::TestEnv::kube)).
#[derive(Debug)]
pub struct Kube {
    api_server_url: String,
    etcd_url: String,
    kubeconfig_path: PathBuf,
    kubeconfig_yaml: String,
    config: kube::Config,
    ca_pem: String,
    crds: Vec<String>,
    dir: PathBuf,
    audit_log: PathBuf,
}

/// The API server's audit policy: every request by a ServiceAccount (Capstan's managers
/// run as one) at Metadata level, once complete; nothing else. A test reads it to find the
/// requests the manager was refused ([`Kube::forbidden`]).
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted, Panic]
rules:
  - level: Metadata
    userGroups: [\"system:serviceaccounts\"]
  - level: None
";

impl Kube {
    /// The API server's URL, `https://127.0.0.1:<port>`.
    pub fn api_server_url(&self) -> &str {
        &self.api_server_url
    }

    /// etcd's client URL, `http://127.0.0.1:<port>`.
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// An admin kubeconfig (client certificate in `system:masters`, certificates
    /// embedded), for `kubectl` or for controllers run as child processes.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The admin kubeconfig's contents.
    pub fn kubeconfig_yaml(&self) -> &str {
        &self.kubeconfig_yaml
    }

    /// The PEM certificate of the CA that signed the API server's certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The names of the CRDs installed from `crds/` at start.
    pub fn installed_crds(&self) -> &[String] {
        &self.crds
    }

    /// A client configuration for the admin user (default namespace `default`).
    pub fn config(&self) -> kube::Config {
        self.config.clone()
    }

    /// A new admin client. Each call builds a fresh client on the calling runtime, so
    /// every `#[tokio::test]` (each with its own runtime) gets one of its own.
    ///
    /// # Panics
    /// If the client cannot be built from the configuration, which the environment built
    /// and used itself at start.
    pub async fn client(&self) -> kube::Client {
        match kube::Client::try_from(self.config()) {
            Ok(client) => client,
            Err(e) => panic!("capstan-testenv: building a kube client: {e}"),
        }
    }

    /// Applies a CRD (server-side apply, forced) and waits until it is Established. For
    /// CRDs generated in Rust (`CustomResourceExt::crd()`) rather than read from `crds/`.
    pub async fn apply_crd(&self, crd: &CustomResourceDefinition) -> Result<()> {
        apply_crd(&self.client().await, crd).await
    }

    /// The API server's audit log (JSON lines): every request a ServiceAccount made.
    pub fn audit_log_path(&self) -> &Path {
        &self.audit_log
    }

    /// The requests by `username` (e.g. `system:serviceaccount:ns:capstan`) that the API
    /// server refused with 403 Forbidden, from its audit log.
    pub fn forbidden(&self, username: &str) -> Result<Vec<crate::install::AuditedRequest>> {
        crate::install::audited(&self.audit_log, username, 403)
    }

    /// The directory of the control plane's files (logs, certificates, kubeconfigs).
    pub(crate) fn audit_dir(&self) -> &Path {
        &self.dir
    }
}

/// Starts etcd, then kube-apiserver, then (concurrently) kube-controller-manager and the
/// CRDs from `crds/`.
pub(crate) async fn start(ctx: &Ctx<'_>) -> Result<Kube> {
    let etcd_bin = paths::k8s_binary("etcd")?;
    let apiserver_bin = paths::k8s_binary("kube-apiserver")?;
    let kcm_bin = paths::k8s_binary("kube-controller-manager")?;
    let dir = ctx.sup.service_dir("kubernetes")?;

    let pki = pki::generate()?;
    let files = Files::new(&dir);
    write_private(&files.ca_cert, pki.ca_cert.as_bytes())?;
    write_private(&files.serving_cert, pki.serving_cert.as_bytes())?;
    write_private(&files.serving_key, pki.serving_key.as_bytes())?;
    write_private(&files.sa_key, pki.sa_private_key.as_bytes())?;
    write_private(&files.sa_pub, pki.sa_public_key.as_bytes())?;

    write_private(&files.audit_policy, AUDIT_POLICY.as_bytes())?;

    let etcd_url = with_port_retry(|| start_etcd(ctx, &etcd_bin, &dir)).await?;
    let port =
        with_port_retry(|| start_apiserver(ctx, &apiserver_bin, &dir, &files, &etcd_url, &pki))
            .await?;
    let api_server_url = format!("https://127.0.0.1:{port}");

    let kubeconfig_yaml = kubeconfig(&api_server_url, &pki);
    let kubeconfig_path = dir.join("admin.kubeconfig");
    write_private(&kubeconfig_path, kubeconfig_yaml.as_bytes())?;
    let parsed = Kubeconfig::from_yaml(&kubeconfig_yaml)
        .map_err(|e| Error::other("parsing the generated kubeconfig", e))?;
    let config = kube::Config::from_custom_kubeconfig(parsed, &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::other("loading the generated kubeconfig", e))?;
    let client = kube::Client::try_from(config.clone())
        .map_err(|e| Error::other("building a kube client", e))?;

    let kcm = with_port_retry(|| start_controller_manager(ctx, &kcm_bin, &dir, &kubeconfig_path));
    let crds = async {
        let started = Instant::now();
        let names = install_crds(&client, &paths::crds_dir()).await?;
        ctx.record("crds", started.elapsed());
        Ok::<_, Error>(names)
    };
    let ((), crds) = tokio::try_join!(kcm, crds)?;

    Ok(Kube {
        api_server_url,
        etcd_url,
        kubeconfig_path,
        kubeconfig_yaml,
        config,
        ca_pem: pki.ca_cert,
        crds,
        audit_log: files.audit_log.clone(),
        dir,
    })
}

struct Files {
    ca_cert: PathBuf,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    sa_key: PathBuf,
    sa_pub: PathBuf,
    audit_policy: PathBuf,
    audit_log: PathBuf,
}

impl Files {
    fn new(dir: &Path) -> Self {
        Files {
            ca_cert: dir.join("ca.crt"),
            serving_cert: dir.join("apiserver.crt"),
            serving_key: dir.join("apiserver.key"),
            sa_key: dir.join("service-account.key"),
            sa_pub: dir.join("service-account.pub"),
            audit_policy: dir.join("audit-policy.yaml"),
            audit_log: dir.join("audit.log"),
        }
    }
}

async fn start_etcd(ctx: &Ctx<'_>, bin: &Path, dir: &Path) -> Result<String> {
    let started = Instant::now();
    let client_port = ctx.sup.free_port()?;
    let peer_port = ctx.sup.free_port()?;
    let data = dir.join("etcd-data");
    if data.exists() {
        std::fs::remove_dir_all(&data)
            .map_err(|e| Error::other(format!("cleaning {}", data.display()), e))?;
    }
    let url = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let mut cmd = Command::new(bin);
    cmd.arg("--name=capstan-testenv")
        .arg(format!("--data-dir={}", data.display()))
        .arg(format!("--listen-client-urls={url}"))
        .arg(format!("--advertise-client-urls={url}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster=capstan-testenv={peer}"))
        .arg("--initial-cluster-state=new")
        // Test data: losing it on a crash is fine, waiting for fsync is not.
        .arg("--unsafe-no-fsync")
        .arg("--log-level=warn");
    let spawned = ctx.sup.spawn(
        "etcd",
        &mut cmd,
        &dir.join("etcd.log"),
        &[client_port, peer_port],
    )?;
    let http = probe_client()
        .build()
        .map_err(|e| Error::other("building an HTTP client", e))?;
    let health = format!("{url}/health");
    wait_ready(
        ctx.sup,
        &spawned,
        ctx.timeout(Duration::from_secs(30)),
        "GET /health",
        || http_ok(&http, &health, Some("\"health\":\"true\"")),
    )
    .await?;
    ctx.record("etcd", started.elapsed());
    Ok(url)
}

async fn start_apiserver(
    ctx: &Ctx<'_>,
    bin: &Path,
    dir: &Path,
    files: &Files,
    etcd_url: &str,
    pki: &pki::Pki,
) -> Result<u16> {
    let started = Instant::now();
    let port = ctx.sup.free_port()?;
    let cert_dir = dir.join("apiserver-certs");
    let mut cmd = Command::new(bin);
    cmd.arg("--bind-address=127.0.0.1")
        .arg("--advertise-address=127.0.0.1")
        .arg(format!("--secure-port={port}"))
        .arg(format!("--etcd-servers={etcd_url}"))
        .arg(format!("--cert-dir={}", cert_dir.display()))
        .arg(format!("--tls-cert-file={}", files.serving_cert.display()))
        .arg(format!(
            "--tls-private-key-file={}",
            files.serving_key.display()
        ))
        .arg(format!("--client-ca-file={}", files.ca_cert.display()))
        .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
        .arg(format!(
            "--service-account-key-file={}",
            files.sa_pub.display()
        ))
        .arg(format!(
            "--service-account-signing-key-file={}",
            files.sa_key.display()
        ))
        .arg("--service-cluster-ip-range=10.0.0.0/24")
        .arg("--authorization-mode=RBAC")
        // Every ServiceAccount request, so tests see each 403 the manager got.
        .arg(format!(
            "--audit-policy-file={}",
            files.audit_policy.display()
        ))
        .arg(format!("--audit-log-path={}", files.audit_log.display()))
        .arg("--audit-log-format=json")
        .arg("--audit-log-mode=blocking")
        .arg("--audit-log-maxbackup=0")
        .arg("--audit-log-maxsize=0")
        // No service-account controller runs, so Pods would wait for a default
        // ServiceAccount forever; no Pod ever runs here anyway.
        .arg("--disable-admission-plugins=ServiceAccount")
        // Priority and fairness costs CPU on a 2-core machine and protects nothing here.
        .arg("--enable-priority-and-fairness=false")
        // The default reconciler tries to publish 127.0.0.1 as the `kubernetes` Service's
        // endpoint, which validation rejects (loopback) every 10 s; nothing in-cluster
        // could use it anyway.
        .arg("--endpoint-reconciler-type=none")
        .arg("--allow-privileged=true")
        .arg("--profiling=false");
    let spawned = ctx.sup.spawn(
        "kube-apiserver",
        &mut cmd,
        &dir.join("kube-apiserver.log"),
        &[port],
    )?;
    let identity =
        reqwest::Identity::from_pem(format!("{}\n{}", pki.admin_cert, pki.admin_key).as_bytes())
            .map_err(|e| Error::other("loading the admin client certificate", e))?;
    let ca = reqwest::Certificate::from_pem(pki.ca_cert.as_bytes())
        .map_err(|e| Error::other("loading the CA certificate", e))?;
    let http = probe_client()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .identity(identity)
        .build()
        .map_err(|e| Error::other("building an HTTPS client", e))?;
    let readyz = format!("https://127.0.0.1:{port}/readyz");
    wait_ready(
        ctx.sup,
        &spawned,
        ctx.timeout(Duration::from_secs(90)),
        "GET /readyz with the admin client certificate",
        || http_ok(&http, &readyz, Some("ok")),
    )
    .await?;
    ctx.record("kube-apiserver", started.elapsed());
    Ok(port)
}

async fn start_controller_manager(
    ctx: &Ctx<'_>,
    bin: &Path,
    dir: &Path,
    kubeconfig: &Path,
) -> Result<()> {
    let started = Instant::now();
    let port = ctx.sup.free_port()?;
    let flex = dir.join("flexvolume");
    std::fs::create_dir_all(&flex)
        .map_err(|e| Error::other(format!("creating {}", flex.display()), e))?;
    let mut cmd = Command::new(bin);
    // No --authentication-kubeconfig / --authorization-kubeconfig: its secure port then
    // serves only the always-allowed paths (/healthz, /readyz, /livez), which is all the
    // environment asks of it, and it does not look for the API server's request-header CA
    // (which this API server has none of).
    cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--secure-port={port}"))
        .arg(format!(
            "--cert-dir={}",
            dir.join("controller-manager-certs").display()
        ))
        .arg(format!("--controllers={CONTROLLERS}"))
        .arg("--leader-elect=false")
        .arg("--use-service-account-credentials=false")
        .arg(format!("--flex-volume-plugin-dir={}", flex.display()))
        .arg(format!("--root-ca-file={}", dir.join("ca.crt").display()))
        .arg("--profiling=false");
    let spawned = ctx.sup.spawn(
        "kube-controller-manager",
        &mut cmd,
        &dir.join("kube-controller-manager.log"),
        &[port],
    )?;
    // Its serving certificate is self-signed; /healthz needs no authentication.
    let http = probe_client()
        .use_rustls_tls()
        .danger_accept_invalid_certs(true)
        .build()
        .map_err(|e| Error::other("building an HTTPS client", e))?;
    let healthz = format!("https://127.0.0.1:{port}/healthz");
    wait_ready(
        ctx.sup,
        &spawned,
        ctx.timeout(Duration::from_secs(60)),
        "GET /healthz",
        || http_ok(&http, &healthz, Some("ok")),
    )
    .await?;
    ctx.record("kube-controller-manager", started.elapsed());
    Ok(())
}

fn kubeconfig(server: &str, pki: &pki::Pki) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: capstan-testenv
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: capstan-testenv-admin
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: capstan-testenv
  context:
    cluster: capstan-testenv
    user: capstan-testenv-admin
    namespace: default
current-context: capstan-testenv
",
        ca = b64(&pki.ca_cert),
        cert = b64(&pki.admin_cert),
        key = b64(&pki.admin_key),
    )
}

/// The YAML and JSON files under `dir`, recursively, sorted.
fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d)
            .map_err(|e| Error::other(format!("reading {}", d.display()), e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            ) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Applies every CRD in the YAML files under `dir` (which may be missing or empty) and
/// waits until each is Established. Returns their names.
pub(crate) async fn install_crds(client: &kube::Client, dir: &Path) -> Result<Vec<String>> {
    use serde::Deserialize as _;
    let mut crds = Vec::new();
    for file in manifest_files(dir)? {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| Error::other(format!("reading {}", file.display()), e))?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc)
                .map_err(|e| Error::other(format!("parsing {}", file.display()), e))?;
            if value.is_null() {
                continue;
            }
            let kind = value.get("kind").and_then(serde_yaml::Value::as_str);
            if kind != Some("CustomResourceDefinition") {
                return Err(Error::other(
                    format!("reading {}", file.display()),
                    format!("crds/ must hold only CustomResourceDefinitions, found kind {kind:?}"),
                ));
            }
            let crd: CustomResourceDefinition = serde_yaml::from_value(value)
                .map_err(|e| Error::other(format!("parsing a CRD in {}", file.display()), e))?;
            crds.push(crd);
        }
    }
    let names = crds
        .iter()
        .map(|c| c.metadata.name.clone().unwrap_or_default())
        .collect();
    futures::future::try_join_all(crds.iter().map(|crd| apply_crd(client, crd))).await?;
    Ok(names)
}

/// Server-side applies one CRD and waits until it is Established.
pub(crate) async fn apply_crd(client: &kube::Client, crd: &CustomResourceDefinition) -> Result<()> {
    let name = crd
        .metadata
        .name
        .clone()
        .ok_or_else(|| Error::other("applying a CRD", "it has no metadata.name"))?;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(crd),
    )
    .await
    .map_err(|e| Error::other(format!("applying CRD {name}"), e))?;
    let timeout = Duration::from_secs(30);
    match tokio::time::timeout(
        timeout,
        await_condition(api.clone(), &name, conditions::is_crd_established()),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(Error::other(format!("waiting for CRD {name}"), e)),
        Err(_) => {
            let last = api
                .get_opt(&name)
                .await
                .ok()
                .flatten()
                .and_then(|c| c.status)
                .map(|s| serde_json::to_string(&s).unwrap_or_default())
                .unwrap_or_else(|| "no status".to_owned());
            Err(Error::Timeout {
                what: format!("CRD {name} to be Established"),
                timeout,
                last_seen: last,
            })
        }
    }
}
