//! What every room of the controller shares about one pass over one object: [`Pass`],
//! the controller's [`Error`], its Event reasons ([`events`]), the requeue at the next
//! rotation, and the failpoints of the crash tests. It imports only `conditions`, so every
//! room (and the module root) can import it without a loop.

use std::time::Duration;

use capstan_core::conditions::Desired;
use capstan_core::error::Categorized;
use chrono::{DateTime, Utc};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use super::conditions::View;
use crate::audit::Subject;
use crate::backend::RotationId;
use crate::context::Context;
use crate::crd::{RotationInProgress, SecretRotation};
use crate::rotation::{self, Policy};
use crate::targets::Fence;

/// Event reasons (CamelCase, stable).
pub mod events {
    /// A rotation started.
    pub const ROTATION_STARTED: &str = "RotationStarted";
    /// A rotation finished: the new credential is current and delivered.
    pub const ROTATION_SUCCEEDED: &str = "RotationSucceeded";
    /// An attempt failed definitively; a fresh value is tried.
    pub const ATTEMPT_FAILED: &str = "RotationAttemptFailed";
    /// Every attempt failed; the previous credential stays current.
    pub const ROTATION_FAILED: &str = "RotationFailed";
    /// A reference (admin Secret, database, Vault path, AWS secret) cannot be resolved.
    pub const REFERENCE_UNRESOLVED: &str = "ReferenceUnresolved";
    /// The credentials the last rotation replaced were deactivated (IAM access keys).
    pub const PREVIOUS_DEACTIVATED: &str = "PreviousCredentialDeactivated";
    /// The credentials the last rotation replaced were deleted after the grace period.
    pub const PREVIOUS_DELETED: &str = "PreviousCredentialDeleted";
    /// Retiring the replaced credentials failed; retried.
    pub const RETIRE_FAILED: &str = "RetireFailed";
    /// The target's configuration (a Vault connection or static role) had drifted from
    /// the declared state and was written back.
    pub const DRIFT_CORRECTED: &str = "DriftCorrected";
    /// Reading the target's configuration back, or writing it, failed.
    pub const DRIFT_CHECK_FAILED: &str = "DriftCheckFailed";
    /// Vault no longer knows the delivered lease (revoked behind Capstan's back, or
    /// expired): new credentials are obtained at once.
    pub const LEASE_LOST: &str = "LeaseLost";
    /// Renewing the delivered lease failed; retried with backoff.
    pub const LEASE_RENEWAL_FAILED: &str = "LeaseRenewalFailed";
}

/// How often a rotation waiting for its rollouts looks again.
pub(super) const DELIVERY_POLL: Duration = Duration::from_secs(2);

/// Why a reconcile failed. Messages name objects, never values.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes call failed.
    #[error("kubernetes: {}", capstan_core::error::KubeMessage(.0))]
    Kube(#[from] kube::Error),
    /// The status claim was lost: someone (a stale or newer Capstan) wrote first.
    #[error("status claim lost on {0}: another writer changed the object")]
    ClaimLost(String),
}

impl Categorized for Error {
    fn category(&self) -> &'static str {
        match self {
            Error::Kube(e) => e.category(),
            Error::ClaimLost(_) => "claim_lost",
        }
    }
}

/// What the controller's cache holds of a SecretRotation: its metadata.
pub(super) type Cached = PartialObjectMeta<SecretRotation>;

pub(super) fn key_of(obj: &impl Resource) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

// Failpoints (tests only; [`capstan_core::failpoints`]):
// `FAILPOINTS="secret-rotation::after-SetTarget=return"` makes the process abort right
// after that side effect, before it is recorded;
// `secret-rotation::before-set-password=sleep(5000)` holds it in `SetTarget` after the
// pending value was read, right before the database write (where a frozen leader is
// dangerous).
pub(super) use capstan_core::failpoints::{crash_point, from_env as failpoints_from_env};

/// When to look again after a pass that ends with no rotation in progress: at the next
/// rotation time (at least 200 ms from now), or on a change when none is scheduled.
pub(super) fn requeue_at(next: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Action {
    match next {
        Some(t) => Action::requeue(rotation::until(t, now).max(Duration::from_millis(200))),
        None => Action::await_change(),
    }
}

/// Everything one pass needs about its object.
pub(super) struct Pass<'a> {
    pub(super) ctx: &'a Context,
    pub(super) key: String,
    pub(super) uid: String,
    pub(super) obj: &'a SecretRotation,
    pub(super) policy: Policy,
    pub(super) created: DateTime<Utc>,
    pub(super) gate: Vec<Desired<'static>>,
    pub(super) has_target: bool,
    pub(super) delivery_empty: bool,
}

impl Pass<'_> {
    pub(super) fn view(
        &self,
        idle: &'static str,
        ready_override: Option<(&'static str, String)>,
    ) -> View<'_> {
        View {
            policy: Some(&self.policy),
            created: self.created,
            now: self.ctx.rt.clock.now(),
            idle_reason: idle,
            ready_override,
            delivery_empty: self.delivery_empty,
            gate: self.gate.clone(),
            stuck_after: self.ctx.settings.stuck_after,
        }
    }

    pub(super) fn subject<'s>(&'s self, r: &'s RotationInProgress) -> Subject<'s> {
        self.subject_of(&r.id, r.attempt)
    }

    /// The audit subject of attempt `attempt` of rotation `rotation`.
    pub(super) fn subject_of<'s>(&'s self, rotation: &'s str, attempt: i32) -> Subject<'s> {
        Subject {
            object: &self.key,
            backend: self.obj.spec.backend.kind(),
            target: self.obj.spec.target.kind(),
            instance: &self.ctx.rt.instance,
            rotation,
            attempt,
        }
    }

    pub(super) fn id(&self, r: &RotationInProgress) -> RotationId {
        RotationId::new(
            self.uid.clone(),
            rotation::rotation_number(r),
            u32::try_from(r.attempt).unwrap_or(1),
        )
    }

    /// The fencing token of this attempt's database writes.
    pub(super) fn fence(&self, r: &RotationInProgress) -> Fence {
        let id = self.id(r);
        Fence {
            object_uid: id.object_uid,
            rotation: id.rotation,
            attempt: id.attempt,
        }
    }

    /// Vault refused the backend's token: a login token (AppRole) is logged in afresh
    /// next time instead of being reused until its lease ends.
    pub(super) fn forget_login_if_denied(&self, access_denied: bool) {
        if access_denied
            && matches!(self.obj.spec.backend, crate::crd::Backend::Vault(_))
            && let Some(c) = &self.obj.spec.connection_ref
        {
            crate::context::forget_vault_token(self.ctx, &c.name);
        }
    }

    pub(super) async fn event(&self, type_: EventType, reason: &str, note: String) {
        self.ctx
            .events
            .publish(self.obj, type_, reason, "Rotate", note)
            .await;
    }
}
