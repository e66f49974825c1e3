//! The conditions of a SecretRotation, as a pure function: from the status record and
//! what the pass knows beyond it ([`View`]) to the desired `Ready`, `Rotating`,
//! `Delivered` and `Overdue` conditions (after the connection gate's own). No client,
//! no clock: `now` is an input, so the table tests below need no server.

use capstan_core::conditions::{self, Desired, Status};
use chrono::{DateTime, Utc};

use crate::crd::{
    RotationOutcome, RotationStep, RotationTrigger, SecretRotationStatus, condition_types as ct,
    reasons,
};
use crate::rotation::{self, Policy};

/// What the conditions say beyond the status record.
pub(super) struct View<'a> {
    pub(super) policy: Option<&'a Policy>,
    pub(super) created: DateTime<Utc>,
    pub(super) now: DateTime<Utc>,
    pub(super) idle_reason: &'static str,
    pub(super) ready_override: Option<(&'static str, String)>,
    pub(super) delivery_empty: bool,
    pub(super) gate: Vec<Desired<'static>>,
    /// `--rotation-stuck-after`: the least a rotation runs before it is called stuck.
    pub(super) stuck_after: std::time::Duration,
}

/// The desired conditions: the gate's, then `Ready`, `Rotating`, `Delivered` and
/// `Overdue`, from the record in `status` and `view`.
pub(super) fn desired(status: &SecretRotationStatus, view: View<'_>) -> Vec<Desired<'static>> {
    let late = view
        .policy
        .is_some_and(|p| rotation::overdue(p, status, view.created, view.now));
    let mut desired = view.gate;
    desired.push(ready(status, view.ready_override));
    desired.push(rotating(
        status,
        view.idle_reason,
        view.stuck_after,
        view.now,
    ));
    desired.push(delivered(status, view.delivery_empty));
    desired.push(overdue(late));
    desired
}

/// Sets the four conditions (plus the gate's) on `status` from the record and `view`,
/// and `observedGeneration`.
pub(super) fn set_conditions(
    status: &mut SecretRotationStatus,
    generation: Option<i64>,
    view: View<'_>,
) {
    let now = view.now;
    let desired = desired(status, view);
    status.observed_generation = generation;
    for d in desired {
        conditions::set(&mut status.conditions, d, generation, now);
    }
}

fn ready(
    status: &SecretRotationStatus,
    ready_override: Option<(&'static str, String)>,
) -> Desired<'static> {
    let last_failed = status.recent_rotations.first().filter(|r| {
        r.outcome == RotationOutcome::Failed
            && status.last_rotation_time.is_none_or(|t| t < r.finished)
    });
    match (ready_override, last_failed) {
        (Some((reason, msg)), _) => Desired::new(ct::READY, false, reason, msg),
        (None, Some(f)) => Desired::new(
            ct::READY,
            false,
            reasons::ROTATION_FAILED,
            format!(
                "rotation {} failed after {} attempt(s) ({}); the previous credential stays current",
                f.id,
                f.attempts,
                f.failure_reason.as_deref().unwrap_or("unknown")
            ),
        ),
        (None, None) if status.last_rotation_time.is_some() => Desired::new(
            ct::READY,
            true,
            reasons::CREDENTIAL_CURRENT,
            format!(
                "version {} is current, tested and delivered",
                status.current_version.as_deref().unwrap_or("-")
            ),
        ),
        (None, None) => Desired::new(
            ct::READY,
            Status::Unknown,
            reasons::AWAITING_FIRST_ROTATION,
            "no rotation has completed yet",
        ),
    }
}

fn rotating(
    status: &SecretRotationStatus,
    idle_reason: &'static str,
    stuck_after: std::time::Duration,
    now: DateTime<Utc>,
) -> Desired<'static> {
    match &status.rotation {
        // Stable while stuck (no running time in it): no status write per pass.
        Some(r) if rotation::stuck(status, stuck_after, now).is_some() => Desired::new(
            ct::ROTATING,
            true,
            reasons::ROTATION_STUCK,
            format!(
                "rotation {} has been at step {} (attempt {}) since it started at {}, past {} \
                 ({}x its usual rotation, at least --rotation-stuck-after); see status.lastFailure and the manager's log",
                r.id,
                r.step.as_str(),
                r.attempt,
                r.started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                capstan_core::schedule::format_duration(rotation::stuck_after(status, stuck_after)),
                rotation::STUCK_FACTOR,
            ),
        ),
        Some(r) => {
            let retrying = r.attempt > 1
                || status
                    .last_failure
                    .as_ref()
                    .is_some_and(|f| f.time() >= r.started);
            let reason = match (retrying, r.trigger) {
                (true, _) => reasons::RETRYING,
                (false, RotationTrigger::Initial) => reasons::INITIAL_ROTATION,
                (false, RotationTrigger::Schedule) => reasons::SCHEDULED,
                (false, RotationTrigger::RotateNow) => reasons::ROTATE_NOW_REQUESTED,
                (false, RotationTrigger::TargetRotated) => reasons::TARGET_ROTATED,
            };
            Desired::new(
                ct::ROTATING,
                true,
                reason,
                format!(
                    "rotation {}: step {}, attempt {}",
                    r.id,
                    r.step.as_str(),
                    r.attempt
                ),
            )
        }
        None => Desired::new(
            ct::ROTATING,
            false,
            idle_reason,
            match idle_reason {
                reasons::SUSPENDED => "spec.suspend is true".to_owned(),
                reasons::OUTSIDE_WINDOW => "a rotation is due; waiting for the window".into(),
                _ => "no rotation due".into(),
            },
        ),
    }
}

