//! The rotation state machine: pure functions over plain data. No I/O, no clock (callers
//! pass `now`), so every decision is table-testable.
//!
//! Two questions are answered here:
//!
//! 1. **Does a rotation start now?** ([`plan`]) A rotation in progress always continues
//!    (even while suspended: stopping between steps would leave a pending value behind).
//!    Otherwise `spec.suspend` stops everything; a new `capstan.dev/rotate-now` token
//!    starts one at once (ignoring schedule and window), each token once; the first
//!    rotation of a new object is due at creation; later ones at the schedule's next time
//!    after the last finished rotation (interval: finish + interval; cron: the next firing
//!    after the finish), and only while the daily window is open. Because a rotation
//!    stays "in progress" until its delivery is complete, the next rotation never starts
//!    before the previous one is delivered, and an `alternatingUsers` rotation never
//!    resets the user an unfinished rollout still uses.
//! 2. **Which step runs next?** ([`resume`], [`after_step`]) The status records the step
//!    claimed; the backend tells what really happened before a crash, following AWS's
//!    rotation contract (createSecret, setSecret, testSecret, finishSecret): the value
//!    this rotation promoted is current → deliver; a pending value with this attempt's
//!    token exists → go on from the claimed step (at least `SetTarget`); no pending value
//!    → (re)create it, or, if a later step was already claimed, the pending value was lost
//!    and the attempt is given up for a fresh one. A value the target definitively
//!    rejected is never replayed: a new attempt has a new token and a fresh value.
//!    Attempts are capped by `maxAttemptsPerRotation`; transient errors retry the same
//!    step with exponential [`backoff`].

use std::time::Duration as StdDuration;

use capstan_core::schedule::{CronSchedule, parse_time_zone};
use chrono::{DateTime, Duration, NaiveTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

use crate::crd::{
    RotationInProgress, RotationStep, RotationTrigger, Schedule, SecretRotationSpec,
    SecretRotationStatus, Strategy, reasons,
};
use crate::validation::parse_hh_mm;

/// How often scheduled rotations happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cadence {
    /// Time from the end of one rotation to the start of the next.
    Interval(Duration),
    /// Firing times of a cron expression.
    Cron(Box<CronSchedule>),
}

/// A daily window, in minutes after local midnight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    /// Opening, minutes after midnight.
    pub start: u32,
    /// Closing, minutes after midnight (before `start`: spans midnight).
    pub end: u32,
    /// Time zone of `start` and `end`.
    pub tz: Tz,
}

/// Which database users a rotation may set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Users {
    /// No database user (API keys).
    None,
    /// One user whose password changes.
    Single(String),
    /// Two users taking turns, first one first.
    Alternating(String, String),
}

/// What the spec says about when and how to rotate, parsed once per reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The schedule.
    pub cadence: Cadence,
    /// The daily window, if any.
    pub window: Option<Window>,
    /// `spec.suspend`.
    pub suspend: bool,
    /// `spec.maxAttemptsPerRotation`, at least 1.
    pub max_attempts: u32,
    /// Users of the target.
    pub users: Users,
}

impl Policy {
    /// Reads a spec that passed [`crate::validation::validate`]; `Err` names the field.
    pub fn from_spec(spec: &SecretRotationSpec) -> Result<Self, String> {
        let cadence = cadence(&spec.schedule)?;
        let window = match &spec.schedule.window {
            None => None,
            Some(w) => {
                let start = parse_hh_mm(&w.start).ok_or("spec.schedule.window.start")?;
                let end = parse_hh_mm(&w.end).ok_or("spec.schedule.window.end")?;
                let tz = match &w.time_zone {
                    None => Tz::UTC,
                    Some(tz) => parse_time_zone(tz).map_err(|e| e.to_string())?,
                };
                Some(Window { start, end, tz })
            }
        };
        let users = match (&spec.strategy, spec.target.username()) {
            (_, None) => Users::None,
            (Strategy::SingleUser(_), Some(u)) => Users::Single(u.to_owned()),
            (Strategy::AlternatingUsers(_), Some(_)) => match spec.alternating_usernames() {
                Some((a, b)) => Users::Alternating(a, b),
                None => return Err("spec.strategy.alternatingUsers".into()),
            },
        };
        Ok(Self {
            cadence,
            window,
            suspend: spec.suspend,
            max_attempts: u32::try_from(spec.max_attempts_per_rotation.max(1)).unwrap_or(1),
            users,
        })
    }
}

