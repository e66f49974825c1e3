//! ECS: the calls Capstan makes on services, behind the narrow [`EcsApi`] trait.
//!
//! - ServiceScaling reads services in batches ([`EcsApi::describe_services`], at most
//!   [`DESCRIBE_SERVICES_MAX`] per call, as ECS allows) and sets a service's desired count
//!   ([`EcsApi::set_desired_count`]).
//! - SecretRotation restarts a service's tasks so they pick up a new credential
//!   ([`EcsApi::force_new_deployment`], which leaves the desired count alone) and waits
//!   until that deployment has completed ([`EcsApi::deployment_state`]).
//!
//! [`SdkEcs`] implements the trait with the AWS SDK. Errors keep the ECS error code
//! (`ClusterNotFoundException`, `ServiceNotFoundException`, ...) so callers can tell a
//! missing service from a transient failure; messages never carry credentials.

use std::fmt::Debug;

use aws_sdk_ecs::error::ProvideErrorMetadata;
use aws_sdk_ecs::types::DeploymentRolloutState;
use capstan_core::error::Categorized;

/// The SDK, for callers that need a type or call Capstan itself does not wrap (tests
/// creating services).
pub use aws_sdk_ecs as sdk;

/// The most services one DescribeServices call accepts.
pub const DESCRIBE_SERVICES_MAX: usize = 10;

/// Why an ECS call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EcsError {
    /// The cluster does not exist (`ClusterNotFoundException`).
    #[error("ECS cluster {cluster:?} does not exist")]
    ClusterNotFound {
        /// The cluster as named by the caller.
        cluster: String,
    },
    /// The service does not exist or is not active (`ServiceNotFoundException`,
    /// `ServiceNotActiveException`, or a DescribeServices failure `MISSING`/`INACTIVE`).
    #[error("ECS service {service:?} in cluster {cluster:?} {reason}")]
    ServiceNotFound {
        /// The cluster.
        cluster: String,
        /// The service.
        service: String,
        /// What ECS said, e.g. "does not exist" or "is not active".
        reason: String,
    },
    /// ECS throttled the call.
    #[error("ECS {operation} was throttled")]
    Throttled {
        /// The operation, e.g. `UpdateService`.
        operation: &'static str,
    },
    /// Any other failure (access denied, network, server error).
    #[error("ECS {operation} failed: {message}")]
    Call {
        /// The operation.
        operation: &'static str,
        /// The error code, if ECS sent one.
        code: Option<String>,
        /// What the SDK reported.
        message: String,
    },
}

impl Categorized for EcsError {
    fn category(&self) -> &'static str {
        match self {
            EcsError::ClusterNotFound { .. } => "ecs_cluster_not_found",
            EcsError::ServiceNotFound { .. } => "ecs_service_not_found",
            EcsError::Throttled { .. } => "ecs_throttled",
            EcsError::Call { .. } => "ecs_call",
        }
    }
}

impl EcsError {
    /// Whether the error says the cluster or service does not exist (a user's mistake
    /// that retrying does not fix), as opposed to a transient failure.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            EcsError::ClusterNotFound { .. } | EcsError::ServiceNotFound { .. }
        )
    }

    pub(crate) fn from_sdk<E, R>(
        operation: &'static str,
        cluster: &str,
        service: Option<&str>,
        err: aws_sdk_ecs::error::SdkError<E, R>,
    ) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: Debug,
    {
        let code = err.code().map(str::to_owned);
        match (code.as_deref(), service) {
            (Some("ClusterNotFoundException"), _) => EcsError::ClusterNotFound {
                cluster: cluster.to_owned(),
            },
            (Some("ServiceNotFoundException"), Some(s)) => EcsError::ServiceNotFound {
                cluster: cluster.to_owned(),
                service: s.to_owned(),
                reason: "does not exist".into(),
            },
            (Some("ServiceNotActiveException"), Some(s)) => EcsError::ServiceNotFound {
                cluster: cluster.to_owned(),
                service: s.to_owned(),
                reason: "is not active".into(),
            },
            (Some("ThrottlingException" | "Throttling" | "TooManyRequestsException"), _) => {
                EcsError::Throttled { operation }
            }
            _ => EcsError::Call {
                operation,
                message: aws_sdk_ecs::error::DisplayErrorContext(&err).to_string(),
                code,
            },
        }
    }
}

