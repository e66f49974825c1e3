//! The `ApplicationAutoScaling` mode: what Capstan declares in AWS for a spec
//! ([`declare`], pure) and how it brings AWS to it ([`apply`]).
//!
//! For `service/<cluster>/<service>` (dimension `ecs:service:DesiredCount`):
//! - the scalable target, with the bounds in force now (minReplicas..maxReplicas, moved by
//!   the open schedule windows, as in Direct mode);
//! - one target-tracking policy per metric, named `capstan-<index>-<metric>`: CPU and
//!   memory as the predefined `ECSServiceAverage{CPU,Memory}Utilization`, a CloudWatch
//!   metric with a `value` target as a customized metric; the scale-up and scale-down
//!   stabilization windows become the scale-out and scale-in cooldowns, and a scale-down
//!   select policy `Disabled` disables scale-in. (A per-task `averageValuePerTask` target
//!   has no target-tracking equivalent without a running-task metric: refused as
//!   InvalidSpec in this mode.)
//! - scheduled actions `capstan-schedule-1` and `capstan-schedule-2` at the next two
//!   times the schedule windows open or close, setting the bounds in force from then, so
//!   a sales floor starts and lifts on time even while Capstan is down; Capstan rolls
//!   them forward at every evaluation.
//!
//! Drift: every evaluation reads the three kinds back and rewrites whatever differs;
//! Capstan-named policies and actions the spec no longer declares are deleted. Objects
//! with other names are someone else's and are left alone.
//!
//! Removal ([`remove`], run by the [finalizer](crate::cleanup) when the object is
//! deleted or leaves this mode): Capstan-named policies and actions are deleted, then
//! the scalable target is deregistered, unless policies or actions of someone else's
//! still use it (AWS would delete them with it): then it is kept, and the Event says
//! why.

use std::time::SystemTime;

use capstan_aws::autoscaling::{
    AutoScalingApi, AutoScalingError, ScalableTarget, ScheduledAction, TargetTrackingPolicy,
    TrackedMetric,
};
use chrono::{DateTime, Utc};

use crate::algorithm::{
    Bounds, ResolvedBehavior, Window, active_windows, effective_bounds, next_window_change,
};
use crate::crd::{MetricKind, SelectPolicy, ServiceScalingSpec, Statistic};

/// The prefix of every policy and scheduled action Capstan owns.
pub const PREFIX: &str = "capstan-";

/// What Capstan declares for one spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Declared {
    /// The scalable target's bounds.
    pub target: ScalableTarget,
    /// Target-tracking policies.
    pub policies: Vec<TargetTrackingPolicy>,
    /// Scheduled actions.
    pub actions: Vec<ScheduledAction>,
}

/// The statistic's API name.
pub fn statistic_name(s: Statistic) -> &'static str {
    match s {
        Statistic::Average => "Average",
        Statistic::Sum => "Sum",
        Statistic::Minimum => "Minimum",
        Statistic::Maximum => "Maximum",
        Statistic::SampleCount => "SampleCount",
    }
}

fn policy_name(index: usize, display: &str) -> String {
    let clean: String = display
        .chars()
        .map(|c| if matches!(c, '/' | ':' | '|') { '-' } else { c })
        .collect();
    let mut name = format!("{PREFIX}{index}-{clean}");
    name.truncate(255);
    name
}

fn system_time(t: DateTime<Utc>) -> SystemTime {
    SystemTime::from(t)
}

