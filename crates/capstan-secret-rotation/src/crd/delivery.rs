//! `spec.delivery`: where a new credential goes after it is promoted (a templated
//! Secret, rollout restarts, ECS deployments).

use std::collections::BTreeMap;

use capstan_core::connection::ConnectionRef;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::rules::*;

/// Where the current credential goes after each rotation, in this order: the Secret,
/// then rollouts and ECS redeployments.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// A Secret in this namespace written from templates, for workloads to mount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretDelivery>,
    /// Workloads in this namespace to restart (`kubectl rollout restart`) once the new
    /// credential is current.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub rollouts: Vec<RolloutTarget>,
    /// How many workloads restart at the same time.
    #[serde(default = "default_max_concurrent_rollouts")]
    #[schemars(range(min = 1, max = 16))]
    pub max_concurrent_rollouts: i32,
    /// ECS services to redeploy (`forceNewDeployment`) once the new credential is
    /// current. Needs an AWS ClusterConnection: `ecsConnectionRef`, else `connectionRef`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub ecs_services: Vec<EcsService>,
    /// ClusterConnection used for `ecsServices`, when it is not `spec.connectionRef`
    /// (e.g. with the vault or kubernetes backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecs_connection_ref: Option<ConnectionRef>,
}

fn default_max_concurrent_rollouts() -> i32 {
    1
}

impl Default for Delivery {
    fn default() -> Self {
        Self {
            secret: None,
            rollouts: Vec::new(),
            max_concurrent_rollouts: default_max_concurrent_rollouts(),
            ecs_services: Vec::new(),
            ecs_connection_ref: None,
        }
    }
}

/// A Secret written from templates.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretDelivery {
    /// Name of the Secret in this namespace, owned and written by Capstan. Must differ
    /// from the kubernetes backend's Secrets.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub name: String,
    /// Data key to template. Variables: `{{ password }}` (alias `{{ value }}`),
    /// `{{ username }}`, `{{ host }}`, `{{ port }}`, `{{ database }}` (database targets);
    /// `{{ password | urlencode }}` percent-encodes. Example:
    /// `DATABASE_URL: postgres://{{ username }}:{{ password }}@{{ host }}:{{ port }}/{{ database }}`.
    /// When empty, the Secret gets one key per available variable.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 32,
        "additionalProperties" = {"type": "string", "maxLength": 4096}
    ))]
    pub template: BTreeMap<String, String>,
    /// What happens to the Secret when the SecretRotation is deleted: `Retain` keeps it
    /// (workloads keep running), `Delete` removes it.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// What happens to a delivered Secret when its SecretRotation is deleted.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeletionPolicy {
    /// Keep the Secret.
    #[default]
    Retain,
    /// Delete the Secret.
    Delete,
}

/// Workloads to restart: one by name, or all matching a label selector.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(RULE_ROLLOUT_NAME_XOR_SELECTOR).message("exactly one of name or selector must be set"))]
pub struct RolloutTarget {
    /// Kind of workload.
    pub kind: WorkloadKind,
    /// Name of the workload in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub name: Option<String>,
    /// Restarts every workload of `kind` in this namespace that matches. Must not be
    /// empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<RolloutSelector>,
}

/// A label selector (as in a Deployment's `spec.selector`), checked at admission: a
/// known operator, values exactly where the operator takes them, and not empty. A
/// selector that does not mean what it says is refused, never widened: Capstan would
/// otherwise restart more workloads than named.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(RULE_SELECTOR_NOT_EMPTY).message("an empty selector would restart every workload of the kind; name them").reason(Reason::FieldValueRequired))]
pub struct RolloutSelector {
    /// Labels a workload must carry, each with this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 16))]
    pub match_labels: Option<BTreeMap<String, String>>,
    /// Requirements a workload's labels must all meet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub match_expressions: Option<Vec<SelectorRequirement>>,
}

/// One requirement of a [`RolloutSelector`]: `key` `operator` `values`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(RULE_SELECTOR_VALUES_REQUIRED).message("In and NotIn need at least one value").field_path(".values").reason(Reason::FieldValueRequired),
    validation = Rule::new(RULE_SELECTOR_VALUES_FORBIDDEN).message("Exists and DoesNotExist take no values").field_path(".values").reason(Reason::FieldValueForbidden)
)]
pub struct SelectorRequirement {
    /// The label key.
    #[schemars(length(min = 1, max = 317))]
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`. A string in the Rust type, so that an
    /// object stored before this rule existed still reads (and is refused in status).
    #[schemars(extend("enum" = ["In", "NotIn", "Exists", "DoesNotExist"]))]
    pub operator: String,
    /// The values, for `In` and `NotIn` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxItems" = 64, "items" = {"type": "string", "maxLength": 63}))]
    pub values: Option<Vec<String>>,
}

/// Kinds of workload that can be restarted.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
    /// apps/v1 DaemonSet.
    DaemonSet,
}

/// An ECS service to redeploy.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EcsService {
    /// Name or ARN of the ECS cluster.
    #[schemars(length(min = 1, max = 2048), regex(pattern = AWS_ID_PATTERN))]
    pub cluster: String,
    /// Name or ARN of the service.
    #[schemars(length(min = 1, max = 2048), regex(pattern = AWS_ID_PATTERN))]
    pub service: String,
}

impl Delivery {
    /// Whether delivery restarts or redeploys workloads (which makes `singleUser` need
    /// `acceptLoginFailuresUntilRestart`).
    pub fn restarts_workloads(&self) -> bool {
        !self.rollouts.is_empty() || !self.ecs_services.is_empty()
    }

    /// Whether there is anything to deliver at all.
    pub fn is_empty(&self) -> bool {
        self.secret.is_none() && !self.restarts_workloads()
    }
}
