//! IAM: the calls a SecretRotation's `iamAccessKey` target makes on one IAM user's
//! access keys ([`SdkIam`]), and the test of a key: STS GetCallerIdentity signed with
//! it ([`SdkIam::caller_of`]).
//!
//! IAM allows two access keys per user; the target never needs a third (see the
//! target's module). Errors keep IAM's error code and never hold a secret access key.

use std::fmt::Debug;

use aws_config::SdkConfig;
use aws_sdk_iam::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_iam::types::StatusType;
use capstan_core::error::Categorized;
use capstan_core::redact::SecretValue;

pub use aws_sdk_iam as sdk;

/// One of a user's access keys (no secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessKey {
    /// `AccessKeyId`.
    pub id: String,
    /// Whether its status is `Active`.
    pub active: bool,
    /// `CreateDate`, in seconds since the epoch.
    pub created: i64,
}

/// What GetUser says about a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IamUser {
    /// The user's ARN.
    pub arn: String,
    /// The user's path (`/`, `/services/shop/`).
    pub path: String,
}

/// Why an IAM or STS call failed. Never holds a secret access key.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IamError {
    /// The user or key does not exist (`NoSuchEntity`).
    #[error("IAM {operation} on user {user:?}: not found: {message}")]
    NotFound {
        /// The operation.
        operation: &'static str,
        /// The user.
        user: String,
        /// What IAM said.
        message: String,
    },
    /// A quota refused the call (`LimitExceeded`: two keys already).
    #[error("IAM {operation} on user {user:?}: limit exceeded: {message}")]
    LimitExceeded {
        /// The operation.
        operation: &'static str,
        /// The user.
        user: String,
        /// What IAM said.
        message: String,
    },
    /// The caller may not do this.
    #[error("IAM {operation} on user {user:?}: access denied ({code}): {message}")]
    AccessDenied {
        /// The operation.
        operation: &'static str,
        /// The user.
        user: String,
        /// The error code.
        code: String,
        /// What IAM said.
        message: String,
    },
    /// The key signing the call is not (or not yet) valid (`InvalidClientTokenId`):
    /// unknown, inactive or deleted, or too new for IAM's eventual consistency.
    #[error("STS {operation} with key {key_id}: refused ({code}): {message}")]
    KeyRefused {
        /// The operation.
        operation: &'static str,
        /// The access key id.
        key_id: String,
        /// The error code.
        code: String,
        /// What STS said.
        message: String,
    },
    /// Throttling, a server error, a timeout or a connection failure.
    #[error("IAM {operation} on user {user:?}: unavailable: {message}")]
    Unavailable {
        /// The operation.
        operation: &'static str,
        /// The user.
        user: String,
        /// What failed.
        message: String,
    },
    /// Anything else.
    #[error("IAM {operation} on user {user:?}: refused ({code}): {message}")]
    Invalid {
        /// The operation.
        operation: &'static str,
        /// The user.
        user: String,
        /// The error code.
        code: String,
        /// What IAM said.
        message: String,
    },
}

impl Categorized for IamError {
    fn category(&self) -> &'static str {
        match self {
            IamError::NotFound { .. } => "iam_not_found",
            IamError::LimitExceeded { .. } => "iam_limit_exceeded",
            IamError::AccessDenied { .. } => "iam_access_denied",
            IamError::KeyRefused { .. } => "iam_key_refused",
            IamError::Unavailable { .. } => "iam_unavailable",
            IamError::Invalid { .. } => "iam_invalid",
        }
    }
}