fn delivered(status: &SecretRotationStatus, delivery_empty: bool) -> Desired<'static> {
    if delivery_empty {
        Desired::new(
            ct::DELIVERED,
            true,
            reasons::NOTHING_TO_DELIVER,
            "spec.delivery is empty",
        )
    } else if status
        .rotation
        .as_ref()
        .is_some_and(|r| r.step == RotationStep::Deliver)
    {
        Desired::new(
            ct::DELIVERED,
            false,
            reasons::DELIVERY_IN_PROGRESS,
            "waiting for the delivery of the new version",
        )
    } else if status.last_rotation_time.is_some() {
        Desired::new(
            ct::DELIVERED,
            true,
            reasons::DELIVERED,
            format!(
                "version {} delivered",
                status.current_version.as_deref().unwrap_or("-")
            ),
        )
    } else {
        Desired::new(
            ct::DELIVERED,
            Status::Unknown,
            reasons::AWAITING_FIRST_ROTATION,
            "nothing delivered yet",
        )
    }
}

fn overdue(late: bool) -> Desired<'static> {
    if late {
        Desired::new(
            ct::OVERDUE,
            true,
            reasons::ROTATION_OVERDUE,
            "the scheduled rotation time passed without a successful rotation",
        )
    } else {
        Desired::new(ct::OVERDUE, false, reasons::ON_SCHEDULE, "on schedule")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{RotationInProgress, RotationSummary};

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    fn view(idle: &'static str, delivery_empty: bool) -> View<'static> {
        View {
            policy: None,
            created: at("2026-01-01T00:00:00Z"),
            now: at("2026-01-02T00:00:00Z"),
            idle_reason: idle,
            ready_override: None,
            delivery_empty,
            gate: Vec::new(),
            stuck_after: std::time::Duration::from_secs(7 * 86_400),
        }
    }

    fn in_progress(step: RotationStep, attempt: i32) -> RotationInProgress {
        RotationInProgress {
            id: "7".into(),
            trigger: RotationTrigger::Schedule,
            step,
            attempt,
            rotate_now_token: None,
            started: at("2026-01-01T12:00:00Z"),
            pending_version: None,
            username: None,
            preexisting: None,
            lease: None,
        }
    }

    /// One (type, status, reason) per condition, in the order written.
    fn summary(status: &SecretRotationStatus, v: View<'_>) -> Vec<(String, Status, String)> {
        desired(status, v)
            .into_iter()
            .map(|d| (d.type_.to_owned(), d.status, d.reason.to_owned()))
            .collect()
    }

    fn row(t: &str, s: Status, r: &str) -> (String, Status, String) {
        (t.to_owned(), s, r.to_owned())
    }

    /// A new object: nothing completed, nothing rotating, on schedule.
    #[test]
    fn a_new_object_awaits_its_first_rotation() {
        let st = SecretRotationStatus::default();
        assert_eq!(
            summary(&st, view(reasons::IDLE, false)),
            vec![
                row(ct::READY, Status::Unknown, reasons::AWAITING_FIRST_ROTATION),
                row(ct::ROTATING, Status::False, reasons::IDLE),
                row(
                    ct::DELIVERED,
                    Status::Unknown,
                    reasons::AWAITING_FIRST_ROTATION
                ),
                row(ct::OVERDUE, Status::False, reasons::ON_SCHEDULE),
            ]
        );
    }

    /// A rotation past its stuck time says so in Rotating (Ready stays as the current
    /// credential is), with a message that does not change from pass to pass.
    #[test]
    fn a_rotation_far_past_its_usual_time_is_stuck() {
        let st = SecretRotationStatus {
            last_rotation_time: Some(at("2026-01-01T11:00:00Z")),
            rotation: Some(in_progress(RotationStep::SetTarget, 1)),
            ..SecretRotationStatus::default()
        };
        let mut v = view(reasons::IDLE, false);
        v.stuck_after = std::time::Duration::from_secs(120);
        let first = desired(&st, v);
        let rotating = first
            .iter()
            .find(|d| d.type_ == ct::ROTATING)
            .expect("Rotating");
        assert_eq!(rotating.reason, reasons::ROTATION_STUCK);
        assert!(
            rotating.message.contains("step SetTarget"),
            "{}",
            rotating.message
        );
        assert!(rotating.message.contains("past 2m"), "{}", rotating.message);
        let ready = first.iter().find(|d| d.type_ == ct::READY).expect("Ready");
        assert_eq!(ready.reason, reasons::CREDENTIAL_CURRENT);
        let mut later = view(reasons::IDLE, false);
        later.stuck_after = std::time::Duration::from_secs(120);
        later.now = at("2026-01-03T00:00:00Z");
        let again = desired(&st, later);
        let rotating_again = again
            .iter()
            .find(|d| d.type_ == ct::ROTATING)
            .expect("Rotating");
        assert_eq!(rotating_again.message, rotating.message);
        // Within its time: the usual reason.
        let mut early = view(reasons::IDLE, false);
        early.stuck_after = std::time::Duration::from_secs(120);
        early.now = at("2026-01-01T12:01:00Z");
        let fine = desired(&st, early);
        let r = fine
            .iter()
            .find(|d| d.type_ == ct::ROTATING)
            .expect("Rotating");
        assert_eq!(r.reason, reasons::SCHEDULED);
    }

    /// Table: each state of the record gives its Ready, Rotating and Delivered reasons.
    #[test]
    fn conditions_follow_the_record() {
        let done = SecretRotationStatus {
            last_rotation_time: Some(at("2026-01-01T13:00:00Z")),
            current_version: Some("v2".into()),
            ..SecretRotationStatus::default()
        };
        let delivering = SecretRotationStatus {
            rotation: Some(in_progress(RotationStep::Deliver, 1)),
            ..done.clone()
        };
        let retrying = SecretRotationStatus {
            rotation: Some(in_progress(RotationStep::SetTarget, 2)),
            ..done.clone()
        };
        let mut failed = done.clone();
        failed.recent_rotations.push(RotationSummary {
            id: "8".into(),
            trigger: RotationTrigger::Schedule,
            started: at("2026-01-01T14:00:00Z"),
            finished: at("2026-01-01T14:01:00Z"),
            outcome: RotationOutcome::Failed,
            attempts: 3,
            version: None,
            username: None,
            failure_reason: Some("LoginFailed".into()),
        });
        let cases: [(&SecretRotationStatus, &'static str, bool, [&str; 3]); 6] = [
            (
                &done,
                reasons::IDLE,
                false,
                [
                    reasons::CREDENTIAL_CURRENT,
                    reasons::IDLE,
                    reasons::DELIVERED,
                ],
            ),
            (
                &done,
                reasons::SUSPENDED,
                true,
                [
                    reasons::CREDENTIAL_CURRENT,
                    reasons::SUSPENDED,
                    reasons::NOTHING_TO_DELIVER,
                ],
            ),
            (
                &done,
                reasons::OUTSIDE_WINDOW,
                false,
                [
                    reasons::CREDENTIAL_CURRENT,
                    reasons::OUTSIDE_WINDOW,
                    reasons::DELIVERED,
                ],
            ),
            (
                &delivering,
                reasons::IDLE,
                false,
                [
                    reasons::CREDENTIAL_CURRENT,
                    reasons::SCHEDULED,
                    reasons::DELIVERY_IN_PROGRESS,
                ],
            ),
            (
                &retrying,
                reasons::IDLE,
                false,
                [
                    reasons::CREDENTIAL_CURRENT,
                    reasons::RETRYING,
                    reasons::DELIVERED,
                ],
            ),
            (
                &failed,
                reasons::IDLE,
                false,
                [reasons::ROTATION_FAILED, reasons::IDLE, reasons::DELIVERED],
            ),
        ];
        for (status, idle, empty, want) in cases {
            let got: Vec<String> = desired(status, view(idle, empty))
                .into_iter()
                .take(3)
                .map(|d| d.reason.to_owned())
                .collect();
            assert_eq!(got, want, "{status:?} idle={idle} empty={empty}");
        }
    }

    /// An override (invalid spec, unresolved reference) wins over the record, and the
    /// gate's conditions come first.
    #[test]
    fn an_override_sets_ready_false_after_the_gate() {
        let st = SecretRotationStatus {
            last_rotation_time: Some(at("2026-01-01T13:00:00Z")),
            ..SecretRotationStatus::default()
        };
        let mut v = view(reasons::IDLE, false);
        v.ready_override = Some((reasons::INVALID_SPEC, "bad".into()));
        v.gate = vec![Desired::new("ConnectionReady", true, "Ready", "ok")];
        let got = desired(&st, v);
        assert_eq!(got[0].type_, "ConnectionReady");
        assert_eq!(
            (
                got[1].type_,
                got[1].status,
                got[1].reason,
                got[1].message.as_str()
            ),
            (ct::READY, Status::False, reasons::INVALID_SPEC, "bad")
        );
    }
}
