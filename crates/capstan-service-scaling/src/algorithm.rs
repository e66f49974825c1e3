//! The scaling algorithm: the Kubernetes HPA v2 algorithm (as of v1.36, read from
//! `pkg/controller/podautoscaler/{replica_calculator.go,horizontal.go}` and
//! `pkg/apis/autoscaling/v2/defaults.go`; the semantics it relies on are below)
//! applied to an ECS service, plus Capstan's schedules and fallback. Pure: no I/O, no
//! clock (`now` is an input), state in a plain [`ScalingState`] the controller keeps in
//! memory.
//!
//! One evaluation ([`evaluate`]):
//! 1. Seed the recommendation history with `{current, now}` if it is empty, so the first
//!    evaluation after a controller restart stabilizes against the current count and
//!    never jumps.
//! 2. `current == 0`: autoscaling is disabled (a service scaled to zero by hand is left
//!    alone). `current > max` → max; `current < min` → min (bounds are the effective
//!    ones, after schedules: [`effective_bounds`]); both skip metrics, stabilization and
//!    rate limits.
//! 3. Otherwise each metric proposes a count ([`propose`]); the largest wins. If every
//!    metric fails, or some fail and the largest proposal is below current, nothing is
//!    scaled; after `fallback.afterFailedEvaluations` evaluations in a row where every
//!    metric failed, the fallback action applies.
//! 4. The behavior path: stabilization over the recorded recommendations, then rate
//!    limits from recent scale events and the bounds. Capstan always has a behavior (the
//!    HPA defaults when the spec omits it), so the HPA's legacy path (the 2x/4 up limit
//!    and the single downscale window) is deliberately not implemented.
//!
//! Capstan specifics:
//! - Utilization and total-value metrics scale the number of **running** tasks (the
//!   HPA's ready pods): CloudWatch averages utilization over running tasks, so tasks
//!   still starting after a scale-up neither dilute nor compound the next proposal.
//!   Within tolerance a metric proposes the desired count (HPA: spec replicas). With no
//!   running task, those metrics fail instead of proposing 0.
//! - Schedules replace the bounds while open (see [`effective_bounds`]).
//!
//! # The HPA semantics followed here
//!
//! **§1 Per-metric proposal.** Tolerance: a ratio is *within* when
//! `1 - tolDown <= ratio <= 1 + tolUp` (both ends inclusive); within, the proposal is the
//! current count, unrounded. Both tolerances default to 0.1; `behavior.scaleUp/scaleDown
//! .tolerance` override one direction each. Utilization: the percent is truncated to an
//! integer, `ratio = util / target`, `desired = ceil(ratio * n)`. A total value:
//! `ratio = value / target`, `desired = ceil(ratio * running)`, capped at `i32::MAX`. A
//! value per task: `ratio = total / (target * running)`; outside tolerance
//! `desired = ceil(total / target)` (not `ratio * n`), within it the running count.
//!
//! **§2 One evaluation.** `current == 0` disables autoscaling; `current > max` gives max
//! and `current < min` gives min, skipping metrics, stabilization and rate limits.
//! Otherwise the largest proposal wins; if every metric fails, or some fail and the
//! largest proposal is below current, nothing is scaled. An empty history is seeded once
//! with `{current, now}`; the recorded recommendation is the pre-bounds desired count.
//!
//! **§4 Behavior path.** Defaults: scale-up window 0, select Max, policies Pods 4 / 15 s
//! and Percent 100 / 15 s; scale-down window 300 s, select Max, Percent 100 / 15 s. A
//! user's policy list replaces the default list; a user's window or select replaces only
//! that field. Stabilization: `up = min(desired, recs with t > now - upWindow)`,
//! `down = max(desired, recs with t > now - downWindow)` (strict), result
//! `min(max(current, up), down)`; `desired` is recorded by overwriting the last entry
//! older than both windows, else appended. Rate limits from scale events within each
//! policy's period (`t > now - period`, strict; up and down events both count in both
//! directions, `start = current - added + deleted`): up Pods `start + value`, Percent
//! `ceil(start * (1 + value/100))`; down Pods `start - value`, Percent
//! `trunc(start * (1 - value/100))`. Select for up: Max takes the largest limit, Min the
//! smallest; for down, Max takes the smallest (the biggest change), Min the largest;
//! Disabled holds current. Reasons: `ScaleUpLimit` when the limit is below max, else
//! `TooManyReplicas`; `ScaleDownLimit` when the limit is above min, else
//! `TooFewReplicas`; unchanged is `DesiredWithinRange`. After a rescale, `{|new - old|,
//! now}` is stored in the up or down event list, reusing the last slot older than that
//! direction's longest period.
//!
//! **§5 Rounding.** Utilization is floored before the ratio; proposals use `ceil`; the
//! Percent up limit uses `ceil`; the Percent down limit truncates.

use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};

use capstan_core::conditions::Status;
use capstan_core::schedule::{CronSchedule, ScheduleError};

use crate::crd::{
    Fallback, FallbackAction, MetricKind, PolicyType, ScalingRules, ScheduleWindow, SelectPolicy,
    ServiceScalingSpec,
};

/// The HPA's default downscale stabilization window (the controller flag's default).
pub const DEFAULT_SCALE_DOWN_STABILIZATION_SECONDS: i64 = 300;

/// Why a spec cannot be turned into algorithm inputs. Admission refuses all of these;
/// they guard objects stored before a rule existed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    /// A tolerance string is not a valid tolerance.
    #[error(
        "{field}: invalid tolerance {value:?} (expected a non-negative decimal such as \"0.1\" or \"2.0\", or a milli-quantity such as \"100m\")"
    )]
    InvalidTolerance {
        /// Where it is.
        field: &'static str,
        /// The value.
        value: String,
    },
    /// A metric entry sets zero or several kinds.
    #[error(
        "metrics[{index}]: exactly one of cpuUtilization, memoryUtilization or cloudWatch must be set"
    )]
    InvalidMetric {
        /// The entry's index.
        index: usize,
    },
    /// A schedule window is malformed.
    #[error("schedules[{name}]: {reason}")]
    InvalidSchedule {
        /// The window's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// minReplicas is above maxReplicas, or below 1.
    #[error("replica bounds are incoherent: minReplicas {min}, maxReplicas {max}")]
    InvalidBounds {
        /// minReplicas.
        min: i32,
        /// maxReplicas.
        max: i32,
    },
}

// ---------------------------------------------------------------------------------------
// Behavior, resolved with the HPA defaults
// ---------------------------------------------------------------------------------------

/// One rate-limit policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Pods or Percent.
    pub type_: PolicyType,
    /// Tasks, or percent, per period.
    pub value: i32,
    /// The period in seconds.
    pub period_seconds: i64,
}

/// The rules for one direction, with the defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedRules {
    /// Stabilization window, seconds.
    pub stabilization_window_seconds: i64,
    /// How to pick among policy limits.
    pub select_policy: SelectPolicy,
    /// The policies.
    pub policies: Vec<Policy>,
    /// This direction's tolerance, as a fraction.
    pub tolerance: f64,
}

impl ResolvedRules {
    fn longest_period(&self) -> i64 {
        self.policies
            .iter()
            .map(|p| p.period_seconds)
            .max()
            .unwrap_or(0)
    }
}

/// Both directions' rules with the HPA defaults applied: scaleUp {window 0, Max, Pods 4 /
/// 15 s, Percent 100 / 15 s}, scaleDown {window 300 s, Max, Percent 100 / 15 s}. A
/// user-supplied policy list replaces the default list; a window, select policy or
/// tolerance replaces only that field.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedBehavior {
    /// Scale-up rules.
    pub scale_up: ResolvedRules,
    /// Scale-down rules.
    pub scale_down: ResolvedRules,
}

impl ResolvedBehavior {
    /// The HPA defaults with `tolerance` in both directions.
    pub fn hpa_defaults(tolerance: f64) -> Self {
        Self {
            scale_up: ResolvedRules {
                stabilization_window_seconds: 0,
                select_policy: SelectPolicy::Max,
                policies: vec![
                    Policy {
                        type_: PolicyType::Pods,
                        value: 4,
                        period_seconds: 15,
                    },
                    Policy {
                        type_: PolicyType::Percent,
                        value: 100,
                        period_seconds: 15,
                    },
                ],
                tolerance,
            },
            scale_down: ResolvedRules {
                stabilization_window_seconds: DEFAULT_SCALE_DOWN_STABILIZATION_SECONDS,
                select_policy: SelectPolicy::Max,
                policies: vec![Policy {
                    type_: PolicyType::Percent,
                    value: 100,
                    period_seconds: 15,
                }],
                tolerance,
            },
        }
    }

    /// Resolves the spec's tolerance and behavior.
    pub fn from_spec(spec: &ServiceScalingSpec) -> Result<Self, SpecError> {
        let tolerance = spec
            .tolerance
            .fraction()
            .ok_or_else(|| SpecError::InvalidTolerance {
                field: "tolerance",
                value: spec.tolerance.as_str().to_owned(),
            })?;
        let mut resolved = Self::hpa_defaults(tolerance);
        if let Some(behavior) = &spec.behavior {
            if let Some(up) = &behavior.scale_up {
                apply_rules(&mut resolved.scale_up, up, "behavior.scaleUp.tolerance")?;
            }
            if let Some(down) = &behavior.scale_down {
                apply_rules(
                    &mut resolved.scale_down,
                    down,
                    "behavior.scaleDown.tolerance",
                )?;
            }
        }
        Ok(resolved)
    }
}