fn cadence(schedule: &Schedule) -> Result<Cadence, String> {
    match (&schedule.interval, &schedule.cron) {
        (Some(i), None) => {
            let d = i.duration().map_err(|e| e.to_string())?;
            Duration::from_std(d)
                .map(Cadence::Interval)
                .map_err(|_| "spec.schedule.interval is too large".into())
        }
        (None, Some(c)) => CronSchedule::parse(c, schedule.time_zone.as_deref())
            .map(|c| Cadence::Cron(Box::new(c)))
            .map_err(|e| e.to_string()),
        _ => Err("spec.schedule: exactly one of interval or cron must be set".into()),
    }
}

impl Window {
    /// Whether the window is open at `now`.
    pub fn is_open(&self, now: DateTime<Utc>) -> bool {
        let local = now.with_timezone(&self.tz);
        let m = local.hour() * 60 + local.minute();
        if self.start < self.end {
            (self.start..self.end).contains(&m)
        } else {
            m >= self.start || m < self.end
        }
    }

    /// `now` if open, else the next opening after `now`.
    pub fn next_opening(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        if self.is_open(now) {
            return now;
        }
        let local = now.with_timezone(&self.tz);
        let at = NaiveTime::from_hms_opt(self.start / 60, self.start % 60, 0).unwrap_or_default();
        for day in 0..3 {
            let date = local.date_naive() + Duration::days(day);
            // A local time skipped by a DST change opens the window an hour later.
            let candidate = self
                .tz
                .from_local_datetime(&date.and_time(at))
                .earliest()
                .or_else(|| {
                    self.tz
                        .from_local_datetime(&(date.and_time(at) + Duration::hours(1)))
                        .earliest()
                });
            if let Some(c) = candidate.map(|c| c.with_timezone(&Utc))
                && c > now
            {
                return c;
            }
        }
        now + Duration::days(1)
    }
}

/// When the last rotation (successful or given up) finished: the anchor of the schedule.
pub fn last_finished(status: &SecretRotationStatus) -> Option<DateTime<Utc>> {
    let failed = status.recent_rotations.first().map(|r| r.finished);
    match (status.last_rotation_time, failed) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// The schedule's next time after `anchor`.
pub fn scheduled_after(cadence: &Cadence, anchor: DateTime<Utc>) -> DateTime<Utc> {
    match cadence {
        Cadence::Interval(d) => anchor + *d,
        Cadence::Cron(c) => c.next_after(anchor).unwrap_or(DateTime::<Utc>::MAX_UTC),
    }
}

/// When the next scheduled rotation is due (not yet moved into the window): creation for
/// a new object, else the schedule's next time after the last finished rotation.
pub fn next_due(
    policy: &Policy,
    status: &SecretRotationStatus,
    created: DateTime<Utc>,
) -> DateTime<Utc> {
    match last_finished(status) {
        None => created,
        Some(anchor) => scheduled_after(&policy.cadence, anchor),
    }
}

/// What [`plan`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// A rotation is in progress: run its next step.
    Continue,
    /// Start a rotation.
    Start {
        /// What started it.
        trigger: RotationTrigger,
        /// The rotate-now token it acts on, if any.
        token: Option<String>,
    },
    /// Nothing to do until `until` (or, without one, until the object changes).
    Wait {
        /// `Rotating=False` reason: Idle, Suspended or OutsideWindow.
        reason: &'static str,
        /// When to look again; also `status.nextRotationTime`.
        until: Option<DateTime<Utc>>,
    },
}

