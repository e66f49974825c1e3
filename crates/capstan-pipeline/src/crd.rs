//! The `Pipeline` custom resource (`capstan.dev/v1alpha1`, short name `pl`).
//!
//! A Pipeline moves one revision (an image tag or digest, or a git sha) through stages:
//! `Test`, `Build` and `SmokeTest` (Kubernetes Jobs) and `Deploy` (an ECS service gets a
//! new revision of its task definition with the run's images, pinned by digest). When a
//! stage fails, every ECS service the run changed (with `rollbackOnFailure`) is put back
//! on the task definition it replaced, newest first, and the run ends `RolledBack` (or
//! `RollbackFailed`, for a person).
//!
//! Changing `spec.revision` starts a new run; stages run in list order unless
//! `dependsOn` says otherwise.
//!
//! Validation that a schema can express is in the schema and its CEL rules; the rest is
//! [`crate::validation::validate`], reported by the controller as a condition.

pub use crate::approval::{ApprovalStage, Approvers, Decision};
use capstan_core::connection::ConnectionRef;
use capstan_core::schedule::{DurationString, min_duration_message, rule_min_duration};
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::EnvVar;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Annotation that cancels the active run, once per value (e.g. a timestamp): its
/// running Jobs are deleted, what it deployed is rolled back, and it ends `Cancelled`
/// (or `RolledBack`).
pub const CANCEL_ANNOTATION: &str = "capstan.dev/cancel";
/// Annotation that retries the last run from a stage, once per value:
/// `<stage>` or `<stage>:<token>` (the token lets the same stage be retried again).
/// The run must have ended without succeeding, and every stage before the named one
/// must have succeeded (a stage rolled back must be retried itself).
pub const RETRY_ANNOTATION: &str = "capstan.dev/retry";
/// Annotation that rolls every service the Pipeline deploys back, now, to the task
/// definitions of the last successful run before the last run, once per value. Only
/// while no run is active; it is a run of its own (`RolledBack` or `RollbackFailed`).
pub const ROLLBACK_ANNOTATION: &str = "capstan.dev/rollback";

/// Most stages a Pipeline may have (bounds the CEL uniqueness check).
pub const MAX_STAGES: usize = 16;

/// Longest `status.stages[].message`, in bytes.
pub const STAGE_MESSAGE_MAX_LEN: usize = 1024;

/// Condition types written to `status.conditions`.
pub mod condition_types {
    /// `spec.revision` went through every stage (or the last run of it did).
    pub const READY: &str = "Ready";
    /// A run is in progress.
    pub const PROGRESSING: &str = "Progressing";
    /// A run waits for a person's Approval (True), or for nothing (False).
    pub const AWAITING_APPROVAL: &str = "AwaitingApproval";
    /// The last run failed and the services it changed were put back (True), or the
    /// rollback itself failed (False, `RollbackFailed`).
    pub const ROLLED_BACK: &str = "RolledBack";
}

