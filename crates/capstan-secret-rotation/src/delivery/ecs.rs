//! ECS delivery of a version: a forced deployment of every service not yet forced for it
//! ([`force_deployments`]), recorded on the object (annotation
//! [`ECS_DEPLOYMENTS_ANNOTATION`], written by the controller with a conditioned write,
//! so a restarted Capstan forces nothing again), then done once each service's PRIMARY
//! deployment is COMPLETED and is the recorded one or a later one
//! ([`deployments_done`]): not the PRIMARY from before the force, which a read right
//! after the force may still show. A crash between the force and its record forces
//! again on resume (at least once: a service never keeps the old credential). A FAILED
//! deployment is reported and looked at again with backoff.

use std::collections::BTreeMap;

use capstan_aws::ecs::{DeploymentState, EcsApi};

use crate::audit::{self, DeliveryAction, Subject};
use crate::crd::EcsService;

/// Annotation recording the ECS deployments forced for a version:
/// `{"version": "<id>", "deployments": {"<cluster>/<service>": "<deployment id>"},
/// "replaced": {"<cluster>/<service>": "<PRIMARY before the force>"}}`.
pub const ECS_DEPLOYMENTS_ANNOTATION: &str = "capstan.dev/ecs-deployments";

/// What [`ECS_DEPLOYMENTS_ANNOTATION`] holds.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct EcsRecord {
    version: String,
    #[serde(default)]
    deployments: BTreeMap<String, String>,
    #[serde(default)]
    replaced: BTreeMap<String, String>,
}

impl EcsRecord {
    /// The record of `version` in the annotation `recorded`, or an empty one when it
    /// is missing, unreadable or for another version.
    pub fn for_version(recorded: Option<&str>, version: &str) -> Self {
        recorded
            .and_then(|a| serde_json::from_str::<EcsRecord>(a).ok())
            .filter(|rec| rec.version == version)
            .unwrap_or_else(|| EcsRecord {
                version: version.to_owned(),
                ..EcsRecord::default()
            })
    }

    /// The annotation's value.
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

fn key(s: &EcsService) -> String {
    format!("{}/{}", s.cluster, s.service)
}

/// What [`force_deployments`] did.
#[derive(Debug)]
pub struct Forced {
    /// Whether a deployment was forced (the record changed and must be written).
    pub forced: bool,
    /// The first ECS error, after which nothing more was forced.
    pub failure: Option<String>,
}

/// Forces a new deployment of every service of `services` that `record` does not show
/// as forced for its version, and records each (one audit line each).
pub async fn force_deployments(
    ecs: &impl EcsApi,
    subject: &Subject<'_>,
    services: &[EcsService],
    record: &mut EcsRecord,
) -> Forced {
    let mut forced = false;
    for s in services {
        if record.deployments.contains_key(&key(s)) {
            continue;
        }
        let before = match ecs.deployment_state(&s.cluster, &s.service).await {
            Ok((_, before)) => before,
            Err(e) => {
                return Forced {
                    forced,
                    failure: Some(e.to_string()),
                };
            }
        };
        match ecs.force_new_deployment(&s.cluster, &s.service).await {
            Ok(id) => {
                record.deployments.insert(key(s), id.unwrap_or_default());
                record.replaced.insert(key(s), before.unwrap_or_default());
                audit::delivery(
                    subject,
                    &format!("EcsService/{}", key(s)),
                    &record.version,
                    DeliveryAction::Redeployed,
                );
                forced = true;
            }
            Err(e) => {
                return Forced {
                    forced,
                    failure: Some(e.to_string()),
                };
            }
        }
    }
    Forced {
        forced,
        failure: None,
    }
}

/// Whether every service's recorded deployment completed; an error names a failed
/// deployment or the ECS call that failed.
pub async fn deployments_done(
    ecs: &impl EcsApi,
    services: &[EcsService],
    record: &EcsRecord,
) -> Result<bool, String> {
    let mut done = true;
    for s in services {
        let (state, primary) = ecs
            .deployment_state(&s.cluster, &s.service)
            .await
            .map_err(|e| e.to_string())?;
        let k = key(s);
        let forced_id = record.deployments.get(&k);
        let replaced = record.replaced.get(&k).filter(|r| !r.is_empty());
        let ours = forced_id.is_some_and(|id| {
            primary.as_deref() == Some(id.as_str())
                || primary
                    .as_deref()
                    .is_some_and(|p| replaced.is_some_and(|r| r != p))
                || (id.is_empty() && replaced.is_none())
        });
        match (state, ours) {
            (DeploymentState::Completed, true) => {}
            (DeploymentState::Failed, true) => {
                return Err(format!("ECS deployment of {k} failed"));
            }
            _ => done = false,
        }
    }
    Ok(done)
}
