//! The status: the rotation in progress, its steps and trigger, failures (scrubbed by
//! construction), the recent rotations, and the backend and target kinds.

use capstan_core::redact::{REDACTED, SecretValue};
use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::rules::*;

/// Which backend a spec uses, for status and metrics (never a name or path).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum BackendKind {
    /// `backend.awsSecretsManager`.
    AwsSecretsManager,
    /// `backend.vault`.
    Vault,
    /// `backend.kubernetes`.
    Kubernetes,
}

impl BackendKind {
    /// The spelling used in the spec, status and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AwsSecretsManager => "awsSecretsManager",
            Self::Vault => "vault",
            Self::Kubernetes => "kubernetes",
        }
    }
}

/// Which target a spec uses, for status and metrics.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum TargetKind {
    /// `target.postgres`.
    Postgres,
    /// `target.mysql`.
    Mysql,
    /// `target.rdsMasterPassword`.
    RdsMasterPassword,
    /// `target.iamAccessKey`.
    IamAccessKey,
    /// `target.vaultTransitKey`.
    VaultTransitKey,
    /// `target.vaultDatabaseStaticRole`.
    VaultDatabaseStaticRole,
    /// `target.vaultDatabaseDynamicRole`.
    VaultDatabaseDynamicRole,
    /// `target.none`.
    None,
}

impl TargetKind {
    /// The spelling used in the spec, status and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Mysql => "mysql",
            Self::RdsMasterPassword => "rdsMasterPassword",
            Self::IamAccessKey => "iamAccessKey",
            Self::VaultTransitKey => "vaultTransitKey",
            Self::VaultDatabaseStaticRole => "vaultDatabaseStaticRole",
            Self::VaultDatabaseDynamicRole => "vaultDatabaseDynamicRole",
            Self::None => "none",
        }
    }
}

/// Observed state of a SecretRotation. Holds identifiers, times and counts, never a
/// secret value.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretRotationStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Rotating, Delivered and Overdue, with reasons (see the API reference).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "capstan_core::conditions::schema")]
    pub conditions: Vec<Condition>,
    /// Backend in use (`awsSecretsManager`, `vault`, `kubernetes`), for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendKind>,
    /// Target in use (`postgres`, `mysql`, `none`), for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetKind>,
    /// The rotation in progress, if any: enough to resume it after a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationInProgress>,
    /// Backend identifier of the current value (Secrets Manager VersionId, KV version,
    /// rotation id for Kubernetes); never the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<String>,
    /// Backend identifier of the value before the current one; never the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<String>,
    /// The database user consumers are currently given (alternates with
    /// `alternatingUsers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_username: Option<String>,
    /// When the last successful rotation finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation_time: Option<DateTime<Utc>>,
    /// When the next scheduled rotation is due (the window's next opening if it falls
    /// outside the window). Unset while suspended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_time: Option<DateTime<Utc>>,
    /// Successful rotations so far.
    #[serde(default)]
    pub rotation_count: i64,
    /// The most recent failed attempt, scrubbed of secret values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<RotationFailure>,
    /// The last finished rotations, newest first, at most ten.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_rotations: Vec<RotationSummary>,
    /// The last `capstan.dev/rotate-now` token acted on (its rotation has started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_rotate_now_token: Option<String>,
    /// The last `capstan.dev/rotate-now` token whose rotation has ended: delivered
    /// (`Ready=True`), or given up (`Ready=False`, reason `RotationFailed`). Wait for
    /// exactly the rotation a token requested with
    /// `kubectl wait --for=jsonpath='{.status.completedRotateNowToken}'=<token>`:
    /// `Ready` stays True during a rotation, so waiting on it returns at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_rotate_now_token: Option<String>,
    /// The credentials replaced by the last rotation, while they are retired (an IAM
    /// user's previous access key: deactivated once the new one is delivered, deleted
    /// at `deleteAfter`). Unset when nothing is left to retire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retiring: Option<Retiring>,
    /// The lease of the delivered dynamic credentials (Vault database roles): its
    /// times and a hash of its id, never the id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
}

/// A Vault lease, as status shows it.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    /// The first 16 hex digits of the SHA-256 of the lease id: enough to tell leases
    /// apart, useless to renew or revoke one.
    pub id_hash: String,
    /// When Vault issued it.
    pub issue_time: DateTime<Utc>,
    /// When it expires unless renewed.
    pub expire_time: DateTime<Utc>,
    /// When it expires at the latest (`maxTtl` after issue): new credentials are
    /// obtained before.
    pub max_expire_time: DateTime<Utc>,
    /// When Capstan renews it next (or, past the last renewal, obtains new
    /// credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_renewal_time: Option<DateTime<Utc>>,
    /// Whether Vault lets it be renewed.
    pub renewable: bool,
}

/// What is left of retiring the credentials a rotation replaced.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Retiring {
    /// The credential that stays (the access key id delivered).
    pub keep: String,
    /// Whether the others have been deactivated.
    #[serde(default)]
    pub deactivated: bool,
    /// When the others are deleted (the rotation's end plus the grace period).
    pub delete_after: DateTime<Utc>,
}

/// Steps of a rotation, in order (AWS's createSecret, setSecret, testSecret,
/// finishSecret, then delivery).
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord,
)]
pub enum RotationStep {
    /// Generate a value and store it as pending in the backend.
    CreatePending,
    /// Set the pending value on the target (e.g. `ALTER ROLE ... PASSWORD`).
    SetTarget,
    /// Log in to the target with the pending value.
    TestTarget,
    /// Promote pending to current in the backend.
    Finish,
    /// Write the delivery Secret, restart workloads, redeploy ECS services.
    Deliver,
}