/// Condition reasons (CamelCase, stable).
pub mod reasons {
    /// Ready=True: every stage succeeded for `spec.revision`.
    pub const SUCCEEDED: &str = "Succeeded";
    /// Ready=False: a stage failed; the message names it.
    pub const STAGE_FAILED: &str = "StageFailed";
    /// Ready=Unknown: `spec.revision` has not been through every stage yet (its run is
    /// under way or waits behind another).
    pub const AWAITING_RUN: &str = "AwaitingRun";
    /// Ready=False: the spec fails validation; waits for a change.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Ready=False: the referenced ClusterConnection is missing, not ready or not allowed.
    pub const CONNECTION_NOT_READY: &str = "ConnectionNotReady";
    /// Progressing=True: a stage is running.
    pub const STAGE_RUNNING: &str = "StageRunning";
    /// Progressing=True: rolling back deployments after a failure.
    pub const ROLLING_BACK: &str = "RollingBack";
    /// Progressing=False: the run finished.
    pub const RUN_FINISHED: &str = "RunFinished";
    /// Progressing=False: `spec.suspend` is true.
    pub const SUSPENDED: &str = "Suspended";
    /// RolledBack=True: deployments of the failed run were restored.
    pub const ROLLBACK_SUCCEEDED: &str = "RollbackSucceeded";
    /// RolledBack=False with Ready=False: a rollback itself failed (or someone deployed
    /// something newer meanwhile, which Capstan does not overwrite); needs a person.
    pub const ROLLBACK_FAILED: &str = "RollbackFailed";
    /// RolledBack=False: the last run changed no service that needed putting back.
    pub const NOTHING_TO_ROLL_BACK: &str = "NothingToRollBack";
    /// Ready=False: the last run put the services back without a stage failing (it was
    /// cancelled or superseded, or `capstan.dev/rollback` asked for it).
    pub const ROLLED_BACK: &str = "RolledBack";
    /// Ready=False: another Pipeline, created first, deploys one of this one's ECS
    /// services.
    pub const SERVICE_CLAIMED: &str = "ServiceClaimed";
    /// AwaitingApproval=True: a run waits at an Approval stage.
    pub const WAITING_FOR_APPROVAL: &str = "WaitingForApproval";
    /// AwaitingApproval=True: a run waits, and no Approval can be honoured: the
    /// admission policy that verifies approvers (or its binding) is missing or altered.
    pub const APPROVAL_POLICY_MISSING: &str = "ApprovalPolicyMissing";
    /// AwaitingApproval=False: no run waits for approval.
    pub const NOT_WAITING: &str = "NotWaiting";
}

// Patterns (RE2 syntax: the API server evaluates them with Go's regexp).

/// DNS-1123 label: stage names become part of Job names.
pub(crate) const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// Image tags, digests (`sha256:...`), git shas, versions.
pub(crate) const REVISION_PATTERN: &str = r"^[A-Za-z0-9][A-Za-z0-9._:@/+-]*$";
/// Names and ARNs of ECS clusters and services.
pub(crate) const AWS_ID_PATTERN: &str = r"^[A-Za-z0-9/_+=.@:-]+$";
/// ECS container names.
pub(crate) const CONTAINER_NAME_PATTERN: &str = r"^[A-Za-z0-9][A-Za-z0-9_-]*$";
/// Image references, possibly with `{{ revision }}` or `{{ stages.<name>.results.<key> }}`;
/// no whitespace except inside braces.
pub(crate) const IMAGE_TEMPLATE_PATTERN: &str =
    r"^([^\s{}]|\{\{ *(revision|stages\.[a-z0-9-]+\.results\.[A-Za-z][A-Za-z0-9_-]*) *\}\})+$";
/// Keys of a Job stage's results.
pub(crate) const RESULT_KEY_PATTERN: &str = r"^[A-Za-z][A-Za-z0-9_-]{0,62}$";

/// Most results one Job stage may declare.
pub const MAX_RESULTS: usize = 16;
/// Largest termination message a Job stage's results may come in, in bytes (the
/// kubelet's own limit is 4096).
pub const MAX_RESULTS_BYTES: usize = 4096;
/// Runs kept in `status.history`.
pub const HISTORY_LIMIT: usize = 10;

// CEL rules, named so tests can find them. Every rule that iterates sits on a list bounded
// by maxItems whose strings are bounded by maxLength.

pub(crate) const RULE_UNIQUE_STAGE_NAMES: &str =
    "self.all(s, self.exists_one(t, t.name == s.name))";
/// Every `dependsOn` entry names a stage listed before its stage. Unknown names fail,
/// and so does every cycle: a cycle needs an edge to a later stage. (Two-variable
/// comprehensions give the positions; kube-apiserver has them since 1.33.)
pub(crate) const RULE_DEPENDS_ON_EARLIER: &str = "self.all(i, s, !has(s.dependsOn) || s.dependsOn.all(d, self.exists(j, t, j < i && t.name == d)))";

