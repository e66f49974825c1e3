//! The audit lines of one pass, in the order of the steps ([`crate::audit`] says why):
//! a step's `done` line waits in the [`Trail`] until right before the status write that
//! records the step (the next claim, or the rotation's end), and a step found done
//! after a crash gets its line, marked recovered, at the same place. Lines that end a
//! step otherwise (retry, rejected, claim lost, gave up) are written at once, after the
//! waiting ones.

use crate::audit::{AuditRecord, StepOutcome};
use crate::crd::{RotationInProgress, RotationStep};

use super::pass::Pass;

/// A step's line not yet written.
struct Queued {
    rotation: String,
    attempt: i32,
    step: RotationStep,
    version: Option<String>,
    recovered: bool,
}

/// The lines a pass holds until its next status write.
#[derive(Default)]
pub(super) struct Trail {
    queued: Vec<Queued>,
}

impl Trail {
    /// `r`'s step `step` was done by this pass.
    pub(super) fn done(
        &mut self,
        r: &RotationInProgress,
        step: RotationStep,
        version: Option<String>,
    ) {
        self.push(r, step, version, false);
    }

    /// `r`'s step `step` was found done: another Capstan did it and died before its
    /// status write (and so before its line).
    pub(super) fn recovered(
        &mut self,
        r: &RotationInProgress,
        step: RotationStep,
        version: Option<String>,
    ) {
        self.push(r, step, version, true);
    }

    fn push(
        &mut self,
        r: &RotationInProgress,
        step: RotationStep,
        version: Option<String>,
        recovered: bool,
    ) {
        self.queued.push(Queued {
            rotation: r.id.clone(),
            attempt: r.attempt,
            step,
            version,
            recovered,
        });
    }

    /// Writes the waiting lines: right before the status write that records their
    /// steps. A recovered line this process wrote already (a pass that lost its claim
    /// to an edit of the object) is not written again.
    pub(super) fn flush(&mut self, pass: &Pass<'_>) {
        let written = &pass.ctx.audit_written;
        for q in self.queued.drain(..) {
            if q.recovered && written.contains(&pass.key, &q.rotation, q.attempt, q.step) {
                continue;
            }
            let subject = pass.subject_of(&q.rotation, q.attempt);
            let record = if q.recovered {
                AuditRecord::recovered(&subject, q.step, q.version.as_deref())
            } else {
                AuditRecord::step(&subject, q.step, q.version.as_deref(), StepOutcome::Done)
            };
            record.emit();
            written.insert(&pass.key, &q.rotation, q.attempt, q.step);
        }
    }

    /// Writes a line that ends a step otherwise than done (retry, rejected, claim lost,
    /// gave up), after the waiting ones.
    pub(super) fn now(
        &mut self,
        pass: &Pass<'_>,
        r: &RotationInProgress,
        version: Option<&str>,
        outcome: StepOutcome,
    ) {
        self.flush(pass);
        AuditRecord::step(&pass.subject(r), r.step, version, outcome).emit();
    }
}
