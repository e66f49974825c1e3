//! RDS: the calls a SecretRotation's `rdsMasterPassword` target makes on a DB instance
//! or an Aurora DB cluster ([`SdkRds`]).
//!
//! - [`SdkRds::describe`]: DescribeDBInstances / DescribeDBClusters, reduced to what a
//!   master password change needs ([`RdsState`]): the ARN (what connection scopes
//!   match), the status and whether a master password change is pending, whether RDS
//!   manages the password itself (`MasterUserSecret`, i.e. `ManageMasterUserPassword`),
//!   the master username, the endpoint and the tags.
//! - [`SdkRds::set_master_password`]: ModifyDBInstance / ModifyDBCluster with
//!   `MasterUserPassword` and `ApplyImmediately`, and with `ManageMasterUserPassword =
//!   false` when the caller turns RDS's own rotation off (AWS requires the new password
//!   in the same call).
//! - [`SdkRds::tag`]: AddTagsToResource (the target keeps its fence in a tag).
//!
//! Errors keep RDS's error code and never hold the password: no request field is put
//! in a message.

use std::fmt::Debug;

pub use aws_sdk_rds as sdk;
use aws_sdk_rds::error::{ProvideErrorMetadata, SdkError};
use capstan_core::error::Categorized;
use capstan_core::redact::SecretValue;

/// A DB instance or an Aurora DB cluster, by identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RdsResource {
    /// `DBInstanceIdentifier`.
    Instance(String),
    /// `DBClusterIdentifier`.
    Cluster(String),
}

impl std::fmt::Display for RdsResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RdsResource::Instance(id) => write!(f, "DB instance {id:?}"),
            RdsResource::Cluster(id) => write!(f, "DB cluster {id:?}"),
        }
    }
}

/// What RDS says about an instance or cluster (no password).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RdsState {
    /// `DBInstanceArn` / `DBClusterArn`.
    pub arn: String,
    /// `DBInstanceStatus` / `Status` (`available`, `modifying`,
    /// `resetting-master-credentials`, `stopped`, ...).
    pub status: String,
    /// Whether `PendingModifiedValues.MasterUserPassword` is set: a password change has
    /// been accepted and is not applied yet.
    pub password_pending: bool,
    /// Whether RDS manages the master password in Secrets Manager
    /// (`ManageMasterUserPassword`, seen as a `MasterUserSecret`).
    pub managed_by_rds: bool,
    /// `MasterUsername`.
    pub master_username: Option<String>,
    /// The endpoint's address (a cluster's writer endpoint).
    pub address: Option<String>,
    /// The endpoint's port.
    pub port: Option<i32>,
    /// The tags (`TagList`).
    pub tags: Vec<(String, String)>,
}

impl RdsState {
    /// Whether the instance or cluster is `available` with no password change pending:
    /// a change made before has been applied.
    pub fn settled(&self) -> bool {
        self.status == "available" && !self.password_pending
    }

    /// The value of tag `key`.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Why an RDS call failed. Never holds a password.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RdsError {
    /// The instance or cluster does not exist (`DBInstanceNotFound`,
    /// `DBClusterNotFoundFault`).
    #[error("RDS {operation} on {resource}: not found: {message}")]
    NotFound {
        /// The operation.
        operation: &'static str,
        /// The instance or cluster.
        resource: String,
        /// What RDS said.
        message: String,
    },
    /// The instance or cluster is in a state that refuses the change
    /// (`InvalidDBInstanceState`, `InvalidDBClusterStateFault`): another modification
    /// in progress, stopped, being deleted. Retrying later may succeed.
    #[error("RDS {operation} on {resource}: not in a state to change ({code}): {message}")]
    InvalidState {
        /// The operation.
        operation: &'static str,
        /// The instance or cluster.
        resource: String,
        /// The error code.
        code: String,
        /// What RDS said.
        message: String,
    },
    /// The caller may not do this.
    #[error("RDS {operation} on {resource}: access denied ({code}): {message}")]
    AccessDenied {
        /// The operation.
        operation: &'static str,
        /// The instance or cluster.
        resource: String,
        /// The error code.
        code: String,
        /// What RDS said.
        message: String,
    },
    /// Throttling, a server error, a timeout or a connection failure: retrying may help.
    #[error("RDS {operation} on {resource}: unavailable: {message}")]
    Unavailable {
        /// The operation.
        operation: &'static str,
        /// The instance or cluster.
        resource: String,
        /// What failed.
        message: String,
    },
    /// Anything else (an invalid parameter, a password RDS refuses).
    #[error("RDS {operation} on {resource}: refused ({code}): {message}")]
    Invalid {
        /// The operation.
        operation: &'static str,
        /// The instance or cluster.
        resource: String,
        /// The error code.
        code: String,
        /// What RDS said.
        message: String,
    },
}

