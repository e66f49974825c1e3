//! Approvals: a person approves or rejects one run of a Pipeline at one `Approval` stage
//! with an object of its own ([`Approval`], `capstan.dev/v1alpha1`, short name `apv`),
//! which records who they are. Who may create one at all is RBAC (the chart's approver
//! ClusterRole, never aggregated into `edit`); that the approver named is the person who
//! created it is checked by a ValidatingAdmissionPolicy Capstan ships
//! ([`POLICY_VALIDATIONS`]): the username must be the requester's, every group one of
//! the requester's, and the spec can never change afterwards.
//!
//! Capstan honours an Approval only while that policy and its binding exist, hold these
//! rules and deny, and only one created after both ([`judge`]): an Approval created while
//! they were missing could name anyone. An Approval that names a run or stage not
//! waiting, or an approver the stage does not list, is marked void and changes nothing.

use capstan_core::schedule::{DurationString, min_duration_message, rule_min_duration};
use chrono::{DateTime, Utc};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The ValidatingAdmissionPolicy's validations: (CEL expression, message). The chart's
/// `approval-policy.yaml` holds the same (a test compares them), and Capstan checks the
/// installed policy holds every one before it honours an Approval.
pub const POLICY_VALIDATIONS: [(&str, &str); 3] = [
    (
        "request.operation != 'CREATE' || object.spec.approver.username == request.userInfo.username",
        "spec.approver.username must be your own username",
    ),
    (
        "request.operation != 'CREATE' || !has(object.spec.approver.groups) || object.spec.approver.groups.all(g, has(request.userInfo.groups) && g in request.userInfo.groups)",
        "spec.approver.groups may list only groups you are in",
    ),
    (
        "request.operation != 'UPDATE' || object.spec == oldObject.spec",
        "an Approval's spec cannot change; create a new Approval",
    ),
];

/// The transition rule that keeps an Approval's spec as it was created (the policy
/// checks it too; this holds even without the policy).
pub(crate) const RULE_IMMUTABLE: &str = "self == oldSelf";

/// A person's decision on one run of a Pipeline at one Approval stage.
// Printer columns repeat `type_ = "string"`, which clippy takes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "capstan.dev",
    version = "v1alpha1",
    kind = "Approval",
    namespaced,
    status = "ApprovalStatus",
    shortname = "apv",
    category = "capstan",
    derive = "PartialEq",
    doc = "A person's approval or rejection of one run of a Pipeline at one Approval stage; the approver is verified at admission.",
    printcolumn(
        name = "Pipeline",
        type_ = "string",
        json_path = ".spec.pipeline",
        description = "The Pipeline"
    ),
    printcolumn(
        name = "Run",
        type_ = "string",
        json_path = ".spec.runId",
        description = "The run"
    ),
    printcolumn(
        name = "Decision",
        type_ = "string",
        json_path = ".spec.decision",
        description = "Approve or Reject"
    ),
    printcolumn(
        name = "Approver",
        type_ = "string",
        json_path = ".spec.approver.username",
        description = "Who decided"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Honoured or Void"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(RULE_IMMUTABLE).message("an Approval's spec cannot change; create a new Approval"))]
pub struct ApprovalSpec {
    /// The Pipeline, in this namespace.
    #[schemars(length(min = 1, max = 253))]
    pub pipeline: String,
    /// The run approved (`status.runId` of the Pipeline): an approval never carries over
    /// to another run.
    #[schemars(length(min = 1, max = 300))]
    pub run_id: String,
    /// The Approval stage of that run.
    #[schemars(length(min = 1, max = 40))]
    pub stage: String,
    /// `Approve` lets the run go on; `Reject` fails the stage (and rolls the run back).
    pub decision: Decision,
    /// Who decides: must be the user creating this object (checked at admission).
    pub approver: Approver,
    /// Why, for the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub comment: Option<String>,
}

/// Approve or reject.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The run goes on.
    Approve,
    /// The stage fails.
    Reject,
}

/// Who decides.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Approver {
    /// The approver's username: must equal the requester's (admission policy).
    #[schemars(length(min = 1, max = 512))]
    pub username: String,
    /// Groups the approver claims: each must be one of the requester's (admission
    /// policy). Only these are matched against a stage's `approvers.groups`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 256)))]
    pub groups: Vec<String>,
}

/// What Capstan made of an Approval.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalStatus {
    /// `Honoured` (the run's stage recorded it) or `Void` (it changed nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ApprovalPhase>,
    /// Why, for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,
}

/// What Capstan made of an Approval.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApprovalPhase {
    /// The run's stage recorded the decision.
    Honoured,
    /// It changed nothing; the message says why.
    Void,
}

