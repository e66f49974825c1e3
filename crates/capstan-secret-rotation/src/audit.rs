//! The audit trail: one structured log line per rotation step and per delivery, under the
//! `tracing` target [`TARGET`] (`capstan::audit`). The line is a compliance schema: its
//! fields are those of [`AuditRecord`], and they do not change.
//!
//! | field         | value                                                                 |
//! |---------------|-----------------------------------------------------------------------|
//! | `object`      | `namespace/name` of the SecretRotation                                |
//! | `backend`     | backend kind, as in status (`kubernetes`, `vault`, `awsSecretsManager`) |
//! | `target_kind` | target kind, as in status (`postgres`, `mysql`, `none`)               |
//! | `step`        | the rotation step (`Deliver` for deliveries)                          |
//! | `workload`    | deliveries only: `Secret/<name>`, `Deployment/<name>`, `StatefulSet/<name>`, `DaemonSet/<name>`, `EcsService/<cluster>/<service>` |
//! | `version`     | a backend version id, never a value (empty when there is none)        |
//! | `rotation`    | the rotation's id                                                     |
//! | `attempt`     | the attempt number                                                    |
//! | `outcome`     | steps: [`StepOutcome`]; deliveries: [`DeliveryAction`]                |
//! | `instance`    | which Capstan did it                                                  |
//!
//! and the message `rotation step` or `delivery`. No field ever holds a secret value:
//! the functions here take no [`SecretValue`](capstan_core::redact::SecretValue) at all.
//!
//! Routing: with `--log-format json` every line is one JSON object whose `target` is
//! `capstan::audit`, so a log pipeline (Fluent Bit, Vector, Loki, CloudWatch Logs
//! subscription filters) routes them by that field to the audit store, e.g. Vector's
//! `route` transform with `.target == "capstan::audit"`, or Fluent Bit's `rewrite_tag`
//! on `$target`. `--log-level` can keep them when everything else is quieter:
//! `warn,capstan::audit=info`.

use serde::Serialize;

use crate::crd::{BackendKind, RotationStep, TargetKind};
pub use crate::reasons::{DeliveryAction, StepOutcome};

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

/// One audit line: the fields listed in the [module documentation](self), in the order
/// they are written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditRecord<'a> {
    /// `namespace/name` of the SecretRotation.
    pub object: &'a str,
    /// Backend kind.
    pub backend: &'static str,
    /// Target kind.
    pub target_kind: &'static str,
    /// The rotation step.
    pub step: &'static str,
    /// Deliveries only: what was delivered to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<&'a str>,
    /// A backend version id, never a value.
    pub version: &'a str,
    /// The rotation's id.
    pub rotation: &'a str,
    /// The attempt.
    pub attempt: i32,
    /// What happened.
    pub outcome: &'static str,
    /// This Capstan's identity.
    pub instance: &'a str,
}

impl<'a> AuditRecord<'a> {
    /// The record of one rotation step.
    pub fn step(
        s: &Subject<'a>,
        step: RotationStep,
        version: Option<&'a str>,
        outcome: StepOutcome,
    ) -> Self {
        Self {
            object: s.object,
            backend: s.backend.as_str(),
            target_kind: s.target.as_str(),
            step: step.as_str(),
            workload: None,
            version: version.unwrap_or(""),
            rotation: s.rotation,
            attempt: s.attempt,
            outcome: outcome.as_str(),
            instance: s.instance,
        }
    }

    /// The record of one delivery action.
    pub fn delivery(
        s: &Subject<'a>,
        workload: &'a str,
        version: &'a str,
        action: DeliveryAction,
    ) -> Self {
        Self {
            workload: Some(workload),
            version,
            outcome: action.as_str(),
            ..Self::step(s, RotationStep::Deliver, None, StepOutcome::Done)
        }
    }

    /// Writes the line.
    pub fn emit(&self) {
        match self.workload {
            None => tracing::info!(
                target: TARGET,
                object = self.object,
                backend = self.backend,
                target_kind = self.target_kind,
                step = self.step,
                version = self.version,
                rotation = self.rotation,
                attempt = self.attempt,
                outcome = self.outcome,
                instance = self.instance,
                "rotation step"
            ),
            Some(workload) => tracing::info!(
                target: TARGET,
                object = self.object,
                backend = self.backend,
                target_kind = self.target_kind,
                step = self.step,
                workload,
                version = self.version,
                rotation = self.rotation,
                attempt = self.attempt,
                outcome = self.outcome,
                instance = self.instance,
                "delivery"
            ),
        }
    }
}

/// Records one rotation step. `version` is a backend version id, never a value.
pub fn step(s: &Subject<'_>, step: RotationStep, version: Option<&str>, outcome: StepOutcome) {
    AuditRecord::step(s, step, version, outcome).emit();
}

/// Records one delivery action: a Secret written, a workload restarted, an ECS service
/// redeployed (`workload` as in the module documentation).
pub fn delivery(s: &Subject<'_>, workload: &str, version: &str, action: DeliveryAction) {
    AuditRecord::delivery(s, workload, version, action).emit();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject() -> Subject<'static> {
        Subject {
            object: "shop/db",
            backend: BackendKind::Vault,
            target: TargetKind::Postgres,
            instance: "capstan-0",
            rotation: "42",
            attempt: 2,
        }
    }

    /// The record's field names are the documented schema, in order; a step has no
    /// `workload`.
    #[test]
    fn records_carry_the_documented_fields() {
        let s = subject();
        let step = AuditRecord::step(&s, RotationStep::SetTarget, Some("v7"), StepOutcome::GaveUp);
        let json = serde_json::to_value(&step).expect("json");
        let keys: Vec<&str> = json
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut want = vec![
            "object",
            "backend",
            "target_kind",
            "step",
            "version",
            "rotation",
            "attempt",
            "outcome",
            "instance",
        ];
        want.sort_unstable();
        let mut got = keys.clone();
        got.sort_unstable();
        assert_eq!(got, want);
        assert_eq!(json["outcome"], "gave-up");
        assert_eq!(json["version"], "v7");

        let d = AuditRecord::delivery(&s, "EcsService/prod/api", "v7", DeliveryAction::Redeployed);
        let json = serde_json::to_value(&d).expect("json");
        assert_eq!(json["workload"], "EcsService/prod/api");
        assert_eq!(json["step"], RotationStep::Deliver.as_str());
        assert_eq!(json["outcome"], "redeployed");
    }
}