/// One ECS deployment of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    /// The deployment ID.
    pub id: String,
    /// `PRIMARY` (the newest), `ACTIVE` (being replaced) or `INACTIVE`.
    pub status: String,
    /// `COMPLETED`, `IN_PROGRESS` or `FAILED`, for services with the ECS deployment
    /// controller and circuit breaker information; `None` otherwise.
    pub rollout_state: Option<String>,
    /// Tasks the deployment wants.
    pub desired_count: i32,
    /// Tasks of the deployment that run.
    pub running_count: i32,
    /// The task definition the deployment runs.
    pub task_definition: Option<String>,
    /// Why the rollout state is what it is (e.g. the circuit breaker's message).
    pub rollout_state_reason: Option<String>,
    /// Tasks ECS counted as failed for this deployment (those that did not start or
    /// failed health checks; not those that ran and then exited).
    pub failed_tasks: i32,
}

/// An ECS service as DescribeServices reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcsService {
    /// The service's ARN.
    pub arn: String,
    /// The service's name.
    pub name: String,
    /// `ACTIVE`, `DRAINING` or `INACTIVE`.
    pub status: String,
    /// The desired task count.
    pub desired_count: i32,
    /// Tasks in the RUNNING state.
    pub running_count: i32,
    /// Tasks in the PENDING state.
    pub pending_count: i32,
    /// The service's deployments, newest (PRIMARY) first as ECS lists them.
    pub deployments: Vec<Deployment>,
    /// The task definition of the service (its PRIMARY deployment's).
    pub task_definition: Option<String>,
    /// The deployment controller type: `ECS`, `CODE_DEPLOY` or `EXTERNAL` (`None`: ECS).
    pub deployment_controller: Option<String>,
}

impl EcsService {
    /// Whether the latest deployment has finished (see [`DeploymentState`]).
    pub fn deployment_state(&self) -> DeploymentState {
        let Some(primary) = self.deployments.iter().find(|d| d.status == "PRIMARY") else {
            // No deployment information (e.g. an external deployment controller): the
            // service as a whole is the best evidence.
            return if self.running_count >= self.desired_count && self.pending_count == 0 {
                DeploymentState::Completed
            } else {
                DeploymentState::InProgress
            };
        };
        match primary.rollout_state.as_deref() {
            Some("COMPLETED") => DeploymentState::Completed,
            Some("FAILED") => DeploymentState::Failed,
            Some(_) => DeploymentState::InProgress,
            // Without a rollout state, a deployment is complete when it is the only one
            // left and runs every task it wants.
            None if self.deployments.len() == 1
                && primary.running_count >= primary.desired_count =>
            {
                DeploymentState::Completed
            }
            None => DeploymentState::InProgress,
        }
    }

    /// The PRIMARY deployment's ID, if any.
    pub fn primary_deployment_id(&self) -> Option<&str> {
        self.primary().map(|d| d.id.as_str())
    }

    /// The PRIMARY deployment, if any.
    pub fn primary(&self) -> Option<&Deployment> {
        self.deployments.iter().find(|d| d.status == "PRIMARY")
    }
}

/// Whether a service's latest deployment has finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeploymentState {
    /// Rollout state `COMPLETED` (or, without one, the PRIMARY deployment is the only
    /// one and runs all its desired tasks).
    Completed,
    /// Still replacing tasks.
    InProgress,
    /// Rollout state `FAILED` (the deployment circuit breaker tripped).
    Failed,
}

/// The answer to one service of a DescribeServices call.
pub type ServiceLookup = Result<EcsService, EcsError>;

/// The ECS calls Capstan makes.
pub trait EcsApi: Send + Sync + Debug {
    /// Describes up to [`DESCRIBE_SERVICES_MAX`] services of one cluster in one call.
    /// Returns one entry per requested name, in order: the service, or
    /// [`EcsError::ServiceNotFound`] when ECS lists it as a failure (missing, inactive).
    /// The outer error is a failure of the whole call (e.g. [`EcsError::ClusterNotFound`]).
    fn describe_services(
        &self,
        cluster: &str,
        services: &[String],
    ) -> impl Future<Output = Result<Vec<ServiceLookup>, EcsError>> + Send;

    /// Sets the service's desired count (UpdateService `desiredCount`), changing
    /// nothing else.
    fn set_desired_count(
        &self,
        cluster: &str,
        service: &str,
        desired_count: i32,
    ) -> impl Future<Output = Result<(), EcsError>> + Send;

    /// Starts a new deployment of the service's current task definition (UpdateService
    /// `forceNewDeployment=true`), leaving the desired count alone, so that every task
    /// is replaced. Returns the new PRIMARY deployment's ID when ECS reports it.
    fn force_new_deployment(
        &self,
        cluster: &str,
        service: &str,
    ) -> impl Future<Output = Result<Option<String>, EcsError>> + Send;