/// The first offending stage and entry, with its path. The API server's cost estimate
/// refuses a message of unbounded size (`string(i)`, `join`), so the index comes from a
/// list of literals and only the first offender is named.
pub(crate) fn message_depends_on_earlier() -> String {
    let indexes: Vec<String> = (0..MAX_STAGES).map(|i| format!("'{i}'")).collect();
    format!(
        "self.transformList(i, s, has(s.dependsOn) && s.dependsOn.exists(d, !self.exists(j, t, j < i && t.name == d)), 'spec.stages[' + [{}][i] + '].dependsOn: ' + s.dependsOn.filter(d, !self.exists(j, t, j < i && t.name == d))[0] + ' is not a stage listed before ' + s.name + ' (dependsOn may name only earlier stages, so no cycle can form)')[0]",
        indexes.join(",")
    )
}

pub(crate) const RULE_DEPLOY_NEEDS_CONNECTION: &str = "has(self.connectionRef) || !self.stages.exists(s, s.type == 'Deploy' && (!has(s.deploy) || !has(s.deploy.connectionRef)))";

pub(crate) const RULE_STAGE_SHAPE: &str = "self.type == 'Deploy' ? (has(self.deploy) && !has(self.job) && !has(self.approval) && !has(self.http)) : self.type == 'Approval' ? (has(self.approval) && !has(self.job) && !has(self.deploy) && !has(self.http)) : self.type == 'SmokeTest' ? ((has(self.job) || has(self.http)) && !has(self.deploy) && !has(self.approval)) : (has(self.job) && !has(self.deploy) && !has(self.approval) && !has(self.http))";

/// Moves a revision through test, build, deploy and smoke-test stages on ECS, rolling
/// deployments back when a stage fails.
// Printer columns repeat `type_ = "string"`, which clippy takes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "capstan.dev",
    version = "v1alpha1",
    kind = "Pipeline",
    namespaced,
    status = "PipelineStatus",
    shortname = "pl",
    category = "capstan",
    derive = "PartialEq",
    doc = "Moves a revision through test, build, staging deploy, smoke test and production deploy on ECS, with automatic rollback when a stage fails.",
    printcolumn(
        name = "Revision",
        type_ = "string",
        json_path = ".spec.revision",
        description = "The revision to deliver"
    ),
    printcolumn(
        name = "Run",
        type_ = "string",
        json_path = ".status.runId",
        description = "The current (or last) run"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Where the current run is"
    ),
    printcolumn(
        name = "Stage",
        type_ = "string",
        json_path = ".status.currentStage",
        description = "The stage running or waiting"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether spec.revision went through every stage"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Why Ready has its status"
    ),
    printcolumn(
        name = "Last success",
        type_ = "string",
        json_path = ".status.lastSuccessfulRevision",
        description = "The last revision that went through every stage",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(RULE_DEPLOY_NEEDS_CONNECTION)
    .message("connectionRef is required when a Deploy stage names no connectionRef of its own")
    .field_path(".connectionRef")
    .reason(Reason::FieldValueRequired))]
pub struct PipelineSpec {
    /// The cluster-scoped ClusterConnection (an AWS account) through which Deploy stages
    /// reach ECS and ECR, unless a stage names its own. Required when a Deploy stage
    /// names none. Every connection a Pipeline names must allow its namespace (and the
    /// services its stages deploy) before any stage starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_ref: Option<ConnectionRef>,

    /// What to deliver: an image tag (`1.4.2`), digest (`sha256:...`) or git sha,
    /// substituted for `{{ revision }}` in images, commands, arguments and environment
    /// values. Changing it starts a new run.
    #[schemars(length(min = 1, max = 255), regex(pattern = REVISION_PATTERN))]
    pub revision: String,

