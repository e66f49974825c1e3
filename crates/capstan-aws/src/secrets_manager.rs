//! Secrets Manager: the calls a SecretRotation backend makes, behind the narrow
//! [`SecretsManagerApi`] trait.
//!
//! The calls follow AWS's own rotation contract
//! (<https://docs.aws.amazon.com/secretsmanager/latest/userguide/rotate-secrets_lambda-functions.html>):
//! a new value is added with [`SecretsManagerApi::put_secret_value`] under the staging
//! label [`AWSPENDING`] and a `ClientRequestToken` (which becomes the `VersionId`, so a
//! retried call never creates a second version), and is promoted by moving [`AWSCURRENT`]
//! with [`SecretsManagerApi::update_secret_version_stage`], naming the version it is
//! removed from; Secrets Manager then moves [`AWSPREVIOUS`] to that version by itself.
//! Naming the version to remove the label from makes the move a compare-and-swap: it fails
//! if another writer moved `AWSCURRENT` meanwhile.
//!
//! [`SdkSecretsManager`] implements the trait with the AWS SDK. Errors keep Secrets
//! Manager's error code; no request field that could hold a value (`SecretString`) is
//! ever put in a message.

use std::fmt::Debug;

use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use capstan_core::error::Categorized;
use capstan_core::redact::SecretValue;

/// The staging label of the value consumers read.
pub const AWSCURRENT: &str = "AWSCURRENT";
/// The staging label of a value being rotated in.
pub const AWSPENDING: &str = "AWSPENDING";
/// The staging label Secrets Manager moves to the version `AWSCURRENT` left.
pub const AWSPREVIOUS: &str = "AWSPREVIOUS";

/// A version of a secret and its staging labels (no value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionStages {
    /// The `VersionId`.
    pub version_id: String,
    /// Its staging labels (`AWSCURRENT`, `AWSPENDING`, `AWSPREVIOUS`, custom ones).
    pub stages: Vec<String>,
}

impl VersionStages {
    /// Whether the version carries `stage`.
    pub fn has(&self, stage: &str) -> bool {
        self.stages.iter().any(|s| s == stage)
    }
}

/// What DescribeSecret says about a secret (no value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretDescription {
    /// The secret's ARN.
    pub arn: String,
    /// The secret's name.
    pub name: String,
    /// Versions that carry at least one staging label.
    pub versions: Vec<VersionStages>,
    /// Whether the secret is scheduled for deletion.
    pub deleted: bool,
}

impl SecretDescription {
    /// The version carrying `stage`, if any (staging labels are unique within a secret).
    pub fn version_with(&self, stage: &str) -> Option<&VersionStages> {
        self.versions.iter().find(|v| v.has(stage))
    }

    /// The version with this id, if it carries any label.
    pub fn version(&self, version_id: &str) -> Option<&VersionStages> {
        self.versions.iter().find(|v| v.version_id == version_id)
    }
}

/// A version's string value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretString {
    /// The `VersionId`.
    pub version_id: String,
    /// Its staging labels.
    pub stages: Vec<String>,
    /// The `SecretString`. A version stored as `SecretBinary` is refused as
    /// [`SecretsManagerError::Invalid`].
    pub value: SecretValue,
}

/// Which version to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSelector<'a> {
    /// The version carrying this staging label.
    Stage(&'a str),
    /// The version with this id.
    Id(&'a str),
}

/// Why a Secrets Manager call failed. Messages name the operation and the secret, never a
/// value.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SecretsManagerError {
    /// The secret, or the version asked for, does not exist (`ResourceNotFoundException`).
    #[error("Secrets Manager {operation} on {secret_id:?}: not found: {message}")]
    NotFound {
        /// The operation, e.g. `GetSecretValue`.
        operation: &'static str,
        /// The secret as named by the caller.
        secret_id: String,
        /// What Secrets Manager said.
        message: String,
    },
    /// The secret exists already (`ResourceExistsException` from CreateSecret), or a
    /// `ClientRequestToken` was reused with another value (from PutSecretValue).
    #[error("Secrets Manager {operation} on {secret_id:?}: already exists: {message}")]
    AlreadyExists {
        /// The operation.
        operation: &'static str,
        /// The secret.
        secret_id: String,
        /// What Secrets Manager said.
        message: String,
    },
    /// The caller may not do this, or KMS refused (`AccessDeniedException`,
    /// `DecryptionFailure`, `EncryptionFailure`, ...).
    #[error("Secrets Manager {operation} on {secret_id:?}: access denied ({code}): {message}")]
    AccessDenied {
        /// The operation.
        operation: &'static str,
        /// The secret.
        secret_id: String,
        /// The error code.
        code: String,
        /// What Secrets Manager said.
        message: String,
    },
    /// The request was refused as invalid (`InvalidParameterException`,
    /// `InvalidRequestException`, e.g. a secret scheduled for deletion, or a staging
    /// label not on the version named in `RemoveFromVersionId`).
    #[error("Secrets Manager {operation} on {secret_id:?}: invalid ({code}): {message}")]
    Invalid {
        /// The operation.
        operation: &'static str,
        /// The secret.
        secret_id: String,
        /// The error code.
        code: String,
        /// What Secrets Manager said.
        message: String,
    },
    /// Throttling, a server error, a timeout or a network failure: retrying may help.
    #[error("Secrets Manager {operation} on {secret_id:?}: unavailable: {message}")]
    Unavailable {
        /// The operation.
        operation: &'static str,
        /// The secret.
        secret_id: String,
        /// What the SDK reported.
        message: String,
    },
}

