//! The AWS side of the controller: one set of clients per ClusterConnection, built from
//! the connection and its credentials in Capstan's own namespace, with every request
//! counted by operation (`capstan_service_scaling_aws_requests_total{operation}`) and
//! every call taking a token of the process's request budget for the connection's AWS
//! account and region ([`capstan_aws::budget`]), which SecretRotation's ECS restarts
//! and Secrets Manager calls share.
//!
//! The cache itself is capstan-aws's ([`capstan_aws::clients`]): clients are rebuilt
//! when the connection changes (its resourceVersion) and at least every
//! [`capstan_aws::clients::CLIENT_TTL`], so rotated credentials are picked up.

use std::sync::Arc;

use capstan_core::budget::Budgets;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use capstan_aws::ClientOptions;
use capstan_aws::autoscaling::SdkAutoScaling;
use capstan_aws::cloudwatch::SdkCloudWatch;
use capstan_aws::ecs::SdkEcs;
use kube::Client;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

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

/// The ServiceScaling controller's clients per connection, from capstan-aws's one client
/// layer ([`capstan_aws::clients::ClientCache`]), each request counted by `counter`.
pub type ClientCache = capstan_aws::clients::ClientCache<ConnectionClients>;

/// An empty cache: credentials read from `own_namespace`, `options` and `budgets` from
/// the Runtime, every request counted by `counter`.
pub fn client_cache(
    client: Client,
    own_namespace: String,
    options: ClientOptions,
    counter: RequestCounter,
    budgets: Arc<Budgets>,
) -> ClientCache {
    ClientCache::new(
        client,
        own_namespace,
        options,
        budgets,
        move |config, budget| {
            let ecs = aws_sdk_ecs::config::Builder::from(config)
                .interceptor(counter.clone())
                .build();
            let cw = aws_sdk_cloudwatch::config::Builder::from(config)
                .interceptor(counter.clone())
                .build();
            let aas = aws_sdk_applicationautoscaling::config::Builder::from(config)
                .interceptor(counter.clone())
                .build();
            ConnectionClients {
                ecs: SdkEcs::new(aws_sdk_ecs::Client::from_conf(ecs)).with_budget(budget.clone()),
                cloudwatch: SdkCloudWatch::new(aws_sdk_cloudwatch::Client::from_conf(cw))
                    .with_budget(budget.clone()),
                autoscaling: SdkAutoScaling::new(
                    aws_sdk_applicationautoscaling::Client::from_conf(aas),
                )
                .with_budget(budget),
            }
        },
    )
}
