//! The AWS side of Deploy stages: the clients per ClusterConnection, what a followed
//! deployment's state is ([`observe`]), pinning images by digest ([`pin_image`]), the
//! deploy itself ([`register`]: find or register the tagged task definition; [`update`]:
//! `UpdateService` unless the service already runs it) and the rollback
//! ([`roll_back`]). The scheduler ([`crate::scheduler`]) decides; these act and report.
//!
//! Every error message names the service, the task definition or the image, never a
//! credential.

use std::collections::BTreeMap;
use std::sync::Arc;

use capstan_aws::ClientOptions;
use capstan_aws::clients::ClientCache;
use capstan_aws::ecr::{EcrError, EcrImage, ImageReference, SdkEcr};
use capstan_aws::ecs::{EcsError, EcsService, SdkEcs};
use capstan_aws::ecs_deploy::{RUN_TAG, STAGE_TAG, copy_input, family_of};
use capstan_core::budget::Budgets;

use crate::scheduler::DeployState;

/// The clients of one connection.
#[derive(Debug, Clone)]
pub struct Clients {
    /// ECS.
    pub ecs: SdkEcs,
    /// ECR.
    pub ecr: SdkEcr,
}

/// An empty cache of clients per connection.
pub fn client_cache(
    client: kube::Client,
    own_namespace: String,
    options: ClientOptions,
    budgets: Arc<Budgets>,
) -> ClientCache<Clients> {
    ClientCache::new(client, own_namespace, options, budgets, |config, budget| {
        Clients {
            ecs: SdkEcs::from_config(config).with_budget(budget.clone()),
            ecr: SdkEcr::from_config(config).with_budget(budget),
        }
    })
}

/// Why an AWS step failed: `Refused` ends the stage (a person must change something),
/// the rest is retried.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The request cannot succeed as it is: the message says why.
    #[error("{0}")]
    Refused(String),
    /// ECS failed (retried).
    #[error(transparent)]
    Ecs(#[from] EcsError),
    /// ECR failed (retried).
    #[error(transparent)]
    Ecr(#[from] EcrError),
}

/// Whether the service's deployments are ECS's own (the only ones with a
/// `rolloutState` to follow).
pub fn check_controller(svc: &EcsService, cluster: &str) -> Result<(), DeployError> {
    match svc.deployment_controller.as_deref() {
        None | Some("ECS") => Ok(()),
        Some(other) => Err(DeployError::Refused(format!(
            "ECS service {} in cluster {cluster} uses the {other} deployment controller; Capstan deploys only services with the ECS deployment controller (rolling updates with a rolloutState)",
            svc.name
        ))),
    }
}

/// What the deployment `id` of a service is now, and the failed tasks it has had (one
/// line each, at most 10). `ours` is the task definition the deployment runs.
pub async fn observe(
    ecs: &SdkEcs,
    cluster: &str,
    service: &str,
    id: &str,
    ours: &str,
    max_failed: i32,
) -> Result<(DeployState, Vec<String>), EcsError> {
    let svc = ecs.describe_service(cluster, service).await?;
    let primary = svc.primary();
    let d = svc.deployments.iter().find(|d| d.id == id);
    let Some(d) = d.filter(|d| d.status == "PRIMARY") else {
        return Ok(match primary {
            Some(p) if p.task_definition.as_deref() == Some(ours) => {
                (DeployState::Replaced { by: p.id.clone() }, Vec::new())
            }
            Some(p) => (
                DeployState::Overtaken {
                    task_definition: p.task_definition.clone().unwrap_or_default(),
                },
                Vec::new(),
            ),
            None if svc.task_definition.as_deref() == Some(ours) => {
                (DeployState::Completed, Vec::new())
            }
            None => (
                DeployState::Overtaken {
                    task_definition: svc.task_definition.clone().unwrap_or_default(),
                },
                Vec::new(),
            ),
        });
    };
    match d.rollout_state.as_deref() {
        Some("COMPLETED") => return Ok((DeployState::Completed, Vec::new())),
        Some("FAILED") => {
            let failed = failed_tasks(ecs, cluster, id).await?;
            let message = d
                .rollout_state_reason
                .clone()
                .unwrap_or_else(|| "ECS reports the rollout FAILED".to_owned());
            return Ok((DeployState::Failed { message }, failed));
        }
        _ => {}
    }
    let failed = failed_tasks(ecs, cluster, id).await?;
    let count = i32::try_from(failed.len()).unwrap_or(i32::MAX);
    if count >= max_failed {
        let message = format!(
            "{count} of its tasks failed (maxFailedTasks {max_failed}): {}",
            failed.join("; ")
        );
        return Ok((DeployState::Failed { message }, failed));
    }
    Ok((DeployState::InProgress, failed))
}

async fn failed_tasks(ecs: &SdkEcs, cluster: &str, id: &str) -> Result<Vec<String>, EcsError> {
    Ok(ecs
        .stopped_tasks(cluster, id)
        .await?
        .iter()
        .filter(|t| t.failed())
        .take(10)
        .map(|t| t.describe())
        .collect())
}

/// The image to deploy for `image` (rendered): the run's pin when it has one (checked
/// to exist in this registry when pinned from another), else the digest ECR resolves
/// now (added to `pins`). An image outside ECR must name its digest.
pub async fn pin_image(
    ecr: &SdkEcr,
    image: &str,
    pins: &mut BTreeMap<String, String>,
) -> Result<String, DeployError> {
    if let Some(pinned) = pins.get(image) {
        return Ok(pinned.clone());
    }
    let Some(parsed) = EcrImage::parse(image) else {
        if image.contains("@sha256:") {
            pins.insert(image.to_owned(), image.to_owned());
            return Ok(image.to_owned());
        }
        return Err(DeployError::Refused(format!(
            "image {image} is not in ECR and names no digest; Capstan deploys by digest, so name it as <image>@sha256:..."
        )));
    };
    // The same repository and tag pinned from another registry (another account's
    // copy): the digest staging tested, which must exist in this registry too.
    let same = pins.iter().find_map(|(k, v)| {
        let other = EcrImage::parse(k)?;
        let pinned = EcrImage::parse(v)?;
        (other.repository == parsed.repository && other.reference == parsed.reference)
            .then_some(pinned)
    });
    let digest = match (same, &parsed.reference) {
        (Some(pinned), _) => {
            let ImageReference::Digest(d) = pinned.reference else {
                return Err(DeployError::Refused(format!(
                    "{image}: pin is not a digest"
                )));
            };
            if !ecr.has_digest(&parsed, &d).await? {
                return Err(DeployError::Refused(format!(
                    "image {image}: digest {d}, which an earlier stage of the run deployed, is not in registry {}",
                    parsed.registry
                )));
            }
            d
        }
        (None, _) => ecr.digest(&parsed).await?.ok_or_else(|| {
            DeployError::Refused(format!(
                "image {image} is not in ECR repository {} of registry {}",
                parsed.repository, parsed.registry
            ))
        })?,
    };
    let pinned = parsed.pinned(&digest);
    pins.insert(image.to_owned(), pinned.clone());
    Ok(pinned)
}

/// What [`register`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployed {
    /// The task definition the stage deploys.
    pub task_definition: String,
    /// The one the service ran before.
    pub previous: String,
    /// Whether it was registered now (not found again).
    pub registered: bool,
}