fn apply_rules(
    into: &mut ResolvedRules,
    rules: &ScalingRules,
    tolerance_field: &'static str,
) -> Result<(), SpecError> {
    if let Some(w) = rules.stabilization_window_seconds {
        into.stabilization_window_seconds = i64::from(w.max(0));
    }
    if let Some(s) = rules.select_policy {
        into.select_policy = s;
    }
    if let Some(policies) = &rules.policies {
        into.policies = policies
            .iter()
            .map(|p| Policy {
                type_: p.type_,
                value: p.value,
                period_seconds: i64::from(p.period_seconds),
            })
            .collect();
    }
    if let Some(t) = &rules.tolerance {
        into.tolerance = t.fraction().ok_or_else(|| SpecError::InvalidTolerance {
            field: tolerance_field,
            value: t.as_str().to_owned(),
        })?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Bounds and schedules
// ---------------------------------------------------------------------------------------

/// The replica bounds in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The floor.
    pub min: i32,
    /// The ceiling.
    pub max: i32,
}

/// The bounds one open window sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveWindow {
    /// The window's name.
    pub name: String,
    /// Its floor, if it sets one.
    pub min_replicas: Option<i32>,
    /// Its ceiling, if it sets one.
    pub max_replicas: Option<i32>,
}

/// The bounds in force given the spec's and the open windows'.
///
/// Rule for overlapping windows: the floor is the highest minReplicas among open windows
/// that set one (the spec's minReplicas if none does), the ceiling the highest
/// maxReplicas among open windows that set one (the spec's maxReplicas if none does),
/// and a floor above the ceiling raises the ceiling to the floor: a declared floor, such
/// as a sales event's, always holds. A window can lower the spec's bounds as well as
/// raise them. The result never depends on the order of the windows.
pub fn effective_bounds(spec: Bounds, active: &[ActiveWindow]) -> Bounds {
    let min = active
        .iter()
        .filter_map(|w| w.min_replicas)
        .max()
        .unwrap_or(spec.min);
    let max = active
        .iter()
        .filter_map(|w| w.max_replicas)
        .max()
        .unwrap_or(spec.max);
    Bounds {
        min,
        max: max.max(min),
    }
}

/// A schedule window, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// The window's name.
    pub name: String,
    /// When it is open.
    pub timing: WindowTiming,
    /// Its floor.
    pub min_replicas: Option<i32>,
    /// Its ceiling.
    pub max_replicas: Option<i32>,
}

/// When a window is open.
#[derive(Debug, Clone, PartialEq)]
pub enum WindowTiming {
    /// Open for `duration` from each time `cron` fires.
    Cron {
        /// The schedule (boxed: it is much larger than the other variant).
        cron: Box<CronSchedule>,
        /// How long each opening lasts.
        duration: TimeDelta,
    },
    /// Open in `[start, end)`.
    Absolute {
        /// Opens.
        start: DateTime<Utc>,
        /// Closes.
        end: DateTime<Utc>,
    },
}

impl Window {
    /// Parses one spec window.
    pub fn from_spec(w: &ScheduleWindow) -> Result<Self, SpecError> {
        let bad = |reason: String| SpecError::InvalidSchedule {
            name: w.name.clone(),
            reason,
        };
        let timing = match (&w.cron, &w.duration, w.start, w.end) {
            (Some(cron), Some(duration), None, None) => {
                let cron = CronSchedule::parse(cron, w.time_zone.as_deref())
                    .map_err(|e: ScheduleError| bad(e.to_string()))?;
                let duration = duration.duration().map_err(|e| bad(e.to_string()))?;
                let duration = TimeDelta::from_std(duration)
                    .ok()
                    .filter(|d| *d > TimeDelta::zero())
                    .ok_or_else(|| bad("duration must be greater than zero".to_owned()))?;
                WindowTiming::Cron {
                    cron: Box::new(cron),
                    duration,
                }
            }
            (None, None, Some(start), Some(end)) if end > start => {
                WindowTiming::Absolute { start, end }
            }
            (None, None, Some(_), Some(_)) => return Err(bad("end must be after start".into())),
            _ => {
                return Err(bad(
                    "set either cron with duration, or start with end".to_owned()
                ));
            }
        };
        Ok(Self {
            name: w.name.clone(),
            timing,
            min_replicas: w.min_replicas,
            max_replicas: w.max_replicas,
        })
    }

    /// Whether the window is open at `now`: `[start, start + duration)` for the last cron
    /// firing at or before `now`, or `[start, end)`.
    pub fn is_open(&self, now: DateTime<Utc>) -> bool {
        match &self.timing {
            WindowTiming::Cron { cron, duration } => cron
                .last_at_or_before(now)
                .is_some_and(|start| now < start + *duration),
            WindowTiming::Absolute { start, end } => *start <= now && now < *end,
        }
    }

    /// The next time after `now` at which the window opens or closes, for requeueing.
    pub fn next_change_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.timing {
            WindowTiming::Cron { cron, duration } => {
                let close = cron
                    .last_at_or_before(now)
                    .map(|s| s + *duration)
                    .filter(|c| *c > now);
                let open = cron.next_after(now);
                [close, open].into_iter().flatten().min()
            }
            WindowTiming::Absolute { start, end } => {
                [*start, *end].into_iter().filter(|t| *t > now).min()
            }
        }
    }
}

/// Parses every window of a spec.
pub fn windows_from_spec(spec: &ServiceScalingSpec) -> Result<Vec<Window>, SpecError> {
    spec.schedules.iter().map(Window::from_spec).collect()
}

/// The windows open at `now`.
pub fn active_windows(windows: &[Window], now: DateTime<Utc>) -> Vec<ActiveWindow> {
    windows
        .iter()
        .filter(|w| w.is_open(now))
        .map(|w| ActiveWindow {
            name: w.name.clone(),
            min_replicas: w.min_replicas,
            max_replicas: w.max_replicas,
        })
        .collect()
}

/// The earliest time after `now` at which any window opens or closes.
pub fn next_window_change(windows: &[Window], now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    windows
        .iter()
        .filter_map(|w| w.next_change_after(now))
        .min()
}

// ---------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------

/// What a metric is compared with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MetricTarget {
    /// Average utilization of running tasks, in percent (HPA Resource Utilization).
    Utilization {
        /// The target percent.
        target_percent: i32,
    },
    /// The metric's total across the service (HPA External Value).
    Value {
        /// The target total.
        target: f64,
    },
    /// The metric's total divided by running tasks (HPA External AverageValue).
    AverageValuePerTask {
        /// The target per task.
        target: f64,
    },
}

/// The target of each metric in the spec, in order, with its display name.
pub fn metric_targets(spec: &ServiceScalingSpec) -> Result<Vec<(String, MetricTarget)>, SpecError> {
    spec.metrics
        .iter()
        .enumerate()
        .map(|(index, m)| {
            let target = match m.kind() {
                Some(MetricKind::Cpu(t)) | Some(MetricKind::Memory(t)) => {
                    MetricTarget::Utilization {
                        target_percent: t.target_percent,
                    }
                }
                Some(MetricKind::CloudWatch(cw)) => {
                    match (cw.target.value, cw.target.average_value_per_task) {
                        (Some(v), None) if v > 0.0 => MetricTarget::Value { target: v },
                        (None, Some(v)) if v > 0.0 => {
                            MetricTarget::AverageValuePerTask { target: v }
                        }
                        _ => return Err(SpecError::InvalidMetric { index }),
                    }
                }
                None => return Err(SpecError::InvalidMetric { index }),
            };
            Ok((m.display_name(), target))
        })
        .collect()
}

/// One metric's reading for an evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricInput {
    /// Display name (`cpu`, `memory`, `<namespace>/<name>`).
    pub name: String,
    /// Its target.
    pub target: MetricTarget,
    /// The value read: the average utilization in percent for Utilization, the total
    /// for Value and AverageValuePerTask; or why it could not be read.
    pub value: Result<f64, String>,
}

/// The value a metric is reported with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MetricCurrent {
    /// Utilization, truncated to whole percent.
    UtilizationPercent(i32),
    /// A CloudWatch value: the total (Value) or the value per running task.
    Value(f64),
}

/// What one metric proposed.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricProposal {
    /// Display name.
    pub name: String,
    /// The value compared with the target, when read.
    pub current: Option<MetricCurrent>,
    /// The proposed count, or why there is none.
    pub proposal: Result<i32, String>,
}

/// Tolerances for one evaluation, as fractions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerances {
    /// Tolerated shortfall: within if ratio ≥ 1 - down.
    pub down: f64,
    /// Tolerated excess: within if ratio ≤ 1 + up.
    pub up: f64,
}

impl Tolerances {
    /// `1 - down <= ratio <= 1 + up`, both ends inclusive, as in the HPA.
    pub fn is_within(self, ratio: f64) -> bool {
        (1.0 - self.down) <= ratio && ratio <= (1.0 + self.up)
    }
}

/// Go's `Quantity.MilliValue()` for a metric value: milli-units, rounded up.
fn milli(v: f64) -> f64 {
    (v * 1000.0).ceil()
}

fn ceil_to_i32(v: f64) -> i32 {
    let c = v.ceil();
    if c >= f64::from(i32::MAX) {
        i32::MAX
    } else if c <= 0.0 || c.is_nan() {
        0
    } else {
        c as i32
    }
}

