//! The audit trail: one structured log line per rotation step and per delivery, under the
//! `tracing` target [`TARGET`] (`capstan::audit`).
//!
//! Every line carries the same fields: `object` (`namespace/name`), `backend` and
//! `target` (kinds, as in status), `workload` (for deliveries), `step`, `version` (a
//! backend version id, never a value), `rotation` and `attempt`, `outcome` and
//! `instance` (which Capstan did it). No field ever holds a secret value: the functions
//! here take no [`SecretValue`](capstan_core::redact::SecretValue) at all.
//!
//! Routing: with `--log-format json` every line is one JSON object whose `target` is
//! `capstan::audit`, so a log pipeline (Fluent Bit, Vector, Loki, CloudWatch Logs
//! subscription filters) routes them by that field to the audit store, e.g. Vector's
//! `route` transform with `.target == "capstan::audit"`, or Fluent Bit's `rewrite_tag`
//! on `$target`. `--log-level` can keep them when everything else is quieter:
//! `warn,capstan::audit=info`.

use crate::crd::{BackendKind, RotationStep, TargetKind};

/// The `tracing` target of audit lines.
pub const TARGET: &str = "capstan::audit";

/// Who did what to which object: the fields every audit line shares.
#[derive(Clone, Debug)]
pub struct Subject<'a> {
    /// `namespace/name` of the SecretRotation.
    pub object: &'a str,
    /// Backend kind.
    pub backend: BackendKind,
    /// Target kind.
    pub target: TargetKind,
    /// This Capstan's identity.
    pub instance: &'a str,
    /// The rotation's id.
    pub rotation: &'a str,
    /// The attempt.
    pub attempt: i32,
}

/// Records one rotation step (`outcome`: `done`, `retry`, `rejected`, `gave-up`,
/// `claim-lost`). `version` is a backend version id, never a value.
pub fn step(s: &Subject<'_>, step: RotationStep, version: Option<&str>, outcome: &str) {
    tracing::info!(
        target: TARGET,
        object = s.object,
        backend = s.backend.as_str(),
        target_kind = s.target.as_str(),
        step = step.as_str(),
        version = version.unwrap_or(""),
        rotation = s.rotation,
        attempt = s.attempt,
        outcome,
        instance = s.instance,
        "rotation step"
    );
}

/// Records one delivery action: a Secret written, a workload restarted, an ECS service
/// redeployed (`workload`: `Secret/name`, `Deployment/name`, `ecs:cluster/service`).
pub fn delivery(s: &Subject<'_>, workload: &str, version: &str, action: &str) {
    tracing::info!(
        target: TARGET,
        object = s.object,
        backend = s.backend.as_str(),
        target_kind = s.target.as_str(),
        step = RotationStep::Deliver.as_str(),
        workload,
        version,
        rotation = s.rotation,
        attempt = s.attempt,
        outcome = action,
        instance = s.instance,
        "delivery"
    );
}