impl Categorized for RdsError {
    fn category(&self) -> &'static str {
        match self {
            RdsError::NotFound { .. } => "rds_not_found",
            RdsError::InvalidState { .. } => "rds_invalid_state",
            RdsError::AccessDenied { .. } => "rds_access_denied",
            RdsError::Unavailable { .. } => "rds_unavailable",
            RdsError::Invalid { .. } => "rds_invalid",
        }
    }
}

impl RdsError {
    fn from_sdk<E, R>(operation: &'static str, resource: &RdsResource, err: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: Debug,
    {
        let resource = resource.to_string();
        let service = match &err {
            SdkError::ServiceError(e) => Some(e.err()),
            _ => None,
        };
        let Some(service) = service else {
            return RdsError::Unavailable {
                operation,
                resource,
                message: aws_sdk_rds::error::DisplayErrorContext(&err).to_string(),
            };
        };
        let code = service.code().unwrap_or("Unknown").to_owned();
        let message = service.message().unwrap_or("").to_owned();
        match code.as_str() {
            "DBInstanceNotFound" | "DBInstanceNotFoundFault" | "DBClusterNotFoundFault" => {
                RdsError::NotFound {
                    operation,
                    resource,
                    message,
                }
            }
            "InvalidDBInstanceState"
            | "InvalidDBInstanceStateFault"
            | "InvalidDBClusterStateFault" => RdsError::InvalidState {
                operation,
                resource,
                code,
                message,
            },
            "AccessDenied"
            | "AccessDeniedException"
            | "UnauthorizedOperation"
            | "InvalidClientTokenId"
            | "SignatureDoesNotMatch"
            | "ExpiredToken" => RdsError::AccessDenied {
                operation,
                resource,
                code,
                message,
            },
            "Throttling"
            | "ThrottlingException"
            | "RequestLimitExceeded"
            | "InternalFailure"
            | "ServiceUnavailable" => RdsError::Unavailable {
                operation,
                resource,
                message: format!("{code}: {message}"),
            },
            _ => RdsError::Invalid {
                operation,
                resource,
                code,
                message,
            },
        }
    }
}

/// The RDS client, with the request budget of its connection.
#[derive(Debug, Clone)]
pub struct SdkRds {
    client: aws_sdk_rds::Client,
    budget: crate::budget::Budget,
}

impl SdkRds {
    /// A client from an SDK configuration.
    pub fn from_config(config: &aws_config::SdkConfig) -> Self {
        Self {
            client: aws_sdk_rds::Client::new(config),
            budget: crate::budget::Budget::default(),
        }
    }

    /// Takes a token of the request budget before each call (see [`crate::budget`]).
    pub fn with_budget(mut self, budget: crate::budget::Budget) -> Self {
        self.budget = budget;
        self
    }

