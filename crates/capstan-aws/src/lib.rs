//! AWS for Capstan: SDK configuration built from a [`ClusterConnection`](capstan_core::connection::ClusterConnection), and the
//! clients of the services Capstan calls.
//!
//! A connection fixes the region, the credentials (static ones from a Secret in
//! Capstan's namespace, or the SDK's default chain: IRSA, pod identity, instance
//! role), an optional role to assume and an optional endpoint override. Objects never
//! supply any of these: they only name the connection (see
//! `capstan_core::connection`).
//!
//! The standard `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_<SERVICE>` variables are
//! honoured by the SDK's loader; an `endpointUrl` in the connection takes precedence.

pub mod autoscaling;
pub mod budget;
pub mod clients;
pub mod cloudwatch;
pub mod ecr;
pub mod ecs;
pub mod ecs_deploy;
pub mod iam;
pub mod rds;
pub mod secrets_manager;

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::sts::AssumeRoleProvider;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use capstan_core::connection::AwsConnection;
use capstan_core::error::Categorized;
use capstan_core::redact::SecretValue;

/// Static credentials read from a Secret in Capstan's namespace.
#[derive(Debug, Clone)]
pub struct StaticCredentials {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: SecretValue,
    /// `AWS_SESSION_TOKEN`, if any.
    pub session_token: Option<SecretValue>,
}

/// How the SDK retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retries {
    /// The SDK's standard mode with this many attempts in all.
    Standard(u32),
    /// No retries: the controller's own requeue is the retry (tests use this, as the
    /// emulator answers unimplemented calls with a 500 the SDK would retry for seconds).
    Off,
}

/// Options that belong to the process, not to a connection.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Retry behaviour.
    pub retries: Retries,
    /// Timeout of one attempt of one operation.
    pub operation_attempt_timeout: Duration,
    /// The session name used when assuming roles (shows in CloudTrail).
    pub session_name: String,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            retries: Retries::Standard(3),
            operation_attempt_timeout: Duration::from_secs(10),
            session_name: "capstan".into(),
        }
    }
}

impl ClientOptions {
    /// The options of every controller's clients, from the process's AWS settings
    /// (`capstan run` flags, carried in `Runtime`): the SDK's standard retries (3
    /// attempts) unless `--aws-no-retries`, and this instance's session name.
    pub fn from_settings(aws: &capstan_core::runtime::AwsSettings, instance: &str) -> Self {
        Self {
            retries: if aws.no_retries {
                Retries::Off
            } else {
                Retries::Standard(3)
            },
            session_name: format!("capstan-{instance}"),
            ..Self::default()
        }
    }
}

/// Why a connection's SDK configuration could not be built or used.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    /// STS refused the identity check or the role assumption.
    #[error("checking the AWS identity of connection {connection:?}: {message}")]
    Identity {
        /// The connection's name.
        connection: String,
        /// What STS said (no credentials in it).
        message: String,
    },
    /// The identity is in another account than the connection declares.
    #[error(
        "connection {connection:?} declares account {expected} but its credentials are in account {actual}"
    )]
    WrongAccount {
        /// The connection's name.
        connection: String,
        /// The declared account.
        expected: String,
        /// The account STS reported.
        actual: String,
    },
}

impl Categorized for AwsError {
    fn category(&self) -> &'static str {
        match self {
            AwsError::Identity { .. } => "aws_identity",
            AwsError::WrongAccount { .. } => "aws_wrong_account",
        }
    }
}

/// Builds the SDK configuration of a connection.
pub async fn sdk_config(
    conn: &AwsConnection,
    credentials: Option<StaticCredentials>,
    options: &ClientOptions,
) -> SdkConfig {
    let retry = match options.retries {
        Retries::Standard(n) => RetryConfig::standard().with_max_attempts(n.max(1)),
        Retries::Off => RetryConfig::disabled(),
    };
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .operation_attempt_timeout(options.operation_attempt_timeout)
        .connect_timeout(Duration::from_secs(5))
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(conn.region.clone()))
        .retry_config(retry)
        .timeout_config(timeouts);
    if let Some(url) = &conn.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    if let Some(c) = credentials {
        loader = loader.credentials_provider(Credentials::new(
            c.access_key_id,
            c.secret_access_key.expose(),
            c.session_token.as_ref().map(|t| t.expose().to_owned()),
            None,
            "capstan-connection-secret",
        ));
    }
    let base = loader.load().await;
    let Some(role) = &conn.role_arn else {
        return base;
    };
    let mut builder = AssumeRoleProvider::builder(role.clone())
        .session_name(options.session_name.clone())
        .region(Region::new(conn.region.clone()))
        .configure(&base);
    if let Some(id) = &conn.external_id {
        builder = builder.external_id(id.clone());
    }
    let provider = builder.build().await;
    base.into_builder()
        .credentials_provider(SharedCredentialsProvider::new(provider))
        .build()
}

/// The AWS identity behind a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The account ID.
    pub account: String,
    /// The caller's ARN.
    pub arn: String,
}

/// Checks that a connection's credentials work (STS GetCallerIdentity) and land in the
/// declared account, if one is declared.
pub async fn check_identity(
    connection: &str,
    conn: &AwsConnection,
    config: &SdkConfig,
) -> Result<Identity, AwsError> {
    let out = aws_sdk_sts::Client::new(config)
        .get_caller_identity()
        .send()
        .await
        .map_err(|e| AwsError::Identity {
            connection: connection.into(),
            message: aws_sdk_sts::error::DisplayErrorContext(&e).to_string(),
        })?;
    let identity = Identity {
        account: out.account().unwrap_or_default().to_owned(),
        arn: out.arn().unwrap_or_default().to_owned(),
    };
    budget::remember_account(connection, &identity.account);
    if let Some(expected) = &conn.account_id
        && *expected != identity.account
    {
        return Err(AwsError::WrongAccount {
            connection: connection.into(),
            expected: expected.clone(),
            actual: identity.account,
        });
    }
    Ok(identity)
}

/// The clients of the AWS services Capstan calls, sharing one configuration.
#[derive(Debug, Clone)]
pub struct AwsClients {
    /// ECS: services, deployments, task definitions.
    pub ecs: aws_sdk_ecs::Client,
    /// CloudWatch: metrics for ServiceScaling.
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    /// Secrets Manager: a SecretRotation backend.
    pub secrets_manager: aws_sdk_secretsmanager::Client,
    /// Application Auto Scaling: ServiceScaling's `applicationAutoScaling` mode.
    pub application_autoscaling: aws_sdk_applicationautoscaling::Client,
}

impl AwsClients {
    /// Builds every client from one configuration.
    pub fn new(config: &SdkConfig) -> Self {
        Self {
            ecs: aws_sdk_ecs::Client::new(config),
            cloudwatch: aws_sdk_cloudwatch::Client::new(config),
            secrets_manager: aws_sdk_secretsmanager::Client::new(config),
            application_autoscaling: aws_sdk_applicationautoscaling::Client::new(config),
        }
    }
}