/// An Approval stage: the run waits until a person approves it (an [`Approval`]).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalStage {
    /// Who may approve: a user listed, or a member of a group listed (as the Approval's
    /// verified `approver` says). Empty: anyone RBAC lets create an Approval.
    #[serde(default)]
    pub approvers: Approvers,
    /// How long the run waits before the stage fails: 1s to 7 days (default 24h).
    #[serde(default = "default_approval_timeout")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": rule_min_duration(), "message": min_duration_message("timeout")}]))]
    pub timeout: DurationString,
}

/// Who may approve a stage.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Approvers {
    /// Usernames.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 512)))]
    pub users: Vec<String>,
    /// Groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 256)))]
    pub groups: Vec<String>,
}

// A literal that capstan-core's own tests show `DurationString::new` accepts.
fn default_approval_timeout() -> DurationString {
    DurationString::new("24h").expect("`24h` is a valid duration")
}

/// The longest an Approval stage may wait.
pub const MAX_APPROVAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// What [`judge`] decides about one Approval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It decides the waiting stage.
    Honour,
    /// It changes nothing: why.
    Void(String),
    /// Not now: the admission policy is missing (it is neither honoured nor voided,
    /// and once a policy is back it is void, being older than it).
    Hold,
}

/// Whether `approval` decides `waiting` (the run and Approval stage waiting, with its
/// approvers), given since when the admission policy and its binding have been in
/// force (`None`: missing). `decided`: the waiting stage already has a decision.
pub fn judge(
    approval: &Approval,
    created: Option<DateTime<Utc>>,
    waiting: Option<(&str, &str, &ApprovalStage)>,
    policy_since: Option<DateTime<Utc>>,
    decided: bool,
) -> Verdict {
    let Some(since) = policy_since else {
        return Verdict::Hold;
    };
    let spec = &approval.spec;
    // Timestamps have 1 s resolution: one created in the policy's second may predate it.
    if created.is_none_or(|c| c <= since) {
        return Verdict::Void(
            "created before the admission policy that verifies approvers was in force".into(),
        );
    }
    let Some((run, stage, rules)) = waiting else {
        return Verdict::Void(format!(
            "run {} is not waiting for approval at stage {}",
            spec.run_id, spec.stage
        ));
    };
    if spec.run_id != run || spec.stage != stage {
        return Verdict::Void(format!(
            "run {} is not waiting for approval at stage {} (run {run} waits at stage {stage})",
            spec.run_id, spec.stage
        ));
    }
    if decided {
        return Verdict::Void(format!(
            "stage {stage} of run {run} was already decided by another Approval"
        ));
    }
    let a = &rules.approvers;
    let listed = a.users.is_empty() && a.groups.is_empty()
        || a.users.contains(&spec.approver.username)
        || spec.approver.groups.iter().any(|g| a.groups.contains(g));
    if !listed {
        return Verdict::Void(format!(
            "{} is not among stage {stage}'s approvers (users: {}; groups: {})",
            spec.approver.username,
            a.users.join(", "),
            a.groups.join(", ")
        ));
    }
    Verdict::Honour
}

