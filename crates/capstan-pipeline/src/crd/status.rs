//! The Pipeline's status: the current run's stages, the history, rollbacks and
//! approvals recorded, and the phases.

use super::*;

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// Observed state of a Pipeline.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PipelineStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing and RolledBack, with reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "capstan_core::conditions::schema")]
    pub conditions: Vec<Condition>,
    /// Where the current (or last) run is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<PipelinePhase>,
    /// The revision the current (or last) run is moving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<String>,
    /// The stage running or rolling back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_stage: Option<String>,
    /// The last revision that went through every stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_revision: Option<String>,
    /// One entry per stage of the current (or last) run, in spec order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "stage_statuses_schema")]
    pub stages: Vec<StageStatus>,
    /// Rollbacks performed over the Pipeline's life (one per failed run that rolled
    /// anything back).
    #[serde(default)]
    pub rollbacks: i64,
    /// How many runs have started: the number of the current (or last) run.
    #[serde(default)]
    pub run_number: i64,
    /// The current (or last) run's id: `<pipeline>-<run number>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// When the current (or last) run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_started: Option<DateTime<Utc>>,
    /// The last finished runs, newest first (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub history: Vec<RunSummary>,
    /// The revision waiting for the active run to end (`concurrencyPolicy: Queue`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_revision: Option<String>,
    /// Revisions that waited and were replaced by a newer one before they ran, newest
    /// first (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub skipped_revisions: Vec<String>,
    /// The last value of each control annotation (`capstan.dev/cancel`,
    /// `capstan.dev/retry`) that Capstan acted on: a value acts once.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 8))]
    pub handled_controls: std::collections::BTreeMap<String, String>,
    /// The images the current (or last) run pinned: each image reference its Deploy
    /// stages named (after substitution) → the reference by digest they deployed. Every
    /// Deploy of the run uses the digest pinned first.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 160))]
    pub images: std::collections::BTreeMap<String, String>,
}

/// One finished run, in `status.history`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    /// The run's id.
    pub id: String,
    /// The revision it moved.
    pub revision: String,
    /// How it ended: `Succeeded`, `Failed`, `RolledBack`, `RollbackFailed` or
    /// `Superseded`.
    pub outcome: PipelinePhase,
    /// When it started.
    pub started: DateTime<Utc>,
    /// When it ended.
    pub finished: DateTime<Utc>,
    /// The stage that failed, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_stage: Option<String>,
    /// The images the run pinned (reference → reference by digest).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 160))]
    pub images: std::collections::BTreeMap<String, String>,
    /// The task definition each Deploy stage of a successful run left its service on
    /// (stage → ARN): what `capstan.dev/rollback` restores.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16))]
    pub task_definitions: std::collections::BTreeMap<String, String>,
}

/// `status.stages`: a list-map keyed by `name`, so each stage's entry merges by name.
fn stage_statuses_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut s = generator.subschema_for::<Vec<StageStatus>>();
    s.insert("x-kubernetes-list-type".into(), "map".into());
    s.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["name"]),
    );
    s
}

impl capstan_core::conditions::ObjectStatus for PipelineStatus {
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }

    fn set_observed_generation(&mut self, generation: Option<i64>) {
        self.observed_generation = generation;
    }
}

/// Where a run is.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PipelinePhase {
    /// Accepted, no stage started yet.
    Pending,
    /// A stage is running.
    Running,
    /// A stage failed; the ECS services the run changed are being put back.
    RollingBack,
    /// Every stage succeeded.
    Succeeded,
    /// A stage failed; the run had changed no service that needed putting back.
    Failed,
    /// A stage failed (or a newer revision superseded the run) and every service the
    /// run changed was put back.
    RolledBack,
    /// A stage failed and putting a service back failed too; needs a person.
    RollbackFailed,
    /// `spec.suspend` is true.
    Suspended,
    /// Stopped for a newer revision (`concurrencyPolicy: Supersede`).
    Superseded,
    /// Stopped by the `capstan.dev/cancel` annotation.
    Cancelled,
}

impl PipelinePhase {
    /// Whether a run in this phase has ended.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded
                | Self::Failed
                | Self::RolledBack
                | Self::RollbackFailed
                | Self::Superseded
                | Self::Cancelled
        )
    }

    /// The name, as in the API (and in the `phase` label of `capstan_pipeline_run_phase`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Running => "Running",
            Self::RollingBack => "RollingBack",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::RolledBack => "RolledBack",
            Self::RollbackFailed => "RollbackFailed",
            Self::Suspended => "Suspended",
            Self::Superseded => "Superseded",
            Self::Cancelled => "Cancelled",
        }
    }
}

