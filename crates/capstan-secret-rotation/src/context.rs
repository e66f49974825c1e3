//! What every reconcile shares ([`Context`], with the controller's [`Metrics`] and its
//! [`FIELD_MANAGER`]) and how the clients of one object are built
//! from its spec ([`build_clients`]): the backend (a Kubernetes Secret in the object's
//! namespace, Vault with the connection's token, Secrets Manager with the connection's
//! AWS settings) and the target (with the admin login from a Secret in the object's
//! namespace), and the ECS client of `delivery.ecsServices` (with the AWS settings of
//! `spec.ecs_connection()`). A reference that cannot be resolved is a [`RefError`] naming it, reported
//! as `Ready=False` before anything is changed anywhere.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capstan_aws::ClientOptions;
use capstan_aws::budget::Budget;
use capstan_aws::clients::{ClientCache, ClientError, SdkConfig};
use capstan_aws::ecs::SdkEcs;
use capstan_aws::secrets_manager::SdkSecretsManager;
use capstan_core::connection::{ClusterConnection, LocalSecretRef};
use capstan_core::events::Publisher;
use capstan_core::redact::SecretValue;
use capstan_core::runtime::Runtime;
use capstan_core::secret_ref::read_key;
use kube::ResourceExt;

use crate::backend::{
    AwsSecretsManagerBackend, KubernetesSecretBackend, SecretBackend, VaultClient, VaultKvBackend,
};
use crate::crd::{AdminSecretRef, Backend, CaSecretRef, SecretRotationSpec, Target};
use crate::reasons;
use crate::targets::{
    CredentialTarget, IamKeyTarget, NoTarget, PostgresTarget, RdsMasterTarget, TransitKeyTarget,
    VaultDynamicRoleTarget, VaultStaticRoleTarget,
};
use capstan_aws::iam::SdkIam;
use capstan_aws::rds::SdkRds;
use capstan_core::scope::ScopedResource;

/// The field manager of every write this controller makes.
pub const FIELD_MANAGER: &str = "capstan-secret-rotation";

pub use crate::metrics::{Metrics, OutcomeLabels};

/// What an administrator tunes about the controller (`capstan run` flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// A rotation in progress longer than this, and than [`crate::rotation::STUCK_FACTOR`]
    /// times its object's usual rotation, is reported stuck.
    pub stuck_after: Duration,
}

impl Settings {
    /// The default of `--rotation-stuck-after`.
    pub const DEFAULT_STUCK_AFTER: Duration = Duration::from_secs(120);
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            stuck_after: Self::DEFAULT_STUCK_AFTER,
        }
    }
}

/// Shared by every reconcile of the controller.
pub struct Context {
    /// The manager's runtime (client, clock, identity).
    pub rt: Runtime,
    /// The controller's metrics.
    pub metrics: Metrics,
    /// The Event publisher of this controller.
    pub events: Publisher,
    /// Secrets Manager clients per AWS connection (capstan-aws's one client layer:
    /// built once per connection version, with the Runtime's client options).
    pub secrets_manager: ClientCache<SdkSecretsManager>,
    /// ECS clients per AWS connection, for `delivery.ecsServices`.
    pub ecs: ClientCache<SdkEcs>,
    /// RDS clients per connection (the `rdsMasterPassword` target).
    pub rds: ClientCache<SdkRds>,
    /// IAM clients per connection (the `iamAccessKey` target).
    pub iam: ClientCache<SdkIam>,
    /// Consecutive transient failures per object (`namespace/name`), for the backoff.
    pub failures: Mutex<HashMap<String, u32>>,
    /// Objects whose rotation is overdue, for the gauge.
    pub overdue: Mutex<BTreeSet<String>>,
    /// Objects whose rotation in progress is stuck, for the gauge.
    pub stuck: Mutex<BTreeSet<String>>,
    /// The step lines of the audit trail this process wrote, per rotation in progress.
    pub audit_written: crate::audit::Written,
    /// The administrator's settings.
    pub settings: Settings,
    /// Whole objects from watch events, waiting for their reconcile (the cache keeps
    /// them without status).
    pub fresh: Arc<capstan_core::runtime::Fresh<crate::crd::SecretRotation>>,
    /// Vault tokens from logins (AppRole), per ClusterConnection, reused until near
    /// the end of their lease so that reconciles do not each create a token.
    pub vault_tokens: Mutex<HashMap<String, CachedToken>>,
    /// When each object's target configuration was last read back for drift (kept in
    /// memory: a restart checks every object once, then on its interval).
    pub drift_checked: Mutex<HashMap<String, chrono::DateTime<chrono::Utc>>>,
}