/// One metric's proposal (§1 of the module doc), given the desired count (`current`,
/// the HPA's spec replicas) and the running count (the HPA's ready pods / status
/// replicas).
pub fn propose(
    metric: &MetricInput,
    current: i32,
    running: i32,
    tolerances: Tolerances,
) -> MetricProposal {
    let name = metric.name.clone();
    let value = match &metric.value {
        Ok(v) if v.is_finite() && *v >= 0.0 => *v,
        Ok(v) => {
            return MetricProposal {
                name,
                current: None,
                proposal: Err(format!(
                    "metric value {v} is not a finite non-negative number"
                )),
            };
        }
        Err(e) => {
            return MetricProposal {
                name,
                current: None,
                proposal: Err(e.clone()),
            };
        }
    };
    let no_running = || "no running task to base the proposal on".to_owned();
    match metric.target {
        MetricTarget::Utilization { target_percent } => {
            // floor(100 * usage / request): whole percent, truncated.
            let util = value.floor().min(f64::from(i32::MAX)) as i32;
            let current_value = Some(MetricCurrent::UtilizationPercent(util));
            if running <= 0 {
                return MetricProposal {
                    name,
                    current: current_value,
                    proposal: Err(no_running()),
                };
            }
            let ratio = f64::from(util) / f64::from(target_percent.max(1));
            let proposal = if tolerances.is_within(ratio) {
                current
            } else {
                ceil_to_i32(ratio * f64::from(running))
            };
            MetricProposal {
                name,
                current: current_value,
                proposal: Ok(proposal),
            }
        }
        MetricTarget::Value { target } => {
            let current_value = Some(MetricCurrent::Value(value));
            if running <= 0 {
                return MetricProposal {
                    name,
                    current: current_value,
                    proposal: Err(no_running()),
                };
            }
            let ratio = milli(value) / milli(target);
            let proposal = if tolerances.is_within(ratio) {
                current
            } else {
                ceil_to_i32(ratio * f64::from(running))
            };
            MetricProposal {
                name,
                current: current_value,
                proposal: Ok(proposal),
            }
        }
        MetricTarget::AverageValuePerTask { target } => {
            let (usage, target) = (milli(value), milli(target));
            let status_replicas = f64::from(running.max(0));
            let ratio = usage / (target * status_replicas);
            // With no running task the ratio is infinite (or NaN): out of tolerance, and
            // the proposal is ceil(total / target), as in the HPA.
            let proposal = if running > 0 && tolerances.is_within(ratio) {
                running
            } else {
                ceil_to_i32(usage / target)
            };
            let per_task = if running > 0 {
                value / f64::from(running)
            } else {
                value
            };
            MetricProposal {
                name,
                current: Some(MetricCurrent::Value(per_task)),
                proposal: Ok(proposal),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------

/// A recorded recommendation (the pre-bounds largest proposal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recommendation {
    /// The proposed count.
    pub replicas: i32,
    /// When.
    pub at: DateTime<Utc>,
}

/// A recorded scale event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleEvent {
    /// How many tasks were added or removed (positive).
    pub change: i32,
    /// When.
    pub at: DateTime<Utc>,
    /// Older than the direction's longest policy period at the last store; its slot is
    /// reused.
    pub outdated: bool,
}

/// What the algorithm remembers between evaluations of one object. Kept in memory; after
/// a restart it starts empty and the first evaluation seeds it with `{current, now}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScalingState {
    /// Recorded recommendations.
    pub recommendations: Vec<Recommendation>,
    /// Scale-up events.
    pub scale_up_events: Vec<ScaleEvent>,
    /// Scale-down events.
    pub scale_down_events: Vec<ScaleEvent>,
    /// Evaluations in a row in which every metric failed (restored from status after a
    /// restart).
    pub consecutive_failed_evaluations: u32,
}

impl ScalingState {
    /// Records a rescale from `from` to `to` at `now` (HPA `storeScaleEvent`): first marks
    /// events older than the direction's longest policy period as outdated, then reuses
    /// the last outdated slot or appends.
    pub fn record_scale_event(
        &mut self,
        behavior: &ResolvedBehavior,
        from: i32,
        to: i32,
        now: DateTime<Utc>,
    ) {
        if from == to {
            return;
        }
        let (events, rules) = if to > from {
            (&mut self.scale_up_events, &behavior.scale_up)
        } else {
            (&mut self.scale_down_events, &behavior.scale_down)
        };
        let cutoff = now - TimeDelta::seconds(rules.longest_period());
        for e in events.iter_mut() {
            if e.at < cutoff {
                e.outdated = true;
            }
        }
        let event = ScaleEvent {
            change: (i64::from(to) - i64::from(from))
                .unsigned_abs()
                .min(i32::MAX as u64) as i32,
            at: now,
            outdated: false,
        };
        match events.iter().rposition(|e| e.outdated) {
            Some(i) => events[i] = event,
            None => events.push(event),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------

/// Condition reasons, as the HPA reports them (plus Capstan's fallback).
pub mod reasons {
    /// AbleToScale True: the current count was read.
    pub const SUCCEEDED_GET_SCALE: &str = "SucceededGetScale";
    /// AbleToScale True: the desired count was just written (HPA `SucceededRescale`).
    pub const SUCCEEDED_RESCALE: &str = "SucceededRescale";
    /// AbleToScale True: nothing holds the next change back.
    pub const READY_FOR_NEW_SCALE: &str = "ReadyForNewScale";
    /// AbleToScale True: a lower recent recommendation holds a scale-up back.
    pub const SCALE_UP_STABILIZED: &str = "ScaleUpStabilized";
    /// AbleToScale True: a higher recent recommendation holds a scale-down back.
    pub const SCALE_DOWN_STABILIZED: &str = "ScaleDownStabilized";
    /// ScalingActive True: at least one metric gave a proposal.
    pub const VALID_METRIC_FOUND: &str = "ValidMetricFound";
    /// ScalingActive False: the service has 0 tasks.
    pub const SCALING_DISABLED: &str = "ScalingDisabled";
    /// ScalingActive False: metrics failed.
    pub const FAILED_GET_METRICS: &str = "FailedGetMetrics";
    /// ScalingActive False: metrics kept failing and the fallback applies.
    pub const FALLBACK: &str = "Fallback";
    /// ScalingLimited True: the scale-up rate policy limits the change.
    pub const SCALE_UP_LIMIT: &str = "ScaleUpLimit";
    /// ScalingLimited True: the scale-down rate policy limits the change.
    pub const SCALE_DOWN_LIMIT: &str = "ScaleDownLimit";
    /// ScalingLimited True: the ceiling limits the count.
    pub const TOO_MANY_REPLICAS: &str = "TooManyReplicas";
    /// ScalingLimited True: the floor limits the count.
    pub const TOO_FEW_REPLICAS: &str = "TooFewReplicas";
    /// ScalingLimited False.
    pub const DESIRED_WITHIN_RANGE: &str = "DesiredWithinRange";
}

/// What one condition should say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionUpdate {
    /// True, False or Unknown.
    pub status: Status,
    /// A CamelCase reason from [`reasons`].
    pub reason: &'static str,
    /// For humans.
    pub message: String,
}

impl ConditionUpdate {
    fn new(status: bool, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: status.into(),
            reason,
            message: message.into(),
        }
    }
}

/// Everything one evaluation needs.
#[derive(Debug, Clone)]
pub struct EvaluationInput<'a> {
    /// The evaluation time.
    pub now: DateTime<Utc>,
    /// The service's desired count (the HPA's spec replicas).
    pub current_replicas: i32,
    /// The service's running task count (the HPA's ready pods / status replicas).
    pub running_replicas: i32,
    /// The bounds in force ([`effective_bounds`]).
    pub bounds: Bounds,
    /// The metric readings, in spec order.
    pub metrics: &'a [MetricInput],
    /// The resolved behavior.
    pub behavior: &'a ResolvedBehavior,
    /// The fallback, if any.
    pub fallback: Option<&'a Fallback>,
}

/// The path an evaluation took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// current == 0: autoscaling disabled.
    Disabled,
    /// current outside the bounds: moved to the nearest bound directly.
    OutOfBounds,
    /// Metrics proposed; stabilization and rate limits applied.
    Metrics,
    /// Metrics failed (all, or some while the rest proposed a scale-down): no change.
    MetricsFailed,
    /// Metrics failed long enough for the fallback to apply.
    Fallback,
}

/// The result of one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The count to set.
    pub desired_replicas: i32,
    /// Which path was taken.
    pub outcome: Outcome,
    /// The largest metric proposal, before stabilization and bounds.
    pub metric_desired_replicas: Option<i32>,
    /// The count after stabilization, before rate limits and bounds.
    pub stabilized_replicas: Option<i32>,
    /// The bounds used.
    pub bounds: Bounds,
    /// AbleToScale.
    pub able_to_scale: ConditionUpdate,
    /// ScalingActive; `None` leaves it as it is (as the HPA does on the bounds path).
    pub scaling_active: Option<ConditionUpdate>,
    /// ScalingLimited; `None` leaves it as it is.
    pub scaling_limited: Option<ConditionUpdate>,
    /// Each metric's proposal, in input order.
    pub metrics: Vec<MetricProposal>,
    /// The state to keep if the service is *not* rescaled (or the rescale fails):
    /// recommendation recorded, failure count updated, no scale event.
    pub state: ScalingState,
    /// The state to keep once the rescale to `desired_replicas` succeeded: `state` plus
    /// the scale event.
    pub state_after_scale: ScalingState,
}

impl Decision {
    /// Whether the service's count must change.
    pub fn rescale(&self, current: i32) -> bool {
        self.desired_replicas != current
    }

    /// AbleToScale once the rescale to `desired_replicas` succeeded: the HPA replaces
    /// the stabilization reason (`ReadyForNewScale`, ...) with `SucceededRescale`, so a
    /// reader right after a scale sees that it happened.
    pub fn able_after_rescale(&self) -> ConditionUpdate {
        ConditionUpdate::new(
            true,
            reasons::SUCCEEDED_RESCALE,
            format!(
                "the controller was able to update the service's desired count to {}",
                self.desired_replicas
            ),
        )
    }
}

