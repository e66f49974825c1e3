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
//! | `recovered`   | `true` when the step was done by an instance that died before writing its line, and this instance found it done |
//! | `instance`    | which Capstan did it (for a recovered step: which one wrote the line) |
//!
//! and the message `rotation step` or `delivery`. No field ever holds a secret value:
//! the functions here take no [`SecretValue`](capstan_core::redact::SecretValue) at all.
//!
//! **Every step of every rotation has its line, exactly once.** A step's line is written
//! right before the status write that records the step done (the claim of the next step,
//! or the rotation's end). A Capstan killed between a step's side effect and that write
//! leaves the step recorded nowhere; the next one finds it done (the backend shows the
//! pending value, or the promotion; the target accepts the pending value) and writes
//! its line with `recovered: true`, before its own status write. The one window left is
//! a kill during that status write itself (one API round trip): the step's line is then
//! written again by the next Capstan, marked recovered; it is never lost.
//!
//! Routing: with `--log-format json` every line is one JSON object whose `target` is
//! `capstan::audit`, so a log pipeline (Fluent Bit, Vector, Loki, CloudWatch Logs
//! subscription filters) routes them by that field to the audit store, e.g. Vector's
//! `route` transform with `.target == "capstan::audit"`, or Fluent Bit's `rewrite_tag`
//! on `$target`. `--log-level` can keep them when everything else is quieter:
//! `warn,capstan::audit=info`.

use std::collections::HashMap;
use std::sync::Mutex;

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
    /// The step was found done, its line lost with the Capstan that did it.
    pub recovered: bool,
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
            recovered: false,
            instance: s.instance,
        }
    }

    /// The record of a step found done by this instance after another died before
    /// writing its line.
    pub fn recovered(s: &Subject<'a>, step: RotationStep, version: Option<&'a str>) -> Self {
        Self {
            recovered: true,
            ..Self::step(s, step, version, StepOutcome::Done)
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
                recovered = self.recovered,
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
                recovered = self.recovered,
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

/// The step lines this process wrote for each object's rotation attempt in progress.
/// A pass that lost a status claim (a user's edit came between) resumes from a status
/// that does not record the steps it did; this keeps it from writing them again as
/// recovered. Only a process that died forgets, and then its status says the rest.
/// An entry leaves when its rotation ends or its object is deleted.
#[derive(Debug, Default)]
pub struct Written {
    marks: Mutex<HashMap<String, Mark>>,
}

#[derive(Debug)]
struct Mark {
    rotation: String,
    attempt: i32,
    /// One bit per [`RotationStep::ALL`] index.
    steps: u8,
}

fn bit(step: RotationStep) -> u8 {
    let i = RotationStep::ALL
        .iter()
        .position(|s| *s == step)
        .unwrap_or_default();
    1 << i
}

impl Written {
    /// Whether this process wrote `step`'s line for this rotation attempt of `object`.
    pub fn contains(&self, object: &str, rotation: &str, attempt: i32, step: RotationStep) -> bool {
        let marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        marks.get(object).is_some_and(|m| {
            m.rotation == rotation && m.attempt == attempt && m.steps & bit(step) != 0
        })
    }

    /// Notes that this process wrote `step`'s line for this rotation attempt.
    pub fn insert(&self, object: &str, rotation: &str, attempt: i32, step: RotationStep) {
        let mut marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        let m = marks.entry(object.to_owned()).or_insert_with(|| Mark {
            rotation: rotation.to_owned(),
            attempt,
            steps: 0,
        });
        if m.rotation != rotation || m.attempt != attempt {
            *m = Mark {
                rotation: rotation.to_owned(),
                attempt,
                steps: 0,
            };
        }
        m.steps |= bit(step);
    }

    /// Forgets `object` (its rotation ended, or it was deleted).
    pub fn forget(&self, object: &str) {
        self.marks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(object);
    }

    /// How many objects have marks (rotations in progress in this process).
    pub fn len(&self) -> usize {
        self.marks.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether none has.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
            "recovered",
            "instance",
        ];
        want.sort_unstable();
        let mut got = keys.clone();
        got.sort_unstable();
        assert_eq!(got, want);
        assert_eq!(json["outcome"], "gave-up");
        assert_eq!(json["version"], "v7");
        assert_eq!(json["recovered"], false);
        let r = AuditRecord::recovered(&s, RotationStep::Finish, Some("v8"));
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(
            (json["outcome"].as_str(), json["recovered"].as_bool()),
            (Some("done"), Some(true))
        );

        let d = AuditRecord::delivery(&s, "EcsService/prod/api", "v7", DeliveryAction::Redeployed);
        let json = serde_json::to_value(&d).expect("json");
        assert_eq!(json["workload"], "EcsService/prod/api");
        assert_eq!(json["step"], RotationStep::Deliver.as_str());
        assert_eq!(json["outcome"], "redeployed");
    }

    #[test]
    fn written_marks_are_per_rotation_attempt() {
        let w = Written::default();
        w.insert("shop/db", "42", 1, RotationStep::CreatePending);
        assert!(w.contains("shop/db", "42", 1, RotationStep::CreatePending));
        assert!(!w.contains("shop/db", "42", 1, RotationStep::SetTarget));
        assert!(!w.contains("shop/db", "42", 2, RotationStep::CreatePending));
        w.insert("shop/db", "42", 2, RotationStep::SetTarget);
        assert!(!w.contains("shop/db", "42", 1, RotationStep::CreatePending));
        assert!(w.contains("shop/db", "42", 2, RotationStep::SetTarget));
        w.forget("shop/db");
        assert!(w.is_empty());
    }
}
