//! One AWS client layer for every controller: per ClusterConnection, the SDK
//! configuration ([`crate::sdk_config`]: region, endpoint, credentials from Capstan's own
//! namespace, the assume-role provider, and the retries and timeouts of the process's
//! [`ClientOptions`]) and the request [`Budget`] of its AWS account and region, turned
//! into whatever clients the controller needs and reused.
//!
//! A [`ClientCache`] rebuilds a connection's clients when the connection changes (its
//! resourceVersion) and at least every [`CLIENT_TTL`], so rotated credentials are picked
//! up; between those, a reconcile builds no SDK configuration and no assume-role
//! provider (whose credentials cache then lives as long as the clients).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use aws_config::SdkConfig;
use capstan_core::budget::Budgets;
use capstan_core::connection::{AwsConnection, ClusterConnection};
use capstan_core::secret_ref::{SecretKeyError, read_key};
use kube::{Client, ResourceExt};

use crate::budget::Budget;
use crate::{ClientOptions, StaticCredentials};

/// How long a connection's clients are reused before its credentials are read again.
pub const CLIENT_TTL: Duration = Duration::from_secs(600);

/// Builds a controller's clients from a connection's SDK configuration and budget.
pub type Build<T> = Box<dyn Fn(&SdkConfig, Budget) -> T + Send + Sync>;

struct Cached<T> {
    resource_version: Option<String>,
    built: Instant,
    clients: T,
}

/// Clients of type `T` per connection name.
pub struct ClientCache<T> {
    client: Client,
    own_namespace: String,
    options: ClientOptions,
    budgets: Arc<Budgets>,
    build: Build<T>,
    cache: Mutex<HashMap<String, Cached<T>>>,
}

impl<T> std::fmt::Debug for ClientCache<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCache")
            .field("own_namespace", &self.own_namespace)
            .finish_non_exhaustive()
    }
}

impl<T: Clone> ClientCache<T> {
    /// An empty cache: `client` reads credentials Secrets in `own_namespace`, `options`
    /// and `budgets` come from the process's Runtime, `build` makes the clients.
    pub fn new(
        client: Client,
        own_namespace: String,
        options: ClientOptions,
        budgets: Arc<Budgets>,
        build: impl Fn(&SdkConfig, Budget) -> T + Send + Sync + 'static,
    ) -> Self {
        Self {
            client,
            own_namespace,
            options,
            budgets,
            build: Box::new(build),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The clients of `conn`, built if missing, older than [`CLIENT_TTL`] or for an
    /// older version of the connection.
    pub async fn get(&self, conn: &ClusterConnection) -> Result<T, ClientError> {
        let name = conn.name_any();
        let rv = conn.resource_version();
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = cache.get(&name)
                && c.resource_version == rv
                && c.built.elapsed() < CLIENT_TTL
            {
                return Ok(c.clients.clone());
            }
        }
        let aws = conn
            .spec
            .aws
            .as_ref()
            .ok_or_else(|| ClientError::NotAws(name.clone()))?;
        let creds = read_credentials(&self.client, &self.own_namespace, aws).await?;
        let config = crate::sdk_config(aws, creds, &self.options).await;
        let budget = Budget::new(self.budgets.clone(), &name, aws);
        let clients = (self.build)(&config, budget);
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(
            name,
            Cached {
                resource_version: rv,
                built: Instant::now(),
                clients: clients.clone(),
            },
        );
        Ok(clients)
    }
}

/// The static credentials an AWS connection names (`credentialsSecretRef`, read from
/// `own_namespace`), or `None` for the SDK's default chain.
pub async fn read_credentials(
    client: &Client,
    own_namespace: &str,
    aws: &AwsConnection,
) -> Result<Option<StaticCredentials>, SecretKeyError> {
    let Some(r) = &aws.credentials_secret_ref else {
        return Ok(None);
    };
    let read = |key: &'static str| read_key(client, own_namespace, r, key);
    Ok(Some(StaticCredentials {
        access_key_id: read("AWS_ACCESS_KEY_ID").await?.expose().to_owned(),
        secret_access_key: read("AWS_SECRET_ACCESS_KEY").await?,
        session_token: read("AWS_SESSION_TOKEN").await.ok(),
    }))
}

/// Why a connection's clients could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection's credentials Secret is missing or incomplete.
    #[error(transparent)]
    Credentials(#[from] SecretKeyError),
    /// The connection is not an AWS connection (the gate refuses this first).
    #[error("ClusterConnection {0:?} is not an AWS connection")]
    NotAws(String),
}