/// The objects to declare for `spec` at `now`. `Err` says why the spec cannot be
/// expressed in this mode.
pub fn declare(
    spec: &ServiceScalingSpec,
    behavior: &ResolvedBehavior,
    windows: &[Window],
    now: DateTime<Utc>,
) -> Result<Declared, String> {
    let spec_bounds = Bounds {
        min: spec.min_replicas,
        max: spec.max_replicas,
    };
    let bounds_at = |t: DateTime<Utc>| effective_bounds(spec_bounds, &active_windows(windows, t));
    let now_bounds = bounds_at(now);
    let scale_out_cooldown = i32::try_from(behavior.scale_up.stabilization_window_seconds).ok();
    let scale_in_cooldown = i32::try_from(behavior.scale_down.stabilization_window_seconds).ok();
    let disable_scale_in = behavior.scale_down.select_policy == SelectPolicy::Disabled;
    let mut policies = Vec::new();
    for (index, m) in spec.metrics.iter().enumerate() {
        let (metric, target_value) = match m.kind() {
            Some(MetricKind::Cpu(t)) => (
                TrackedMetric::Predefined("ECSServiceAverageCPUUtilization".into()),
                f64::from(t.target_percent),
            ),
            Some(MetricKind::Memory(t)) => (
                TrackedMetric::Predefined("ECSServiceAverageMemoryUtilization".into()),
                f64::from(t.target_percent),
            ),
            Some(MetricKind::CloudWatch(cw)) => {
                let Some(value) = cw.target.value else {
                    return Err(format!(
                        "metrics[{index}]: mode ApplicationAutoScaling needs a cloudWatch target `value`; averageValuePerTask has no target-tracking equivalent"
                    ));
                };
                (
                    TrackedMetric::Customized {
                        namespace: cw.namespace.clone(),
                        metric_name: cw.metric_name.clone(),
                        dimensions: cw
                            .dimensions
                            .iter()
                            .map(|d| (d.name.clone(), d.value.clone()))
                            .collect(),
                        statistic: statistic_name(cw.statistic).to_owned(),
                    },
                    value,
                )
            }
            None => return Err(format!("metrics[{index}]: exactly one kind must be set")),
        };
        policies.push(TargetTrackingPolicy {
            name: policy_name(index, &m.display_name()),
            target_value,
            metric,
            scale_out_cooldown,
            scale_in_cooldown,
            disable_scale_in,
        });
    }
    let mut actions = Vec::new();
    let mut from = now;
    for i in 1..=2 {
        let Some(at) = next_window_change(windows, from) else {
            break;
        };
        let b = bounds_at(at);
        actions.push(ScheduledAction::at(
            format!("{PREFIX}schedule-{i}"),
            system_time(at),
            b.min,
            b.max,
        ));
        from = at;
    }
    Ok(Declared {
        target: ScalableTarget {
            min_capacity: now_bounds.min,
            max_capacity: now_bounds.max,
        },
        policies,
        actions,
    })
}

/// Brings AWS to `declared` for `resource_id`; returns what it changed, for the Event
/// (empty when AWS already matched).
pub async fn apply(
    api: &impl AutoScalingApi,
    resource_id: &str,
    declared: &Declared,
) -> Result<Vec<String>, AutoScalingError> {
    let mut changed = Vec::new();
    match api.scalable_target(resource_id).await? {
        Some(t) if t == declared.target => {}
        found => {
            api.register_scalable_target(resource_id, declared.target)
                .await?;
            changed.push(match found {
                None => format!(
                    "registered the scalable target ({}..{})",
                    declared.target.min_capacity, declared.target.max_capacity
                ),
                Some(t) => format!(
                    "set the scalable target's bounds {}..{} (found {}..{})",
                    declared.target.min_capacity,
                    declared.target.max_capacity,
                    t.min_capacity,
                    t.max_capacity
                ),
            });
        }
    }
    let policies = api.target_tracking_policies(resource_id).await?;
    for want in &declared.policies {
        match policies.iter().find(|p| p.name == want.name) {
            Some(p) if p == want => {}
            found => {
                api.put_target_tracking_policy(resource_id, want).await?;
                changed.push(format!(
                    "{} policy {}",
                    if found.is_some() {
                        "repaired"
                    } else {
                        "created"
                    },
                    want.name
                ));
            }
        }
    }
    for p in &policies {
        if is_capstan_name(&p.name) && !declared.policies.iter().any(|w| w.name == p.name) {
            api.delete_scaling_policy(resource_id, &p.name).await?;
            changed.push(format!("deleted policy {}", p.name));
        }
    }
    let actions = api.scheduled_actions(resource_id).await?;
    for want in &declared.actions {
        match actions.iter().find(|a| a.name == want.name) {
            Some(a) if a == want => {}
            found => {
                api.put_scheduled_action(resource_id, want).await?;
                changed.push(format!(
                    "{} scheduled action {} ({})",
                    if found.is_some() {
                        "updated"
                    } else {
                        "created"
                    },
                    want.name,
                    want.schedule
                ));
            }
        }
    }
    for a in &actions {
        if is_capstan_name(&a.name) && !declared.actions.iter().any(|w| w.name == a.name) {
            api.delete_scheduled_action(resource_id, &a.name).await?;
            changed.push(format!("deleted scheduled action {}", a.name));
        }
    }
    Ok(changed)
}

