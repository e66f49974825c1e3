//! The ClusterConnection controller: checks that each connection reaches its system
//! with its credentials, and reports that in `status.conditions[Ready]`.
//!
//! It never uses a connection on behalf of an object; the resource controllers do that
//! after `capstan_core::connection::resolve` has checked the namespace. Checks repeat
//! every [`RECHECK`] so that expired credentials show up before a rotation needs them.

use std::sync::Arc;
use std::time::Duration;

use capstan_aws::ClientOptions;
use capstan_core::conditions::{self, Desired, READY};
use capstan_core::connection::{AwsConnection, ClusterConnection, LocalSecretRef, VaultConnection};
use capstan_core::error::Categorized;
use capstan_core::metrics::ControllerMetrics;
use capstan_core::redact::SecretValue;
use capstan_core::runtime::Runtime;
use capstan_core::ssa;
use futures::{StreamExt, TryStreamExt};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::controller::Action;
use kube::runtime::{Controller, watcher};
use kube::{Api, ResourceExt};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

const FIELD_MANAGER: &str = "capstan-connection";
/// How often a healthy connection is checked again.
pub const RECHECK: Duration = Duration::from_secs(300);
/// How soon a failing connection is checked again.
const RETRY: Duration = Duration::from_secs(30);

/// Why a connection check failed. The message names the connection's part at fault,
/// never a credential.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("Secret {namespace}/{name} {problem}")]
    CredentialsSecret {
        namespace: String,
        name: String,
        problem: String,
    },
    #[error(transparent)]
    Aws(#[from] capstan_aws::AwsError),
    #[error("Vault at {address}: {problem}")]
    Vault { address: String, problem: String },
    #[error("writing status: {}", capstan_core::error::KubeMessage(.0))]
    Kube(#[from] kube::Error),
}

impl CheckError {
    fn reason(&self) -> &'static str {
        match self {
            CheckError::CredentialsSecret { .. } => "CredentialsUnavailable",
            CheckError::Aws(capstan_aws::AwsError::WrongAccount { .. }) => "WrongAccount",
            CheckError::Aws(_) => "AuthenticationFailed",
            CheckError::Vault { .. } => "Unreachable",
            CheckError::Kube(_) => "StatusWriteFailed",
        }
    }
}

impl Categorized for CheckError {
    fn category(&self) -> &'static str {
        match self {
            CheckError::CredentialsSecret { .. } => "credentials_secret",
            CheckError::Aws(e) => e.category(),
            CheckError::Vault { .. } => "vault_unreachable",
            CheckError::Kube(e) => e.category(),
        }
    }
}

struct Ctx {
    events: capstan_core::events::Publisher,
    rt: Runtime,
    metrics: ControllerMetrics,
    aws_options: ClientOptions,
    http: reqwest::Client,
}

/// Registers the controller's metrics.
pub fn register_metrics(registry: &mut Registry) -> ControllerMetrics {
    ControllerMetrics::register(registry, "connection")
}

/// Runs the controller until `shutdown`.
pub async fn run(rt: Runtime, metrics: ControllerMetrics, shutdown: CancellationToken) {
    let flag = rt.readiness.register("connection");
    let api: Api<ClusterConnection> = Api::all(rt.client.clone());
    // Controller::new's own watch, with the per-object series fed on the way.
    let (reader, writer) = kube::runtime::reflector::store();
    let objects = rt.objects.clone();
    let trigger = kube::runtime::watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .inspect_ok(move |ev| objects.observe(None, ev))
        .reflect(writer)
        .applied_objects();
    let controller = Controller::for_stream(trigger, reader)
        .with_config(kube::runtime::Config::default().concurrency(rt.concurrency));
    let objects = rt.objects.clone();
    let store = controller.store();
    let aws_options = ClientOptions::from_settings(&rt.aws, &rt.instance);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new());
    let ctx = Arc::new(Ctx {
        events: capstan_core::events::Publisher::new(
            rt.client.clone(),
            FIELD_MANAGER,
            &rt.instance,
        ),
        rt,
        metrics,
        aws_options,
        http,
    });
    let ready = async move {
        if store.wait_until_ready().await.is_ok() {
            flag.set(true);
        }
    };
    let token = shutdown.clone();
    let stream = controller
        .graceful_shutdown_on(async move { token.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {});
    tokio::join!(ready, stream);
    objects.forget_kind("ClusterConnection");
}

