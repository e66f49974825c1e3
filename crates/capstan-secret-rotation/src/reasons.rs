//! Every reason this crate writes, in one place, with the exact strings users match on
//! (alerts, `kubectl wait`, log pipelines): the condition reasons of `Ready`,
//! `Rotating`, `Delivered` and `Overdue`; the reasons of an unresolvable reference
//! (`Ready=False`); the reasons of a failed step (`status.lastFailure`); the reasons
//! of backend and target errors; and the outcomes of audit lines ([`StepOutcome`],
//! [`DeliveryAction`]). Reachable as `crd::reasons` too.

/// Ready=True: the current credential is tested and delivered.
pub const CREDENTIAL_CURRENT: &str = "CredentialCurrent";
/// Ready=Unknown: no rotation has completed yet.
pub const AWAITING_FIRST_ROTATION: &str = "AwaitingFirstRotation";
/// Ready=False: the spec fails [`crate::validation::validate`]; waits for a change.
pub const INVALID_SPEC: &str = "InvalidSpec";
/// Ready=False: the referenced ClusterConnection is missing, not ready or not allowed.
pub const CONNECTION_NOT_READY: &str = "ConnectionNotReady";
/// Ready=False: the last rotation used up `maxAttemptsPerRotation`.
pub const ROTATION_FAILED: &str = "RotationFailed";
/// Rotating=True: started by the schedule.
pub const SCHEDULED: &str = "Scheduled";
/// Rotating=True: started by a new `capstan.dev/rotate-now` token.
pub const ROTATE_NOW_REQUESTED: &str = "RotateNowRequested";
/// Rotating=True: the target's credential was rotated outside Capstan (Vault's own
/// static-role rotation) and what it holds now is being delivered.
pub const TARGET_ROTATED: &str = "TargetRotated";
/// Rotating=True: the first rotation after creation.
pub const INITIAL_ROTATION: &str = "InitialRotation";
/// Rotating=True: a failed attempt is being retried.
pub const RETRYING: &str = "Retrying";
/// Rotating=True: the rotation in progress has run far longer than usual (past
/// `--rotation-stuck-after` and five times the object's usual rotation).
pub const ROTATION_STUCK: &str = "RotationStuck";
/// Rotating=False: nothing due.
pub const IDLE: &str = "Idle";
/// Rotating=False: `spec.suspend` is true.
pub const SUSPENDED: &str = "Suspended";
/// Rotating=False: a rotation is due but `schedule.window` is closed.
pub const OUTSIDE_WINDOW: &str = "OutsideWindow";
/// Delivered=True.
pub const DELIVERED: &str = "Delivered";
/// Delivered=True: `spec.delivery` is empty, there is nothing to deliver.
pub const NOTHING_TO_DELIVER: &str = "NothingToDeliver";
/// Delivered=False: delivery (Secret write, rollouts or ECS deployments) is under way.
pub const DELIVERY_IN_PROGRESS: &str = "DeliveryInProgress";
/// Delivered=False: delivery failed; the message says which target.
pub const DELIVERY_FAILED: &str = "DeliveryFailed";
/// Overdue=True.
pub const ROTATION_OVERDUE: &str = "RotationOverdue";
/// Overdue=False.
pub const ON_SCHEDULE: &str = "OnSchedule";

// Ready=False: a reference in the spec or its connection cannot be resolved.

/// The ClusterConnection is not of the kind the backend or ECS delivery needs.
pub const CONNECTION_WRONG_KIND: &str = "ConnectionWrongKind";
/// The ClusterConnection declares no usable auth method.
pub const CONNECTION_INVALID: &str = "ConnectionInvalid";
/// The AWS connection's credentials Secret cannot be read.
pub const AWS_CREDENTIALS_UNAVAILABLE: &str = "AwsCredentialsUnavailable";
/// The Vault connection's CA bundle cannot be read.
pub const VAULT_CA_UNAVAILABLE: &str = "VaultCaUnavailable";
/// The Vault token auth's Secret cannot be read.
pub const VAULT_TOKEN_UNAVAILABLE: &str = "VaultTokenUnavailable";
/// The Vault AppRole secret ID cannot be read.
pub const VAULT_SECRET_ID_UNAVAILABLE: &str = "VaultSecretIdUnavailable";
/// The Vault login (AppRole, Kubernetes) failed.
pub const VAULT_LOGIN_FAILED: &str = "VaultLoginFailed";
/// Capstan's service account token (for Vault's Kubernetes auth) cannot be read.
pub const SERVICE_ACCOUNT_TOKEN_UNAVAILABLE: &str = "ServiceAccountTokenUnavailable";
/// The target's admin Secret cannot be read.
pub const ADMIN_SECRET_UNAVAILABLE: &str = "AdminSecretUnavailable";
/// The target's CA bundle Secret cannot be read.
pub const CA_SECRET_UNAVAILABLE: &str = "CaSecretUnavailable";