/// Runs one evaluation; see the module docs for the steps.
pub fn evaluate(input: &EvaluationInput<'_>, state: &ScalingState) -> Decision {
    let now = input.now;
    let current = input.current_replicas;
    let bounds = input.bounds;
    let mut state = state.clone();
    if state.recommendations.is_empty() {
        state.recommendations.push(Recommendation {
            replicas: current,
            at: now,
        });
    }
    let able = ConditionUpdate::new(
        true,
        reasons::SUCCEEDED_GET_SCALE,
        "the controller was able to read the service's current count",
    );
    let mut decision = Decision {
        desired_replicas: current,
        outcome: Outcome::Disabled,
        metric_desired_replicas: None,
        stabilized_replicas: None,
        bounds,
        able_to_scale: able,
        scaling_active: None,
        scaling_limited: None,
        metrics: Vec::new(),
        state: ScalingState::default(),
        state_after_scale: ScalingState::default(),
    };

    if current == 0 {
        decision.scaling_active = Some(ConditionUpdate::new(
            false,
            reasons::SCALING_DISABLED,
            "scaling is disabled since the service's desired count is zero",
        ));
        return finish(decision, state, input);
    }
    if current > bounds.max {
        decision.outcome = Outcome::OutOfBounds;
        decision.desired_replicas = bounds.max;
        decision.scaling_limited = Some(ConditionUpdate::new(
            true,
            reasons::TOO_MANY_REPLICAS,
            format!(
                "the current count {current} is above the maximum {}",
                bounds.max
            ),
        ));
        return finish(decision, state, input);
    }
    if current < bounds.min {
        decision.outcome = Outcome::OutOfBounds;
        decision.desired_replicas = bounds.min;
        decision.scaling_limited = Some(ConditionUpdate::new(
            true,
            reasons::TOO_FEW_REPLICAS,
            format!(
                "the current count {current} is below the minimum {}",
                bounds.min
            ),
        ));
        return finish(decision, state, input);
    }

    let tolerances = Tolerances {
        down: input.behavior.scale_down.tolerance,
        up: input.behavior.scale_up.tolerance,
    };
    decision.metrics = input
        .metrics
        .iter()
        .map(|m| propose(m, current, input.running_replicas, tolerances))
        .collect();
    let failed: Vec<&MetricProposal> = decision
        .metrics
        .iter()
        .filter(|p| p.proposal.is_err())
        .collect();
    let best = decision
        .metrics
        .iter()
        .filter_map(|p| p.proposal.as_ref().ok().copied())
        .max();

    let all_failed = best.is_none();
    let blocked = match best {
        None => true,
        Some(b) => !failed.is_empty() && b < current,
    };
    if blocked {
        let first_error = failed
            .first()
            .and_then(|p| {
                p.proposal
                    .as_ref()
                    .err()
                    .map(|e| format!("{}: {e}", p.name))
            })
            .unwrap_or_else(|| "no metrics configured".to_owned());
        if all_failed {
            state.consecutive_failed_evaluations =
                state.consecutive_failed_evaluations.saturating_add(1);
        } else {
            state.consecutive_failed_evaluations = 0;
        }
        decision.outcome = Outcome::MetricsFailed;
        let mut message = if all_failed {
            format!(
                "no metric could be read ({} evaluations in a row): {first_error}",
                state.consecutive_failed_evaluations
            )
        } else {
            format!("not scaling down while a metric fails: {first_error}")
        };
        let mut reason = reasons::FAILED_GET_METRICS;
        if all_failed
            && let Some(fallback) = input.fallback
            && state.consecutive_failed_evaluations
                >= u32::try_from(fallback.after_failed_evaluations.max(1)).unwrap_or(1)
        {
            reason = reasons::FALLBACK;
            decision.outcome = Outcome::Fallback;
            match (fallback.action, fallback.replicas) {
                (FallbackAction::SetReplicas, Some(r)) => {
                    let target = r.clamp(bounds.min, bounds.max);
                    decision.desired_replicas = target;
                    message.push_str(&format!("; fallback: setting {target} tasks"));
                }
                _ => message.push_str("; fallback: holding the current count"),
            }
        }
        decision.scaling_active = Some(ConditionUpdate::new(false, reason, message));
        return finish(decision, state, input);
    }
    state.consecutive_failed_evaluations = 0;
    let desired = best.unwrap_or(current).max(0);
    decision.metric_desired_replicas = Some(desired);
    decision.outcome = Outcome::Metrics;
    let winner = decision
        .metrics
        .iter()
        .find(|p| p.proposal.as_ref().ok() == Some(&desired))
        .map(|p| p.name.clone())
        .unwrap_or_default();
    decision.scaling_active = Some(ConditionUpdate::new(
        true,
        reasons::VALID_METRIC_FOUND,
        format!("the count was computed from metric {winner}"),
    ));

    // Stabilization (stabilizeRecommendationWithBehaviors).
    let behavior = input.behavior;
    let up_cutoff = now - TimeDelta::seconds(behavior.scale_up.stabilization_window_seconds);
    let down_cutoff = now - TimeDelta::seconds(behavior.scale_down.stabilization_window_seconds);
    let mut up = desired;
    let mut down = desired;
    let mut old_index = None;
    for (i, rec) in state.recommendations.iter().enumerate() {
        if rec.at > up_cutoff {
            up = up.min(rec.replicas);
        }
        if rec.at > down_cutoff {
            down = down.max(rec.replicas);
        }
        if rec.at < up_cutoff && rec.at < down_cutoff {
            old_index = Some(i);
        }
    }
    let stabilized = current.max(up).min(down);
    let record = Recommendation {
        replicas: desired,
        at: now,
    };
    match old_index {
        Some(i) => state.recommendations[i] = record,
        None => state.recommendations.push(record),
    }
    decision.stabilized_replicas = Some(stabilized);
    decision.able_to_scale = if stabilized != desired {
        if stabilized < desired {
            ConditionUpdate::new(
                true,
                reasons::SCALE_UP_STABILIZED,
                "recent recommendations were lower than the current one, applying the lowest recent recommendation",
            )
        } else {
            ConditionUpdate::new(
                true,
                reasons::SCALE_DOWN_STABILIZED,
                "recent recommendations were higher than the current one, applying the highest recent recommendation",
            )
        }
    } else {
        ConditionUpdate::new(
            true,
            reasons::READY_FOR_NEW_SCALE,
            "recommended size matches current size",
        )
    };

    // Rate limits and bounds (convertDesiredReplicasWithBehaviorRate).
    let (result, reason, message) = limit_rate(&state, behavior, current, stabilized, bounds, now);
    decision.desired_replicas = result;
    decision.scaling_limited = Some(ConditionUpdate::new(result != stabilized, reason, message));
    finish(decision, state, input)
}

fn finish(mut decision: Decision, state: ScalingState, input: &EvaluationInput<'_>) -> Decision {
    let mut after = state.clone();
    after.record_scale_event(
        input.behavior,
        input.current_replicas,
        decision.desired_replicas,
        input.now,
    );
    decision.state = state;
    decision.state_after_scale = after;
    decision
}

/// Σ changes of events strictly inside the period (`at > now - period`).
fn change_in_period(events: &[ScaleEvent], period_seconds: i64, now: DateTime<Utc>) -> i64 {
    let cutoff = now - TimeDelta::seconds(period_seconds);
    events
        .iter()
        .filter(|e| e.at > cutoff)
        .map(|e| i64::from(e.change))
        .sum()
}

fn period_start(state: &ScalingState, policy: &Policy, current: i32, now: DateTime<Utc>) -> i64 {
    let added = change_in_period(&state.scale_up_events, policy.period_seconds, now);
    let deleted = change_in_period(&state.scale_down_events, policy.period_seconds, now);
    i64::from(current) - added + deleted
}

fn to_i32(v: i64) -> i32 {
    v.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
}

/// `calculateScaleUpLimitWithScalingRules`.
pub fn scale_up_limit(
    state: &ScalingState,
    rules: &ResolvedRules,
    current: i32,
    now: DateTime<Utc>,
) -> i32 {
    let proposals = rules.policies.iter().map(|p| {
        let start = period_start(state, p, current, now);
        match p.type_ {
            PolicyType::Pods => start + i64::from(p.value),
            PolicyType::Percent => {
                (start as f64 * (1.0 + f64::from(p.value) / 100.0)).ceil() as i64
            }
        }
    });
    let limit = match rules.select_policy {
        SelectPolicy::Disabled => return current,
        SelectPolicy::Min => proposals.min(),
        SelectPolicy::Max => proposals.max(),
    };
    // No policy: the HPA's fold starts at MinInt32 (Max) or MaxInt32 (Min).
    to_i32(limit.unwrap_or(match rules.select_policy {
        SelectPolicy::Min => i64::from(i32::MAX),
        _ => i64::from(i32::MIN),
    }))
}

/// `calculateScaleDownLimitWithBehaviors`.
pub fn scale_down_limit(
    state: &ScalingState,
    rules: &ResolvedRules,
    current: i32,
    now: DateTime<Utc>,
) -> i32 {
    let proposals = rules.policies.iter().map(|p| {
        let start = period_start(state, p, current, now);
        match p.type_ {
            PolicyType::Pods => start - i64::from(p.value),
            // Truncates toward zero, and may be negative.
            PolicyType::Percent => (start as f64 * (1.0 - f64::from(p.value) / 100.0)) as i64,
        }
    });
    let limit = match rules.select_policy {
        SelectPolicy::Disabled => return current,
        // Max picks the biggest change, which for scaling down is the lowest count.
        SelectPolicy::Max => proposals.min(),
        SelectPolicy::Min => proposals.max(),
    };
    to_i32(limit.unwrap_or(match rules.select_policy {
        SelectPolicy::Min => i64::from(i32::MIN),
        _ => i64::from(i32::MAX),
    }))
}