async fn reconcile(conn: Arc<ClusterConnection>, ctx: Arc<Ctx>) -> Result<Action, CheckError> {
    let _timer = ctx.metrics.start();
    let name = conn.name_any();
    let checked = match (&conn.spec.aws, &conn.spec.vault) {
        (Some(aws), _) => check_aws(&ctx, &name, aws).await,
        (None, Some(vault)) => check_vault(&ctx, vault).await,
        // The CRD's CEL rule refuses this at admission.
        (None, None) => Ok("neither aws nor vault is set".to_owned()),
    };
    let mut status = conn.status.clone().unwrap_or_default();
    status.observed_generation = conn.metadata.generation;
    status.kind = Some(conn.spec.kind().as_str().to_owned());
    let now = ctx.rt.clock.now();
    let (desired, requeue) = match &checked {
        Ok(detail) => (
            Desired::new(READY, true, "Reachable", detail.clone()),
            RECHECK,
        ),
        Err(e) => {
            ctx.metrics.failure(e);
            tracing::warn!(kind = "ClusterConnection", object = %name, error = %e, "connection check failed");
            (Desired::new(READY, false, e.reason(), e.to_string()), RETRY)
        }
    };
    let before = conn.status.clone().unwrap_or_default();
    // An unreachable connection is also a Warning Event (in `default`, where kubectl
    // shows a cluster-scoped object's Events), once per transition, not per check.
    let warning = capstan_core::events::ready_turned_false(
        &before.conditions,
        std::slice::from_ref(&desired),
    );
    conditions::set(
        &mut status.conditions,
        desired,
        conn.metadata.generation,
        now,
    );
    if status != before {
        let api: Api<ClusterConnection> = Api::all(ctx.rt.client.clone());
        ssa::apply_status(&api, &name, FIELD_MANAGER, &status).await?;
    }
    if let Some((reason, note)) = warning {
        ctx.events
            .publish(
                conn.as_ref(),
                capstan_core::events::EventType::Warning,
                &reason,
                "Check",
                note,
            )
            .await;
    }
    Ok(Action::requeue(requeue))
}

fn error_policy(conn: Arc<ClusterConnection>, err: &CheckError, ctx: Arc<Ctx>) -> Action {
    ctx.metrics.failure(err);
    Action::requeue(capstan_core::schedule::jittered(RETRY, &conn.name_any()))
}

async fn check_aws(ctx: &Ctx, name: &str, aws: &AwsConnection) -> Result<String, CheckError> {
    let creds = capstan_aws::clients::read_credentials(&ctx.rt.client, &ctx.rt.own_namespace, aws)
        .await
        .map_err(|e| CheckError::CredentialsSecret {
            namespace: e.namespace,
            name: e.name,
            problem: e.problem,
        })?;
    let config = capstan_aws::sdk_config(aws, creds, &ctx.aws_options).await;
    let id = capstan_aws::check_identity(name, aws, &config).await?;
    Ok(format!(
        "authenticated in account {} as {}",
        id.account, id.arn
    ))
}