// A failed step (`status.lastFailure.reason`).

/// A step after `CreatePending` found the attempt's pending value gone.
pub const PENDING_LOST: &str = "PendingLost";
/// The generator settings cannot generate a value.
pub const INVALID_GENERATOR: &str = "InvalidGenerator";
/// Delivery found no current value in the backend.
pub const BACKEND_EMPTY: &str = "BackendEmpty";

// Backend errors ([`crate::backend::BackendError::reason`]).

/// The backend has no such secret or path.
pub const BACKEND_NOT_FOUND: &str = "BackendNotFound";
/// The backend refused Capstan's credentials.
pub const BACKEND_ACCESS_DENIED: &str = "BackendAccessDenied";
/// A conditioned backend write lost (a lost claim).
pub const BACKEND_CONFLICT: &str = "BackendConflict";
/// The backend did not answer.
pub const BACKEND_UNAVAILABLE: &str = "BackendUnavailable";
/// The backend holds something Capstan cannot use.
pub const BACKEND_INVALID: &str = "BackendInvalid";

// Target errors ([`crate::targets::TargetError::reason`]).

/// The target refused the statement.
pub const TARGET_REJECTED: &str = "TargetRejected";
/// A login with the new value failed.
pub const TARGET_LOGIN_FAILED: &str = "TargetLoginFailed";
/// The database user does not exist.
pub const TARGET_USER_NOT_FOUND: &str = "TargetUserNotFound";
/// The admin login lacks the privilege.
pub const TARGET_ACCESS_DENIED: &str = "TargetAccessDenied";
/// The target did not answer.
pub const TARGET_UNAVAILABLE: &str = "TargetUnavailable";
/// A newer attempt's fence is on the target: this write is stale.
pub const TARGET_FENCED: &str = "TargetFenced";
/// The target's settings are unusable.
pub const TARGET_INVALID: &str = "TargetInvalid";
/// RDS manages the master password itself (`ManageMasterUserPassword`) and the spec does
/// not turn that off.
pub const RDS_MANAGES_PASSWORD: &str = "RdsManagesPassword";
/// A Vault connection or role with this object's name exists but this object did not
/// declare it: it is not adopted.
pub const TARGET_CLAIMED: &str = "TargetClaimed";
/// `TargetInSync`: the target's declared configuration (a Vault connection and static
/// role) matched what was read back.
pub const IN_SYNC: &str = "InSync";
/// `TargetInSync`: drift was found and the declared state written back.
pub const DRIFT_CORRECTED: &str = "DriftCorrected";

/// The `outcome` of an audit line of a rotation step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepOutcome {
    /// `done`: the step's side effect happened.
    Done,
    /// `retry`: a transient failure; the step runs again with backoff.
    Retry,
    /// `rejected`: the attempt's value was refused; a fresh attempt follows.
    Rejected,
    /// `gave-up`: attempts used up; the previous credential stays current.
    GaveUp,
    /// `claim-lost`: another writer changed the object; this Capstan stops.
    ClaimLost,
}

impl StepOutcome {
    /// The string in the audit line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Retry => "retry",
            Self::Rejected => "rejected",
            Self::GaveUp => "gave-up",
            Self::ClaimLost => "claim-lost",
        }
    }
}

/// The `outcome` of an audit line of a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryAction {
    /// `written`: the delivered Secret was written.
    Written,
    /// `restarted`: a workload's rollout was restarted.
    Restarted,
    /// `redeployed`: an ECS service was forced a new deployment.
    Redeployed,
}

impl DeliveryAction {
    /// The string in the audit line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Written => "written",
            Self::Restarted => "restarted",
            Self::Redeployed => "redeployed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The audit outcomes serialize as the strings the audit lines carry.
    #[test]
    fn outcomes_serialize_as_their_audit_strings() {
        for o in [
            StepOutcome::Done,
            StepOutcome::Retry,
            StepOutcome::Rejected,
            StepOutcome::GaveUp,
            StepOutcome::ClaimLost,
        ] {
            let json = serde_json::to_string(&o).expect("json");
            assert_eq!(json, format!("\"{}\"", o.as_str()));
        }
        for a in [
            DeliveryAction::Written,
            DeliveryAction::Restarted,
            DeliveryAction::Redeployed,
        ] {
            let json = serde_json::to_string(&a).expect("json");
            assert_eq!(json, format!("\"{}\"", a.as_str()));
        }
    }
}
