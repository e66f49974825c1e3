//! A deterministic replay of a sales event: the scaling algorithm against a simulated
//! service, compared with a fixed fleet sized for the peak. Used by the tests and by
//! `make bench`.
//!
//! The model: load is measured in task capacities (load 1.0 keeps one task at 100%), so
//! each running task's utilization is `100 × load / running`. A new task is billed from
//! the moment it is requested but serves (and reports metrics) only after
//! `startup_delay`; removing tasks drops not-yet-running ones first. The algorithm runs
//! every `evaluation_interval` with the CPU utilization of the running tasks, the bounds
//! of the open schedule windows, and the HPA default behavior.

use chrono::{DateTime, TimeDelta, Utc};

use crate::algorithm::{
    Bounds, EvaluationInput, MetricInput, MetricTarget, ResolvedBehavior, ScalingState, SpecError,
    Window, active_windows, effective_bounds, evaluate,
};
use crate::crd::ScheduleWindow;

/// The scenario.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    /// When the simulation starts.
    pub start: DateTime<Utc>,
    /// Load outside the event, in task capacities.
    pub baseline_load: f64,
    /// The peak load as a multiple of the baseline.
    pub spike_factor: f64,
    /// Time at baseline before the ramp.
    pub lead_in: TimeDelta,
    /// How long the load takes to climb from baseline to peak (linearly).
    pub ramp_up: TimeDelta,
    /// How long the peak holds.
    pub hold: TimeDelta,
    /// How long the load takes to fall back to baseline.
    pub ramp_down: TimeDelta,
    /// Time at baseline after the event.
    pub tail: TimeDelta,
    /// How long a new task takes to start serving.
    pub startup_delay: TimeDelta,
    /// Time between evaluations (and simulation step).
    pub evaluation_interval: TimeDelta,
    /// The CPU utilization target, percent.
    pub target_percent: i32,
    /// The spec's minReplicas.
    pub min_replicas: i32,
    /// The spec's maxReplicas.
    pub max_replicas: i32,
    /// Schedule windows (e.g. the Black Friday floor).
    pub schedules: Vec<ScheduleWindow>,
    /// Tolerance, as a fraction.
    pub tolerance: f64,
}

impl ReplayConfig {
    /// Black Friday 2026 in New York: baseline 4 task capacities from 07:00, a ramp to 5×
    /// at 08:00 over 10 minutes, 2 hours at the peak, 10 minutes back down, 2 hours of
    /// tail; tasks start in 60 s; target 60% CPU; bounds 2..60; a floor of 20 tasks from
    /// 07:30 for 3 hours (cron `30 7 27 11 *` in America/New_York).
    pub fn black_friday() -> Self {
        let start = DateTime::parse_from_rfc3339("2026-11-27T07:00:00-05:00")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default();
        Self {
            start,
            baseline_load: 4.0,
            spike_factor: 5.0,
            lead_in: TimeDelta::hours(1),
            ramp_up: TimeDelta::minutes(10),
            hold: TimeDelta::hours(2),
            ramp_down: TimeDelta::minutes(10),
            tail: TimeDelta::hours(2),
            startup_delay: TimeDelta::seconds(60),
            evaluation_interval: TimeDelta::seconds(15),
            target_percent: 60,
            min_replicas: 2,
            max_replicas: 60,
            schedules: vec![ScheduleWindow {
                name: "black-friday".into(),
                cron: Some("30 7 27 11 *".into()),
                time_zone: Some("America/New_York".into()),
                duration: capstan_core::schedule::DurationString::new("3h").ok(),
                min_replicas: Some(20),
                ..ScheduleWindow::default()
            }],
            tolerance: 0.1,
        }
    }

    fn total(&self) -> TimeDelta {
        self.lead_in + self.ramp_up + self.hold + self.ramp_down + self.tail
    }

