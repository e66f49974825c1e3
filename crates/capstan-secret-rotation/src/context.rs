//! What every reconcile shares ([`Context`]) and how the clients of one object are built
//! from its spec ([`build_clients`]): the backend (a Kubernetes Secret in the object's
//! namespace, Vault with the connection's token, Secrets Manager with the connection's
//! AWS settings) and the target (with the admin login from a Secret in the object's
//! namespace), and the ECS client of `delivery.ecsServices` (with the AWS settings of
//! `spec.ecs_connection()`). A reference that cannot be resolved is a [`RefError`] naming it, reported
//! as `Ready=False` before anything is changed anywhere.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use capstan_aws::{ClientOptions, Retries, StaticCredentials};
use capstan_core::connection::{AwsConnection, ClusterConnection, LocalSecretRef};
use capstan_core::redact::SecretValue;
use capstan_core::runtime::Runtime;
use capstan_core::secret_ref::read_key;
use kube::runtime::events::Recorder;

use crate::backend::{
    AwsSecretsManagerBackend, KubernetesSecretBackend, SecretBackend, VaultClient, VaultKvBackend,
};
use crate::controller::Metrics;
use crate::crd::{AdminSecretRef, Backend, CaSecretRef, SecretRotationSpec, Target};
use crate::target::{CredentialTarget, NoTarget, PostgresTarget};

/// Shared by every reconcile of the controller.
pub struct Context {
    /// The manager's runtime (client, clock, identity).
    pub rt: Runtime,
    /// The controller's metrics.
    pub metrics: Metrics,
    /// The one Event recorder of this controller.
    pub recorder: Recorder,
    /// AWS client options (retries, timeouts, session name).
    pub aws_options: ClientOptions,
    /// Consecutive transient failures per object (`namespace/name`), for the backoff.
    pub failures: Mutex<HashMap<String, u32>>,
    /// Objects whose rotation is overdue, for the gauge.
    pub overdue: Mutex<BTreeSet<String>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("rt", &self.rt)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context for `rt`.
    pub fn new(rt: Runtime, metrics: Metrics) -> Self {
        let recorder = capstan_core::events::recorder(
            rt.client.clone(),
            crate::controller::FIELD_MANAGER,
            &rt.instance,
        );
        let no_retries = std::env::var("CAPSTAN_AWS_NO_RETRIES").is_ok_and(|v| v == "true");
        let aws_options = ClientOptions {
            retries: if no_retries {
                Retries::Off
            } else {
                Retries::Standard(3)
            },
            session_name: format!("capstan-{}", rt.instance),
            ..ClientOptions::default()
        };
        Self {
            rt,
            metrics,
            recorder,
            aws_options,
            failures: Mutex::new(HashMap::new()),
            overdue: Mutex::new(BTreeSet::new()),
        }
    }

    /// Counts one more consecutive failure of `key`; returns the count.
    pub fn failed(&self, key: &str) -> u32 {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(key.to_owned()).or_insert(0);
        *n += 1;
        *n
    }

    /// Forgets the failures of `key`.
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// Records whether `key` is overdue and updates the gauge.
    pub fn set_overdue(&self, key: &str, overdue: bool) {
        let mut set = self.overdue.lock().unwrap_or_else(|e| e.into_inner());
        if overdue {
            set.insert(key.to_owned());
        } else {
            set.remove(key);
        }
        self.metrics.set_overdue(set.len());
    }
}

/// A reference in the spec or its connection that cannot be resolved: a missing admin
/// Secret, an unsupported Vault auth method, a bad CA bundle. Names the reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefError {
    /// CamelCase reason for `Ready=False`.
    pub reason: &'static str,
    /// What cannot be resolved.
    pub message: String,
}

impl RefError {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// The clients of one object.
#[derive(Debug)]
pub struct Clients {
    /// Where the credential is stored.
    pub backend: Box<dyn SecretBackend>,
    /// What it is set on.
    pub target: Box<dyn CredentialTarget>,
    /// ECS, when `delivery.ecsServices` is set.
    pub ecs: Option<capstan_aws::ecs::SdkEcs>,
}

/// Builds the backend and target of `spec` for an object in `namespace`; with
/// `delivery.ecsServices`, the ECS client from `ecs_connection` (the resolved
/// [`SecretRotationSpec::ecs_connection`]).
pub async fn build_clients(
    ctx: &Context,
    namespace: &str,
    spec: &SecretRotationSpec,
    connection: Option<&ClusterConnection>,
    ecs_connection: Option<&ClusterConnection>,
) -> Result<Clients, RefError> {
    let backend = build_backend(ctx, namespace, spec, connection).await?;
    let target = build_target(ctx, namespace, &spec.target).await?;
    let ecs = match spec.ecs_connection() {
        None => None,
        Some(r) => {
            let (aws, creds) = aws_settings(ctx, ecs_connection, &r.name).await?;
            let config = capstan_aws::sdk_config(aws, creds, &ctx.aws_options).await;
            Some(capstan_aws::ecs::SdkEcs::from_config(&config))
        }
    };
    Ok(Clients {
        backend,
        target,
        ecs,
    })
}

/// The AWS settings of an AWS ClusterConnection and its credentials (read from
/// Capstan's namespace).
async fn aws_settings<'c>(
    ctx: &Context,
    connection: Option<&'c ClusterConnection>,
    name: &str,
) -> Result<(&'c AwsConnection, Option<StaticCredentials>), RefError> {
    let client = &ctx.rt.client;
    let own = &ctx.rt.own_namespace;
    let aws = connection
        .and_then(|c| c.spec.aws.as_ref())
        .ok_or_else(|| {
            RefError::new(
                "ConnectionWrongKind",
                format!("ClusterConnection {name:?} is not an AWS connection"),
            )
        })?;
    let creds = match &aws.credentials_secret_ref {
        None => None,
        Some(r) => {
            let read = |k: &'static str| read_key(client, own, r, k);
            let map = |e: capstan_core::secret_ref::SecretKeyError| {
                RefError::new("AwsCredentialsUnavailable", e.to_string())
            };
            let key = read("AWS_ACCESS_KEY_ID").await.map_err(map)?;
            Some(StaticCredentials {
                access_key_id: key.expose().to_owned(),
                secret_access_key: read("AWS_SECRET_ACCESS_KEY").await.map_err(map)?,
                session_token: read("AWS_SESSION_TOKEN").await.ok(),
            })
        }
    };
    Ok((aws, creds))
}