fn limit_rate(
    state: &ScalingState,
    behavior: &ResolvedBehavior,
    current: i32,
    stabilized: i32,
    bounds: Bounds,
    now: DateTime<Utc>,
) -> (i32, &'static str, String) {
    if stabilized > current {
        let limit = scale_up_limit(state, &behavior.scale_up, current, now).max(current);
        let (allowed, reason, message) = if bounds.max > limit {
            (
                limit,
                reasons::SCALE_UP_LIMIT,
                "the desired count is increasing faster than the maximum scale rate",
            )
        } else {
            (
                bounds.max,
                reasons::TOO_MANY_REPLICAS,
                "the desired count is more than the maximum count",
            )
        };
        if stabilized > allowed {
            return (allowed, reason, message.to_owned());
        }
    } else if stabilized < current {
        let limit = scale_down_limit(state, &behavior.scale_down, current, now).min(current);
        let (allowed, reason, message) = if bounds.min < limit {
            (
                limit,
                reasons::SCALE_DOWN_LIMIT,
                "the desired count is decreasing faster than the maximum scale rate",
            )
        } else {
            (
                bounds.min,
                reasons::TOO_FEW_REPLICAS,
                "the desired count is less than the minimum count",
            )
        };
        if stabilized < allowed {
            return (allowed, reason, message.to_owned());
        }
    }
    (
        stabilized,
        reasons::DESIRED_WITHIN_RANGE,
        "the desired count is within the acceptable range".to_owned(),
    )
}

