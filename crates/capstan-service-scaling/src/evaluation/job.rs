//! What the evaluation loop hands a batch ([`Job`]) and gets back ([`Done`]), and when
//! an object is due next: its interval grid, schedule windows, `pausedUntil`, and the
//! backoff for a missing cluster or service.

use std::sync::Arc;
use std::time::Duration;

use capstan_core::conditions::Desired;
use capstan_core::connection::ClusterConnection;
use chrono::{DateTime, TimeDelta, Utc};

use crate::algorithm::{ScalingState, next_window_change};
use crate::context::{Inputs, Key};
use crate::crd::{ServiceScaling, ServiceScalingStatus};

/// A snapshot of one due object.
pub(crate) struct Job {
    pub(crate) key: Key,
    pub(crate) obj: Arc<ServiceScaling>,
    pub(crate) connection: Arc<ClusterConnection>,
    pub(crate) gate: Vec<Desired<'static>>,
    pub(crate) inputs: Arc<Inputs>,
    pub(crate) state: ScalingState,
    pub(crate) status: Option<ServiceScalingStatus>,
    /// Evaluations in a row that found the cluster or service missing.
    pub(crate) missing: u32,
}

/// What evaluating one object leaves behind.
pub(crate) struct Done {
    pub(crate) key: Key,
    pub(crate) state: ScalingState,
    pub(crate) status: Option<ServiceScalingStatus>,
    pub(crate) next_eval: DateTime<Utc>,
    pub(crate) gone: bool,
    /// Evaluations in a row that found the cluster or service missing (0: found).
    pub(crate) missing: u32,
}

/// The longest wait between two evaluations of an object whose ECS cluster or service
/// does not exist.
pub const MISSING_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// When to look again for a missing cluster or service, after `missing` evaluations in
/// a row found it missing: the interval doubled per miss (interval, 2×, 4×, ...) up to
/// [`MISSING_BACKOFF_MAX`], plus up to 20% jitter (from the object's key, so objects
/// created together spread out and each keeps its own rhythm). A spec change
/// evaluates at once; creating the service is seen within the current wait.
pub fn missing_backoff(interval: Duration, missing: u32, key: &Key) -> Duration {
    let doublings = missing.saturating_sub(1).min(20);
    let base = interval
        .saturating_mul(1u32 << doublings)
        .min(MISSING_BACKOFF_MAX);
    capstan_core::schedule::jittered(base, &(key, missing))
}

/// The next evaluation: the next multiple of the interval (in Unix time), or earlier
/// when a schedule window opens or closes or a pause ends before it.
pub(crate) fn next_deadline(job: &Job, now: DateTime<Utc>) -> DateTime<Utc> {
    deadline_after(
        job.inputs.interval,
        &job.inputs.windows,
        job.obj.spec.paused_until,
        now,
    )
}

/// The pure part of [`next_deadline`].
pub(crate) fn deadline_after(
    interval: Duration,
    windows: &[crate::algorithm::Window],
    paused_until: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    let step = i64::try_from(interval.as_millis())
        .unwrap_or(i64::MAX)
        .max(1);
    let ms = now.timestamp_millis();
    let grid = DateTime::from_timestamp_millis((ms / step + 1).saturating_mul(step))
        .unwrap_or(now + TimeDelta::seconds(15));
    let mut next = grid;
    if let Some(t) = next_window_change(windows, now) {
        next = next.min(t);
    }
    if let Some(t) = paused_until.filter(|t| *t > now) {
        next = next.min(t);
    }
    next
}
