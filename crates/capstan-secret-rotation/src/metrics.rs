//! The SecretRotation controller's metrics, under `capstan_secret_rotation_`.

use capstan_core::metrics::ControllerMetrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::crd::RotationOutcome;

/// Label set of `rotations_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `succeeded` or `failed`.
    pub outcome: String,
}

/// The controller's metrics, under `capstan_secret_rotation_`.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Reconciles, failures, durations.
    pub controller: ControllerMetrics,
    rotations: Family<OutcomeLabels, Counter>,
    duration: Histogram,
    overdue: Gauge,
    stuck: Gauge,
    claims_lost: Counter,
    lease_renewals: Counter,
    lease_deadlines_missed: Counter,
}

impl Metrics {
    /// Registers the metrics.
    pub fn register(registry: &mut Registry) -> Self {
        let controller = ControllerMetrics::register(registry, "secret_rotation");
        let m = Self {
            controller,
            rotations: Family::default(),
            duration: Histogram::new(exponential_buckets(0.05, 2.0, 16)),
            overdue: Gauge::default(),
            stuck: Gauge::default(),
            claims_lost: Counter::default(),
            lease_renewals: Counter::default(),
            lease_deadlines_missed: Counter::default(),
        };
        let sub = registry.sub_registry_with_prefix("secret_rotation");
        sub.register(
            "rotations",
            "Finished rotations, by outcome (succeeded, failed)",
            m.rotations.clone(),
        );
        sub.register(
            "rotation_duration_seconds",
            "Time from a rotation's start to its end (delivery included), in seconds",
            m.duration.clone(),
        );
        sub.register(
            "objects_overdue",
            "SecretRotations whose scheduled rotation time passed without a successful rotation",
            m.overdue.clone(),
        );
        sub.register(
            "objects_stuck",
            "SecretRotations whose rotation in progress has run far longer than usual (condition Rotating, reason RotationStuck)",
            m.stuck.clone(),
        );
        sub.register(
            "claims_lost",
            "Status claims and fenced writes lost to a newer writer (another Capstan, an edit of the object): not failures, the newer view is taken next",
            m.claims_lost.clone(),
        );
        sub.register(
            "lease_renewals",
            "Leases of dynamic credentials that Vault extended at their deadline",
            m.lease_renewals.clone(),
        );
        sub.register(
            "lease_deadlines_missed",
            "Lease deadlines of dynamic credentials acted on only after the lease had expired (late renewals: the delivered credentials were dead meanwhile)",
            m.lease_deadlines_missed.clone(),
        );
        m
    }

    /// One lease deadline acted on after the lease expired.
    pub(crate) fn lease_deadline_missed(&self) {
        self.lease_deadlines_missed.inc();
    }

    /// One lease of dynamic credentials renewed.
    pub(crate) fn lease_renewed(&self) {
        self.lease_renewals.inc();
    }

    /// One status claim or fenced write lost to a newer writer.
    pub(crate) fn claim_lost(&self) {
        self.claims_lost.inc();
    }

    pub(crate) fn set_stuck(&self, n: usize) {
        self.stuck.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub(crate) fn rotation_finished(&self, outcome: RotationOutcome, seconds: f64) {
        let outcome = match outcome {
            RotationOutcome::Succeeded => "succeeded",
            RotationOutcome::Failed => "failed",
        };
        self.rotations
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
        self.duration.observe(seconds.max(0.0));
    }

    pub(crate) fn set_overdue(&self, n: usize) {
        self.overdue.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}
