//! The AWS side of the controller: one set of clients per ClusterConnection, built from
//! the connection and its credentials in Capstan's own namespace, with every request
//! counted by operation (`capstan_service_scaling_aws_requests_total{operation}`) and
//! every call taking a token of the process's request budget for the connection's AWS
//! account and region ([`capstan_aws::budget`]), which SecretRotation's ECS restarts
//! and Secrets Manager calls share.
//!
//! Clients are rebuilt when the connection changes (its resourceVersion) and at least
//! every [`CLIENT_TTL`], so rotated credentials are picked up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capstan_aws::budget::Budget;
use capstan_core::budget::Budgets;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use capstan_aws::autoscaling::SdkAutoScaling;
use capstan_aws::cloudwatch::SdkCloudWatch;
use capstan_aws::ecs::SdkEcs;
use capstan_aws::{ClientOptions, StaticCredentials};
use capstan_core::connection::{AwsConnection, ClusterConnection};
use capstan_core::secret_ref::{SecretKeyError, read_key};
use kube::{Client, ResourceExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// How long a connection's clients are reused before credentials are read again.
pub const CLIENT_TTL: Duration = Duration::from_secs(600);

/// Labels of the AWS request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// `ecs:DescribeServices`, `monitoring:GetMetricData`, ...
    pub operation: String,
}

/// Counts every request sent (each retry attempt too), by service and operation.
#[derive(Clone, Debug)]
pub struct RequestCounter(pub Family<OperationLabels, Counter>);

impl Intercept for RequestCounter {
    fn name(&self) -> &'static str {
        "capstan-request-counter"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let operation = cfg
            .load::<Metadata>()
            .map(|m| format!("{}:{}", m.service(), m.name()))
            .unwrap_or_else(|| "unknown".into());
        self.0.get_or_create(&OperationLabels { operation }).inc();
        Ok(())
    }
}

/// The clients of one connection.
#[derive(Debug, Clone)]
pub struct ConnectionClients {
    /// ECS.
    pub ecs: SdkEcs,
    /// CloudWatch.
    pub cloudwatch: SdkCloudWatch,
    /// Application Auto Scaling.
    pub autoscaling: SdkAutoScaling,
}

struct Cached {
    resource_version: Option<String>,
    built: Instant,
    clients: ConnectionClients,
}

/// Clients per connection name.
pub struct ClientCache {
    client: Client,
    own_namespace: String,
    options: ClientOptions,
    counter: RequestCounter,
    budgets: Arc<Budgets>,
    cache: Mutex<HashMap<String, Cached>>,
}

impl std::fmt::Debug for ClientCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCache")
            .field("own_namespace", &self.own_namespace)
            .finish_non_exhaustive()
    }
}

impl ClientCache {
    /// An empty cache.
    pub fn new(
        client: Client,
        own_namespace: String,
        options: ClientOptions,
        counter: RequestCounter,
        budgets: Arc<Budgets>,
    ) -> Self {
        Self {
            client,
            own_namespace,
            options,
            counter,
            budgets,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The clients of `conn`, built if missing, stale or for an older version of it.
    pub async fn get(&self, conn: &ClusterConnection) -> Result<ConnectionClients, ClientError> {
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
        let creds = self.credentials(aws).await?;
        let config = capstan_aws::sdk_config(aws, creds, &self.options).await;
        let budget = Budget::new(self.budgets.clone(), &name, aws);
        let counter = self.counter.clone();
        let ecs = aws_sdk_ecs::config::Builder::from(&config)
            .interceptor(counter.clone())
            .build();
        let cw = aws_sdk_cloudwatch::config::Builder::from(&config)
            .interceptor(counter.clone())
            .build();
        let aas = aws_sdk_applicationautoscaling::config::Builder::from(&config)
            .interceptor(counter)
            .build();
        let clients = ConnectionClients {
            ecs: SdkEcs::new(aws_sdk_ecs::Client::from_conf(ecs)).with_budget(budget.clone()),
            cloudwatch: SdkCloudWatch::new(aws_sdk_cloudwatch::Client::from_conf(cw))
                .with_budget(budget.clone()),
            autoscaling: SdkAutoScaling::new(aws_sdk_applicationautoscaling::Client::from_conf(
                aas,
            ))
            .with_budget(budget),
        };
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

    async fn credentials(
        &self,
        aws: &AwsConnection,
    ) -> Result<Option<StaticCredentials>, ClientError> {
        let Some(r) = &aws.credentials_secret_ref else {
            return Ok(None);
        };
        let read = |key: &'static str| read_key(&self.client, &self.own_namespace, r, key);
        Ok(Some(StaticCredentials {
            access_key_id: read("AWS_ACCESS_KEY_ID").await?.expose().to_owned(),
            secret_access_key: read("AWS_SECRET_ACCESS_KEY").await?,
            session_token: read("AWS_SESSION_TOKEN").await.ok(),
        }))
    }
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
