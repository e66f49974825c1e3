//! What each step of a rotation does, and how a pass runs them: claim, one side effect,
//! record, until the rotation finishes, waits, or fails. Which step comes next is
//! [`crate::rotation`]'s decision (`resume`, `after_step`); this module only carries
//! the steps out and records their results (status, audit line, Event).

use std::time::Duration;

use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use super::pass::{DELIVERY_POLL, Error, Pass, crash_point, events, requeue_at};
use super::status::Writer;
use super::trail::Trail;
use crate::audit::StepOutcome;
use crate::backend::{BackendError, Credential, RotationId, SecretBackend, Version};
use crate::context::Clients;
use crate::crd::{
    Retiring, RotationFailure, RotationInProgress, RotationOutcome, RotationStep, RotationSummary,
    SecretRotationStatus, reasons,
};
use crate::generator::PasswordGenerator;
use crate::rotation::{self, BackendView, Outcome, Resume, Transition, Users};
use crate::targets::{CredentialTarget, TargetError};

mod deliver;
use deliver::deliver;

/// How one step ended, with what the record needs.
enum StepResult {
    Done(Option<String>),
    Waiting,
    Transient {
        reason: &'static str,
        message: String,
        /// The backend refused Capstan's credentials.
        access_denied: bool,
    },
    Rejected(&'static str, String),
    ClaimLost(String),
}

/// A transient failure (retried with backoff).
fn transient(reason: &'static str, message: impl ToString) -> StepResult {
    StepResult::Transient {
        reason,
        message: message.to_string(),
        access_denied: false,
    }
}

fn from_backend(e: BackendError) -> StepResult {
    if e.is_conflict() {
        StepResult::ClaimLost(e.to_string())
    } else {
        StepResult::Transient {
            reason: e.reason(),
            message: e.to_string(),
            access_denied: e.is_access_denied(),
        }
    }
}

fn from_target(e: TargetError, testing: bool) -> StepResult {
    if matches!(e, TargetError::Fenced { .. }) {
        // A newer attempt wrote the database: this Capstan is stale.
        return StepResult::ClaimLost(e.to_string());
    }
    let login_failed = matches!(e, TargetError::LoginFailed { .. });
    if e.is_definitive_rejection() || (testing && login_failed) {
        StepResult::Rejected(e.reason(), e.to_string())
    } else {
        transient(e.reason(), e)
    }
}

fn delivery_failed(e: impl ToString) -> StepResult {
    transient(reasons::DELIVERY_FAILED, e)
}

fn pending_lost() -> StepResult {
    StepResult::Rejected(
        reasons::PENDING_LOST,
        "the pending value of this attempt is gone".into(),
    )
}

/// Runs the steps of the rotation in progress: claim, one side effect, record, until it
/// finishes, waits, or fails. `started`: this pass has just claimed a new rotation, so
/// the backend can hold nothing of it (its token is new) and need not be read again.
pub(super) async fn run_steps(
    pass: &Pass<'_>,
    w: &mut Writer,
    clients: &Clients,
    started: bool,
) -> Result<Action, Error> {
    let mut st = w.status();
    let Some(r) = st.rotation.clone() else {
        return Ok(Action::requeue(Duration::from_millis(200)));
    };
    let mut trail = Trail::default();
    let (mut r, mut claimed) = match resume(pass, clients, &mut st, r, started, &mut trail).await {
        Ok(resumed) => resumed,
        Err((r, result)) => return record_result(pass, w, st, r, result, &mut trail).await,
    };

    // A pass that resumes works from a snapshot that may be stale (a Capstan frozen past
    // its lease, a lagging watch). CreatePending is the one side effect without a fence
    // of its own (a backend's pending write is idempotent per token, not conditioned on
    // the rotation still being in progress), so it is claimed again: a write conditioned
    // on the resourceVersion read, which a stale snapshot fails (and which changes
    // nothing when the snapshot is current).
    if !started && r.step == RotationStep::CreatePending {
        claimed = false;
    }
    // A Capstan that died between SetTarget and its record: when the target already
    // accepts this attempt's pending value, that login test is TestTarget, and the
    // password is not written again.
    let mut found = None;
    if !started && claimed && pass.has_target && r.step == RotationStep::SetTarget {
        match already_set(pass, clients, &r).await {
            Ok(Some(version)) => {
                trail.recovered(&r, RotationStep::SetTarget, Some(version.clone()));
                r.step = RotationStep::TestTarget;
                found = Some(StepResult::Done(Some(version)));
            }
            Ok(None) => {}
            Err(result) => return record_result(pass, w, st, r, result, &mut trail).await,
        }
    }
    loop {
        if !claimed {
            st.rotation = Some(r.clone());
            pass.finish_status(&mut st, reasons::IDLE, None);
            trail.flush(pass);
            w.write(&st).await?;
        }
        let result = match found.take() {
            Some(result) => result,
            None => execute(pass, w, &mut st, &r, clients).await,
        };
        // What the step recorded about the target stays with the rotation (every attempt).
        if let Some(rec) = st.rotation.as_ref().filter(|rec| rec.id == r.id) {
            if r.preexisting.is_none() {
                r.preexisting.clone_from(&rec.preexisting);
            }
            // The lease of credentials this step obtained, written with the next
            // step's claim, before anything delivers them.
            if rec.lease.is_some() {
                r.lease.clone_from(&rec.lease);
            }
        }
        match result {
            StepResult::Done(version) => {
                record_done(pass, &mut trail, &mut r, version);
                match after(pass, &r, Outcome::Done) {
                    Transition::Advance(next) => {
                        claimed = !rotation::needs_claim(next.step, !pass.delivery_empty);
                        r = next;
                    }
                    Transition::Finished => return finish(pass, w, st, r, &mut trail).await,
                    // Done never retries or gives up.
                    _ => {
                        trail.flush(pass);
                        return Ok(Action::requeue(Duration::from_millis(200)));
                    }
                }
            }
            StepResult::Rejected(reason, msg) => {
                let version = r.pending_version.clone();
                trail.now(pass, &r, version.as_deref(), StepOutcome::Rejected);
                match after(pass, &r, Outcome::Rejected) {
                    Transition::NewAttempt(next) => {
                        new_attempt(pass, clients, &mut st, &r, reason, &msg).await;
                        r = next;
                        claimed = false;
                    }
                    _ => return give_up(pass, w, st, r, clients, (reason, &msg), &mut trail).await,
                }
            }
            other => return record_result(pass, w, st, r, other, &mut trail).await,
        }
    }
}

fn after(pass: &Pass<'_>, r: &RotationInProgress, outcome: Outcome) -> Transition {
    rotation::after_step(r, outcome, pass.has_target, pass.policy.max_attempts, 0)
}

/// A step is done: its audit line waits for the status write that records it (the
/// crash point after the side effect comes first, so a crash there leaves the step to
/// be found again, with its line recovered), and the pending version is kept in the
/// record the next claims write (and the audit lines of the later steps carry).
fn record_done(
    pass: &Pass<'_>,
    trail: &mut Trail,
    r: &mut RotationInProgress,
    version: Option<String>,
) {
    crash_point(&format!("secret-rotation::after-{}", r.step.as_str()));
    trail.done(r, r.step, version.clone());
    pass.ctx.succeeded(&pass.key);
    if r.step == RotationStep::CreatePending {
        r.pending_version = version;
    }
}

/// Whether the target already accepts this attempt's pending value (its version, if
/// so). `None` when the login is refused: SetTarget runs.
async fn already_set(
    pass: &Pass<'_>,
    clients: &Clients,
    r: &RotationInProgress,
) -> Result<Option<String>, StepResult> {
    let v = pending(clients.backend.as_ref(), &pass.id(r)).await?;
    let user = login_of(&v, r.username.as_deref().unwrap_or_default());
    match clients.target.test_login(&user, &v.credential.value).await {
        Ok(()) => Ok(Some(v.id)),
        Err(TargetError::LoginFailed { .. }) => Ok(None),
        Err(e) => Err(from_target(e, false)),
    }
}

/// An attempt was rejected and another is allowed: discard its pending value, record
/// the failure, tell the user.
async fn new_attempt(
    pass: &Pass<'_>,
    clients: &Clients,
    st: &mut SecretRotationStatus,
    r: &RotationInProgress,
    reason: &'static str,
    msg: &str,
) {
    let _ = clients.backend.discard_pending(&pass.id(r)).await;
    let now = pass.ctx.rt.clock.now();
    st.last_failure = Some(RotationFailure::new(now, r.step, reason, msg, &[]));
    pass.event(
        EventType::Warning,
        events::ATTEMPT_FAILED,
        format!(
            "rotation {} attempt {} failed at {}: {reason}; trying a fresh value",
            r.id,
            r.attempt,
            r.step.as_str()
        ),
    )
    .await;
}

/// Resumes from what the backend shows (after a crash, or a takeover): the record at
/// the step [`rotation::resume`] says, and whether that step is already claimed. The
/// steps between the claimed one and that were done by a Capstan that died before
/// recording them: their lines go to `trail`, recovered. `Err` is a result that ends
/// this pass.
async fn resume(
    pass: &Pass<'_>,
    clients: &Clients,
    st: &mut SecretRotationStatus,
    mut r: RotationInProgress,
    started: bool,
    trail: &mut Trail,
) -> Result<(RotationInProgress, bool), (RotationInProgress, StepResult)> {
    if started {
        return Ok((r, true));
    }
    let backend = clients.backend.as_ref();
    let id = pass.id(&r);
    let current = match backend.current().await {
        Ok(c) => c,
        Err(e) => return Err((r, from_backend(e))),
    };
    let pending = match backend.pending(&id).await {
        Ok(p) => p,
        Err(e) => return Err((r, from_backend(e))),
    };
    let token = id.token();
    let view = BackendView {
        promoted: current
            .as_ref()
            .is_some_and(|v| v.rotation_token.as_deref() == Some(token.as_str())),
        pending: pending.is_some(),
    };
    let resumed = match rotation::resume(r.step, view) {
        Resume::Run(step) => Resume::Run(rotation::resumed_step(step, pass.has_target)),
        other => other,
    };
    match resumed {
        Resume::Run(step) if step != r.step => {
            let pending_id = r
                .pending_version
                .clone()
                .or_else(|| pending.as_ref().map(|v| v.id.clone()));
            let current_id = current.as_ref().map(|v| v.id.clone());
            for d in rotation::steps_done_between(r.step, step, pass.has_target) {
                let version = if d >= RotationStep::Finish {
                    current_id.clone()
                } else {
                    pending_id.clone()
                };
                trail.recovered(&r, d, version);
            }
            if view.promoted
                && st.current_version.as_deref() != current.as_ref().map(|v| v.id.as_str())
            {
                st.previous_version = st.current_version.take();
                st.current_version = current.as_ref().map(|v| v.id.clone());
                // As promote sets it: the stored credential's username (an issued
                // key's id), else the rotation's.
                st.active_username = current
                    .as_ref()
                    .and_then(|v| v.credential.username.clone())
                    .or_else(|| r.username.clone());
            }
            if r.pending_version.is_none() {
                r.pending_version = pending_id;
            }
            r.step = step;
            Ok((r, false))
        }
        Resume::Run(_) => Ok((r, true)),
        Resume::PendingLost => Err((r, pending_lost())),
    }
}

/// Records a result that ends this pass (waiting, transient failure, lost claim,
/// rejection found while resuming).
async fn record_result(
    pass: &Pass<'_>,
    w: &mut Writer,
    mut st: SecretRotationStatus,
    r: RotationInProgress,
    result: StepResult,
    trail: &mut Trail,
) -> Result<Action, Error> {
    let now = pass.ctx.rt.clock.now();
    let version = r.pending_version.clone();
    let version = version.as_deref();
    match result {
        StepResult::Waiting | StepResult::Done(_) => {
            st.rotation = Some(r);
            pass.finish_status(&mut st, reasons::IDLE, None);
            trail.flush(pass);
            if st != w.status() {
                w.write(&st).await?;
            }
            Ok(Action::requeue(DELIVERY_POLL))
        }
        StepResult::Transient {
            reason,
            message: msg,
            access_denied,
        } => {
            pass.forget_login_if_denied(access_denied);
            trail.now(pass, &r, version, StepOutcome::Retry);
            tracing::info!(kind = "SecretRotation", object = %pass.key, step = r.step.as_str(), reason, "step failed, will retry: {msg}");
            st.last_failure = Some(RotationFailure::new(now, r.step, reason, &msg, &[]));
            st.rotation = Some(r);
            pass.finish_status(&mut st, reasons::IDLE, None);
            w.write(&st).await?;
            Ok(Action::requeue(rotation::retry_after(
                pass.ctx.failed(&pass.key),
                &pass.key,
            )))
        }
        StepResult::ClaimLost(msg) => {
            // Someone newer did or does this step: not a failure. The newer view comes
            // through the watch.
            trail.now(pass, &r, version, StepOutcome::ClaimLost);
            pass.ctx.metrics.claim_lost();
            tracing::debug!(kind = "SecretRotation", object = %pass.key, step = r.step.as_str(), "claim lost: {msg}");
            Ok(Action::requeue(Duration::from_secs(1)))
        }
        StepResult::Rejected(reason, msg) => {
            // Found while resuming: a new attempt, claimed, then the next pass goes on.
            match after(pass, &r, Outcome::Rejected) {
                Transition::NewAttempt(next) => {
                    st.last_failure = Some(RotationFailure::new(now, r.step, reason, &msg, &[]));
                    st.rotation = Some(next);
                    pass.finish_status(&mut st, reasons::IDLE, None);
                    trail.flush(pass);
                    w.write(&st).await?;
                    Ok(Action::requeue(Duration::from_millis(100)))
                }
                // No clients needed: nothing was set with a value of this attempt that
                // the backend still holds.
                _ => finish_failed(pass, w, st, r, (reason, &msg), trail).await,
            }
        }
    }
}

/// Runs one step's side effect.
async fn execute(
    pass: &Pass<'_>,
    w: &mut Writer,
    st: &mut SecretRotationStatus,
    r: &RotationInProgress,
    clients: &Clients,
) -> StepResult {
    let id = pass.id(r);
    let backend = clients.backend.as_ref();
    let target = clients.target.as_ref();
    let user = r.username.clone().unwrap_or_default();
    match r.step {
        RotationStep::CreatePending => {
            if clients.target.issues_values()
                && r.preexisting.is_none()
                && let Err(result) = record_inventory(w, st, clients).await
            {
                return result;
            }
            create_pending(pass, st, r, clients, &id).await
        }
        RotationStep::SetTarget => match pending(backend, &id).await {
            Ok(v) => {
                let user = login_of(&v, &user);
                set_target(pass, r, target, &user, v).await
            }
            Err(res) => res,
        },
        RotationStep::TestTarget => match pending(backend, &id).await {
            Ok(v) => match target
                .test_login(&login_of(&v, &user), &v.credential.value)
                .await
            {
                Ok(()) => StepResult::Done(Some(v.id)),
                Err(e) => from_target(e, true),
            },
            Err(res) => res,
        },
        RotationStep::Finish => promote(st, r, backend, &id).await,
        RotationStep::Deliver => deliver(pass, w, r, clients).await,
    }
}

/// Records the target's credentials in the rotation's status before it first issues
/// one ([`RotationInProgress::preexisting`]), with a write conditioned on the object
/// read, as a claim.
async fn record_inventory(
    w: &mut Writer,
    st: &mut SecretRotationStatus,
    clients: &Clients,
) -> Result<(), StepResult> {
    let stored = clients.backend.current().await.map_err(from_backend)?;
    let inventory = clients
        .target
        .inventory(stored.as_ref().map(|v| &v.credential.value))
        .await
        .map_err(|e| from_target(e, false))?;
    if let Some(rec) = st.rotation.as_mut() {
        rec.preexisting = Some(inventory);
    }
    match w.write(st).await {
        Ok(()) => Ok(()),
        Err(Error::ClaimLost(msg)) => Err(StepResult::ClaimLost(msg)),
        // The target's own reason: its credentials could not be recorded, so none is
        // issued yet.
        Err(e) => Err(transient(
            reasons::TARGET_UNAVAILABLE,
            format!("recording the target's credentials before issuing one: {e}"),
        )),
    }
}

/// Whom a stored value logs in as: its own username (an issued credential's key id;
/// for database users the same as the rotation's), else the rotation's.
fn login_of(v: &Version, user: &str) -> String {
    v.credential
        .username
        .clone()
        .unwrap_or_else(|| user.to_owned())
}

/// The pending value of this attempt; gone is [`pending_lost`].
async fn pending(backend: &dyn SecretBackend, id: &RotationId) -> Result<Version, StepResult> {
    match backend.pending(id).await {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(pending_lost()),
        Err(e) => Err(from_backend(e)),
    }
}

/// CreatePending: a fresh value from the generator (or issued by the target, for an
/// IAM access key), stored as pending.
async fn create_pending(
    pass: &Pass<'_>,
    st: &mut SecretRotationStatus,
    r: &RotationInProgress,
    clients: &Clients,
    id: &RotationId,
) -> StepResult {
    let backend = clients.backend.as_ref();
    let credential = if clients.target.issues_values() {
        // The credentials the backend holds are never touched to make room.
        let keep: Vec<String> = match backend.current().await {
            Ok(v) => v.and_then(|v| v.credential.username).into_iter().collect(),
            Err(e) => return from_backend(e),
        };
        let preexisting = st
            .rotation
            .as_ref()
            .and_then(|rec| rec.preexisting.clone())
            .unwrap_or_default();
        match clients.target.issue(&keep, &preexisting).await {
            Ok((username, value)) => {
                // A lease is recorded with the pending credentials (this step's status
                // write), before anything delivers them.
                if let Some(rec) = st.rotation.as_mut() {
                    rec.lease = clients.target.issued_lease();
                }
                Credential::new(Some(username), value)
            }
            Err(e) => return from_target(e, false),
        }
    } else {
        let generator = match PasswordGenerator::new(&pass.obj.spec.generator) {
            Ok(g) => g,
            Err(e) => return transient(reasons::INVALID_GENERATOR, e),
        };
        Credential::new(r.username.clone(), generator.generate())
    };
    match backend.put_pending(id, &credential).await {
        Ok(v) => {
            if let Some(rec) = st.rotation.as_mut() {
                rec.pending_version = Some(v.id.clone());
            }
            StepResult::Done(Some(v.id))
        }
        Err(e) => from_backend(e.scrubbed(&[&credential.value])),
    }
}

/// SetTarget: the pending value set on the target (the second user created first when
/// users alternate), with this attempt's fence.
async fn set_target(
    pass: &Pass<'_>,
    r: &RotationInProgress,
    target: &dyn CredentialTarget,
    user: &str,
    v: Version,
) -> StepResult {
    if let Users::Alternating(first, _) = &pass.policy.users {
        let like = (user != first).then_some(first.as_str());
        if let Err(e) = target.ensure_user(user, like).await {
            return from_target(e, false);
        }
    }
    crash_point("secret-rotation::before-set-password");
    match target
        .set_password_fenced(user, &v.credential.value, &pass.fence(r))
        .await
    {
        Ok(()) => StepResult::Done(Some(v.id)),
        Err(e) => from_target(e, false),
    }
}

/// Finish: the pending value promoted to current (if the current is still the one
/// recorded).
async fn promote(
    st: &mut SecretRotationStatus,
    r: &RotationInProgress,
    backend: &dyn SecretBackend,
    id: &RotationId,
) -> StepResult {
    match backend
        .promote_if_current(id, st.current_version.as_deref())
        .await
    {
        Ok(v) => {
            if st.current_version.as_deref() != Some(v.id.as_str()) {
                st.previous_version = st.current_version.take();
                st.current_version = Some(v.id.clone());
            }
            st.active_username = v.credential.username.clone().or(r.username.clone());
            StepResult::Done(Some(v.id))
        }
        Err(e) => from_backend(e),
    }
}

/// The rotation is delivered: record it and schedule the next one.
async fn finish(
    pass: &Pass<'_>,
    w: &mut Writer,
    mut st: SecretRotationStatus,
    r: RotationInProgress,
    trail: &mut Trail,
) -> Result<Action, Error> {
    let now = pass.ctx.rt.clock.now();
    st.rotation = None;
    st.last_rotation_time = Some(now);
    st.rotation_count += 1;
    // The credentials this rotation replaced are retired next (deactivated now,
    // deleted after the grace period), from the status, so a restart goes on with it.
    st.retiring = match (retire_grace(pass), &st.active_username) {
        (Some(grace), Some(keep)) => Some(Retiring {
            keep: keep.clone(),
            deactivated: false,
            delete_after: now + grace,
        }),
        _ => None,
    };
    // Dynamic credentials: the delivered lease is the one renewed from now on; every
    // other lease of the role is revoked next, now that the delivery has completed.
    if let Some(mut lease) = r.lease.clone() {
        lease.next_renewal_time =
            crate::rotation::lease_deadline(&lease, &pass.obj.spec, &pass.key);
        st.retiring = Some(Retiring {
            keep: lease.id_hash.clone(),
            deactivated: false,
            delete_after: now,
        });
        st.lease = Some(lease);
    }
    if r.rotate_now_token.is_some() {
        st.completed_rotate_now_token
            .clone_from(&r.rotate_now_token);
    }
    st.record_rotation(RotationSummary {
        id: r.id.clone(),
        trigger: r.trigger,
        started: r.started,
        finished: now,
        outcome: RotationOutcome::Succeeded,
        attempts: r.attempt,
        version: st.current_version.clone(),
        username: r.username.clone(),
        failure_reason: None,
    });
    pass.finish_status(&mut st, reasons::IDLE, None);
    trail.flush(pass);
    w.write(&st).await?;
    pass.ctx.audit_written.forget(&pass.key);
    let seconds = (now - r.started).num_milliseconds() as f64 / 1000.0;
    pass.ctx
        .metrics
        .rotation_finished(RotationOutcome::Succeeded, seconds);
    pass.event(
        EventType::Normal,
        events::ROTATION_SUCCEEDED,
        format!(
            "rotation {} finished: version {} is current and delivered",
            r.id,
            st.current_version.as_deref().unwrap_or("-")
        ),
    )
    .await;
    if st.retiring.is_some() {
        return Ok(Action::requeue(Duration::from_millis(100)));
    }
    Ok(requeue_at(st.next_rotation_time, now))
}

/// The grace period of the credentials a rotation replaces, for targets that retire
/// them (IAM access keys).
pub(super) fn retire_grace(pass: &Pass<'_>) -> Option<chrono::Duration> {
    match &pass.obj.spec.target {
        crate::crd::Target::IamAccessKey(k) => k
            .grace()
            .ok()
            .and_then(|d| chrono::Duration::from_std(d).ok()),
        _ => None,
    }
}

/// Attempts used up: discard the pending value and, with a single user whose password
/// may already have changed, set the current value back so it keeps logging in.
async fn give_up(
    pass: &Pass<'_>,
    w: &mut Writer,
    st: SecretRotationStatus,
    r: RotationInProgress,
    clients: &Clients,
    failure: (&'static str, &str),
    trail: &mut Trail,
) -> Result<Action, Error> {
    let _ = clients.backend.discard_pending(&pass.id(&r)).await;
    if let (Users::Single(user), true) = (&pass.policy.users, r.step >= RotationStep::SetTarget)
        && let Ok(Some(current)) = clients.backend.current().await
        && let Err(e) = clients
            .target
            .set_password_fenced(user, &current.credential.value, &pass.fence(&r))
            .await
    {
        tracing::warn!(kind = "SecretRotation", object = %pass.key, error = %e, "could not set the current value back on the target");
    }
    finish_failed(pass, w, st, r, failure, trail).await
}

async fn finish_failed(
    pass: &Pass<'_>,
    w: &mut Writer,
    mut st: SecretRotationStatus,
    r: RotationInProgress,
    (reason, msg): (&'static str, &str),
    trail: &mut Trail,
) -> Result<Action, Error> {
    let now = pass.ctx.rt.clock.now();
    trail.now(pass, &r, None, StepOutcome::GaveUp);
    st.last_failure = Some(RotationFailure::new(now, r.step, reason, msg, &[]));
    st.rotation = None;
    if r.rotate_now_token.is_some() {
        st.completed_rotate_now_token
            .clone_from(&r.rotate_now_token);
    }
    st.record_rotation(RotationSummary {
        id: r.id.clone(),
        trigger: r.trigger,
        started: r.started,
        finished: now,
        outcome: RotationOutcome::Failed,
        attempts: r.attempt,
        version: None,
        username: r.username.clone(),
        failure_reason: Some(reason.to_owned()),
    });
    pass.finish_status(&mut st, reasons::IDLE, None);
    w.write(&st).await?;
    pass.ctx.audit_written.forget(&pass.key);
    let seconds = (now - r.started).num_milliseconds() as f64 / 1000.0;
    pass.ctx
        .metrics
        .rotation_finished(RotationOutcome::Failed, seconds);
    pass.event(
        EventType::Warning,
        events::ROTATION_FAILED,
        format!(
            "rotation {} failed after {} attempt(s) at {}: {reason}; the previous credential stays current",
            r.id,
            r.attempt,
            r.step.as_str()
        ),
    )
    .await;
    Ok(requeue_at(st.next_rotation_time, now))
}