/// Whether `name` is one of Capstan's policies or scheduled actions.
pub fn is_capstan_name(name: &str) -> bool {
    name.starts_with(PREFIX)
}

/// What removing Capstan's objects from one scalable target does, decided from what AWS
/// holds ([`plan_removal`]) and carried out by [`remove`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Removal {
    /// Capstan's policies, deleted.
    pub policies: Vec<String>,
    /// Capstan's scheduled actions, deleted.
    pub actions: Vec<String>,
    /// Whether a scalable target was registered.
    pub target_found: bool,
    /// Whether the scalable target is deregistered.
    pub deregister: bool,
    /// Someone else's policies and scheduled actions on the target, which keep it
    /// registered: deregistering would delete them too.
    pub foreign: Vec<String>,
}

/// Decides what to remove, given whether the target exists and the names of every
/// policy and scheduled action on it. Pure.
pub fn plan_removal(target_found: bool, policies: &[String], actions: &[String]) -> Removal {
    let mine = |names: &[String]| -> Vec<String> {
        names
            .iter()
            .filter(|n| is_capstan_name(n))
            .cloned()
            .collect()
    };
    let foreign: Vec<String> = policies
        .iter()
        .filter(|n| !is_capstan_name(n))
        .map(|n| format!("policy {n}"))
        .chain(
            actions
                .iter()
                .filter(|n| !is_capstan_name(n))
                .map(|n| format!("scheduled action {n}")),
        )
        .collect();
    Removal {
        policies: mine(policies),
        actions: mine(actions),
        target_found,
        deregister: target_found && foreign.is_empty(),
        foreign,
    }
}

impl Removal {
    /// What was done, for the Event.
    pub fn describe(&self, resource_id: &str) -> String {
        let mut parts = Vec::new();
        if !self.policies.is_empty() {
            parts.push(format!("deleted policies {}", self.policies.join(", ")));
        }
        if !self.actions.is_empty() {
            parts.push(format!(
                "deleted scheduled actions {}",
                self.actions.join(", ")
            ));
        }
        if self.deregister {
            parts.push(format!("deregistered the scalable target {resource_id}"));
        } else if self.target_found {
            parts.push(format!(
                "kept the scalable target {resource_id}: {} still use it and are not Capstan's",
                self.foreign.join(", ")
            ));
        }
        if parts.is_empty() {
            format!("nothing of Capstan's was left on {resource_id}")
        } else {
            parts.join("; ")
        }
    }
}

/// `Ok` for a call that succeeded or found its object already gone (removal is
/// idempotent: a retry after a partial removal, or someone deleting it first).
fn gone_is_done(r: Result<(), AutoScalingError>) -> Result<(), AutoScalingError> {
    match r {
        Err(e) if e.code.as_deref() == Some("ObjectNotFoundException") => Ok(()),
        other => other,
    }
}