async fn build_backend(
    ctx: &Context,
    namespace: &str,
    spec: &SecretRotationSpec,
    connection: Option<&ClusterConnection>,
) -> Result<Box<dyn SecretBackend>, RefError> {
    let client = &ctx.rt.client;
    let own = &ctx.rt.own_namespace;
    let conn_name = || {
        spec.connection_ref
            .as_ref()
            .map(|r| r.name.clone())
            .unwrap_or_default()
    };
    match &spec.backend {
        Backend::Kubernetes(k) => Ok(Box::new(KubernetesSecretBackend::new(
            client.clone(),
            namespace,
            k,
        ))),
        Backend::Vault(v) => {
            let vault = connection
                .and_then(|c| c.spec.vault.as_ref())
                .ok_or_else(|| {
                    RefError::new(
                        "ConnectionWrongKind",
                        format!(
                            "ClusterConnection {:?} is not a Vault connection",
                            conn_name()
                        ),
                    )
                })?;
            let Some(token_auth) = &vault.auth.token else {
                return Err(RefError::new(
                    "VaultAuthUnsupported",
                    format!(
                        "ClusterConnection {:?}: only token auth is supported for SecretRotation",
                        conn_name()
                    ),
                ));
            };
            let token = read_key(client, own, &token_auth.secret_ref, "token")
                .await
                .map_err(|e| RefError::new("VaultTokenUnavailable", e.to_string()))?;
            let ca = match &vault.ca_secret_ref {
                None => None,
                Some(r) => Some(
                    read_key(client, own, r, "ca.crt")
                        .await
                        .map_err(|e| RefError::new("VaultCaUnavailable", e.to_string()))?,
                ),
            };
            let vc = VaultClient::from_connection(
                vault,
                token,
                ca.as_ref().map(|c| c.expose().as_bytes()),
            )
            .map_err(|e| RefError::new(e.reason(), e.to_string()))?;
            let kv =
                VaultKvBackend::new(vc, v).map_err(|e| RefError::new(e.reason(), e.to_string()))?;
            Ok(Box::new(kv))
        }
        Backend::AwsSecretsManager(a) => {
            let (aws, creds) = aws_settings(ctx, connection, &conn_name()).await?;
            let config = capstan_aws::sdk_config(aws, creds, &ctx.aws_options).await;
            let sm = aws_sdk_secretsmanager::Client::new(&config);
            Ok(Box::new(AwsSecretsManagerBackend::from_client(sm, a)))
        }
    }
}

async fn read_admin(
    ctx: &Context,
    namespace: &str,
    r: &AdminSecretRef,
) -> Result<(String, SecretValue), RefError> {
    let key = |k: &str| LocalSecretRef {
        name: r.name.clone(),
        key: Some(k.to_owned()),
    };
    let err = |e: capstan_core::secret_ref::SecretKeyError| {
        RefError::new("AdminSecretUnavailable", format!("admin {e}"))
    };
    let user = read_key(&ctx.rt.client, namespace, &key(&r.username_key), "username")
        .await
        .map_err(err)?;
    let password = read_key(&ctx.rt.client, namespace, &key(&r.password_key), "password")
        .await
        .map_err(err)?;
    Ok((user.expose().to_owned(), password))
}

async fn read_ca(
    ctx: &Context,
    namespace: &str,
    r: Option<&CaSecretRef>,
) -> Result<Option<SecretValue>, RefError> {
    let Some(r) = r else { return Ok(None) };
    let reference = LocalSecretRef {
        name: r.name.clone(),
        key: Some(r.key.clone()),
    };
    read_key(&ctx.rt.client, namespace, &reference, "ca.crt")
        .await
        .map(Some)
        .map_err(|e| RefError::new("CaSecretUnavailable", format!("CA bundle {e}")))
}

async fn build_target(
    ctx: &Context,
    namespace: &str,
    target: &Target,
) -> Result<Box<dyn CredentialTarget>, RefError> {
    match target {
        Target::ValueOnly(_) => Ok(Box::new(NoTarget)),
        Target::Postgres(p) => {
            let (user, password) = read_admin(ctx, namespace, &p.admin_secret_ref).await?;
            let ca = read_ca(ctx, namespace, p.ca_secret_ref.as_ref()).await?;
            let t = PostgresTarget::new(
                p,
                user,
                password,
                ca.as_ref().map(|c| c.expose().as_bytes()),
            )
            .map_err(|e| RefError::new(e.reason(), e.to_string()))?
            .with_connect_timeout(Duration::from_secs(5));
            Ok(Box::new(t))
        }
        Target::Mysql(m) => {
            let (user, password) = read_admin(ctx, namespace, &m.admin_secret_ref).await?;
            let ca = read_ca(ctx, namespace, m.ca_secret_ref.as_ref()).await?;
            let t = crate::target::MysqlTarget::new(
                m,
                user,
                password,
                ca.as_ref().map(|c| c.expose().as_bytes()),
            )
            .map_err(|e| RefError::new(e.reason(), e.to_string()))?;
            Ok(Box::new(t))
        }
    }
}