/// A token a Vault login returned.
#[derive(Clone, Debug)]
pub struct CachedToken {
    /// The ClusterConnection's generation at login: a changed connection logs in again.
    pub generation: Option<i64>,
    /// The token.
    pub token: SecretValue,
    /// Reuse it until then.
    pub reuse_until: std::time::Instant,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("rt", &self.rt)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context for `rt`, with default [`Settings`].
    pub fn new(rt: Runtime, metrics: Metrics) -> Self {
        Self::with_settings(rt, metrics, Settings::default())
    }

    /// A context for `rt` with `settings`.
    pub fn with_settings(rt: Runtime, metrics: Metrics, settings: Settings) -> Self {
        let events = Publisher::new(rt.client.clone(), FIELD_MANAGER, &rt.instance);
        let options = ClientOptions::from_settings(&rt.aws, &rt.instance);
        let secrets_manager = aws_cache(&rt, &options, |config, budget| {
            SdkSecretsManager::from_config(config).with_budget(budget)
        });
        let ecs = aws_cache(&rt, &options, |config, budget| {
            SdkEcs::from_config(config).with_budget(budget)
        });
        let rds = aws_cache(&rt, &options, |config, budget| {
            SdkRds::from_config(config).with_budget(budget)
        });
        let iam = aws_cache(&rt, &options, |config, budget| {
            SdkIam::from_config(config).with_budget(budget)
        });
        Self {
            rt,
            metrics,
            events,
            secrets_manager,
            ecs,
            rds,
            iam,
            failures: Mutex::new(HashMap::new()),
            overdue: Mutex::new(BTreeSet::new()),
            stuck: Mutex::new(BTreeSet::new()),
            audit_written: crate::audit::Written::default(),
            settings,
            vault_tokens: Mutex::new(HashMap::new()),
            drift_checked: Mutex::new(HashMap::new()),
            fresh: Arc::default(),
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

    /// Forgets everything kept about `key` (a deleted object): its failures, its
    /// place in the overdue and stuck gauges (so that an alert on them does not stay on
    /// for an object that no longer exists) and its audit marks.
    pub fn forget(&self, key: &str) {
        self.succeeded(key);
        self.set_overdue(key, false);
        self.set_stuck(key, false);
        self.audit_written.forget(key);
        self.drift_checked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// When `key`'s target configuration was last checked for drift.
    pub fn drift_checked_at(&self, key: &str) -> Option<chrono::DateTime<chrono::Utc>> {
        self.drift_checked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
    }

    /// Records a drift check of `key` at `at`.
    pub fn set_drift_checked(&self, key: &str, at: chrono::DateTime<chrono::Utc>) {
        self.drift_checked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_owned(), at);
    }

    /// Records whether `key`'s rotation is stuck and updates the gauge.
    pub fn set_stuck(&self, key: &str, stuck: bool) {
        let mut set = self.stuck.lock().unwrap_or_else(|e| e.into_inner());
        let changed = if stuck {
            set.insert(key.to_owned())
        } else {
            set.remove(key)
        };
        if changed {
            self.metrics.set_stuck(set.len());
        }
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
    /// The backend refused Capstan's credentials
    /// ([`BackendError::is_access_denied`](crate::backend::BackendError::is_access_denied)).
    pub access_denied: bool,
}

impl RefError {
    /// A reference error with `reason` and `message`.
    pub(crate) fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            access_denied: false,
        }
    }

    /// The reference error of a backend error (its reason and message).
    pub(crate) fn from_backend(e: &crate::backend::BackendError) -> Self {
        Self {
            reason: e.reason(),
            message: e.to_string(),
            access_denied: e.is_access_denied(),
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

/// The ClusterConnections an object's gate let through.
#[derive(Clone, Copy, Debug, Default)]
pub struct Connections<'a> {
    /// `spec.connectionRef`'s (the backend's).
    pub main: Option<&'a ClusterConnection>,
    /// The resolved [`SecretRotationSpec::ecs_connection`]'s.
    pub ecs: Option<&'a ClusterConnection>,
    /// The target's own ([`Target::connection`]).
    pub target: Option<&'a ClusterConnection>,
}

/// Builds the backend and target of `spec` for an object in `namespace`; with
/// `delivery.ecsServices`, the ECS client from the ECS connection.
pub async fn build_clients(
    ctx: &Context,
    (namespace, name): (&str, &str),
    spec: &SecretRotationSpec,
    connections: Connections<'_>,
) -> Result<Clients, RefError> {
    let backend = build_backend(ctx, namespace, spec, connections.main).await?;
    let target = build_target(ctx, (namespace, name), &spec.target, connections.target).await?;
    let ecs = match spec.ecs_connection() {
        None => None,
        Some(r) => Some(aws_clients(&ctx.ecs, connections.ecs, &r.name).await?),
    };
    Ok(Clients {
        backend,
        target,
        ecs,
    })
}

/// A client cache of `T` per AWS connection, with the Runtime's client options and
/// request budgets.
fn aws_cache<T: Clone>(
    rt: &Runtime,
    options: &ClientOptions,
    build: impl Fn(&SdkConfig, Budget) -> T + Send + Sync + 'static,
) -> ClientCache<T> {
    ClientCache::new(
        rt.client.clone(),
        rt.own_namespace.clone(),
        options.clone(),
        rt.aws.budgets.clone(),
        build,
    )
}

/// The clients `cache` holds for the AWS ClusterConnection `name` (`connection`, as the
/// gate resolved it); its credentials are read from Capstan's namespace when the cache
/// builds them.
async fn aws_clients<T: Clone>(
    cache: &ClientCache<T>,
    connection: Option<&ClusterConnection>,
    name: &str,
) -> Result<T, RefError> {
    let not_aws = || {
        RefError::new(
            reasons::CONNECTION_WRONG_KIND,
            format!("ClusterConnection {name:?} is not an AWS connection"),
        )
    };
    let conn = connection
        .filter(|c| c.spec.aws.is_some())
        .ok_or_else(not_aws)?;
    cache.get(conn).await.map_err(|e| match e {
        ClientError::NotAws(_) => not_aws(),
        ClientError::Credentials(e) => {
            RefError::new(reasons::AWS_CREDENTIALS_UNAVAILABLE, e.to_string())
        }
    })
}

async fn build_backend(
    ctx: &Context,
    namespace: &str,
    spec: &SecretRotationSpec,
    connection: Option<&ClusterConnection>,
) -> Result<Box<dyn SecretBackend>, RefError> {
    let client = &ctx.rt.client;
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
            let vc = vault_client(ctx, connection, &conn_name()).await?;
            let kv = VaultKvBackend::new(vc, v).map_err(|e| RefError::from_backend(&e))?;
            Ok(Box::new(kv))
        }
        Backend::AwsSecretsManager(a) => {
            let sm = aws_clients(&ctx.secrets_manager, connection, &conn_name()).await?;
            Ok(Box::new(AwsSecretsManagerBackend::new(sm, a)))
        }
    }
}

/// A logged-in client of the Vault ClusterConnection `name` (`connection`, as the gate
/// resolved it).
async fn vault_client(
    ctx: &Context,
    connection: Option<&ClusterConnection>,
    name: &str,
) -> Result<VaultClient, RefError> {
    let client = &ctx.rt.client;
    let own = &ctx.rt.own_namespace;
    let (conn, vault) = connection
        .and_then(|c| c.spec.vault.as_ref().map(|v| (c, v)))
        .ok_or_else(|| {
            RefError::new(
                reasons::CONNECTION_WRONG_KIND,
                format!("ClusterConnection {name:?} is not a Vault connection"),
            )
        })?;
    let ca = match &vault.ca_secret_ref {
        None => None,
        Some(r) => Some(
            read_key(client, own, r, "ca.crt")
                .await
                .map_err(|e| RefError::new(reasons::VAULT_CA_UNAVAILABLE, e.to_string()))?,
        ),
    };
    let mut vc = VaultClient::from_connection(
        vault,
        SecretValue::new(String::new()),
        ca.as_ref().map(|c| c.expose().as_bytes()),
    )
    .map_err(|e| RefError::from_backend(&e))?;
    vault_login(ctx, conn, vault, &mut vc).await?;
    Ok(vc)
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
        RefError::new(reasons::ADMIN_SECRET_UNAVAILABLE, format!("admin {e}"))
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
        .map_err(|e| RefError::new(reasons::CA_SECRET_UNAVAILABLE, format!("CA bundle {e}")))
}

/// What a Vault database role target needs, once the connection's scopes grant the
/// namespace the role `<mount>/<namespace>-<name>`: a logged-in Vault client and the
/// admin login Vault's connection uses.
async fn vault_role_access(
    ctx: &Context,
    (namespace, name): (&str, &str),
    connection: Option<&ClusterConnection>,
    mount: &str,
    admin: &AdminSecretRef,
    connection_name: &str,
) -> Result<(VaultClient, (String, SecretValue)), RefError> {
    let role = VaultStaticRoleTarget::object_name(namespace, name);
    let resource = ScopedResource::VaultDatabaseRole {
        mount: mount.to_owned(),
        role,
    };
    check_scope(ctx, namespace, connection, resource).await?;
    let admin = read_admin(ctx, namespace, admin).await?;
    let vc = vault_client(ctx, connection, connection_name).await?;
    Ok((vc, admin))
}

async fn build_target(
    ctx: &Context,
    (namespace, name): (&str, &str),
    target: &Target,
    connection: Option<&ClusterConnection>,
) -> Result<Box<dyn CredentialTarget>, RefError> {
    match target {
        Target::VaultDatabaseDynamicRole(r) => {
            let (vc, admin) = vault_role_access(
                ctx,
                (namespace, name),
                connection,
                r.mount.as_str(),
                &r.admin_secret_ref,
                &r.connection_ref.name,
            )
            .await?;
            let t = VaultDynamicRoleTarget::new(vc, r, (namespace, name), admin, None)
                .map_err(|e| RefError::new(e.reason(), e.to_string()))?;
            Ok(Box::new(t))
        }
        Target::VaultDatabaseStaticRole(r) => {
            let (vc, admin) = vault_role_access(
                ctx,
                (namespace, name),
                connection,
                r.mount.as_str(),
                &r.admin_secret_ref,
                &r.connection_ref.name,
            )
            .await?;
            let t = VaultStaticRoleTarget::new(vc, r, (namespace, name), admin, None)
                .map_err(|e| RefError::new(e.reason(), e.to_string()))?;
            Ok(Box::new(t))
        }
        Target::RdsMasterPassword(r) => {
            let rds = aws_clients(&ctx.rds, connection, &r.connection_ref.name).await?;
            let ca = read_ca(ctx, namespace, r.ca_secret_ref.as_ref()).await?;
            let t = RdsMasterTarget::new(rds, r, ca.as_ref().map(|c| c.expose().as_bytes()));
            // The scopes name ARNs: RDS says which one this is before anything changes.
            let state = t
                .describe()
                .await
                .map_err(|e| RefError::new(e.reason(), e.to_string()))?;
            check_scope(ctx, namespace, connection, ScopedResource::Rds(state.arn)).await?;
            Ok(Box::new(t))
        }
        Target::VaultTransitKey(k) => {
            check_scope(
                ctx,
                namespace,
                connection,
                ScopedResource::TransitKey {
                    mount: k.mount.clone(),
                    key: k.key.clone(),
                },
            )
            .await?;
            let vc = vault_client(ctx, connection, &k.connection_ref.name).await?;
            Ok(Box::new(TransitKeyTarget::new(vc, k)))
        }
        Target::IamAccessKey(k) => {
            let iam = aws_clients(&ctx.iam, connection, &k.connection_ref.name).await?;
            let t = IamKeyTarget::new(iam, k);
            // The scopes name users by path: IAM says which path this user has.
            let user = t
                .user()
                .await
                .map_err(|e| RefError::new(e.reason(), e.to_string()))?;
            let resource = ScopedResource::IamUser {
                path: user.path,
                name: k.user_name.clone(),
            };
            check_scope(ctx, namespace, connection, resource).await?;
            Ok(Box::new(t))
        }
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
            let t = crate::targets::MysqlTarget::new(
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

/// Refuses `resource` unless the scopes of `connection` grant it to `namespace`
/// (`ResourceNotAllowed`), for what is named only once a system has been asked.
async fn check_scope(
    ctx: &Context,
    namespace: &str,
    connection: Option<&ClusterConnection>,
    resource: ScopedResource,
) -> Result<(), RefError> {
    let Some(conn) = connection else {
        return Ok(());
    };
    let refused =
        |e: capstan_core::connection::ConnectionRefError| RefError::new(e.reason(), e.to_string());
    let labels = if conn.spec.scopes.is_some() {
        kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(ctx.rt.client.clone())
            .get_opt(namespace)
            .await
            .map_err(|source| {
                refused(capstan_core::connection::ConnectionRefError::Kube {
                    name: conn.name_any(),
                    source,
                })
            })?
            .map(|n| n.labels().clone())
            .unwrap_or_default()
    } else {
        Default::default()
    };
    capstan_core::connection::check_scopes(conn, namespace, &labels, &[resource]).map_err(refused)
}

/// Gives `vc` a token for `conn`'s Vault auth: the token auth's Secret, or a login
/// (AppRole with the secret ID from a Secret, Kubernetes with Capstan's service account
/// token) reused for half its lease, at most 30 minutes, so that reconciles do not each
/// create a token in Vault.
async fn vault_login(
    ctx: &Context,
    conn: &ClusterConnection,
    vault: &capstan_core::connection::VaultConnection,
    vc: &mut VaultClient,
) -> Result<(), RefError> {
    let client = &ctx.rt.client;
    let own = &ctx.rt.own_namespace;
    let name = conn.name_any();
    if let Some(t) = &vault.auth.token {
        let token = read_key(client, own, &t.secret_ref, "token")
            .await
            .map_err(|e| RefError::new(reasons::VAULT_TOKEN_UNAVAILABLE, e.to_string()))?;
        vc.set_token(token);
        return Ok(());
    }
    let generation = conn.metadata.generation;
    let cached = ctx
        .vault_tokens
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&name)
        .filter(|c| c.generation == generation && c.reuse_until > std::time::Instant::now())
        .map(|c| c.token.clone());
    if let Some(token) = cached {
        vc.set_token(token);
        return Ok(());
    }
    let failed = |e: crate::backend::BackendError| {
        RefError::new(
            reasons::VAULT_LOGIN_FAILED,
            format!("ClusterConnection {name:?}: {e}"),
        )
    };
    let lease = if let Some(ar) = &vault.auth.app_role {
        let secret_id = read_key(client, own, &ar.secret_id_ref, "secret_id")
            .await
            .map_err(|e| RefError::new(reasons::VAULT_SECRET_ID_UNAVAILABLE, e.to_string()))?;
        vc.login_approle(&ar.mount_path, &ar.role_id, &secret_id)
            .await
            .map_err(failed)?
    } else if let Some(k) = &vault.auth.kubernetes {
        let path = &ctx.rt.service_account_token_file;
        let jwt = match tokio::fs::read_to_string(path).await {
            Ok(t) => SecretValue::new(t.trim().to_owned()),
            Err(e) => {
                return Err(RefError::new(
                    reasons::SERVICE_ACCOUNT_TOKEN_UNAVAILABLE,
                    format!(
                        "ClusterConnection {name:?} uses Kubernetes auth, but Capstan's service account token {} cannot be read: {e}",
                        path.display()
                    ),
                ));
            }
        };
        vc.login_kubernetes(&k.mount_path, &k.role, &jwt)
            .await
            .map_err(failed)?
    } else {
        return Err(RefError::new(
            reasons::CONNECTION_INVALID,
            format!("ClusterConnection {name:?} declares no Vault auth method"),
        ));
    };
    let reuse = (lease / 2).min(std::time::Duration::from_secs(30 * 60));
    ctx.vault_tokens
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(
            name,
            CachedToken {
                generation,
                token: vc.token().clone(),
                reuse_until: std::time::Instant::now() + reuse,
            },
        );
    Ok(())
}

/// Forgets the login token of `connection` (Vault refused it: revoked or expired early).
pub fn forget_vault_token(ctx: &Context, connection: &str) {
    ctx.vault_tokens
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(connection);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use capstan_core::clock::SystemClock;
    use capstan_core::runtime::{Readiness, Runtime};

    use super::*;

    fn context(registry: &mut prometheus_client::registry::Registry) -> Context {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("url"));
        let rt = Runtime {
            client: kube::Client::try_from(config).expect("client"),
            namespaces: Vec::new(),
            concurrency: 1,
            instance: "unit".into(),
            own_namespace: "capstan-system".into(),
            service_account_token_file: "/nonexistent".into(),
            clock: Arc::new(SystemClock),
            readiness: Readiness::default(),
            aws: Default::default(),
            objects: Default::default(),
        };
        Context::new(rt, Metrics::register(registry))
    }

    fn overdue_gauge(registry: &prometheus_client::registry::Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).expect("encode");
        text.lines()
            .find(|l| l.starts_with("capstan_secret_rotation_objects_overdue "))
            .unwrap_or_default()
            .to_owned()
    }

    /// A deleted object leaves the overdue gauge and the failure counts: before, the
    /// gauge counted it (and an alert on it stayed on) until Capstan restarted.
    #[tokio::test]
    async fn forgetting_a_deleted_object_clears_its_gauge_and_failures() {
        let mut registry = capstan_core::metrics::new_registry();
        let ctx = context(&mut registry);
        ctx.set_overdue("shop/db", true);
        ctx.set_overdue("shop/key", true);
        assert_eq!(ctx.failed("shop/db"), 1);
        assert_eq!(ctx.failed("shop/db"), 2);
        assert_eq!(
            overdue_gauge(&registry),
            "capstan_secret_rotation_objects_overdue 2"
        );

        ctx.forget("shop/db");
        assert_eq!(
            overdue_gauge(&registry),
            "capstan_secret_rotation_objects_overdue 1"
        );
        assert!(
            !ctx.failures.lock().expect("lock").contains_key("shop/db"),
            "failures forgotten"
        );
        // A new object of the same name starts from no failures.
        assert_eq!(ctx.failed("shop/db"), 1);
    }
}