impl Categorized for SecretsManagerError {
    fn category(&self) -> &'static str {
        match self {
            SecretsManagerError::NotFound { .. } => "secretsmanager_not_found",
            SecretsManagerError::AlreadyExists { .. } => "secretsmanager_exists",
            SecretsManagerError::AccessDenied { .. } => "secretsmanager_access_denied",
            SecretsManagerError::Invalid { .. } => "secretsmanager_invalid",
            SecretsManagerError::Unavailable { .. } => "secretsmanager_unavailable",
        }
    }
}

impl SecretsManagerError {
    /// Whether retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, SecretsManagerError::Unavailable { .. })
    }

    fn from_sdk<E, R>(operation: &'static str, secret_id: &str, err: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: Debug,
    {
        let secret_id = secret_id.to_owned();
        let service = match &err {
            SdkError::ServiceError(e) => Some(e.err()),
            _ => None,
        };
        let Some(service) = service else {
            // Construction, timeout, dispatch (connection) and response (parse) failures.
            return SecretsManagerError::Unavailable {
                operation,
                secret_id,
                message: aws_sdk_secretsmanager::error::DisplayErrorContext(&err).to_string(),
            };
        };
        let code = service.code().unwrap_or("Unknown").to_owned();
        let message = service.message().unwrap_or("").to_owned();
        match code.as_str() {
            "ResourceNotFoundException" => SecretsManagerError::NotFound {
                operation,
                secret_id,
                message,
            },
            "ResourceExistsException" => SecretsManagerError::AlreadyExists {
                operation,
                secret_id,
                message,
            },
            "AccessDeniedException"
            | "AccessDenied"
            | "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "ExpiredTokenException"
            | "DecryptionFailure"
            | "EncryptionFailure" => SecretsManagerError::AccessDenied {
                operation,
                secret_id,
                code,
                message,
            },
            "ThrottlingException"
            | "TooManyRequestsException"
            | "InternalServiceError"
            | "InternalFailure"
            | "ServiceUnavailable"
            | "LimitExceededException" => SecretsManagerError::Unavailable {
                operation,
                secret_id,
                message: format!("{code}: {message}"),
            },
            _ => SecretsManagerError::Invalid {
                operation,
                secret_id,
                code,
                message,
            },
        }
    }
}

/// The Secrets Manager calls a SecretRotation backend makes.
pub trait SecretsManagerApi: Send + Sync + Debug {
    /// DescribeSecret: the secret's versions and their staging labels.
    fn describe_secret(
        &self,
        secret_id: &str,
    ) -> impl Future<Output = Result<SecretDescription, SecretsManagerError>> + Send;

    /// CreateSecret without a value (so no version exists and nothing is `AWSCURRENT`
    /// until the first PutSecretValue), encrypted with `kms_key_id` or the account's
    /// `aws/secretsmanager` key. Returns the ARN.
    fn create_secret(
        &self,
        name: &str,
        kms_key_id: Option<&str>,
        description: &str,
    ) -> impl Future<Output = Result<String, SecretsManagerError>> + Send;

    /// GetSecretValue of one version.
    fn get_secret_value(
        &self,
        secret_id: &str,
        version: VersionSelector<'_>,
    ) -> impl Future<Output = Result<SecretString, SecretsManagerError>> + Send;