/// Since when the admission policy `name` and its binding (of the same name) have been
/// in force (the later creation time), or why no Approval can be honoured: either is
/// missing, the binding does not deny or names another policy, or the policy lacks one
/// of [`POLICY_VALIDATIONS`], does not cover creating and updating Approvals, or
/// ignores its own failures.
pub async fn policy_since(
    client: &kube::Client,
    name: Option<&str>,
) -> Result<Result<DateTime<Utc>, String>, kube::Error> {
    use k8s_openapi::api::admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    };
    let Some(name) = name else {
        return Ok(Err(
            "Capstan runs without --approval-policy, so no Approval can be verified".into(),
        ));
    };
    let policies: kube::Api<ValidatingAdmissionPolicy> = kube::Api::all(client.clone());
    let bindings: kube::Api<ValidatingAdmissionPolicyBinding> = kube::Api::all(client.clone());
    let Some(policy) = policies.get_opt(name).await? else {
        return Ok(Err(format!("ValidatingAdmissionPolicy {name} is missing")));
    };
    let Some(binding) = bindings.get_opt(name).await? else {
        return Ok(Err(format!(
            "ValidatingAdmissionPolicyBinding {name} is missing"
        )));
    };
    let bspec = binding.spec;
    if bspec.policy_name != name || !bspec.validation_actions.iter().any(|a| a == "Deny") {
        return Ok(Err(format!(
            "ValidatingAdmissionPolicyBinding {name} does not bind policy {name} with validationActions [Deny]"
        )));
    }
    let pspec = policy.spec.unwrap_or_default();
    let expressions: Vec<&str> = pspec
        .validations
        .iter()
        .flatten()
        .map(|v| v.expression.as_str())
        .collect();
    if let Some((missing, _)) = POLICY_VALIDATIONS
        .iter()
        .find(|(e, _)| !expressions.contains(e))
    {
        return Ok(Err(format!(
            "ValidatingAdmissionPolicy {name} lacks the rule `{missing}`"
        )));
    }
    if pspec.failure_policy.as_deref() == Some("Ignore") {
        return Ok(Err(format!(
            "ValidatingAdmissionPolicy {name} has failurePolicy Ignore"
        )));
    }
    let covers = pspec
        .match_constraints
        .and_then(|m| m.resource_rules)
        .unwrap_or_default()
        .iter()
        .any(|r| {
            let has = |list: &Option<Vec<String>>, v: &str| {
                list.as_ref()
                    .is_some_and(|l| l.iter().any(|x| x == v || x == "*"))
            };
            has(&r.api_groups, "capstan.dev")
                && has(&r.resources, "approvals")
                && has(&r.operations, "CREATE")
                && has(&r.operations, "UPDATE")
        });
    if !covers {
        return Ok(Err(format!(
            "ValidatingAdmissionPolicy {name} does not match creating and updating approvals.capstan.dev"
        )));
    }
    let created = |m: &kube::api::ObjectMeta| {
        m.creation_timestamp
            .as_ref()
            .and_then(|t| DateTime::from_timestamp(t.0.as_second(), 0))
    };
    match (created(&policy.metadata), created(&binding.metadata)) {
        (Some(p), Some(b)) => Ok(Ok(p.max(b))),
        _ => Ok(Err(format!(
            "ValidatingAdmissionPolicy {name} or its binding has no creation time"
        ))),
    }
}

/// Sets an Approval's status (a merge patch of the status subresource).
pub async fn mark(
    api: &kube::Api<Approval>,
    name: &str,
    phase: ApprovalPhase,
    message: &str,
) -> Result<(), kube::Error> {
    let patch = serde_json::json!({ "status": { "phase": phase, "message": message } });
    api.patch_status(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approval(run: &str, stage: &str, user: &str, groups: &[&str]) -> Approval {
        Approval::new(
            "a",
            ApprovalSpec {
                pipeline: "shop".into(),
                run_id: run.into(),
                stage: stage.into(),
                decision: Decision::Approve,
                approver: Approver {
                    username: user.into(),
                    groups: groups.iter().map(|g| (*g).to_owned()).collect(),
                },
                comment: None,
            },
        )
    }

    fn at(s: i64) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp(1_800_000_000 + s, 0)
    }

    #[test]
    fn approvals_are_honoured_only_under_the_policy_for_the_waiting_stage() {
        let stage = ApprovalStage {
            approvers: Approvers {
                users: vec!["alice".into()],
                groups: vec!["release-managers".into()],
            },
            timeout: default_approval_timeout(),
        };
        let waiting = Some(("shop-3", "approve", &stage));
        let alice = approval("shop-3", "approve", "alice", &[]);
        let carol = approval("shop-3", "approve", "carol", &["release-managers"]);
        let dave = approval("shop-3", "approve", "dave", &["developers"]);
        assert_eq!(
            judge(&alice, at(10), waiting, at(0), false),
            Verdict::Honour
        );
        assert_eq!(
            judge(&carol, at(10), waiting, at(0), false),
            Verdict::Honour
        );
        let void = |v: Verdict| match v {
            Verdict::Void(why) => why,
            other => panic!("expected void, got {other:?}"),
        };
        assert!(void(judge(&dave, at(10), waiting, at(0), false)).contains("not among"));
        // No policy: held, neither honoured nor voided.
        assert_eq!(judge(&alice, at(10), waiting, None, false), Verdict::Hold);
        // Created before (or in the same second as) the policy: void.
        assert!(void(judge(&alice, at(0), waiting, at(0), false)).contains("before"));
        // Another run, another stage, nothing waiting, already decided.
        let old = approval("shop-2", "approve", "alice", &[]);
        assert!(void(judge(&old, at(10), waiting, at(0), false)).contains("shop-2"));
        assert!(void(judge(&alice, at(10), None, at(0), false)).contains("not waiting"));
        assert!(void(judge(&alice, at(10), waiting, at(0), true)).contains("already decided"));
        // A stage without approvers: anyone RBAC lets create one.
        let open = ApprovalStage {
            approvers: Approvers::default(),
            timeout: default_approval_timeout(),
        };
        assert_eq!(
            judge(
                &dave,
                at(10),
                Some(("shop-3", "approve", &open)),
                at(0),
                false
            ),
            Verdict::Honour
        );
    }
}