/// Decides whether a rotation starts now. `rotate_now` is the annotation's value.
pub fn plan(
    policy: &Policy,
    status: &SecretRotationStatus,
    rotate_now: Option<&str>,
    created: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Plan {
    if status.rotation.is_some() {
        return Plan::Continue;
    }
    if policy.suspend {
        return Plan::Wait {
            reason: reasons::SUSPENDED,
            until: None,
        };
    }
    if let Some(token) = rotate_now.map(str::trim).filter(|t| !t.is_empty())
        && status.observed_rotate_now_token.as_deref() != Some(token)
    {
        return Plan::Start {
            trigger: RotationTrigger::RotateNow,
            token: Some(token.to_owned()),
        };
    }
    let first = last_finished(status).is_none();
    let due = next_due(policy, status, created);
    if now < due {
        let until = policy.window.as_ref().map_or(due, |w| w.next_opening(due));
        return Plan::Wait {
            reason: reasons::IDLE,
            until: Some(until),
        };
    }
    if let Some(w) = &policy.window
        && !w.is_open(now)
    {
        return Plan::Wait {
            reason: reasons::OUTSIDE_WINDOW,
            until: Some(w.next_opening(now)),
        };
    }
    Plan::Start {
        trigger: if first {
            RotationTrigger::Initial
        } else {
            RotationTrigger::Schedule
        },
        token: None,
    }
}

/// Whether the credential is overdue: the schedule's time after the last *successful*
/// rotation (creation, for an object never rotated) has passed, and no healthy rotation
/// is under way (none in progress, or the one in progress has failed since it started).
pub fn overdue(
    policy: &Policy,
    status: &SecretRotationStatus,
    created: DateTime<Utc>,
    now: DateTime<Utc>,
) -> bool {
    if policy.suspend && status.last_rotation_time.is_none() && status.rotation.is_none() {
        // A never-rotated, suspended object has no schedule yet to be late against.
        return false;
    }
    let due = status
        .last_rotation_time
        .map_or(created, |t| scheduled_after(&policy.cadence, t));
    if due > now {
        return false;
    }
    match &status.rotation {
        // Idle past the due time: suspended, outside the window, or the last rotation
        // was given up.
        None => true,
        Some(r) => status
            .last_failure
            .as_ref()
            .is_some_and(|f| f.time() >= r.started),
    }
}

/// How many times its object's usual rotation a rotation in progress may take before
/// it is reported stuck.
pub const STUCK_FACTOR: u32 = 5;

/// How long the rotation in progress may run before it is reported stuck: `floor`
/// (`--rotation-stuck-after`), or [`STUCK_FACTOR`] times the median duration of the
/// object's recent successful rotations when that is longer (an object whose rollouts
/// take ten minutes is not stuck at eleven).
pub fn stuck_after(status: &SecretRotationStatus, floor: StdDuration) -> StdDuration {
    let mut durations: Vec<StdDuration> = status
        .recent_rotations
        .iter()
        .filter(|r| r.outcome == crate::crd::RotationOutcome::Succeeded)
        .filter_map(|r| (r.finished - r.started).to_std().ok())
        .collect();
    durations.sort_unstable();
    let usual = durations
        .get(durations.len() / 2)
        .copied()
        .unwrap_or_default();
    floor.max(usual.saturating_mul(STUCK_FACTOR))
}

/// How long the rotation in progress has run, when that is past [`stuck_after`];
/// `None` when none is in progress or it is within its usual time.
pub fn stuck(
    status: &SecretRotationStatus,
    floor: StdDuration,
    now: DateTime<Utc>,
) -> Option<StdDuration> {
    let r = status.rotation.as_ref()?;
    let running = (now - r.started).to_std().ok()?;
    (running > stuck_after(status, floor)).then_some(running)
}

/// The user a new rotation sets: with alternating users, the one consumers are *not*
/// given now (`active`, from status or the backend's current value), so the one in use
/// keeps working until the next rotation.
pub fn next_username(users: &Users, active: Option<&str>) -> Option<String> {
    match users {
        Users::None => None,
        Users::Single(u) => Some(u.clone()),
        Users::Alternating(a, b) => Some(if active == Some(a.as_str()) {
            b.clone()
        } else {
            a.clone()
        }),
    }
}

/// The rotation number encoded in a [`RotationInProgress::id`]: the start time in
/// milliseconds, unique per object because only one start can win the status claim.
pub fn rotation_number(rotation: &RotationInProgress) -> u64 {
    rotation
        .id
        .parse()
        .unwrap_or_else(|_| u64::try_from(rotation.started.timestamp_millis()).unwrap_or(0))
}

/// A new rotation record, first attempt, claiming `CreatePending`.
pub fn start(
    trigger: RotationTrigger,
    token: Option<String>,
    username: Option<String>,
    now: DateTime<Utc>,
) -> RotationInProgress {
    let n = u64::try_from(now.timestamp_millis()).unwrap_or(0);
    RotationInProgress {
        id: n.to_string(),
        trigger,
        rotate_now_token: token,
        started: now,
        attempt: 1,
        step: RotationStep::CreatePending,
        pending_version: None,
        username,
        preexisting: None,
        lease: None,
    }
}

/// What the backend shows about this rotation's attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BackendView {
    /// The current value carries this attempt's token: `Finish` happened.
    pub promoted: bool,
    /// A pending value with this attempt's token is stored.
    pub pending: bool,
}