async fn check_vault(ctx: &Ctx, vault: &VaultConnection) -> Result<String, CheckError> {
    let address = vault.address.trim_end_matches('/').to_owned();
    let fail = |problem: String| CheckError::Vault {
        address: address.clone(),
        problem,
    };
    // The connection's CA bundle, as the controllers use it; else the system roots.
    let http = match &vault.ca_secret_ref {
        None => ctx.http.clone(),
        Some(r) => {
            let pem = read_secret_key(ctx, r, "ca.crt").await?;
            let certs = reqwest::Certificate::from_pem_bundle(pem.expose().as_bytes())
                .map_err(|e| fail(format!("CA bundle of caSecretRef: {e}")))?;
            if certs.is_empty() {
                return Err(fail("CA bundle of caSecretRef holds no certificate".into()));
            }
            certs
                .into_iter()
                .fold(
                    reqwest::Client::builder().timeout(Duration::from_secs(10)),
                    reqwest::ClientBuilder::add_root_certificate,
                )
                .build()
                .map_err(|e| fail(format!("building the HTTP client: {}", without_url(&e))))?
        }
    };
    let health = http
        .get(format!("{address}/v1/sys/health"))
        .send()
        .await
        .map_err(|e| fail(format!("health check failed: {}", without_url(&e))))?;
    // 200 active, 429 standby, 473 performance standby: all serve reads.
    let code = health.status().as_u16();
    if !matches!(code, 200 | 429 | 473) {
        return Err(fail(format!(
            "health check answered HTTP {code} (sealed or uninitialised)"
        )));
    }
    if let Some(ar) = &vault.auth.app_role {
        let secret_id = read_secret_key(ctx, &ar.secret_id_ref, "secret_id").await?;
        let body = serde_json::json!({ "role_id": ar.role_id, "secret_id": secret_id.expose() });
        return check_login(&http, vault, "AppRole", &ar.mount_path, &body, &address).await;
    }
    if let Some(k) = &vault.auth.kubernetes {
        let path = &ctx.rt.service_account_token_file;
        let jwt = tokio::fs::read_to_string(path).await.map_err(|e| {
            fail(format!(
                "Kubernetes auth: Capstan's service account token {} cannot be read: {e}",
                path.display()
            ))
        })?;
        let jwt = SecretValue::new(jwt.trim().to_owned());
        let body = serde_json::json!({ "role": k.role, "jwt": jwt.expose() });
        return check_login(&http, vault, "Kubernetes", &k.mount_path, &body, &address).await;
    }
    let Some(token_auth) = &vault.auth.token else {
        return Err(fail("no auth method declared".into()));
    };
    let token = read_secret_key(ctx, &token_auth.secret_ref, "token").await?;
    let mut req = http
        .get(format!("{address}/v1/auth/token/lookup-self"))
        .header("X-Vault-Token", token.expose());
    if let Some(ns) = &vault.namespace {
        req = req.header("X-Vault-Namespace", ns);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| fail(format!("token lookup failed: {}", without_url(&e))))?;
    if !resp.status().is_success() {
        return Err(fail(format!(
            "token refused (HTTP {})",
            resp.status().as_u16()
        )));
    }
    Ok("server healthy; token accepted".into())
}

/// Logs in (`auth/<mount>/login` with `body`), then revokes the token the check got: a
/// check every resync must not pile up tokens in Vault.
async fn check_login(
    http: &reqwest::Client,
    vault: &VaultConnection,
    method: &str,
    mount: &str,
    body: &serde_json::Value,
    address: &str,
) -> Result<String, CheckError> {
    let fail = |problem: String| CheckError::Vault {
        address: address.to_owned(),
        problem,
    };
    let mount = mount.trim_matches('/');
    let with_ns = |req: reqwest::RequestBuilder| match &vault.namespace {
        Some(ns) => req.header("X-Vault-Namespace", ns),
        None => req,
    };
    let resp = with_ns(http.post(format!("{address}/v1/auth/{mount}/login")))
        .json(body)
        .send()
        .await
        .map_err(|e| fail(format!("{method} login failed: {}", without_url(&e))))?;
    if !resp.status().is_success() {
        return Err(fail(format!(
            "{method} login at auth/{mount} refused (HTTP {})",
            resp.status().as_u16()
        )));
    }
    let v: serde_json::Value = resp.json().await.map_err(|e| {
        fail(format!(
            "{method} login answer unreadable: {}",
            without_url(&e)
        ))
    })?;
    let Some(token) = v["auth"]["client_token"].as_str() else {
        return Err(fail(format!("{method} login returned no token")));
    };
    let token = SecretValue::new(token.to_owned());
    let revoked = with_ns(http.post(format!("{address}/v1/auth/token/revoke-self")))
        .header("X-Vault-Token", token.expose())
        .send()
        .await;
    if let Err(e) = revoked {
        tracing::debug!(error = %without_url(&e), "could not revoke the check's token");
    }
    Ok(format!(
        "server healthy; {method} login at auth/{mount} accepted"
    ))
}

/// A reqwest error's text with its causes ("Connection refused", "invalid peer
/// certificate: UnknownIssuer": reqwest's own text says only "error sending request"),
/// without the URL (which could carry a query string).
fn without_url(e: &reqwest::Error) -> String {
    let mut s = capstan_core::error::with_causes(e);
    if let Some(url) = e.url() {
        s = s.replace(url.as_str(), "<url>");
    }
    s
}

async fn read_secret_key(
    ctx: &Ctx,
    r: &LocalSecretRef,
    default_key: &str,
) -> Result<SecretValue, CheckError> {
    capstan_core::secret_ref::read_key(&ctx.rt.client, &ctx.rt.own_namespace, r, default_key)
        .await
        .map_err(|e| CheckError::CredentialsSecret {
            namespace: e.namespace,
            name: e.name,
            problem: e.problem,
        })
}