impl RotationStep {
    /// Every step, in order.
    pub const ALL: [RotationStep; 5] = [
        Self::CreatePending,
        Self::SetTarget,
        Self::TestTarget,
        Self::Finish,
        Self::Deliver,
    ];

    /// The step after this one, `None` after `Deliver`.
    pub fn next(self) -> Option<Self> {
        let i = Self::ALL.iter().position(|s| *s == self)?;
        Self::ALL.get(i + 1).copied()
    }

    /// The spelling used in status and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreatePending => "CreatePending",
            Self::SetTarget => "SetTarget",
            Self::TestTarget => "TestTarget",
            Self::Finish => "Finish",
            Self::Deliver => "Deliver",
        }
    }
}

/// What started a rotation.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotationTrigger {
    /// The first rotation of a new SecretRotation.
    Initial,
    /// The schedule.
    Schedule,
    /// A new `capstan.dev/rotate-now` token.
    RotateNow,
    /// The target's credential changed outside Capstan (a Vault static role that Vault
    /// rotated on its own): the value it holds now is delivered.
    TargetRotated,
}

/// A rotation in progress, persisted after every step so that a restarted controller
/// resumes it instead of starting over.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RotationInProgress {
    /// Unique id of this rotation; also the client request token (idempotency key) of
    /// backend writes, so a retried write doesn't create a second version.
    pub id: String,
    /// What started it.
    pub trigger: RotationTrigger,
    /// The rotate-now token that started it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_now_token: Option<String>,
    /// When it started.
    pub started: DateTime<Utc>,
    /// Attempt number, from 1 up to `maxAttemptsPerRotation`.
    pub attempt: i32,
    /// The step to run (or re-run) next.
    pub step: RotationStep,
    /// Backend identifier of the pending value once stored; never the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_version: Option<String>,
    /// The database user whose password this rotation sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// For targets that issue values (IAM access keys, transit key versions): their
    /// credentials (key ids, the latest version) before this rotation first issued one,
    /// recorded before it did. Anything issued beyond them and not stored is this
    /// rotation's leftover, found without guessing from clocks after a crash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preexisting: Option<Vec<String>>,
    /// The lease of the credentials this rotation obtained (dynamic credentials),
    /// recorded with them before they are delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
}

/// A failed attempt. Built only by [`RotationFailure::new`], which scrubs every secret
/// value it is given out of the message and bounds its length, so that a database error
/// echoing a statement cannot carry a password into status.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RotationFailure {
    /// When the attempt failed.
    time: DateTime<Utc>,
    /// The step that failed.
    step: RotationStep,
    /// Machine-readable CamelCase reason, e.g. `TargetLoginFailed`.
    reason: String,
    /// Human-readable description, with secret values replaced by `[redacted]`.
    message: String,
}

impl RotationFailure {
    /// Records a failure. `reason` is a constant; every value in `secrets` (and its
    /// percent-encoded form) is replaced by `[redacted]` in `message`, which is then cut
    /// to [`FAILURE_MESSAGE_MAX_LEN`] bytes.
    pub fn new(
        time: DateTime<Utc>,
        step: RotationStep,
        reason: &'static str,
        message: &str,
        secrets: &[&SecretValue],
    ) -> Self {
        Self {
            time,
            step,
            reason: reason.to_owned(),
            message: scrub(message, secrets),
        }
    }

    /// When the attempt failed.
    pub fn time(&self) -> DateTime<Utc> {
        self.time
    }

    /// The step that failed.
    pub fn step(&self) -> RotationStep {
        self.step
    }

    /// The reason.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The scrubbed message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Replaces every occurrence of each secret (plain and percent-encoded) with
/// `[redacted]` and cuts the result to [`FAILURE_MESSAGE_MAX_LEN`] bytes on a character
/// boundary.
pub fn scrub(message: &str, secrets: &[&SecretValue]) -> String {
    let mut out = message.to_owned();
    for secret in secrets {
        if secret.is_empty() {
            continue;
        }
        out = out.replace(secret.expose(), REDACTED);
        let encoded = crate::template::percent_encode(secret.expose());
        if encoded != secret.expose() {
            out = out.replace(&encoded, REDACTED);
        }
    }
    if out.len() > FAILURE_MESSAGE_MAX_LEN {
        let mut cut = FAILURE_MESSAGE_MAX_LEN;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

/// How a finished rotation ended.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotationOutcome {
    /// The new credential is current and delivered.
    Succeeded,
    /// All attempts failed; the previous credential stayed current.
    Failed,
}

/// A finished rotation, as kept in `status.recentRotations`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RotationSummary {
    /// Id of the rotation.
    pub id: String,
    /// What started it.
    pub trigger: RotationTrigger,
    /// When it started.
    pub started: DateTime<Utc>,
    /// When it finished.
    pub finished: DateTime<Utc>,
    /// How it ended.
    pub outcome: RotationOutcome,
    /// Attempts used.
    pub attempts: i32,
    /// Backend identifier of the value it made current, if it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The database user it set, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Failure reason of the last attempt, if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
}

impl capstan_core::conditions::ObjectStatus for SecretRotationStatus {
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }

    fn set_observed_generation(&mut self, generation: Option<i64>) {
        self.observed_generation = generation;
    }
}

impl SecretRotationStatus {
    /// Adds a finished rotation to `recentRotations`, newest first, keeping at most
    /// [`RECENT_ROTATIONS_LIMIT`].
    pub fn record_rotation(&mut self, summary: RotationSummary) {
        self.recent_rotations.insert(0, summary);
        self.recent_rotations.truncate(RECENT_ROTATIONS_LIMIT);
    }

    /// The step of the rotation in progress, if any.
    pub fn current_step(&self) -> Option<RotationStep> {
        self.rotation.as_ref().map(|r| r.step)
    }
}