    /// PutSecretValue with `ClientRequestToken = token` (which becomes the `VersionId`)
    /// and these staging labels. Returns the `VersionId`.
    fn put_secret_value(
        &self,
        secret_id: &str,
        token: &str,
        value: &SecretValue,
        stages: &[&str],
    ) -> impl Future<Output = Result<String, SecretsManagerError>> + Send;

    /// UpdateSecretVersionStage: attaches `stage` to `move_to` and removes it from
    /// `remove_from`, which must be the version carrying it now (else `Invalid`).
    fn update_secret_version_stage(
        &self,
        secret_id: &str,
        stage: &str,
        move_to: Option<&str>,
        remove_from: Option<&str>,
    ) -> impl Future<Output = Result<(), SecretsManagerError>> + Send;

    /// ListSecretVersionIds, including versions without a staging label.
    fn list_secret_version_ids(
        &self,
        secret_id: &str,
    ) -> impl Future<Output = Result<Vec<VersionStages>, SecretsManagerError>> + Send;
}

/// [`SecretsManagerApi`] with the AWS SDK.
#[derive(Debug, Clone)]
pub struct SdkSecretsManager {
    client: aws_sdk_secretsmanager::Client,
    budget: crate::budget::Budget,
}

impl SdkSecretsManager {
    /// Wraps a client.
    pub fn new(client: aws_sdk_secretsmanager::Client) -> Self {
        Self {
            client,
            budget: crate::budget::Budget::default(),
        }
    }

    /// A client from an SDK configuration.
    pub fn from_config(config: &aws_config::SdkConfig) -> Self {
        Self::new(aws_sdk_secretsmanager::Client::new(config))
    }

    /// Takes a token of the request budget before each call (see [`crate::budget`]).
    pub fn with_budget(mut self, budget: crate::budget::Budget) -> Self {
        self.budget = budget;
        self
    }
}

fn stages_of(list: &[String]) -> Vec<String> {
    list.to_vec()
}

impl SecretsManagerApi for SdkSecretsManager {
    async fn describe_secret(
        &self,
        secret_id: &str,
    ) -> Result<SecretDescription, SecretsManagerError> {
        self.budget
            .acquire(crate::budget::SECRETS_MANAGER_READ)
            .await;
        let out = self
            .client
            .describe_secret()
            .secret_id(secret_id)
            .send()
            .await
            .map_err(|e| SecretsManagerError::from_sdk("DescribeSecret", secret_id, e))?;
        let mut versions: Vec<VersionStages> = out
            .version_ids_to_stages()
            .map(|m| {
                m.iter()
                    .map(|(id, stages)| VersionStages {
                        version_id: id.clone(),
                        stages: stages_of(stages),
                    })
                    .collect()
            })
            .unwrap_or_default();
        versions.sort_by(|a, b| a.version_id.cmp(&b.version_id));
        Ok(SecretDescription {
            arn: out.arn().unwrap_or_default().to_owned(),
            name: out.name().unwrap_or_default().to_owned(),
            versions,
            deleted: out.deleted_date().is_some(),
        })
    }

    async fn create_secret(
        &self,
        name: &str,
        kms_key_id: Option<&str>,
        description: &str,
    ) -> Result<String, SecretsManagerError> {
        self.budget
            .acquire(crate::budget::SECRETS_MANAGER_WRITE)
            .await;
        let out = self
            .client
            .create_secret()
            .name(name)
            .set_kms_key_id(kms_key_id.map(str::to_owned))
            .description(description)
            .send()
            .await
            .map_err(|e| SecretsManagerError::from_sdk("CreateSecret", name, e))?;
        Ok(out.arn().unwrap_or_default().to_owned())
    }

    async fn get_secret_value(
        &self,
        secret_id: &str,
        version: VersionSelector<'_>,
    ) -> Result<SecretString, SecretsManagerError> {
        self.budget
            .acquire(crate::budget::SECRETS_MANAGER_READ)
            .await;
        let req = self.client.get_secret_value().secret_id(secret_id);
        let req = match version {
            VersionSelector::Stage(s) => req.version_stage(s),
            VersionSelector::Id(id) => req.version_id(id),
        };
        let out = req
            .send()
            .await
            .map_err(|e| SecretsManagerError::from_sdk("GetSecretValue", secret_id, e))?;
        let version_id = out.version_id().unwrap_or_default().to_owned();
        let Some(value) = out.secret_string() else {
            return Err(SecretsManagerError::Invalid {
                operation: "GetSecretValue",
                secret_id: secret_id.to_owned(),
                code: "SecretBinary".into(),
                message: format!("version {version_id} holds no SecretString"),
            });
        };
        Ok(SecretString {
            version_id,
            stages: stages_of(out.version_stages()),
            value: SecretValue::new(value),
        })
    }