/// The state of one stage in the current (or last) run.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StageStatus {
    /// Name of the stage.
    pub name: String,
    /// Where the stage is.
    pub phase: StagePhase,
    /// When the stage started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<DateTime<Utc>>,
    /// When the stage finished (or its rollback did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<DateTime<Utc>>,
    /// What happened, for a human: the failure, the Job's last state, the rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The Job this stage created (Test, Build, SmokeTest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// The task definition ARN this stage registered and deployed (Deploy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_definition: Option<String>,
    /// The task definition ARN the service ran before, restored by a rollback (Deploy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_task_definition: Option<String>,
    /// The ECS deployment this stage started and follows (Deploy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_id: Option<String>,
    /// Tasks of the deployment that failed, and why (Deploy; at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10), inner(length(max = 512)))]
    pub failed_tasks: Vec<String>,
    /// Putting the service back after the run failed (Deploy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackStatus>,
    /// HTTP check requests that passed (a SmokeTest's; they run in order).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub checks_passed: i32,
    /// When the last HTTP check request was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<DateTime<Utc>>,
    /// The decision that ended an Approval stage: who, in which groups, when, by which
    /// Approval object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalRecord>,
    /// Which attempt of the stage this is (1 for the first; 0 before it starts).
    #[serde(default)]
    pub attempt: i32,
    /// The results the stage's Job reported (its declared keys only).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub results: std::collections::BTreeMap<String, String>,
}

impl StageStatus {
    /// A stage that has not started.
    pub fn pending(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            phase: StagePhase::Pending,
            started: None,
            finished: None,
            message: None,
            job_name: None,
            task_definition: None,
            previous_task_definition: None,
            deployment_id: None,
            failed_tasks: Vec::new(),
            rollback: None,
            approval: None,
            checks_passed: 0,
            last_check: None,
            attempt: 0,
            results: std::collections::BTreeMap::new(),
        }
    }

    /// Back to `Pending` for another attempt (a retry): everything the last attempt
    /// recorded goes; the attempt number stays, and the next start adds one.
    pub fn reset(&mut self) {
        let attempt = self.attempt;
        *self = Self::pending(self.name.clone());
        self.attempt = attempt;
    }

    /// Sets the message, cut to [`STAGE_MESSAGE_MAX_LEN`] bytes on a character boundary
    /// (Job logs and AWS errors can be long).
    pub fn set_message(&mut self, message: &str) {
        let mut cut = message.len().min(STAGE_MESSAGE_MAX_LEN);
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        self.message = Some(message[..cut].to_owned());
    }
}

/// A decision recorded in an Approval stage's status.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRecord {
    /// The Approval object.
    pub name: String,
    /// `Approve` or `Reject`.
    pub decision: Decision,
    /// The approver's username, as the admission policy verified it.
    pub username: String,
    /// The groups the approver claimed, as the admission policy verified them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub groups: Vec<String>,
    /// When Capstan honoured it.
    pub at: DateTime<Utc>,
}

/// The rollback of one Deploy stage.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RollbackStatus {
    /// Where it is.
    pub phase: RollbackPhase,
    /// When it started (the UpdateService back to the previous task definition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<DateTime<Utc>>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<DateTime<Utc>>,
    /// The ECS deployment of the previous task definition it follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_id: Option<String>,
    /// What happened, for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,
}

impl RollbackStatus {
    /// A rollback waiting its turn (newest deploy first).
    pub fn pending() -> Self {
        Self {
            phase: RollbackPhase::Pending,
            started: None,
            finished: None,
            deployment_id: None,
            message: None,
        }
    }
}

/// Where a rollback is.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RollbackPhase {
    /// Waiting its turn, or for the stage's own deployment to end.
    Pending,
    /// The service is deploying the previous task definition.
    Running,
    /// The service runs the previous task definition again.
    Succeeded,
    /// It could not be put back; the message says why.
    Failed,
}

/// Where a stage is.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StagePhase {
    /// Not started.
    Pending,
    /// Running.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Failed.
    Failed,
    /// Not run because an earlier stage failed.
    Skipped,
    /// Deployed, then rolled back after a failure.
    RolledBack,
    /// Stopped while running: another stage failed or a newer revision superseded the
    /// run (a Job is deleted; a deployment in flight is left to end, then rolled back).
    Cancelled,
}

impl PipelineStatus {
    /// Status for a new run of `spec`: every stage pending, the revision recorded,
    /// everything else kept.
    pub fn start_run(&mut self, spec: &PipelineSpec) {
        self.phase = Some(PipelinePhase::Pending);
        self.run_started = None;
        self.queued_revision = None;
        self.current_revision = Some(spec.revision.clone());
        self.current_stage = None;
        self.images.clear();
        self.stages = spec
            .stages
            .iter()
            .map(|s| StageStatus::pending(&s.name))
            .collect();
    }

    /// The status entry of a stage.
    pub fn stage_mut(&mut self, name: &str) -> Option<&mut StageStatus> {
        self.stages.iter_mut().find(|s| s.name == name)
    }

    /// Notes that `revision` waits for the active run; the one waiting before it, if
    /// another, is skipped.
    pub fn queue(&mut self, revision: &str) {
        if self.queued_revision.as_deref() == Some(revision) {
            return;
        }
        if let Some(replaced) = self.queued_revision.replace(revision.to_owned()) {
            self.skipped_revisions.insert(0, replaced);
            self.skipped_revisions.truncate(HISTORY_LIMIT);
        }
    }

    /// Records a finished run first in `history`, keeping [`HISTORY_LIMIT`].
    pub fn record_run(&mut self, run: RunSummary) {
        self.history.insert(0, run);
        self.history.truncate(HISTORY_LIMIT);
    }
}