    /// Reads whether the service's latest deployment has completed, and its ID.
    fn deployment_state(
        &self,
        cluster: &str,
        service: &str,
    ) -> impl Future<Output = Result<(DeploymentState, Option<String>), EcsError>> + Send;
}

/// [`EcsApi`] over the AWS SDK.
#[derive(Debug, Clone)]
pub struct SdkEcs {
    pub(crate) client: aws_sdk_ecs::Client,
    pub(crate) budget: crate::budget::Budget,
}

impl SdkEcs {
    /// Wraps a client (built from a connection's configuration, possibly with
    /// interceptors added).
    pub fn new(client: aws_sdk_ecs::Client) -> Self {
        Self {
            client,
            budget: crate::budget::Budget::default(),
        }
    }

    /// A client from a configuration.
    pub fn from_config(config: &aws_config::SdkConfig) -> Self {
        Self::new(aws_sdk_ecs::Client::new(config))
    }

    /// Takes a token of the request budget before each call (see [`crate::budget`]).
    pub fn with_budget(mut self, budget: crate::budget::Budget) -> Self {
        self.budget = budget;
        self
    }
}

pub(crate) fn convert_service(s: &aws_sdk_ecs::types::Service) -> EcsService {
    EcsService {
        arn: s.service_arn().unwrap_or_default().to_owned(),
        name: s.service_name().unwrap_or_default().to_owned(),
        status: s.status().unwrap_or_default().to_owned(),
        desired_count: s.desired_count(),
        running_count: s.running_count(),
        pending_count: s.pending_count(),
        deployments: s
            .deployments()
            .iter()
            .map(|d| Deployment {
                id: d.id().unwrap_or_default().to_owned(),
                status: d.status().unwrap_or_default().to_owned(),
                rollout_state: d.rollout_state().map(|r| match r {
                    DeploymentRolloutState::Completed => "COMPLETED".to_owned(),
                    DeploymentRolloutState::Failed => "FAILED".to_owned(),
                    DeploymentRolloutState::InProgress => "IN_PROGRESS".to_owned(),
                    other => other.as_str().to_owned(),
                }),
                desired_count: d.desired_count(),
                running_count: d.running_count(),
                task_definition: d.task_definition().map(str::to_owned),
                rollout_state_reason: d.rollout_state_reason().map(str::to_owned),
                failed_tasks: d.failed_tasks(),
            })
            .collect(),
        task_definition: s.task_definition().map(str::to_owned),
        deployment_controller: s
            .deployment_controller()
            .map(|c| c.r#type().as_str().to_owned()),
    }
}

/// Whether `requested` (a name or an ARN) names the service with this name and ARN.
fn names(requested: &str, name: &str, arn: &str) -> bool {
    requested == name
        || requested == arn
        || (!arn.is_empty() && arn.rsplit('/').next() == Some(requested))
        || requested.rsplit('/').next() == Some(name)
}

impl EcsApi for SdkEcs {
    async fn describe_services(
        &self,
        cluster: &str,
        services: &[String],
    ) -> Result<Vec<ServiceLookup>, EcsError> {
        if services.is_empty() {
            return Ok(Vec::new());
        }
        self.budget.acquire(crate::budget::ECS_READ).await;
        let out = self
            .client
            .describe_services()
            .cluster(cluster)
            .set_services(Some(services.to_vec()))
            .send()
            .await
            .map_err(|e| EcsError::from_sdk("DescribeServices", cluster, None, e))?;
        let found: Vec<EcsService> = out.services().iter().map(convert_service).collect();
        Ok(services
            .iter()
            .map(|requested| {
                // ECS lists an INACTIVE (deleted) service among `services`; treat it as
                // not found, like a failure.
                if let Some(s) = found.iter().find(|s| names(requested, &s.name, &s.arn)) {
                    if s.status == "INACTIVE" {
                        return Err(EcsError::ServiceNotFound {
                            cluster: cluster.to_owned(),
                            service: requested.clone(),
                            reason: "is inactive".into(),
                        });
                    }
                    return Ok(s.clone());
                }
                let reason = out
                    .failures()
                    .iter()
                    .find(|f| names(requested, "", f.arn().unwrap_or_default()))
                    .and_then(|f| f.reason())
                    .map(|r| match r {
                        "MISSING" => "does not exist".to_owned(),
                        other => format!("cannot be read ({other})"),
                    })
                    .unwrap_or_else(|| "was not returned by DescribeServices".to_owned());
                Err(EcsError::ServiceNotFound {
                    cluster: cluster.to_owned(),
                    service: requested.clone(),
                    reason,
                })
            })
            .collect())
    }

    async fn set_desired_count(
        &self,
        cluster: &str,
        service: &str,
        desired_count: i32,
    ) -> Result<(), EcsError> {
        self.budget.acquire(crate::budget::ECS_WRITE).await;
        self.client
            .update_service()
            .cluster(cluster)
            .service(service)
            .desired_count(desired_count)
            .send()
            .await
            .map_err(|e| EcsError::from_sdk("UpdateService", cluster, Some(service), e))?;
        Ok(())
    }

    async fn force_new_deployment(
        &self,
        cluster: &str,
        service: &str,
    ) -> Result<Option<String>, EcsError> {
        self.budget.acquire(crate::budget::ECS_WRITE).await;
        let out = self
            .client
            .update_service()
            .cluster(cluster)
            .service(service)
            .force_new_deployment(true)
            .send()
            .await
            .map_err(|e| EcsError::from_sdk("UpdateService", cluster, Some(service), e))?;
        Ok(out
            .service()
            .map(convert_service)
            .and_then(|s| s.primary_deployment_id().map(str::to_owned)))
    }

    async fn deployment_state(
        &self,
        cluster: &str,
        service: &str,
    ) -> Result<(DeploymentState, Option<String>), EcsError> {
        let mut found = self
            .describe_services(cluster, &[service.to_owned()])
            .await?;
        let s = found.pop().unwrap_or_else(|| {
            Err(EcsError::ServiceNotFound {
                cluster: cluster.to_owned(),
                service: service.to_owned(),
                reason: "was not returned by DescribeServices".into(),
            })
        })?;
        Ok((
            s.deployment_state(),
            s.primary_deployment_id().map(str::to_owned),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(deployments: Vec<Deployment>, desired: i32, running: i32) -> EcsService {
        EcsService {
            arn: "arn:aws:ecs:us-east-1:123456789012:service/main/web".into(),
            name: "web".into(),
            status: "ACTIVE".into(),
            desired_count: desired,
            running_count: running,
            pending_count: (desired - running).max(0),
            deployments,
            task_definition: None,
            deployment_controller: None,
        }
    }

    fn deployment(status: &str, rollout: Option<&str>, desired: i32, running: i32) -> Deployment {
        Deployment {
            id: format!("ecs-svc/{status}"),
            status: status.into(),
            rollout_state: rollout.map(str::to_owned),
            desired_count: desired,
            running_count: running,
            task_definition: None,
            rollout_state_reason: None,
            failed_tasks: 0,
        }
    }

    #[test]
    fn deployment_state_follows_the_primary_rollout_state() {
        let cases = [
            (
                vec![deployment("PRIMARY", Some("COMPLETED"), 2, 2)],
                DeploymentState::Completed,
            ),
            (
                vec![
                    deployment("PRIMARY", Some("IN_PROGRESS"), 2, 1),
                    deployment("ACTIVE", Some("COMPLETED"), 2, 2),
                ],
                DeploymentState::InProgress,
            ),
            (
                vec![deployment("PRIMARY", Some("FAILED"), 2, 0)],
                DeploymentState::Failed,
            ),
            // No rollout state: complete only when alone and fully running.
            (
                vec![deployment("PRIMARY", None, 2, 2)],
                DeploymentState::Completed,
            ),
            (
                vec![
                    deployment("PRIMARY", None, 2, 2),
                    deployment("ACTIVE", None, 2, 1),
                ],
                DeploymentState::InProgress,
            ),
            (
                vec![deployment("PRIMARY", None, 3, 2)],
                DeploymentState::InProgress,
            ),
        ];
        for (deployments, want) in cases {
            let s = service(deployments.clone(), 2, 2);
            assert_eq!(s.deployment_state(), want, "{deployments:?}");
        }
        assert_eq!(
            service(vec![], 2, 1).deployment_state(),
            DeploymentState::InProgress
        );
        assert_eq!(
            service(vec![], 2, 2).deployment_state(),
            DeploymentState::Completed
        );
    }

    #[test]
    fn requested_names_match_names_and_arns() {
        let arn = "arn:aws:ecs:us-east-1:123456789012:service/main/web";
        assert!(names("web", "web", arn));
        assert!(names(arn, "web", arn));
        assert!(names(arn, "", arn));
        assert!(!names("api", "web", arn));
        assert!(!names("we", "web", arn));
    }
}