    async fn put_secret_value(
        &self,
        secret_id: &str,
        token: &str,
        value: &SecretValue,
        stages: &[&str],
    ) -> Result<String, SecretsManagerError> {
        self.budget
            .acquire(crate::budget::SECRETS_MANAGER_WRITE)
            .await;
        let out = self
            .client
            .put_secret_value()
            .secret_id(secret_id)
            .client_request_token(token)
            .secret_string(value.expose())
            .set_version_stages(Some(stages.iter().map(|s| (*s).to_owned()).collect()))
            .send()
            .await
            .map_err(|e| SecretsManagerError::from_sdk("PutSecretValue", secret_id, e))?;
        Ok(out.version_id().unwrap_or(token).to_owned())
    }

    async fn update_secret_version_stage(
        &self,
        secret_id: &str,
        stage: &str,
        move_to: Option<&str>,
        remove_from: Option<&str>,
    ) -> Result<(), SecretsManagerError> {
        self.budget
            .acquire(crate::budget::SECRETS_MANAGER_WRITE)
            .await;
        self.client
            .update_secret_version_stage()
            .secret_id(secret_id)
            .version_stage(stage)
            .set_move_to_version_id(move_to.map(str::to_owned))
            .set_remove_from_version_id(remove_from.map(str::to_owned))
            .send()
            .await
            .map_err(|e| SecretsManagerError::from_sdk("UpdateSecretVersionStage", secret_id, e))?;
        Ok(())
    }

    async fn list_secret_version_ids(
        &self,
        secret_id: &str,
    ) -> Result<Vec<VersionStages>, SecretsManagerError> {
        self.budget
            .acquire(crate::budget::SECRETS_MANAGER_READ)
            .await;
        let mut versions = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let out = self
                .client
                .list_secret_version_ids()
                .secret_id(secret_id)
                .include_deprecated(true)
                .set_next_token(next.take())
                .send()
                .await
                .map_err(|e| SecretsManagerError::from_sdk("ListSecretVersionIds", secret_id, e))?;
            versions.extend(out.versions().iter().map(|v| VersionStages {
                version_id: v.version_id().unwrap_or_default().to_owned(),
                stages: stages_of(v.version_stages()),
            }));
            match out.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_owned()),
                _ => break,
            }
        }
        Ok(versions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn description(versions: &[(&str, &[&str])]) -> SecretDescription {
        SecretDescription {
            arn: "arn".into(),
            name: "n".into(),
            versions: versions
                .iter()
                .map(|(id, stages)| VersionStages {
                    version_id: (*id).into(),
                    stages: stages.iter().map(|s| (*s).to_owned()).collect(),
                })
                .collect(),
            deleted: false,
        }
    }

    #[test]
    fn staging_labels_find_their_version() {
        let d = description(&[
            ("v1", &[AWSPREVIOUS]),
            ("v2", &[AWSCURRENT]),
            ("v3", &[AWSPENDING, "custom"]),
        ]);
        assert_eq!(
            d.version_with(AWSCURRENT).map(|v| v.version_id.as_str()),
            Some("v2")
        );
        assert_eq!(
            d.version_with(AWSPENDING).map(|v| v.version_id.as_str()),
            Some("v3")
        );
        assert_eq!(
            d.version_with(AWSPREVIOUS).map(|v| v.version_id.as_str()),
            Some("v1")
        );
        assert!(d.version_with("other").is_none());
        assert!(d.version("v3").is_some_and(|v| v.has("custom")));
    }

    #[test]
    fn only_unavailable_is_transient() {
        let e = |f: fn(String) -> SecretsManagerError| f(String::new());
        assert!(
            e(|m| SecretsManagerError::Unavailable {
                operation: "X",
                secret_id: "s".into(),
                message: m,
            })
            .is_transient()
        );
        assert!(
            !e(|m| SecretsManagerError::NotFound {
                operation: "X",
                secret_id: "s".into(),
                message: m,
            })
            .is_transient()
        );
    }
}