    /// The load at `elapsed` since the start.
    pub fn load_at(&self, elapsed: TimeDelta) -> f64 {
        let base = self.baseline_load;
        let peak = base * self.spike_factor;
        let frac = |into: TimeDelta, of: TimeDelta| {
            if of <= TimeDelta::zero() {
                1.0
            } else {
                into.num_milliseconds() as f64 / of.num_milliseconds() as f64
            }
        };
        let ramp_start = self.lead_in;
        let hold_start = ramp_start + self.ramp_up;
        let down_start = hold_start + self.hold;
        let tail_start = down_start + self.ramp_down;
        if elapsed < ramp_start {
            base
        } else if elapsed < hold_start {
            base + (peak - base) * frac(elapsed - ramp_start, self.ramp_up)
        } else if elapsed < down_start {
            peak
        } else if elapsed < tail_start {
            peak - (peak - base) * frac(elapsed - down_start, self.ramp_down)
        } else {
            base
        }
    }

    /// The peak load.
    pub fn peak_load(&self) -> f64 {
        self.baseline_load * self.spike_factor
    }

    /// Tasks that hold the peak load at the target: the fixed fleet's size.
    pub fn fleet_for_peak(&self) -> i32 {
        (self.peak_load() * 100.0 / f64::from(self.target_percent)).ceil() as i32
    }
}

/// One evaluation step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplaySample {
    /// Minutes since the start.
    pub minute: f64,
    /// Load, in task capacities.
    pub load: f64,
    /// Tasks requested (billed).
    pub desired: i32,
    /// Tasks serving.
    pub running: i32,
    /// Utilization of the running tasks, percent.
    pub utilization_percent: f64,
    /// The floor in force.
    pub min_replicas: i32,
}

/// The figures of one fleet over the replay.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetReport {
    /// The highest utilization seen, percent.
    pub peak_utilization_percent: f64,
    /// Minutes with utilization above the target.
    pub minutes_above_target: f64,
    /// Minutes with utilization above the tolerance band (whole-percent utilization
    /// over target × (1 + tolerance)), where the algorithm acts: inside the band a
    /// service may sit up to 10% above the target without scaling, as with the HPA.
    pub minutes_above_tolerance: f64,
    /// Task-minutes billed.
    pub task_minutes: f64,
    /// The most tasks requested at once.
    pub peak_tasks: i32,
    /// Minutes after the ramp reached the peak until utilization was back within the
    /// tolerance band (`None` if it never was during the hold).
    pub minutes_to_recover_after_ramp: Option<f64>,
}

/// The replay's result.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayReport {
    /// The autoscaled service.
    pub autoscaled: FleetReport,
    /// A fixed fleet of [`ReplayReport::fixed_fleet_size`] tasks.
    pub fixed: FleetReport,
    /// The fixed fleet's size (sized for the peak at the target).
    pub fixed_fleet_size: i32,
    /// Scaling actions taken by the autoscaled service.
    pub scale_actions: usize,
    /// The autoscaled timeline, one sample per evaluation.
    pub samples: Vec<ReplaySample>,
}

impl ReplayReport {
    /// Task-minutes saved by autoscaling, as a fraction of the fixed fleet's.
    pub fn savings(&self) -> f64 {
        if self.fixed.task_minutes <= 0.0 {
            0.0
        } else {
            1.0 - self.autoscaled.task_minutes / self.fixed.task_minutes
        }
    }
}

fn fleet_report(config: &ReplayConfig, samples: &[ReplaySample]) -> FleetReport {
    let step_minutes = config.evaluation_interval.num_milliseconds() as f64 / 60_000.0;
    let target = f64::from(config.target_percent);
    // The algorithm's own test: whole percent, ratio to the target, inclusive band.
    let within_band = |u: f64| u.floor() / target <= 1.0 + config.tolerance;
    let hold_start = (config.lead_in + config.ramp_up).num_milliseconds() as f64 / 60_000.0;
    let hold_end = hold_start + config.hold.num_milliseconds() as f64 / 60_000.0;
    FleetReport {
        peak_utilization_percent: samples
            .iter()
            .map(|s| s.utilization_percent)
            .fold(0.0, f64::max),
        minutes_above_target: samples
            .iter()
            .filter(|s| s.utilization_percent > target)
            .count() as f64
            * step_minutes,
        minutes_above_tolerance: samples
            .iter()
            .filter(|s| !within_band(s.utilization_percent))
            .count() as f64
            * step_minutes,
        task_minutes: samples.iter().map(|s| f64::from(s.desired)).sum::<f64>() * step_minutes,
        peak_tasks: samples.iter().map(|s| s.desired).max().unwrap_or(0),
        minutes_to_recover_after_ramp: samples
            .iter()
            .find(|s| {
                s.minute >= hold_start && s.minute < hold_end && within_band(s.utilization_percent)
            })
            .map(|s| s.minute - hold_start),
    }
}