/// What to do next in a rotation in progress, after a (possible) crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// Run this step (idempotent, so running it again after a crash is safe).
    Run(RotationStep),
    /// A step after `CreatePending` was claimed but the pending value is gone (removed
    /// by someone else): give this attempt up and start a fresh one.
    PendingLost,
}

/// Which step runs next, from the claimed step and what the backend shows.
pub fn resume(step: RotationStep, view: BackendView) -> Resume {
    if view.promoted {
        return Resume::Run(RotationStep::Deliver);
    }
    match (step, view.pending) {
        (RotationStep::CreatePending, true) => Resume::Run(RotationStep::SetTarget),
        (RotationStep::CreatePending, false) => Resume::Run(RotationStep::CreatePending),
        (s, true) => Resume::Run(s),
        (_, false) => Resume::PendingLost,
    }
}

/// The step a resume runs, for an object with or without a target: without one,
/// [`resume`]'s `SetTarget` (the pending value is stored) is `Finish`.
pub fn resumed_step(step: RotationStep, has_target: bool) -> RotationStep {
    match step {
        RotationStep::SetTarget | RotationStep::TestTarget if !has_target => RotationStep::Finish,
        s => s,
    }
}

/// The steps from `claimed` up to (not including) `resumed`: done by a Capstan that
/// died before recording them, found done by the one that resumes.
pub fn steps_done_between(
    claimed: RotationStep,
    resumed: RotationStep,
    has_target: bool,
) -> Vec<RotationStep> {
    let mut done = Vec::new();
    let mut s = Some(claimed);
    while let Some(step) = s.filter(|s| *s < resumed) {
        done.push(step);
        s = next_step(step, has_target);
    }
    done
}

/// The step after `step`. Without a target (`target.none`) nothing is set or tested.
pub fn next_step(step: RotationStep, has_target: bool) -> Option<RotationStep> {
    let mut next = step.next()?;
    if !has_target {
        while matches!(next, RotationStep::SetTarget | RotationStep::TestTarget) {
            next = next.next()?;
        }
    }
    Some(next)
}

/// Whether `step` must be claimed (a status write conditioned on the resourceVersion
/// read) before it runs. A step that changes nothing outside (testing a login; delivering
/// when nothing is to be delivered) needs no claim: the status keeps naming the step
/// before it, and a crash resumes from that one, which is idempotent. Each claim skipped
/// is one write less per rotation for the API server, its main cost.
pub fn needs_claim(step: RotationStep, delivers: bool) -> bool {
    match step {
        RotationStep::TestTarget => false,
        RotationStep::Deliver => delivers,
        RotationStep::CreatePending | RotationStep::SetTarget | RotationStep::Finish => true,
    }
}

/// How a step ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It did what it should.
    Done,
    /// It failed for a reason that may pass (timeout, unreachable): retry the same step.
    Transient,
    /// The target definitively refused the value (or it was lost): never replay it.
    Rejected,
}