    /// The stages, run one after another in list order. Names must be unique.
    #[schemars(length(min = 1, max = 16))]
    // No `reason`: with FieldValueDuplicate the API server prints a bare "Duplicate
    // value" and drops the message.
    #[x_kube(validation = Rule::new(RULE_UNIQUE_STAGE_NAMES).message("stage names must be unique"))]
    #[x_kube(validation = Rule::new(RULE_DEPENDS_ON_EARLIER).message(Message::Expression(message_depends_on_earlier())))]
    pub stages: Vec<Stage>,

    /// Stops starting stages. A stage already running finishes (a Job is not killed, a
    /// deployment is watched to the end) and a rollback in progress completes.
    #[serde(default)]
    pub suspend: bool,

    /// What a new `spec.revision` does while a run is active. `Queue` (the default): the
    /// active run finishes, then the newest revision runs; revisions in between are
    /// skipped (`status.skippedRevisions`). `Supersede`: the active run stops at once
    /// (its running Job is deleted with its Pods) and ends `Superseded`; then the new
    /// revision runs.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
}

/// What a new revision does while a run is active.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ConcurrencyPolicy {
    /// The active run finishes; then the newest revision runs.
    #[default]
    Queue,
    /// The active run stops; the new revision runs.
    Supersede,
}

/// One step of a run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(RULE_STAGE_SHAPE)
    .message("a Deploy stage needs deploy, an Approval stage approval, a SmokeTest stage job or http (or both), and Test and Build stages job (and none of the others)"))]
pub struct Stage {
    /// Name of the stage, unique in the Pipeline; part of the names of its Jobs.
    #[schemars(length(min = 1, max = 40), regex(pattern = DNS_LABEL_PATTERN))]
    pub name: String,
    /// What the stage does. `Test`, `Build` and `SmokeTest` run `job`; `Deploy` runs
    /// `deploy`; `Approval` waits for a person's Approval. A stage that fails after a
    /// Deploy rolls the run's deployments back.
    #[serde(rename = "type")]
    pub type_: StageType,
    /// The Kubernetes Job of a `Test`, `Build` or `SmokeTest` stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobStage>,
    /// The ECS deployment of a `Deploy` stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<DeployStage>,
    /// Who may approve an `Approval` stage, and how long it waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalStage>,
    /// HTTP checks of a `SmokeTest` stage, run by Capstan itself (no image needed),
    /// before its Job if it has one. Only URLs the administrator allow-lists
    /// (`--http-check-allow`, the chart's `pipeline.httpCheckAllow`) are reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8))]
    pub http: Option<Vec<HttpCheck>>,
    /// The stages that must succeed before this one starts, each listed before it (an
    /// unknown or later name, and so any cycle, is refused at admission). Unset: the
    /// stage before it in the list (stages run in list order). `[]`: none, it starts
    /// with the run. Stages whose dependencies are met run side by side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 40)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub depends_on: Option<Vec<String>>,
}

impl Stage {
    /// The indexes (in `stages`) of the stages stage `index` waits for: its
    /// `dependsOn`, or the stage before it. Names not before it are left out
    /// (refused at admission and by validation).
    pub fn dependencies(stages: &[Stage], index: usize) -> Vec<usize> {
        let Some(stage) = stages.get(index) else {
            return Vec::new();
        };
        match &stage.depends_on {
            None => index.checked_sub(1).into_iter().collect(),
            Some(names) => names
                .iter()
                .filter_map(|n| stages[..index].iter().position(|s| &s.name == n))
                .collect(),
        }
    }
}