fn utilization(load: f64, running: i32) -> f64 {
    if running > 0 {
        100.0 * load / f64::from(running)
    } else if load > 0.0 {
        f64::INFINITY
    } else {
        0.0
    }
}

/// Runs the replay.
pub fn run(config: &ReplayConfig) -> Result<ReplayReport, SpecError> {
    let windows = config
        .schedules
        .iter()
        .map(Window::from_spec)
        .collect::<Result<Vec<_>, _>>()?;
    let behavior = ResolvedBehavior::hpa_defaults(config.tolerance);
    let spec_bounds = Bounds {
        min: config.min_replicas,
        max: config.max_replicas,
    };
    let steps = (config.total().num_milliseconds()
        / config.evaluation_interval.num_milliseconds().max(1))
    .max(0);

    // Start in steady state at the baseline.
    let steady = ((config.baseline_load * 100.0 / f64::from(config.target_percent)).ceil() as i32)
        .clamp(config.min_replicas, config.max_replicas);
    let mut running = steady;
    // Ready times of tasks still starting.
    let mut starting: Vec<DateTime<Utc>> = Vec::new();
    let mut state = ScalingState::default();
    let mut samples = Vec::new();
    let mut scale_actions = 0;

    for step in 0..steps {
        let elapsed = config.evaluation_interval * step as i32;
        let now = config.start + elapsed;
        // Tasks whose startup finished are now serving.
        let ready = starting.iter().filter(|t| **t <= now).count() as i32;
        starting.retain(|t| *t > now);
        running += ready;
        let desired_before = running + starting.len() as i32;

        let load = config.load_at(elapsed);
        let util = utilization(load, running);
        let bounds = effective_bounds(spec_bounds, &active_windows(&windows, now));
        let metrics = [MetricInput {
            name: "cpu".into(),
            target: MetricTarget::Utilization {
                target_percent: config.target_percent,
            },
            value: if util.is_finite() {
                Ok(util)
            } else {
                Err("no running task".into())
            },
        }];
        let decision = evaluate(
            &EvaluationInput {
                now,
                current_replicas: desired_before,
                running_replicas: running,
                bounds,
                metrics: &metrics,
                behavior: &behavior,
                fallback: None,
            },
            &state,
        );
        let desired = decision.desired_replicas;
        if desired != desired_before {
            scale_actions += 1;
            state = decision.state_after_scale;
            if desired > desired_before {
                let ready_at = now + config.startup_delay;
                starting.extend(std::iter::repeat_n(
                    ready_at,
                    (desired - desired_before) as usize,
                ));
            } else {
                let mut remove = (desired_before - desired) as usize;
                // Tasks not yet serving go first, the most recently requested first.
                let from_starting = remove.min(starting.len());
                starting.truncate(starting.len() - from_starting);
                remove -= from_starting;
                running -= remove as i32;
            }
        } else {
            state = decision.state;
        }
        samples.push(ReplaySample {
            minute: elapsed.num_milliseconds() as f64 / 60_000.0,
            load,
            desired,
            running,
            utilization_percent: util,
            min_replicas: bounds.min,
        });
    }

    let fixed_fleet_size = config.fleet_for_peak();
    let fixed_samples: Vec<ReplaySample> = samples
        .iter()
        .map(|s| ReplaySample {
            desired: fixed_fleet_size,
            running: fixed_fleet_size,
            utilization_percent: utilization(s.load, fixed_fleet_size),
            min_replicas: fixed_fleet_size,
            ..*s
        })
        .collect();
    Ok(ReplayReport {
        autoscaled: fleet_report(config, &samples),
        fixed: fleet_report(config, &fixed_samples),
        fixed_fleet_size,
        scale_actions,
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Black Friday replay: autoscaling costs less than a fleet sized for the peak,
    /// the floor holds during the window, and utilization comes back under the target
    /// after the ramp.
    #[test]
    fn black_friday_replay_is_sane() {
        let config = ReplayConfig::black_friday();
        let report = run(&config).expect("valid scenario");
        let a = &report.autoscaled;

        assert_eq!(report.fixed_fleet_size, 34);
        assert!(
            a.task_minutes < report.fixed.task_minutes,
            "autoscaled {} vs fixed {} task-minutes",
            a.task_minutes,
            report.fixed.task_minutes
        );
        assert!(report.savings() > 0.3, "savings {}", report.savings());
        // It reaches what the peak needs within the tolerance band (20 / 0.66 → 31 at
        // most), and no more than the fixed fleet.
        assert!(
            (30..=report.fixed_fleet_size).contains(&a.peak_tasks),
            "peak tasks {}",
            a.peak_tasks
        );
        // Utilization is back within the tolerance band within 15 minutes of the peak.
        let recover = a
            .minutes_to_recover_after_ramp
            .expect("recovers during the hold");
        assert!(recover < 15.0, "recovered after {recover} minutes");
        // And stays there for the rest of the hold.
        let hold_start = 70.0;
        let hold_end = 190.0;
        for s in report
            .samples
            .iter()
            .filter(|s| s.minute >= hold_start + recover && s.minute < hold_end)
        {
            assert!(
                s.utilization_percent.floor() <= 66.0,
                "minute {}: {}%",
                s.minute,
                s.utilization_percent
            );
        }
        // The floor of 20 holds while the window is open (07:30–10:30 New York).
        for s in report
            .samples
            .iter()
            .filter(|s| s.minute >= 30.0 && s.minute < 210.0)
        {
            assert_eq!(s.min_replicas, 20, "minute {}", s.minute);
            assert!(s.desired >= 20, "minute {}: {} tasks", s.minute, s.desired);
        }
        // Before the window it runs at the baseline's 7 tasks; after the ramp down and
        // the window, utilization is back under the target and the fleet back near the
        // baseline.
        let first = report.samples.first().expect("samples");
        assert_eq!(first.desired, 7);
        for s in report.samples.iter().filter(|s| s.minute >= 200.0) {
            assert!(
                s.utilization_percent <= 60.0,
                "minute {}: {}%",
                s.minute,
                s.utilization_percent
            );
        }
        let last = report.samples.last().expect("samples");
        assert!(last.desired <= 8, "ends at {} tasks", last.desired);
        // The fixed fleet never runs hot; autoscaling leaves the band only briefly.
        assert_eq!(report.fixed.minutes_above_target, 0.0);
        assert!(
            a.minutes_above_tolerance < 10.0,
            "{} minutes above the tolerance band",
            a.minutes_above_tolerance
        );
        assert!(
            a.peak_utilization_percent < 100.0,
            "{}",
            a.peak_utilization_percent
        );
    }

    /// Same input, same output.
    #[test]
    fn replay_is_deterministic() {
        let config = ReplayConfig::black_friday();
        assert_eq!(run(&config).expect("runs"), run(&config).expect("runs"));
    }

    /// Without the floor, the ramp is chased by metrics alone and runs hotter.
    #[test]
    fn floor_reduces_time_above_tolerance() {
        let with_floor = run(&ReplayConfig::black_friday()).expect("runs");
        let without = run(&ReplayConfig {
            schedules: Vec::new(),
            ..ReplayConfig::black_friday()
        })
        .expect("runs");
        assert!(
            with_floor.autoscaled.minutes_above_tolerance
                < without.autoscaled.minutes_above_tolerance,
            "with floor {} vs without {}",
            with_floor.autoscaled.minutes_above_tolerance,
            without.autoscaled.minutes_above_tolerance
        );
        assert!(
            with_floor.autoscaled.peak_utilization_percent
                < without.autoscaled.peak_utilization_percent
        );
    }

    #[test]
    fn load_profile() {
        let c = ReplayConfig::black_friday();
        assert_eq!(c.load_at(TimeDelta::zero()), 4.0);
        assert_eq!(c.load_at(TimeDelta::minutes(65)), 12.0);
        assert_eq!(c.load_at(TimeDelta::minutes(70)), 20.0);
        assert_eq!(c.load_at(TimeDelta::minutes(189)), 20.0);
        assert_eq!(c.load_at(TimeDelta::minutes(200)), 4.0);
    }
}