/// Removes Capstan's policies and scheduled actions from `resource_id`, then its
/// scalable target unless someone else's objects still use it; returns what it did.
pub async fn remove(
    api: &impl AutoScalingApi,
    resource_id: &str,
) -> Result<Removal, AutoScalingError> {
    let target_found = api.scalable_target(resource_id).await?.is_some();
    let policies = api.scaling_policy_names(resource_id).await?;
    let actions: Vec<String> = api
        .scheduled_actions(resource_id)
        .await?
        .into_iter()
        .map(|a| a.name)
        .collect();
    let plan = plan_removal(target_found, &policies, &actions);
    for name in &plan.policies {
        gone_is_done(api.delete_scaling_policy(resource_id, name).await)?;
    }
    for name in &plan.actions {
        gone_is_done(api.delete_scheduled_action(resource_id, name).await)?;
    }
    if plan.deregister {
        gone_is_done(api.deregister_scalable_target(resource_id).await)?;
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::windows_from_spec;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> ServiceScalingSpec {
        serde_json::from_value(v).expect("spec")
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    /// The declared target, policies and the next two window changes follow the spec.
    #[test]
    fn declares_target_policies_and_the_next_window_changes() {
        let s = spec(json!({
            "connectionRef": {"name": "c"},
            "service": {"cluster": "main", "service": "web"},
            "minReplicas": 2, "maxReplicas": 10,
            "metrics": [
                {"cpuUtilization": {"targetPercent": 60}},
                {"cloudWatch": {"namespace": "AWS/SQS", "metricName": "Depth",
                    "statistic": "Sum", "target": {"value": 100.0}}}
            ],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}},
            "schedules": [{"name": "sale", "start": "2026-11-27T12:00:00Z",
                "end": "2026-11-27T18:00:00Z", "minReplicas": 8}]
        }));
        let behavior = ResolvedBehavior::from_spec(&s).expect("behavior");
        let windows = windows_from_spec(&s).expect("windows");
        let d = declare(&s, &behavior, &windows, at("2026-11-27T10:00:00Z")).expect("declared");
        assert_eq!(
            d.target,
            ScalableTarget {
                min_capacity: 2,
                max_capacity: 10
            }
        );
        assert_eq!(d.policies.len(), 2);
        assert_eq!(d.policies[0].name, "capstan-0-cpu");
        assert_eq!(
            d.policies[0].metric,
            TrackedMetric::Predefined("ECSServiceAverageCPUUtilization".into())
        );
        assert_eq!(d.policies[0].scale_in_cooldown, Some(60));
        assert_eq!(d.policies[0].scale_out_cooldown, Some(0));
        assert_eq!(d.policies[1].name, "capstan-1-AWS-SQS-Depth");
        assert_eq!(d.policies[1].target_value, 100.0);
        let schedules: Vec<_> = d
            .actions
            .iter()
            .map(|a| (a.schedule.as_str(), a.min_capacity, a.max_capacity))
            .collect();
        assert_eq!(
            schedules,
            [
                ("at(2026-11-27T12:00:00)", Some(8), Some(10)),
                ("at(2026-11-27T18:00:00)", Some(2), Some(10)),
            ]
        );
        // Inside the window: the floor is in the target, one change left.
        let inside = declare(&s, &behavior, &windows, at("2026-11-27T13:00:00Z")).expect("d");
        assert_eq!(inside.target.min_capacity, 8);
        assert_eq!(inside.actions.len(), 1);
    }

    /// Removal deletes only Capstan-named objects, and keeps the scalable target while
    /// someone else's policy or action uses it (deregistering would delete theirs).
    #[test]
    fn removal_takes_only_capstans_objects() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let only_mine = plan_removal(
            true,
            &names(&["capstan-0-cpu", "capstan-1-memory"]),
            &names(&["capstan-schedule-1"]),
        );
        assert_eq!(
            only_mine.policies,
            names(&["capstan-0-cpu", "capstan-1-memory"])
        );
        assert_eq!(only_mine.actions, names(&["capstan-schedule-1"]));
        assert!(only_mine.deregister);
        assert_eq!(
            only_mine.describe("service/main/web"),
            "deleted policies capstan-0-cpu, capstan-1-memory; deleted scheduled actions capstan-schedule-1; deregistered the scalable target service/main/web"
        );
        let shared = plan_removal(
            true,
            &names(&["capstan-0-cpu", "team-step-policy"]),
            &names(&["nightly", "capstan-schedule-1"]),
        );
        assert_eq!(shared.policies, names(&["capstan-0-cpu"]));
        assert_eq!(shared.actions, names(&["capstan-schedule-1"]));
        assert!(!shared.deregister);
        let text = shared.describe("service/main/web");
        assert!(
            text.contains("kept the scalable target service/main/web: policy team-step-policy, scheduled action nightly"),
            "{text}"
        );
        let nothing = plan_removal(false, &[], &[]);
        assert!(!nothing.deregister);
        assert_eq!(
            nothing.describe("service/main/web"),
            "nothing of Capstan's was left on service/main/web"
        );
    }

    #[test]
    fn a_per_task_target_is_refused_in_this_mode() {
        let s = spec(json!({
            "connectionRef": {"name": "c"},
            "service": {"cluster": "main", "service": "web"},
            "maxReplicas": 10,
            "metrics": [{"cloudWatch": {"namespace": "AWS/SQS", "metricName": "Depth",
                "statistic": "Sum", "target": {"averageValuePerTask": 10.0}}}]
        }));
        let behavior = ResolvedBehavior::from_spec(&s).expect("behavior");
        let err = declare(&s, &behavior, &[], Utc::now()).expect_err("refused");
        assert!(err.contains("averageValuePerTask"), "{err}");
    }
}