/// One HTTP check: `count` requests, `interval` apart, each of which must answer as
/// expected within `timeout`. Redirects are not followed. Only pass or fail and the
/// status code are reported: no response body reaches status, Events or logs.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpCheck {
    /// The URL (`http` or `https`, no credentials); `{{ revision }}` and results are
    /// replaced.
    #[schemars(length(min = 1, max = 2048), regex(pattern = HTTP_URL_PATTERN))]
    pub url: String,
    /// `GET` (default) or `HEAD`.
    #[serde(default)]
    pub method: HttpMethod,
    /// Request headers (not for secrets: they are shown in the spec).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<HttpHeader>,
    /// The status codes that pass (default `[200]`).
    #[serde(
        default = "default_expected_status",
        skip_serializing_if = "Vec::is_empty"
    )]
    #[schemars(length(max = 16), inner(range(min = 100, max = 599)))]
    pub expect_status: Vec<u16>,
    /// Text the body must contain (the first MiB is read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub body_contains: Option<String>,
    /// A field of a JSON body that must have a value, e.g. `{path: version, equals:
    /// "{{ revision }}"}` (`path`: keys separated by dots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_field: Option<JsonField>,
    /// How many requests (default 1).
    #[serde(default = "default_check_count")]
    #[schemars(range(min = 1, max = 100))]
    pub count: i32,
    /// Time between requests: 1s to 1h (default 1s).
    #[serde(default = "default_check_interval")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": rule_min_duration(), "message": min_duration_message("interval")}]))]
    pub interval: DurationString,
    /// Time each request may take: 1s to 60s (default 5s).
    #[serde(default = "default_check_timeout")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": rule_min_duration(), "message": min_duration_message("timeout")}]))]
    pub timeout: DurationString,
}

/// HTTP methods of a check.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum HttpMethod {
    /// GET.
    #[default]
    #[serde(rename = "GET")]
    Get,
    /// HEAD.
    #[serde(rename = "HEAD")]
    Head,
}

/// A request header.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
pub struct HttpHeader {
    /// Its name.
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
    )]
    pub name: String,
    /// Its value.
    #[schemars(length(max = 4096))]
    pub value: String,
}

/// A field of a JSON body and the value it must have.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
pub struct JsonField {
    /// Keys separated by dots (`status.version`); array indexes as numbers.
    #[schemars(length(min = 1, max = 256))]
    pub path: String,
    /// The value, compared as text (a JSON string's content, or a number or boolean as
    /// written); `{{ revision }}` is replaced.
    #[schemars(length(max = 1024))]
    pub equals: String,
}

/// `http://` or `https://` URLs (templates allowed), no whitespace.
pub(crate) const HTTP_URL_PATTERN: &str = r"^https?://[^\s]+$";

fn default_expected_status() -> Vec<u16> {
    vec![200]
}

fn default_check_count() -> i32 {
    1
}

// Literals that capstan-core's own tests show `DurationString::new` accepts.
fn default_check_interval() -> DurationString {
    DurationString::new("1s").expect("`1s` is a valid duration")
}

fn default_check_timeout() -> DurationString {
    DurationString::new("5s").expect("`5s` is a valid duration")
}

/// Kinds of stage.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageType {
    /// Run tests in a Job.
    Test,
    /// Build an artefact (e.g. push an image) in a Job.
    Build,
    /// Deploy the revision to an ECS service.
    Deploy,
    /// Check a deployment in a Job; failure rolls deployments back.
    SmokeTest,
    /// Wait until a person approves the run (an `Approval` object); a rejection fails
    /// the stage.
    Approval,
}

impl StageType {
    /// The spelling used in the spec, status and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Test => "Test",
            Self::Build => "Build",
            Self::Deploy => "Deploy",
            Self::SmokeTest => "SmokeTest",
            Self::Approval => "Approval",
        }
    }

    /// Whether the stage runs a Job (as opposed to deploying or waiting for approval).
    pub fn runs_job(self) -> bool {
        matches!(self, Self::Test | Self::Build | Self::SmokeTest)
    }
}