fn classify<E, R>(operation: &'static str, user: &str, err: SdkError<E, R>) -> IamError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: Debug,
{
    let user = user.to_owned();
    let service = match &err {
        SdkError::ServiceError(e) => Some(e.err()),
        _ => None,
    };
    let Some(service) = service else {
        return IamError::Unavailable {
            operation,
            user,
            message: aws_sdk_iam::error::DisplayErrorContext(&err).to_string(),
        };
    };
    let code = service.code().unwrap_or("Unknown").to_owned();
    let message = service.message().unwrap_or("").to_owned();
    match code.as_str() {
        "NoSuchEntity" | "NoSuchEntityException" => IamError::NotFound {
            operation,
            user,
            message,
        },
        "LimitExceeded" | "LimitExceededException" => IamError::LimitExceeded {
            operation,
            user,
            message,
        },
        "AccessDenied"
        | "AccessDeniedException"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "ExpiredToken" => IamError::AccessDenied {
            operation,
            user,
            code,
            message,
        },
        "Throttling" | "ThrottlingException" | "ServiceFailure" | "ServiceUnavailable" => {
            IamError::Unavailable {
                operation,
                user,
                message: format!("{code}: {message}"),
            }
        }
        _ => IamError::Invalid {
            operation,
            user,
            code,
            message,
        },
    }
}

/// The IAM client of a connection (and its configuration, for testing keys through
/// STS at the same endpoint and region).
#[derive(Debug, Clone)]
pub struct SdkIam {
    client: aws_sdk_iam::Client,
    config: SdkConfig,
    budget: crate::budget::Budget,
}

impl SdkIam {
    /// A client from an SDK configuration.
    pub fn from_config(config: &SdkConfig) -> Self {
        Self {
            client: aws_sdk_iam::Client::new(config),
            config: config.clone(),
            budget: crate::budget::Budget::default(),
        }
    }

    /// Takes a token of the request budget before each call (see [`crate::budget`]).
    pub fn with_budget(mut self, budget: crate::budget::Budget) -> Self {
        self.budget = budget;
        self
    }

    /// The user's ARN and path.
    pub async fn user(&self, user: &str) -> Result<IamUser, IamError> {
        self.budget.acquire(crate::budget::IAM).await;
        let out = self
            .client
            .get_user()
            .user_name(user)
            .send()
            .await
            .map_err(|e| classify("GetUser", user, e))?;
        let u = out.user().ok_or_else(|| IamError::NotFound {
            operation: "GetUser",
            user: user.to_owned(),
            message: "no user in the answer".into(),
        })?;
        Ok(IamUser {
            arn: u.arn().to_owned(),
            path: u.path().to_owned(),
        })
    }

    /// The user's access keys, oldest first.
    pub async fn keys(&self, user: &str) -> Result<Vec<AccessKey>, IamError> {
        self.budget.acquire(crate::budget::IAM).await;
        let out = self
            .client
            .list_access_keys()
            .user_name(user)
            .send()
            .await
            .map_err(|e| classify("ListAccessKeys", user, e))?;
        let mut keys: Vec<AccessKey> = out
            .access_key_metadata()
            .iter()
            .filter_map(|k| {
                Some(AccessKey {
                    id: k.access_key_id()?.to_owned(),
                    active: k.status() == Some(&StatusType::Active),
                    created: k.create_date().map_or(0, |d| d.secs()),
                })
            })
            .collect();
        keys.sort_by_key(|k| (k.created, k.id.clone()));
        Ok(keys)
    }

    /// A new access key: its id and secret.
    pub async fn create_key(&self, user: &str) -> Result<(String, SecretValue), IamError> {
        self.budget.acquire(crate::budget::IAM).await;
        let out = self
            .client
            .create_access_key()
            .user_name(user)
            .send()
            .await
            .map_err(|e| classify("CreateAccessKey", user, e))?;
        let key = out.access_key().ok_or_else(|| IamError::Invalid {
            operation: "CreateAccessKey",
            user: user.to_owned(),
            code: "NoKey".into(),
            message: "no key in the answer".into(),
        })?;
        Ok((
            key.access_key_id().to_owned(),
            SecretValue::new(key.secret_access_key().to_owned()),
        ))
    }

    /// Sets a key `Active` or `Inactive`.
    pub async fn set_active(&self, user: &str, key_id: &str, active: bool) -> Result<(), IamError> {
        self.budget.acquire(crate::budget::IAM).await;
        self.client
            .update_access_key()
            .user_name(user)
            .access_key_id(key_id)
            .status(if active {
                StatusType::Active
            } else {
                StatusType::Inactive
            })
            .send()
            .await
            .map_err(|e| classify("UpdateAccessKey", user, e))?;
        Ok(())
    }

    /// Deletes a key; a key already gone is not an error.
    pub async fn delete_key(&self, user: &str, key_id: &str) -> Result<(), IamError> {
        self.budget.acquire(crate::budget::IAM).await;
        match self
            .client
            .delete_access_key()
            .user_name(user)
            .access_key_id(key_id)
            .send()
            .await
            .map_err(|e| classify("DeleteAccessKey", user, e))
        {
            Ok(_) | Err(IamError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The ARN STS GetCallerIdentity reports for a call signed with this key (at the
    /// connection's endpoint and region).
    pub async fn caller_of(&self, key_id: &str, secret: &SecretValue) -> Result<String, IamError> {
        self.budget.acquire(crate::budget::IAM).await;
        let creds = aws_credential_types::Credentials::new(
            key_id,
            secret.expose(),
            None,
            None,
            "capstan-key-test",
        );
        let config = self
            .config
            .clone()
            .into_builder()
            .credentials_provider(
                aws_credential_types::provider::SharedCredentialsProvider::new(creds),
            )
            .build();
        let out = aws_sdk_sts::Client::new(&config)
            .get_caller_identity()
            .send()
            .await
            .map_err(|e| match classify("GetCallerIdentity", "", e) {
                IamError::AccessDenied { code, message, .. } => IamError::KeyRefused {
                    operation: "GetCallerIdentity",
                    key_id: key_id.to_owned(),
                    code,
                    message,
                },
                other => other,
            })?;
        Ok(out.arn().unwrap_or_default().to_owned())
    }
}