/// Finds (by its run and stage tags) or registers the stage's task definition: the
/// service's current one with `images` (container → pinned image) replaced.
/// `previous` is the task definition recorded before a crash, if any.
pub async fn register(
    ecs: &SdkEcs,
    cluster: &str,
    service: &str,
    run_id: &str,
    stage: &str,
    images: &BTreeMap<String, String>,
    previous: Option<&str>,
) -> Result<Deployed, DeployError> {
    let svc = ecs.describe_service(cluster, service).await?;
    check_controller(&svc, cluster)?;
    let current = svc.task_definition.clone().ok_or_else(|| {
        DeployError::Refused(format!(
            "ECS service {service} in cluster {cluster} has no task definition"
        ))
    })?;
    let tags = vec![
        (RUN_TAG.to_owned(), run_id.to_owned()),
        (STAGE_TAG.to_owned(), stage.to_owned()),
    ];
    if let Some(found) = ecs.find_tagged_revision(family_of(&current), &tags).await? {
        // Registered before a crash: the service ran `previous` (recorded), or still
        // runs it (not updated yet), or already runs ours.
        let previous = previous
            .map(str::to_owned)
            .unwrap_or_else(|| current.clone());
        return Ok(Deployed {
            task_definition: found,
            previous,
            registered: false,
        });
    }
    let (td, old_tags) = ecs.describe_task_definition(&current).await?;
    let (input, _) = copy_input(&td, images, &old_tags, &tags).map_err(DeployError::Refused)?;
    let arn = ecs.register_copy(input).await?;
    Ok(Deployed {
        task_definition: arn,
        previous: current,
        registered: true,
    })
}

/// Points the service at `ours` unless it already runs it; returns the id of the
/// deployment that runs `ours` (the new PRIMARY).
pub async fn update(
    ecs: &SdkEcs,
    cluster: &str,
    service: &str,
    ours: &str,
) -> Result<(String, bool), DeployError> {
    let svc = ecs.describe_service(cluster, service).await?;
    check_controller(&svc, cluster)?;
    if svc.task_definition.as_deref() == Some(ours)
        && let Some(p) = svc.primary()
    {
        return Ok((p.id.clone(), false));
    }
    let after = ecs.deploy_task_definition(cluster, service, ours).await?;
    let id = after
        .deployments
        .iter()
        .find(|d| d.status == "PRIMARY" && d.task_definition.as_deref() == Some(ours))
        .or_else(|| after.primary())
        .map(|d| d.id.clone())
        .ok_or_else(|| {
            DeployError::Refused(format!(
                "ECS service {service} reports no deployment after UpdateService"
            ))
        })?;
    Ok((id, true))
}

/// Puts the service back on `previous` while it still runs `ours`; returns the id of
/// the deployment of `previous`. Refuses when the service runs something else
/// (someone deployed meanwhile: Capstan overwrites nothing).
pub async fn roll_back(
    ecs: &SdkEcs,
    cluster: &str,
    service: &str,
    ours: &str,
    previous: &str,
) -> Result<(String, bool), DeployError> {
    let svc = ecs.describe_service(cluster, service).await?;
    match svc.task_definition.as_deref() {
        Some(t) if t == ours => update(ecs, cluster, service, previous).await,
        // Put back already (before a crash): follow that deployment.
        Some(t) if t == previous => update(ecs, cluster, service, previous).await,
        other => Err(DeployError::Refused(format!(
            "ECS service {service} in cluster {cluster} now runs {}, not this run's {ours}: someone deployed meanwhile, and Capstan overwrites nothing",
            other.unwrap_or("no task definition")
        ))),
    }
}