/// What follows a step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Claim this record (the next step) and go on.
    Advance(RotationInProgress),
    /// Retry the same step after the delay.
    Retry(StdDuration),
    /// Start a new attempt with a fresh value: claim this record, discard the old pending.
    NewAttempt(RotationInProgress),
    /// Attempts used up: the rotation failed, the previous credential stays current.
    GiveUp,
    /// The last step succeeded: the rotation is finished.
    Finished,
}

/// The transition after `rotation`'s current step ended with `outcome`. `failures` counts
/// consecutive transient failures of this step (for the backoff).
pub fn after_step(
    rotation: &RotationInProgress,
    outcome: Outcome,
    has_target: bool,
    max_attempts: u32,
    failures: u32,
) -> Transition {
    match outcome {
        Outcome::Done => match next_step(rotation.step, has_target) {
            Some(step) => Transition::Advance(RotationInProgress {
                step,
                ..rotation.clone()
            }),
            None => Transition::Finished,
        },
        Outcome::Transient => Transition::Retry(backoff(failures)),
        Outcome::Rejected => {
            let attempt = u32::try_from(rotation.attempt).unwrap_or(u32::MAX);
            if attempt >= max_attempts {
                Transition::GiveUp
            } else {
                Transition::NewAttempt(RotationInProgress {
                    attempt: rotation.attempt + 1,
                    step: RotationStep::CreatePending,
                    pending_version: None,
                    ..rotation.clone()
                })
            }
        }
    }
}

/// First retry delay.
pub const BACKOFF_BASE: StdDuration = StdDuration::from_secs(1);
/// Longest retry delay.
pub const BACKOFF_MAX: StdDuration = StdDuration::from_secs(300);

/// Exponential backoff after `failures` consecutive failures (1 → 1 s, 2 → 2 s, ...,
/// capped at five minutes).
pub fn backoff(failures: u32) -> StdDuration {
    let exp = failures.saturating_sub(1).min(20);
    BACKOFF_BASE.saturating_mul(1u32 << exp).min(BACKOFF_MAX)
}

/// The wait before retrying object `key` after `failures` consecutive failures:
/// [`backoff`] plus up to 20% jitter from the key and the count, so objects that fail
/// together (a database or Vault outage) do not retry in lockstep.
pub fn retry_after(failures: u32, key: &str) -> StdDuration {
    capstan_core::schedule::jittered(backoff(failures), &(key, failures))
}

/// When Capstan acts on `lease` next: `renewBefore` (plus up to a tenth of it,
/// jittered by object and lease, so that many leases issued together do not renew
/// together) before it expires, or before its maximum if that comes first. At that
/// deadline the lease is renewed while Vault can extend it, and replaced otherwise.
/// `None` for a spec without dynamic credentials.
pub fn lease_deadline(
    lease: &crate::crd::Lease,
    spec: &crate::crd::SecretRotationSpec,
    key: &str,
) -> Option<DateTime<Utc>> {
    let crate::crd::Target::VaultDatabaseDynamicRole(t) = &spec.target else {
        return None;
    };
    let (_, _, before) = t.durations().ok()?;
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (key, &lease.id_hash).hash(&mut h);
    let margin = before + before.mul_f64((h.finish() % 1000) as f64 / 10_000.0);
    let margin = chrono::Duration::from_std(margin).ok()?;
    Some(lease.expire_time.min(lease.max_expire_time) - margin)
}

/// Whether renewing `lease` can extend it: Vault says it is renewable and it has not
/// reached its maximum.
pub fn lease_extendable(lease: &crate::crd::Lease) -> bool {
    lease.renewable && lease.expire_time < lease.max_expire_time
}

/// How long until `t`, at least zero and at most a day (kube's requeue takes a std
/// duration; a long-away rotation is looked at again daily, which costs no backend call).
pub fn until(t: DateTime<Utc>, now: DateTime<Utc>) -> StdDuration {
    (t - now)
        .to_std()
        .unwrap_or(StdDuration::ZERO)
        .min(StdDuration::from_secs(24 * 3600))
}

#[cfg(test)]
mod tests;