    /// The instance's or cluster's state.
    pub async fn describe(&self, resource: &RdsResource) -> Result<RdsState, RdsError> {
        self.budget.acquire(crate::budget::RDS_READ).await;
        match resource {
            RdsResource::Instance(id) => {
                let out = self
                    .client
                    .describe_db_instances()
                    .db_instance_identifier(id)
                    .send()
                    .await
                    .map_err(|e| RdsError::from_sdk("DescribeDBInstances", resource, e))?;
                let db = out
                    .db_instances()
                    .first()
                    .ok_or_else(|| RdsError::NotFound {
                        operation: "DescribeDBInstances",
                        resource: resource.to_string(),
                        message: "no instance in the answer".into(),
                    })?;
                Ok(RdsState {
                    arn: db.db_instance_arn().unwrap_or_default().to_owned(),
                    status: db.db_instance_status().unwrap_or_default().to_owned(),
                    password_pending: db
                        .pending_modified_values()
                        .and_then(|p| p.master_user_password())
                        .is_some(),
                    managed_by_rds: db.master_user_secret().is_some(),
                    master_username: db.master_username().map(str::to_owned),
                    address: db.endpoint().and_then(|e| e.address()).map(str::to_owned),
                    port: db.endpoint().and_then(|e| e.port()),
                    tags: db
                        .tag_list()
                        .iter()
                        .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
                        .collect(),
                })
            }
            RdsResource::Cluster(id) => {
                let out = self
                    .client
                    .describe_db_clusters()
                    .db_cluster_identifier(id)
                    .send()
                    .await
                    .map_err(|e| RdsError::from_sdk("DescribeDBClusters", resource, e))?;
                let c = out
                    .db_clusters()
                    .first()
                    .ok_or_else(|| RdsError::NotFound {
                        operation: "DescribeDBClusters",
                        resource: resource.to_string(),
                        message: "no cluster in the answer".into(),
                    })?;
                Ok(RdsState {
                    arn: c.db_cluster_arn().unwrap_or_default().to_owned(),
                    status: c.status().unwrap_or_default().to_owned(),
                    password_pending: c
                        .pending_modified_values()
                        .and_then(|p| p.master_user_password())
                        .is_some(),
                    managed_by_rds: c.master_user_secret().is_some(),
                    master_username: c.master_username().map(str::to_owned),
                    address: c.endpoint().map(str::to_owned),
                    port: c.port(),
                    tags: c
                        .tag_list()
                        .iter()
                        .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
                        .collect(),
                })
            }
        }
    }

    /// Sets the master password, applied immediately; with `stop_rds_rotation`, turns
    /// `ManageMasterUserPassword` off in the same call. Returns the state RDS answered
    /// with (usually a pending change, not yet applied).
    pub async fn set_master_password(
        &self,
        resource: &RdsResource,
        password: &SecretValue,
        stop_rds_rotation: bool,
    ) -> Result<RdsState, RdsError> {
        self.budget.acquire(crate::budget::RDS_WRITE).await;
        let manage = stop_rds_rotation.then_some(false);
        match resource {
            RdsResource::Instance(id) => {
                self.client
                    .modify_db_instance()
                    .db_instance_identifier(id)
                    .master_user_password(password.expose())
                    .set_manage_master_user_password(manage)
                    .apply_immediately(true)
                    .send()
                    .await
                    .map_err(|e| RdsError::from_sdk("ModifyDBInstance", resource, e))?;
            }
            RdsResource::Cluster(id) => {
                self.client
                    .modify_db_cluster()
                    .db_cluster_identifier(id)
                    .master_user_password(password.expose())
                    .set_manage_master_user_password(manage)
                    .apply_immediately(true)
                    .send()
                    .await
                    .map_err(|e| RdsError::from_sdk("ModifyDBCluster", resource, e))?;
            }
        }
        self.describe(resource).await
    }

    /// Sets tag `key` to `value` on the resource with `arn`.
    pub async fn tag(
        &self,
        resource: &RdsResource,
        arn: &str,
        key: &str,
        value: &str,
    ) -> Result<(), RdsError> {
        self.budget.acquire(crate::budget::RDS_WRITE).await;
        let tag = aws_sdk_rds::types::Tag::builder()
            .key(key)
            .value(value)
            .build();
        self.client
            .add_tags_to_resource()
            .resource_name(arn)
            .tags(tag)
            .send()
            .await
            .map_err(|e| RdsError::from_sdk("AddTagsToResource", resource, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settled_means_available_with_nothing_pending() {
        let mut s = RdsState {
            status: "available".into(),
            ..RdsState::default()
        };
        assert!(s.settled());
        s.password_pending = true;
        assert!(!s.settled());
        s.password_pending = false;
        s.status = "resetting-master-credentials".into();
        assert!(!s.settled());
    }

    #[test]
    fn resources_are_named_in_messages() {
        assert_eq!(
            RdsResource::Instance("shop".into()).to_string(),
            "DB instance \"shop\""
        );
        assert_eq!(
            RdsResource::Cluster("shop".into()).to_string(),
            "DB cluster \"shop\""
        );
    }
}