/// What a stage does, resolved from `type` and the matching section.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StageAction<'a> {
    /// Run a Job (`Test`, `Build`, `SmokeTest`).
    Job(&'a JobStage),
    /// Deploy to ECS.
    Deploy(&'a DeployStage),
    /// Wait for a person's approval.
    Approval(&'a ApprovalStage),
    /// HTTP checks only (a `SmokeTest` without a Job).
    Checks(&'a [HttpCheck]),
}

impl Stage {
    /// The stage's action, or `None` when `type` and the sections disagree (refused at
    /// admission; reported by validation).
    pub fn action(&self) -> Option<StageAction<'_>> {
        let http = self.http.as_deref().filter(|h| !h.is_empty());
        match (self.type_, &self.job, &self.deploy, &self.approval, http) {
            (StageType::Deploy, None, Some(d), None, None) => Some(StageAction::Deploy(d)),
            (StageType::Approval, None, None, Some(a), None) => Some(StageAction::Approval(a)),
            (StageType::SmokeTest, None, None, None, Some(h)) => Some(StageAction::Checks(h)),
            (StageType::SmokeTest, Some(j), None, None, _) => Some(StageAction::Job(j)),
            (t, Some(j), None, None, None) if t.runs_job() => Some(StageAction::Job(j)),
            _ => None,
        }
    }

    /// The stage's HTTP checks (a `SmokeTest`'s), empty when none.
    pub fn checks(&self) -> &[HttpCheck] {
        match self.type_ {
            StageType::SmokeTest => self.http.as_deref().unwrap_or_default(),
            _ => &[],
        }
    }
}

/// A Kubernetes Job run in the Pipeline's namespace. It succeeds when the Job completes.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JobStage {
    /// Container image; `{{ revision }}` is replaced by `spec.revision`.
    #[schemars(length(min = 1, max = 512), regex(pattern = IMAGE_TEMPLATE_PATTERN))]
    pub image: String,
    /// Entrypoint; the image's when empty. `{{ revision }}` is replaced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 4096)))]
    pub command: Vec<String>,
    /// Arguments; `{{ revision }}` is replaced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 4096)))]
    pub args: Vec<String>,
    /// Environment variables, as in a Pod; `{{ revision }}` is replaced in `value`.
    /// Secrets come in through `valueFrom.secretKeyRef`, never as literal values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub env: Vec<EnvVar>,
    /// ServiceAccount the Job's Pod runs as; the namespace's `default` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,
    /// How long the Job may run before the stage fails (`activeDeadlineSeconds`):
    /// 1s to 24h.
    #[serde(default = "default_job_timeout")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": rule_min_duration(), "message": min_duration_message("timeout")}]))]
    pub timeout: DurationString,
    /// Retries of a failed Pod before the stage fails (the Job's `backoffLimit`).
    #[serde(default)]
    #[schemars(range(min = 0, max = 10))]
    pub backoff_limit: i32,
    /// The results the Job reports, as Tekton's tasks do: its container writes a JSON
    /// object of string values (at most 4 KiB) to its termination message
    /// (`/dev/termination-log`). Each key declared here must be in it; later stages use
    /// the values as `{{ stages.<name>.results.<key> }}`. Results are not secret: they
    /// are shown in status.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 63), regex(pattern = RESULT_KEY_PATTERN)))]
    pub results: Vec<String>,
}

/// A deployment of the run's images to an ECS service: a new revision of the service's
/// current task definition, copied field for field with only the named containers'
/// images replaced (each pinned to the digest the run resolved for it), then
/// `UpdateService` with that task definition (never `desiredCount`), then waiting for
/// the new deployment's `rolloutState`, failing fast on failed tasks.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeployStage {
    /// The ClusterConnection (AWS account) of this stage's service and registry, when
    /// it differs from `spec.connectionRef` (staging and production often live in
    /// different accounts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_ref: Option<ConnectionRef>,
    /// Name or ARN of the ECS cluster.
    #[schemars(length(min = 1, max = 2048), regex(pattern = AWS_ID_PATTERN))]
    pub cluster: String,
    /// Name or ARN of the ECS service.
    #[schemars(length(min = 1, max = 2048), regex(pattern = AWS_ID_PATTERN))]
    pub service: String,
    /// The containers of the task definition whose image is replaced; every other
    /// container and field is kept as it is. A list-map keyed by `name`: the API server
    /// refuses a name given twice.
    #[schemars(length(min = 1, max = 10), schema_with = "containers_schema")]
    pub containers: Vec<ContainerImage>,
    /// Put the service back on the task definition it ran before when this deployment
    /// or a later stage of the run fails.
    #[serde(default = "default_true")]
    pub rollback_on_failure: bool,
    /// How long the deployment may take to complete before the stage fails: 1s to 24h.
    #[serde(default = "default_deploy_timeout")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": rule_min_duration(), "message": min_duration_message("timeout")}]))]
    pub timeout: DurationString,
    /// Tasks of the new deployment that may fail (exit non-zero, fail a health check or
    /// not start) before the stage fails, without waiting for ECS's circuit breaker
    /// (which needs at least 3, and ignores tasks that ran and then exited).
    #[serde(default = "default_max_failed_tasks")]
    #[schemars(range(min = 1, max = 100))]
    pub max_failed_tasks: i32,
}

