//! The `SecretRotation` custom resource (`capstan.dev/v1alpha1`, short name `srot`).
//!
//! A SecretRotation rotates one credential on a schedule: it generates a new value
//! ([`Generator`]), stores it as *pending* in a [`Backend`] where consumers don't read it,
//! sets it on the [`Target`] (a database role, or nothing for API keys), tests it, promotes
//! it to *current* in the backend and finally delivers it to workloads ([`Delivery`]). The
//! steps follow the AWS Secrets Manager rotation contract
//! (<https://docs.aws.amazon.com/secretsmanager/latest/userguide/rotate-secrets_lambda-functions.html>):
//! `createSecret`, `setSecret`, `testSecret`, `finishSecret`, plus Capstan's own `Deliver`
//! ([`RotationStep`]).
//!
//! Validation lives where it can be enforced earliest: types, enums, lengths and patterns in
//! the OpenAPI schema, cross-field rules as CEL `x-kubernetes-validations` (refused at
//! admission with a field path), and what CEL cannot express in
//! [`crate::validation::validate`], which the controller reports as a condition.
//!
//! Status never holds a secret value: versions are identifiers, failures are scrubbed by
//! construction ([`RotationFailure::new`]).
//!
//! The parts, all re-exported here: `spec` (the object and its spec, strategy, schedule,
//! generator), `backend` (where the credential is stored), `target` (what it is set on),
//! `delivery` (where it goes after), `status` (status, steps, kinds, failures) and
//! `rules` (the constants, the schema's patterns and CEL rules).

mod backend;
mod delivery;
mod rules;
mod spec;
mod status;
mod target;

pub use backend::*;
pub use capstan_core::connection::ConnectionRef;
pub use delivery::*;
pub use rules::*;
pub use spec::*;
pub use status::*;
pub use target::*;

// What the tests (`crd/tests.rs`, `use super::*`) took from this module's imports.
#[cfg(test)]
use capstan_core::redact::SecretValue;
#[cfg(test)]
use capstan_core::schedule::{CRON_PATTERN, DurationString};
#[cfg(test)]
use chrono::Utc;

/// Condition types written to `status.conditions`.
pub mod condition_types {
    /// The current credential was set, tested and delivered; consumers can rely on it.
    pub const READY: &str = "Ready";
    /// A rotation is in progress (`status.rotation` is set).
    pub const ROTATING: &str = "Rotating";
    /// The current credential reached every delivery target (Secret, rollouts, ECS).
    pub const DELIVERED: &str = "Delivered";
    /// The scheduled rotation time passed without a successful rotation (failing,
    /// suspended, or waiting for the window): what a compliance alert watches.
    pub const OVERDUE: &str = "Overdue";
    /// The target's declared configuration (a Vault database connection and static
    /// role) matches what was read back at the last drift check; `DriftCorrected` when
    /// it did not and was written back, False with the error when that failed.
    pub const TARGET_IN_SYNC: &str = "TargetInSync";
}

/// Condition reasons (CamelCase, stable: alerts and `kubectl wait` match on them): all of
/// them, in [`crate::reasons`].
pub use crate::reasons;

#[cfg(test)]
pub(crate) mod tests;
impl capstan_core::object_metrics::Summarize for SecretRotation {
    /// Readiness, the next rotation and the last successful one.
    fn summary(&self) -> capstan_core::object_metrics::Summary {
        use capstan_core::object_metrics::{Sample, Summary, ready_of};
        let Some(status) = self.status.as_ref() else {
            return Summary {
                ready: false,
                reason: "Unknown".to_owned(),
                samples: Vec::new(),
            };
        };
        let (ready, reason) = ready_of(&status.conditions);
        let mut samples = Vec::new();
        if let Some(t) = status.next_rotation_time {
            samples.push(Sample::new(
                "secret_rotation_next_rotation_timestamp_seconds",
                t.timestamp() as f64,
            ));
        }
        // Only when overdue: 10,000 zeros would only lengthen every scrape.
        if status
            .conditions
            .iter()
            .any(|c| c.type_ == "Overdue" && c.status == "True")
        {
            samples.push(Sample::new("secret_rotation_overdue", 1.0));
        }
        if let Some(t) = status.last_rotation_time {
            samples.push(Sample::new(
                "secret_rotation_last_rotation_timestamp_seconds",
                t.timestamp() as f64,
            ));
        }
        Summary {
            ready,
            reason,
            samples,
        }
    }
}

#[cfg(test)]
mod tests_status;