/// A metric value with three significant digits, for status: small changes in a
/// CloudWatch value should not rewrite status on every evaluation.
pub fn format_significant(v: f64) -> String {
    struct Sig(f64);
    impl fmt::Display for Sig {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let v = self.0;
            if v == 0.0 || !v.is_finite() {
                return write!(f, "{v}");
            }
            let magnitude = v.abs().log10().floor() as i32;
            let decimals = (2 - magnitude).max(0) as usize;
            let scale = 10f64.powi(2 - magnitude);
            let rounded = (v * scale).round() / scale;
            write!(f, "{rounded:.decimals$}")
        }
    }
    Sig(v).to_string()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::crd::{ScalingPolicy, Tolerance};

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap_or_default()
    }

    fn cpu(percent: f64, target: i32) -> MetricInput {
        MetricInput {
            name: "cpu".into(),
            target: MetricTarget::Utilization {
                target_percent: target,
            },
            value: Ok(percent),
        }
    }

    fn failing(name: &str) -> MetricInput {
        MetricInput {
            name: name.into(),
            target: MetricTarget::Utilization { target_percent: 50 },
            value: Err("no datapoints".into()),
        }
    }

    fn defaults() -> ResolvedBehavior {
        ResolvedBehavior::hpa_defaults(0.1)
    }

    /// Defaults with no stabilization in either direction, to isolate other rules.
    fn unstabilized() -> ResolvedBehavior {
        let mut b = defaults();
        b.scale_down.stabilization_window_seconds = 0;
        b
    }

    fn bounds(min: i32, max: i32) -> Bounds {
        Bounds { min, max }
    }

    struct Eval<'a> {
        now: DateTime<Utc>,
        current: i32,
        running: i32,
        bounds: Bounds,
        metrics: Vec<MetricInput>,
        behavior: &'a ResolvedBehavior,
        fallback: Option<&'a Fallback>,
    }

    impl Eval<'_> {
        fn run(&self, state: &ScalingState) -> Decision {
            evaluate(
                &EvaluationInput {
                    now: self.now,
                    current_replicas: self.current,
                    running_replicas: self.running,
                    bounds: self.bounds,
                    metrics: &self.metrics,
                    behavior: self.behavior,
                    fallback: self.fallback,
                },
                state,
            )
        }
    }

    fn eval(behavior: &ResolvedBehavior, current: i32, metrics: Vec<MetricInput>) -> Eval<'_> {
        Eval {
            now: t(0),
            current,
            running: current,
            bounds: bounds(1, 100),
            metrics,
            behavior,
            fallback: None,
        }
    }

    // --- Per-metric proposals -----------------------------------------------------------

    /// HPA docs: 1 replica at 200% of a 100% target → 2.
    #[test]
    fn hpa_doc_example_doubles() {
        let b = defaults();
        let d = eval(&b, 1, vec![cpu(200.0, 100)]).run(&ScalingState::default());
        assert_eq!(d.metrics[0].proposal, Ok(2));
        assert_eq!(d.desired_replicas, 2);
        assert_eq!(d.outcome, Outcome::Metrics);
        let active = d.scaling_active.expect("set");
        assert_eq!(active.reason, reasons::VALID_METRIC_FOUND);
        assert_eq!(active.status, Status::True);
    }

    /// Tolerance is inclusive at both ends, utilization is truncated to whole percent,
    /// and per-direction tolerances apply one side each.
    #[test]
    fn tolerance_edges() {
        let tol = Tolerances { down: 0.1, up: 0.1 };
        // (utilization, target, current, running, proposal)
        let cases = [
            (110.0, 100, 10, 10, 10), // ratio 1.1: within
            (110.9, 100, 10, 10, 10), // truncated to 110: within
            (111.0, 100, 10, 10, 12), // ceil(1.11 * 10)
            (90.0, 100, 10, 10, 10),  // ratio 0.9: within
            (89.9, 100, 10, 10, 9),   // truncated to 89: ceil(8.9)
            (55.0, 50, 10, 10, 10),   // ratio 1.1
            (45.0, 50, 10, 10, 10),   // ratio 0.9
            (44.0, 50, 10, 10, 9),    // ceil(0.88 * 10) = ceil(8.8)
            (150.0, 100, 10, 4, 6),   // out of tolerance: running tasks are the base
            (105.0, 100, 10, 4, 10),  // within: the desired count, not running
            (0.0, 50, 10, 10, 0),     // idle
        ];
        for (util, target, current, running, want) in cases {
            let p = propose(&cpu(util, target), current, running, tol);
            assert_eq!(
                p.proposal,
                Ok(want),
                "{util}% of {target}% at {current}/{running}"
            );
        }
        let asym = Tolerances { down: 0.5, up: 0.0 };
        assert_eq!(propose(&cpu(101.0, 100), 10, 10, asym).proposal, Ok(11));
        assert_eq!(propose(&cpu(51.0, 100), 10, 10, asym).proposal, Ok(10));
        assert_eq!(propose(&cpu(50.0, 100), 10, 10, asym).proposal, Ok(10));
        assert_eq!(propose(&cpu(49.0, 100), 10, 10, asym).proposal, Ok(5));
    }

    #[test]
    fn cloudwatch_proposals() {
        let tol = Tolerances { down: 0.1, up: 0.1 };
        let value = |v: f64, target: f64| MetricInput {
            name: "AWS/SQS/depth".into(),
            target: MetricTarget::Value { target },
            value: Ok(v),
        };
        let per_task = |v: f64, target: f64| MetricInput {
            name: "AWS/SQS/depth".into(),
            target: MetricTarget::AverageValuePerTask { target },
            value: Ok(v),
        };
        // Total: ceil(ratio * running).
        assert_eq!(propose(&value(200.0, 100.0), 3, 3, tol).proposal, Ok(6));
        assert_eq!(propose(&value(110.0, 100.0), 3, 3, tol).proposal, Ok(3));
        assert_eq!(propose(&value(0.5, 0.25), 2, 2, tol).proposal, Ok(4));
        // Per task: ceil(total / target), not ratio * n.
        let p = propose(&per_task(100.0, 10.0), 4, 5, tol);
        assert_eq!(p.proposal, Ok(10));
        assert_eq!(p.current, Some(MetricCurrent::Value(20.0)));
        // Within tolerance the proposal is the running count.
        assert_eq!(propose(&per_task(52.0, 10.0), 7, 5, tol).proposal, Ok(5));
        // No running task: ceil(total / target), as the HPA does with 0 status replicas.
        assert_eq!(propose(&per_task(25.0, 10.0), 2, 0, tol).proposal, Ok(3));
        // Utilization and totals cannot be based on zero running tasks.
        assert!(propose(&value(200.0, 100.0), 3, 0, tol).proposal.is_err());
        assert!(propose(&cpu(80.0, 50), 3, 0, tol).proposal.is_err());
        // Nonsense readings fail.
        assert!(propose(&cpu(f64::NAN, 50), 3, 3, tol).proposal.is_err());
        assert!(propose(&cpu(-1.0, 50), 3, 3, tol).proposal.is_err());
        // Capped at MaxInt32.
        assert_eq!(
            propose(&value(1e12, 0.001), 3, 3, tol).proposal,
            Ok(i32::MAX)
        );
    }

    /// The largest proposal wins across metrics.
    #[test]
    fn largest_proposal_wins() {
        let b = unstabilized();
        let d = eval(&b, 4, vec![cpu(25.0, 50), cpu(100.0, 50)]).run(&ScalingState::default());
        assert_eq!(d.metric_desired_replicas, Some(8));
        assert_eq!(d.desired_replicas, 8);
    }

    // --- Failures and fallback ---------------------------------------------------------

    #[test]
    fn failed_metrics_rules() {
        let b = unstabilized();
        let s = ScalingState::default();
        // All fail: hold, count the failure.
        let d = eval(&b, 5, vec![failing("cpu"), failing("memory")]).run(&s);
        assert_eq!((d.outcome, d.desired_replicas), (Outcome::MetricsFailed, 5));
        assert_eq!(d.state.consecutive_failed_evaluations, 1);
        let active = d.scaling_active.expect("set");
        assert_eq!(
            (active.status, active.reason),
            (Status::False, reasons::FAILED_GET_METRICS)
        );
        // Some fail and the rest would scale down: hold, not counted as a failed evaluation.
        let d = eval(&b, 5, vec![failing("memory"), cpu(10.0, 50)]).run(&d.state);
        assert_eq!((d.outcome, d.desired_replicas), (Outcome::MetricsFailed, 5));
        assert_eq!(d.state.consecutive_failed_evaluations, 0);
        // Some fail and the rest scale up: scale up.
        let d = eval(&b, 5, vec![failing("memory"), cpu(100.0, 50)]).run(&s);
        assert_eq!((d.outcome, d.desired_replicas), (Outcome::Metrics, 10));
        // Failures record no recommendation beyond the seed.
        let d = eval(&b, 5, vec![failing("cpu")]).run(&s);
        assert_eq!(
            d.state.recommendations,
            vec![Recommendation {
                replicas: 5,
                at: t(0)
            }]
        );
    }

    #[test]
    fn fallback_after_n_failed_evaluations() {
        let b = unstabilized();
        let fallback = Fallback {
            after_failed_evaluations: 3,
            action: FallbackAction::SetReplicas,
            replicas: Some(50),
        };
        let mut e = eval(&b, 5, vec![failing("cpu")]);
        e.bounds = bounds(2, 20);
        e.fallback = Some(&fallback);
        let mut s = ScalingState::default();
        for (i, want) in [(1, 5), (2, 5), (3, 20), (4, 20)] {
            e.now = t(15 * i);
            let d = e.run(&s);
            assert_eq!(d.desired_replicas, want, "evaluation {i}");
            assert_eq!(d.state.consecutive_failed_evaluations, i as u32);
            if want != 5 {
                assert_eq!(d.outcome, Outcome::Fallback);
                assert_eq!(
                    d.scaling_active.as_ref().map(|c| c.reason),
                    Some(reasons::FALLBACK)
                );
            }
            s = d.state;
        }
        // A successful evaluation resets the count.
        e.metrics = vec![cpu(50.0, 50)];
        let d = e.run(&s);
        assert_eq!(d.state.consecutive_failed_evaluations, 0);

        let hold = Fallback {
            after_failed_evaluations: 1,
            action: FallbackAction::Hold,
            replicas: None,
        };
        let mut e = eval(&b, 5, vec![failing("cpu")]);
        e.fallback = Some(&hold);
        let d = e.run(&ScalingState::default());
        assert_eq!((d.outcome, d.desired_replicas), (Outcome::Fallback, 5));
    }

    // --- Bounds -------------------------------------------------------------------------

    #[test]
    fn bounds_and_disabled() {
        let b = defaults();
        let s = ScalingState::default();
        // current > max → max, skipping metrics and rate limits.
        let mut e = eval(&b, 30, vec![cpu(500.0, 50)]);
        e.bounds = bounds(2, 10);
        let d = e.run(&s);
        assert_eq!((d.outcome, d.desired_replicas), (Outcome::OutOfBounds, 10));
        assert!(d.metrics.is_empty());
        assert_eq!(
            d.scaling_limited.map(|c| c.reason),
            Some(reasons::TOO_MANY_REPLICAS)
        );
        // current < min → min, even a jump from 1 to 20.
        let mut e = eval(&b, 1, vec![cpu(1.0, 50)]);
        e.bounds = bounds(20, 40);
        let d = e.run(&s);
        assert_eq!((d.outcome, d.desired_replicas), (Outcome::OutOfBounds, 20));
        assert_eq!(d.state_after_scale.scale_up_events.len(), 1);
        // Unlike the HPA (which sets only AbleToScale on this path), Capstan also says
        // why the count moved: ScalingLimited=True with the bound's reason. ScalingActive
        // is left as it was, as in the HPA.
        let limited = d.scaling_limited.as_ref().expect("ScalingLimited set");
        assert_eq!(
            (limited.status, limited.reason),
            (Status::True, reasons::TOO_FEW_REPLICAS)
        );
        assert!(
            limited.message.contains("below the minimum 20"),
            "{}",
            limited.message
        );
        assert_eq!(d.scaling_active, None);
        assert_eq!(d.able_to_scale.reason, reasons::SUCCEEDED_GET_SCALE);
        // current == 0 → disabled, nothing changes.
        let d = eval(&b, 0, vec![cpu(500.0, 50)]).run(&s);
        assert_eq!((d.outcome, d.desired_replicas), (Outcome::Disabled, 0));
        assert_eq!(
            d.scaling_active.map(|c| (c.status, c.reason)),
            Some((Status::False, reasons::SCALING_DISABLED))
        );
        // ...but the history is still seeded, as the HPA does.
        assert_eq!(d.state.recommendations.len(), 1);
    }

    /// The metric path clamps to the bounds with TooManyReplicas / TooFewReplicas.
    #[test]
    fn metric_path_clamps_to_bounds() {
        let b = unstabilized();
        let mut e = eval(&b, 8, vec![cpu(500.0, 50)]);
        e.bounds = bounds(2, 10);
        let d = e.run(&ScalingState::default());
        assert_eq!(d.desired_replicas, 10);
        let limited = d.scaling_limited.expect("set");
        assert_eq!(
            (limited.status, limited.reason),
            (Status::True, reasons::TOO_MANY_REPLICAS)
        );

        let mut e = eval(&b, 8, vec![cpu(1.0, 50)]);
        e.bounds = bounds(3, 10);
        let d = e.run(&ScalingState::default());
        assert_eq!(d.desired_replicas, 3);
        assert_eq!(
            d.scaling_limited.map(|c| c.reason),
            Some(reasons::TOO_FEW_REPLICAS)
        );
    }

    // --- Rate limits --------------------------------------------------------------------

    fn rules(select: SelectPolicy, policies: &[(PolicyType, i32, i64)]) -> ResolvedRules {
        ResolvedRules {
            stabilization_window_seconds: 0,
            select_policy: select,
            policies: policies
                .iter()
                .map(|&(type_, value, period_seconds)| Policy {
                    type_,
                    value,
                    period_seconds,
                })
                .collect(),
            tolerance: 0.1,
        }
    }

    #[test]
    fn scale_down_percent_truncates() {
        let s = ScalingState::default();
        let now = t(0);
        // (current, percent, limit): int32(current * (1 - p/100)).
        for (current, percent, want) in [
            (10, 15, 8),
            (3, 50, 1),
            (7, 10, 6),
            (1, 50, 0),
            (10, 150, -5),
        ] {
            let r = rules(SelectPolicy::Max, &[(PolicyType::Percent, percent, 60)]);
            assert_eq!(
                scale_down_limit(&s, &r, current, now),
                want,
                "{current} -{percent}%"
            );
        }
        // Scale-up Percent rounds up: ceil(3 * 1.5) = 5.
        let r = rules(SelectPolicy::Max, &[(PolicyType::Percent, 50, 60)]);
        assert_eq!(scale_up_limit(&s, &r, 3, now), 5);
        // Through evaluate: from 10 toward 1 with 15%/min, the first step stops at 8.
        let mut b = unstabilized();
        b.scale_down = rules(SelectPolicy::Max, &[(PolicyType::Percent, 15, 60)]);
        let d = eval(&b, 10, vec![cpu(5.0, 50)]).run(&ScalingState::default());
        assert_eq!(d.desired_replicas, 8);
        let limited = d.scaling_limited.expect("set");
        assert_eq!(
            (limited.status, limited.reason),
            (Status::True, reasons::SCALE_DOWN_LIMIT)
        );
    }

    /// Events inside a policy's period (strictly) move its start count; both lists count
    /// in both directions.
    #[test]
    fn policies_with_periods() {
        let r = rules(SelectPolicy::Max, &[(PolicyType::Pods, 4, 60)]);
        let mut s = ScalingState::default();
        let b = ResolvedBehavior {
            scale_up: r.clone(),
            scale_down: r.clone(),
        };
        s.record_scale_event(&b, 10, 14, t(0));
        // 30 s later: start = 14 - 4 = 10, limit 14: no room left.
        assert_eq!(scale_up_limit(&s, &r, 14, t(30)), 14);
        // Exactly 60 s later the event is out of the period (t > now - period is strict).
        assert_eq!(scale_up_limit(&s, &r, 14, t(60)), 18);
        // A scale-down inside the period gives room back: start = 12 - 4 + 2 = 10.
        s.record_scale_event(&b, 14, 12, t(40));
        assert_eq!(scale_up_limit(&s, &r, 12, t(45)), 14);
        // And scale-up events count against scale-down: start = 12 - 4 + 2 = 10 → 6.
        assert_eq!(scale_down_limit(&s, &r, 12, t(45)), 6);

        // Through evaluate: a constant overload climbs 4 tasks per minute.
        let mut behavior = unstabilized();
        behavior.scale_up = rules(SelectPolicy::Max, &[(PolicyType::Pods, 4, 60)]);
        let mut state = ScalingState::default();
        let mut current = 10;
        let mut seen = Vec::new();
        for step in 0..9 {
            let mut e = eval(&behavior, current, vec![cpu(400.0, 50)]);
            e.now = t(15 * step);
            let d = e.run(&state);
            state = if d.desired_replicas != current {
                d.state_after_scale.clone()
            } else {
                d.state.clone()
            };
            current = d.desired_replicas;
            seen.push(current);
        }
        assert_eq!(seen, [14, 14, 14, 14, 18, 18, 18, 18, 22]);
    }

    #[test]
    fn select_policies() {
        let s = ScalingState::default();
        let now = t(0);
        let both = [(PolicyType::Pods, 4, 15), (PolicyType::Percent, 100, 15)];
        // Up from 10: Pods → 14, Percent → 20.
        assert_eq!(
            scale_up_limit(&s, &rules(SelectPolicy::Max, &both), 10, now),
            20
        );
        assert_eq!(
            scale_up_limit(&s, &rules(SelectPolicy::Min, &both), 10, now),
            14
        );
        assert_eq!(
            scale_up_limit(&s, &rules(SelectPolicy::Disabled, &both), 10, now),
            10
        );
        // Down from 10: Pods → 6, Percent 50 → 5. Max = biggest change = 5.
        let down = [(PolicyType::Pods, 4, 15), (PolicyType::Percent, 50, 15)];
        assert_eq!(
            scale_down_limit(&s, &rules(SelectPolicy::Max, &down), 10, now),
            5
        );
        assert_eq!(
            scale_down_limit(&s, &rules(SelectPolicy::Min, &down), 10, now),
            6
        );
        assert_eq!(
            scale_down_limit(&s, &rules(SelectPolicy::Disabled, &down), 10, now),
            10
        );
        // Disabled scale-down holds through evaluate.
        let mut b = unstabilized();
        b.scale_down.select_policy = SelectPolicy::Disabled;
        let d = eval(&b, 10, vec![cpu(5.0, 50)]).run(&ScalingState::default());
        assert_eq!(d.desired_replicas, 10);
    }

    #[test]
    fn scale_events_reuse_the_last_outdated_slot() {
        let b = defaults(); // longest scale-up period 15 s
        let mut s = ScalingState::default();
        s.record_scale_event(&b, 1, 2, t(0));
        s.record_scale_event(&b, 2, 4, t(5));
        assert_eq!(s.scale_up_events.len(), 2);
        // At t=30 both are older than 15 s: marked outdated, the last slot is reused.
        s.record_scale_event(&b, 4, 7, t(30));
        assert_eq!(s.scale_up_events.len(), 2);
        assert_eq!(
            s.scale_up_events[1],
            ScaleEvent {
                change: 3,
                at: t(30),
                outdated: false
            }
        );
        assert!(s.scale_up_events[0].outdated);
        // Down events go to their own list.
        s.record_scale_event(&b, 7, 5, t(31));
        assert_eq!(
            s.scale_down_events,
            vec![ScaleEvent {
                change: 2,
                at: t(31),
                outdated: false
            }]
        );
    }

    // --- Stabilization ------------------------------------------------------------------

    /// Step by step with an injected clock: a 60 s scale-down window holds the highest
    /// recommendation; an entry exactly at the cutoff no longer counts.
    #[test]
    fn stabilization_window_step_by_step() {
        let mut b = defaults();
        b.scale_down.stabilization_window_seconds = 60;
        let mut state = ScalingState::default();
        let mut current = 10;
        // (time, utilization at target 50, expected count)
        let steps = [
            (0, 50.0, 10),  // seeded {10, 0}; within tolerance
            (15, 25.0, 10), // proposes 5; the window's max is 10
            (30, 25.0, 10),
            (45, 25.0, 10),
            (60, 25.0, 5), // the 10s at t=0 sit exactly at the cutoff: excluded
            (75, 50.0, 5),
        ];
        for (time, util, want) in steps {
            let mut e = eval(&b, current, vec![cpu(util, 50)]);
            e.now = t(time);
            let d = e.run(&state);
            assert_eq!(d.desired_replicas, want, "t={time}");
            if time == 15 {
                assert_eq!(d.able_to_scale.reason, reasons::SCALE_DOWN_STABILIZED);
            }
            state = if d.desired_replicas != current {
                d.state_after_scale
            } else {
                d.state
            };
            current = d.desired_replicas;
        }
    }

    /// A scale-up window follows the lowest recent recommendation.
    #[test]
    fn scale_up_stabilization() {
        let mut b = unstabilized();
        b.scale_up.stabilization_window_seconds = 30;
        let mut e = eval(&b, 4, vec![cpu(100.0, 50)]);
        let d = e.run(&ScalingState::default());
        // Seed {4, 0} is in the window: min(8, 4) = 4.
        assert_eq!(d.desired_replicas, 4);
        assert_eq!(d.able_to_scale.reason, reasons::SCALE_UP_STABILIZED);
        e.now = t(30);
        let d = e.run(&d.state);
        // The seed at exactly now-30 is out; the 8 at t=0 is out too: only 8 now.
        assert_eq!(d.desired_replicas, 8);
    }

    /// After a restart (empty state), a low proposal cannot drop the count at once.
    #[test]
    fn restart_seeds_history_and_never_jumps() {
        let b = defaults();
        let d = eval(&b, 12, vec![cpu(5.0, 50)]).run(&ScalingState::default());
        assert_eq!(d.desired_replicas, 12);
        assert_eq!(
            d.state.recommendations[0],
            Recommendation {
                replicas: 12,
                at: t(0)
            }
        );
        // The recorded recommendation is the pre-bounds proposal.
        assert_eq!(d.state.recommendations[1].replicas, 2);
    }

    /// Records overwrite the last entry older than both windows.
    #[test]
    fn recommendations_overwrite_old_entries() {
        let mut b = unstabilized();
        b.scale_down.stabilization_window_seconds = 30;
        let mut state = ScalingState::default();
        for i in 0..10 {
            let mut e = eval(&b, 5, vec![cpu(50.0, 50)]);
            e.now = t(15 * i);
            state = e.run(&state).state;
        }
        // Window 30 s at 15 s steps: never more than 4 entries are kept.
        assert!(
            state.recommendations.len() <= 4,
            "{:?}",
            state.recommendations
        );
    }

    // --- Schedules ----------------------------------------------------------------------

    #[test]
    fn effective_bounds_overlap_rule() {
        let spec = bounds(2, 10);
        let w = |name: &str, min: Option<i32>, max: Option<i32>| ActiveWindow {
            name: name.into(),
            min_replicas: min,
            max_replicas: max,
        };
        let cases = [
            (vec![], bounds(2, 10)),
            (vec![w("bf", Some(20), None)], bounds(20, 20)),
            (vec![w("bf", Some(20), Some(60))], bounds(20, 60)),
            (vec![w("night", Some(1), Some(3))], bounds(1, 3)),
            (
                vec![w("bf", Some(20), Some(60)), w("launch", Some(30), None)],
                bounds(30, 60),
            ),
            (
                vec![w("cap", None, Some(5)), w("bf", Some(20), None)],
                bounds(20, 20),
            ),
            (
                vec![w("a", None, Some(5)), w("b", None, Some(8))],
                bounds(2, 8),
            ),
        ];
        for (active, want) in cases {
            assert_eq!(effective_bounds(spec, &active), want, "{active:?}");
            let mut reversed = active.clone();
            reversed.reverse();
            assert_eq!(
                effective_bounds(spec, &reversed),
                want,
                "order must not matter"
            );
        }
    }

    fn window(name: &str) -> ScheduleWindow {
        ScheduleWindow {
            name: name.into(),
            min_replicas: Some(20),
            ..ScheduleWindow::default()
        }
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("timestamp")
            .with_timezone(&Utc)
    }

    #[test]
    fn windows_open_and_close() {
        let cron = Window::from_spec(&ScheduleWindow {
            cron: Some("0 0 27 11 *".into()),
            time_zone: Some("America/New_York".into()),
            duration: Some(capstan_core::schedule::DurationString::new("1d").expect("ok")),
            ..window("black-friday")
        })
        .expect("valid");
        assert!(!cron.is_open(utc("2026-11-27T04:59:59Z")));
        assert!(cron.is_open(utc("2026-11-27T05:00:00Z")));
        assert!(cron.is_open(utc("2026-11-28T04:59:59Z")));
        assert!(!cron.is_open(utc("2026-11-28T05:00:00Z")));
        assert_eq!(
            cron.next_change_after(utc("2026-11-27T12:00:00Z")),
            Some(utc("2026-11-28T05:00:00Z"))
        );
        assert_eq!(
            cron.next_change_after(utc("2026-06-01T00:00:00Z")),
            Some(utc("2026-11-27T05:00:00Z"))
        );

        let abs = Window::from_spec(&ScheduleWindow {
            start: Some(utc("2026-12-01T00:00:00Z")),
            end: Some(utc("2026-12-02T00:00:00Z")),
            ..window("launch")
        })
        .expect("valid");
        assert!(!abs.is_open(utc("2026-11-30T23:59:59Z")));
        assert!(abs.is_open(utc("2026-12-01T00:00:00Z")));
        assert!(!abs.is_open(utc("2026-12-02T00:00:00Z")));

        let windows = vec![cron, abs];
        let open = active_windows(&windows, utc("2026-11-27T06:00:00Z"));
        assert_eq!(
            open.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(),
            ["black-friday"]
        );
        assert_eq!(
            next_window_change(&windows, utc("2026-11-28T06:00:00Z")),
            Some(utc("2026-12-01T00:00:00Z"))
        );
    }

    #[test]
    fn malformed_windows_are_refused() {
        let bad = [
            ScheduleWindow {
                start: Some(utc("2026-12-01T00:00:00Z")),
                ..window("no-end")
            },
            ScheduleWindow {
                start: Some(utc("2026-12-02T00:00:00Z")),
                end: Some(utc("2026-12-01T00:00:00Z")),
                ..window("backwards")
            },
            ScheduleWindow {
                cron: Some("0 0 * * *".into()),
                ..window("no-duration")
            },
            ScheduleWindow {
                cron: Some("0 0 30 2 *".into()),
                duration: Some(capstan_core::schedule::DurationString::new("1h").expect("ok")),
                ..window("never")
            },
            ScheduleWindow {
                cron: Some("0 0 * * *".into()),
                duration: Some(capstan_core::schedule::DurationString::new("0s").expect("ok")),
                ..window("empty")
            },
            window("neither"),
        ];
        for w in bad {
            assert!(
                Window::from_spec(&w).is_err(),
                "{} should be refused",
                w.name
            );
        }
    }

    #[test]
    fn behavior_from_spec_applies_hpa_defaults_per_field() {
        let mut spec: ServiceScalingSpec = serde_json::from_value(serde_json::json!({
            "connectionRef": {"name": "prod"},
            "service": {"cluster": "main", "service": "web"},
            "maxReplicas": 10,
            "metrics": [{"cpuUtilization": {"targetPercent": 60}}],
            "tolerance": "0.05",
        }))
        .expect("deserializes");
        let b = ResolvedBehavior::from_spec(&spec).expect("valid");
        assert_eq!(b, ResolvedBehavior::hpa_defaults(0.05));
        spec.behavior = Some(crate::crd::ScalingBehavior {
            scale_up: Some(ScalingRules {
                select_policy: Some(SelectPolicy::Min),
                tolerance: Some(Tolerance::new("0.2").expect("valid")),
                ..ScalingRules::default()
            }),
            scale_down: Some(ScalingRules {
                stabilization_window_seconds: Some(60),
                policies: Some(vec![ScalingPolicy {
                    type_: PolicyType::Pods,
                    value: 1,
                    period_seconds: 60,
                }]),
                ..ScalingRules::default()
            }),
        });
        let b = ResolvedBehavior::from_spec(&spec).expect("valid");
        // Up: select replaced, policies and window kept, tolerance overridden.
        assert_eq!(b.scale_up.select_policy, SelectPolicy::Min);
        assert_eq!(b.scale_up.policies.len(), 2);
        assert_eq!(b.scale_up.stabilization_window_seconds, 0);
        assert_eq!(b.scale_up.tolerance, 0.2);
        // Down: window replaced, policy list replaced entirely, select kept.
        assert_eq!(b.scale_down.stabilization_window_seconds, 60);
        assert_eq!(
            b.scale_down.policies,
            vec![Policy {
                type_: PolicyType::Pods,
                value: 1,
                period_seconds: 60
            }]
        );
        assert_eq!(b.scale_down.select_policy, SelectPolicy::Max);
        assert_eq!(b.scale_down.tolerance, 0.05);
        assert_eq!(
            metric_targets(&spec).expect("valid"),
            vec![(
                "cpu".to_owned(),
                MetricTarget::Utilization { target_percent: 60 }
            )]
        );
    }

    /// A tolerance of 2.0 (a 200% band, which the HPA accepts) behaves as in the HPA:
    /// `1 - 2 <= ratio <= 1 + 2`, so scaling up needs more than 3x the target and no
    /// ratio ever scales down.
    #[test]
    fn a_tolerance_of_two_behaves_like_the_hpa() {
        let spec: ServiceScalingSpec = serde_json::from_value(serde_json::json!({
            "connectionRef": {"name": "prod"},
            "service": {"cluster": "main", "service": "web"},
            "maxReplicas": 100,
            "metrics": [{"cpuUtilization": {"targetPercent": 50}}],
            "tolerance": "2.0",
        }))
        .expect("deserializes");
        let b = ResolvedBehavior::from_spec(&spec).expect("2.0 is a valid tolerance");
        assert_eq!((b.scale_up.tolerance, b.scale_down.tolerance), (2.0, 2.0));
        let tol = Tolerances { down: 2.0, up: 2.0 };
        // (utilization, proposal at 10 tasks, target 50%)
        for (util, want) in [
            (150.0, 10), // ratio 3.0: the inclusive edge
            (151.0, 31), // ratio 3.02: ceil(30.2)
            (100.0, 10), // 2x: within
            (0.0, 10),   // idle: 1 - 2 < 0 <= ratio, within
            (10.0, 10),
        ] {
            assert_eq!(
                propose(&cpu(util, 50), 10, 10, tol).proposal,
                Ok(want),
                "{util}%"
            );
        }
        // Through a whole evaluation: no scale-down however idle, a scale-up above 3x.
        let mut b = b;
        b.scale_down.stabilization_window_seconds = 0;
        let d = eval(&b, 10, vec![cpu(0.0, 50)]).run(&ScalingState::default());
        assert_eq!(d.desired_replicas, 10);
        let d = eval(&b, 10, vec![cpu(160.0, 50)]).run(&ScalingState::default());
        assert_eq!(d.metric_desired_replicas, Some(32));
        // "100m" is the HPA's canonical form of 0.1.
        let mut spec = spec;
        spec.tolerance = Tolerance::new("100m").expect("valid");
        assert_eq!(
            ResolvedBehavior::from_spec(&spec).expect("valid"),
            ResolvedBehavior::hpa_defaults(0.1)
        );
    }

    /// After a rescale, AbleToScale says SucceededRescale with the new count (the
    /// HPA's condition), not the stabilization reason of the decision.
    #[test]
    fn a_rescale_reports_succeeded_rescale() {
        let b = unstabilized();
        let d = eval(&b, 2, vec![cpu(100.0, 50)]).run(&ScalingState::default());
        assert!(d.rescale(2));
        assert_eq!(d.able_to_scale.reason, reasons::READY_FOR_NEW_SCALE);
        let after = d.able_after_rescale();
        assert_eq!(
            (after.status, after.reason),
            (Status::True, reasons::SUCCEEDED_RESCALE)
        );
        assert!(
            after.message.ends_with("desired count to 4"),
            "{}",
            after.message
        );
    }

    #[test]
    fn format_significant_rounds() {
        for (v, want) in [
            (0.0, "0"),
            (1234.5, "1230"),
            (12.345, "12.3"),
            (0.012345, "0.0123"),
            (100.0, "100"),
        ] {
            assert_eq!(format_significant(v), want, "{v}");
        }
    }

    // --- Properties ---------------------------------------------------------------------

    /// Runs `steps` evaluations 15 s apart against a service whose tasks start at once,
    /// under a constant load (in task-percent: utilization = load / running).
    fn simulate(
        behavior: &ResolvedBehavior,
        b: Bounds,
        start: i32,
        loads: &[f64],
        target: i32,
    ) -> Vec<(i32, Decision)> {
        let mut state = ScalingState::default();
        let mut current = start;
        let mut out = Vec::new();
        for (step, load) in loads.iter().enumerate() {
            let util = if current > 0 {
                load / f64::from(current)
            } else {
                0.0
            };
            let e = Eval {
                now: t(15 * step as i64),
                current,
                running: current,
                bounds: b,
                metrics: vec![cpu(util, target)],
                behavior,
                fallback: None,
            };
            let d = e.run(&state);
            state = if d.desired_replicas != current {
                d.state_after_scale.clone()
            } else {
                d.state.clone()
            };
            current = d.desired_replicas;
            out.push((current, d));
        }
        out
    }

    proptest! {
        /// The result is always within the effective bounds, unless the service is at 0.
        #[test]
        fn result_within_bounds(
            current in 0i32..200,
            running in 0i32..200,
            min in 1i32..50,
            span in 0i32..100,
            util in 0.0f64..1000.0,
            target in 1i32..200,
            history in proptest::collection::vec((0i32..300, 0i64..600), 0..20),
        ) {
            let b = defaults();
            let state = ScalingState {
                recommendations: history
                    .iter()
                    .map(|&(r, ago)| Recommendation { replicas: r, at: t(-ago) })
                    .collect(),
                ..ScalingState::default()
            };
            let e = Eval {
                now: t(0),
                current,
                running,
                bounds: bounds(min, min + span),
                metrics: vec![cpu(util, target)],
                behavior: &b,
                fallback: None,
            };
            let d = e.run(&state);
            if current == 0 {
                prop_assert_eq!(d.desired_replicas, 0);
            } else {
                prop_assert!(d.desired_replicas >= min && d.desired_replicas <= min + span,
                    "{} not in [{}, {}]", d.desired_replicas, min, min + span);
            }
        }

        /// Under constant load the count converges and then never changes.
        #[test]
        fn no_oscillation_under_constant_load(
            load in 1.0f64..20_000.0,
            target in 10i32..100,
            start in 1i32..50,
        ) {
            let b = defaults();
            let loads = vec![load; 200];
            let run = simulate(&b, bounds(1, 500), start, &loads, target);
            let settled = run[100].0;
            for (step, (count, _)) in run.iter().enumerate().skip(100) {
                prop_assert_eq!(*count, settled, "changed at step {}", step);
            }
        }

        /// Scaling down never goes below a recommendation recorded within the scale-down
        /// window.
        #[test]
        fn stabilization_holds_within_window(
            loads in proptest::collection::vec(10.0f64..5000.0, 10..80),
            window in 0i64..400,
        ) {
            let mut b = defaults();
            b.scale_down.stabilization_window_seconds = window;
            let run = simulate(&b, bounds(1, 1000), 10, &loads, 50);
            let mut recs: Vec<(i64, i32)> = Vec::new();
            let mut previous = 10;
            for (step, (count, d)) in run.iter().enumerate() {
                let now = 15 * step as i64;
                if let Some(desired) = d.metric_desired_replicas {
                    recs.push((now, desired));
                }
                if *count < previous {
                    for &(at, r) in &recs {
                        if at > now - window {
                            prop_assert!(*count >= r.min(previous),
                                "scaled down to {} at {} despite {} recommended at {}", count, now, r, at);
                        }
                    }
                }
                previous = *count;
            }
        }

        /// With a single Pods policy, the tasks added within any policy period never
        /// exceed its value.
        #[test]
        fn scale_up_respects_policy(
            loads in proptest::collection::vec(10.0f64..20_000.0, 10..80),
            value in 1i32..10,
            period in 15i64..120,
        ) {
            let mut b = defaults();
            b.scale_up = rules(SelectPolicy::Max, &[(PolicyType::Pods, value, period)]);
            // Never scale down, so every change is a scale-up.
            b.scale_down.select_policy = SelectPolicy::Disabled;
            let run = simulate(&b, bounds(1, 10_000), 1, &loads, 50);
            let mut ups: Vec<(i64, i32)> = Vec::new();
            let mut previous = 1;
            for (step, (count, _)) in run.iter().enumerate() {
                let now = 15 * step as i64;
                if *count > previous {
                    ups.push((now, count - previous));
                }
                let added: i32 = ups.iter().filter(|(at, _)| *at > now - period).map(|(_, c)| c).sum();
                prop_assert!(added <= value, "added {} within {} s at {}", added, period, now);
                previous = *count;
            }
        }
    }
}