/// `deploy.containers`: a list-map keyed by `name` (names unique), 1 to 10 entries.
fn containers_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut s = generator.subschema_for::<Vec<ContainerImage>>();
    s.insert("minItems".into(), 1.into());
    s.insert("maxItems".into(), 10.into());
    s.insert("x-kubernetes-list-type".into(), "map".into());
    s.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["name"]),
    );
    s
}

/// One container's new image.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerImage {
    /// The container's name in the task definition.
    #[schemars(length(min = 1, max = 255), regex(pattern = CONTAINER_NAME_PATTERN))]
    pub name: String,
    /// The image; `{{ revision }}` and `{{ stages.<name>.results.<key> }}` are
    /// replaced, e.g. `123456789012.dkr.ecr.eu-west-1.amazonaws.com/shop:{{ revision }}`.
    /// An ECR image is resolved to its digest when the first Deploy of the run that
    /// uses it starts, and every later Deploy of the run uses that digest; another
    /// registry's image must name its digest (`...@sha256:...`).
    #[schemars(length(min = 1, max = 512), regex(pattern = IMAGE_TEMPLATE_PATTERN))]
    pub image: String,
}

// Literals that capstan-core's own tests show `DurationString::new` accepts; no user input.
fn default_job_timeout() -> DurationString {
    DurationString::new("30m").expect("`30m` is a valid duration")
}

fn default_deploy_timeout() -> DurationString {
    DurationString::new("15m").expect("`15m` is a valid duration")
}

fn default_true() -> bool {
    true
}

fn default_max_failed_tasks() -> i32 {
    2
}

mod status;
pub use status::*;

#[cfg(test)]
pub(crate) mod tests;

impl capstan_core::object_metrics::Summarize for Pipeline {
    /// Readiness, the phase of the current or last run, and since when it waits for an
    /// approval.
    fn summary(&self) -> capstan_core::object_metrics::Summary {
        use capstan_core::object_metrics::{Sample, Summary, ready_of};
        let status = self.status.clone().unwrap_or_default();
        let (ready, reason) = ready_of(&status.conditions);
        let mut samples = Vec::new();
        if let Some(phase) = status.phase {
            samples.push(Sample {
                family: "pipeline_run_phase",
                label: Some(("phase", phase.as_str())),
                value: 1.0,
            });
        }
        if let Some(c) = status
            .conditions
            .iter()
            .find(|c| c.type_ == "AwaitingApproval" && c.status == "True")
        {
            samples.push(Sample::new(
                "pipeline_awaiting_approval_since_timestamp_seconds",
                capstan_core::clock::from_k8s_time(&c.last_transition_time).timestamp() as f64,
            ));
        }
        Summary {
            ready,
            reason,
            samples,
        }
    }
}
