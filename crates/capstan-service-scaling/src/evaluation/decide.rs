//! One batch's decisions: per object, a missing service or unreadable metrics become
//! conditions; Direct mode runs the algorithm and writes the desired count;
//! ApplicationAutoScaling mode repairs the declared AWS objects; then the status write
//! and the next deadline ([`finish`]).

use std::time::{Duration, Instant};

use capstan_aws::autoscaling::ecs_resource_id;
use capstan_aws::ecs::{EcsApi, EcsError, EcsService};
use capstan_core::conditions::{self, Desired, READY, Status};
use chrono::{DateTime, TimeDelta, Utc};
use futures::StreamExt;
use kube::runtime::events::EventType;

use super::job::{Done, Job, missing_backoff, next_deadline};
use super::read::{Lookup, describe_all, read_metrics};
use crate::aas;
use crate::algorithm::{
    Bounds, ConditionUpdate, Decision, EvaluationInput, MetricCurrent, MetricInput, MetricTarget,
    Outcome, ScalingState, active_windows, effective_bounds, evaluate, format_significant, reasons,
};
use crate::clients::ConnectionClients;
use crate::context::{Ctx, FIELD_MANAGER, Inputs};
use crate::crd::{
    CONDITION_ABLE_TO_SCALE, CONDITION_SCALING_ACTIVE, CONDITION_SCALING_LIMITED, MetricStatus,
    ScaleDirection, ScalingMode, ServiceScaling, ServiceScalingStatus,
};
use crate::reasons::able_to_scale::{FAILED_GET_SCALE, FAILED_UPDATE_SCALE};
use crate::reasons::events;
use crate::reasons::ready as rr;

/// How many objects of one connection are decided and written at once.
const OBJECT_CONCURRENCY: usize = 16;

pub(crate) async fn evaluate_connection(
    ctx: &Ctx,
    jobs: Vec<Job>,
    now: DateTime<Utc>,
) -> Vec<Done> {
    let started = Instant::now();
    ctx.metrics.cycles.inc();
    ctx.metrics
        .evaluations
        .inc_by(u64::try_from(jobs.len()).unwrap_or(0));
    let mut done = Vec::with_capacity(jobs.len());
    let mut active = Vec::new();
    for job in jobs {
        let spec = &job.obj.spec;
        let hold = if spec.suspend {
            Some((
                rr::SUSPENDED,
                "spec.suspend is set: not evaluating or scaling".to_owned(),
            ))
        } else {
            spec.paused_until.filter(|t| *t > now).map(|t| {
                (
                    rr::PAUSED,
                    format!("paused until {}: not evaluating or scaling", t.to_rfc3339()),
                )
            })
        };
        match hold {
            Some((reason, message)) => {
                let conds = vec![
                    Desired::new(CONDITION_SCALING_ACTIVE, false, reason, message.clone()),
                    Desired::new(READY, true, reason, message),
                ];
                done.push(finish(ctx, &job, job.state.clone(), conds, |_| {}, now).await);
            }
            None => active.push(job),
        }
    }
    if active.is_empty() {
        ctx.metrics
            .evaluation_duration
            .observe(started.elapsed().as_secs_f64());
        return done;
    }
    let clients = match ctx.clients.get(&active[0].connection).await {
        Ok(c) => c,
        Err(e) => {
            let msg = e.to_string();
            for job in &active {
                let conds = vec![
                    Desired::new(
                        CONDITION_ABLE_TO_SCALE,
                        false,
                        FAILED_GET_SCALE,
                        msg.clone(),
                    ),
                    Desired::new(READY, false, rr::CREDENTIALS_UNAVAILABLE, msg.clone()),
                ];
                done.push(finish(ctx, job, job.state.clone(), conds, |_| {}, now).await);
            }
            return done;
        }
    };
    let lookups = describe_all(&clients, &active).await;
    let lookup_of = |job: &Job| -> Lookup {
        let s = &job.obj.spec.service;
        lookups
            .get(&(s.cluster.clone(), s.service.clone()))
            .cloned()
            .unwrap_or_else(|| {
                Err(EcsError::ServiceNotFound {
                    cluster: s.cluster.clone(),
                    service: s.service.clone(),
                    reason: "was not read".into(),
                })
            })
    };
    let direct: Vec<(usize, &Job)> = active
        .iter()
        .enumerate()
        .filter(|(_, j)| j.obj.spec.mode == ScalingMode::Direct && lookup_of(j).is_ok())
        .collect();
    let values = read_metrics(ctx, &clients, &direct, now).await;
    // Indices, not references, go through the stream: a closure over `&Job` arguments
    // would make the batch's future not `Send` for every lifetime, and the loop spawns it.
    let active = &active;
    let results: Vec<Done> = futures::stream::iter(0..active.len())
        .map(|i| {
            let job = &active[i];
            let lookup = lookup_of(job);
            let clients = &clients;
            let values = &values;
            async move {
                match lookup {
                    Err(e) => not_readable(ctx, job, &e, now).await,
                    Ok(service) => match job.obj.spec.mode {
                        ScalingMode::Direct => {
                            let readings: Vec<MetricInput> = job
                                .inputs
                                .targets
                                .iter()
                                .enumerate()
                                .map(|(m, (name, target))| MetricInput {
                                    name: name.clone(),
                                    target: *target,
                                    value: values.get(&(i, m)).cloned().unwrap_or_else(|| {
                                        Err("the metric was not read".to_owned())
                                    }),
                                })
                                .collect();
                            direct_mode(ctx, clients, job, &service, &readings, now).await
                        }
                        ScalingMode::ApplicationAutoScaling => {
                            aas_mode(ctx, clients, job, &service, now).await
                        }
                    },
                }
            }
        })
        .buffer_unordered(OBJECT_CONCURRENCY)
        .collect()
        .await;
    done.extend(results);
    ctx.metrics
        .evaluation_duration
        .observe(started.elapsed().as_secs_f64());
    done
}

async fn not_readable(ctx: &Ctx, job: &Job, e: &EcsError, now: DateTime<Utc>) -> Done {
    let reason = match e {
        EcsError::ClusterNotFound { .. } => rr::CLUSTER_NOT_FOUND,
        EcsError::ServiceNotFound { .. } => rr::SERVICE_NOT_FOUND,
        _ => rr::SERVICE_UNREADABLE,
    };
    if !e.is_not_found() {
        ctx.metrics.controller.failure(e);
    }
    let mut msg = format!("{e}; nothing is scaled");
    let missing = if e.is_not_found() {
        job.missing.saturating_add(1)
    } else {
        0
    };
    let wait = (missing > 0).then(|| missing_backoff(job.inputs.interval, missing, &job.key));
    if let Some(w) = wait.filter(|w| *w > job.inputs.interval) {
        msg.push_str(&format!(
            " (looking again in {}, backing off while it is missing)",
            capstan_core::schedule::format_duration(Duration::from_secs(w.as_secs()))
        ));
    }
    let conds = vec![
        Desired::new(
            CONDITION_ABLE_TO_SCALE,
            false,
            FAILED_GET_SCALE,
            msg.clone(),
        ),
        Desired::new(READY, false, reason, msg),
    ];
    let mut done = finish(ctx, job, job.state.clone(), conds, |_| {}, now).await;
    done.missing = missing;
    if let Some(w) = wait {
        let backoff = now + TimeDelta::from_std(w).unwrap_or(TimeDelta::seconds(300));
        done.next_eval = done.next_eval.max(backoff);
    }
    done
}

fn desired_of(c: &ConditionUpdate, type_: &'static str) -> Desired<'static> {
    Desired {
        type_,
        status: c.status,
        reason: c.reason,
        message: c.message.clone(),
    }
}

fn metric_statuses(decision: &Decision) -> Vec<MetricStatus> {
    decision
        .metrics
        .iter()
        .map(|p| MetricStatus {
            name: p.name.clone(),
            current_utilization_percent: match p.current {
                Some(MetricCurrent::UtilizationPercent(u)) => Some(u),
                _ => None,
            },
            current_value: match p.current {
                Some(MetricCurrent::Value(v)) => Some(format_significant(v)),
                _ => None,
            },
            proposed_replicas: p.proposal.as_ref().ok().copied(),
            error: p.proposal.as_ref().err().cloned(),
        })
        .collect()
}

/// The numbers behind a decision, for the scale Event.
fn explain(decision: &Decision, inputs: &Inputs) -> String {
    decision
        .metrics
        .iter()
        .zip(&inputs.targets)
        .map(|(p, (_, target))| {
            let current = match p.current {
                Some(MetricCurrent::UtilizationPercent(u)) => format!("{u}%"),
                Some(MetricCurrent::Value(v)) => format_significant(v),
                None => "unreadable".into(),
            };
            let target = match target {
                MetricTarget::Utilization { target_percent } => format!("{target_percent}%"),
                MetricTarget::Value { target } => format_significant(*target),
                MetricTarget::AverageValuePerTask { target } => {
                    format!("{} per task", format_significant(*target))
                }
            };
            let proposal = match &p.proposal {
                Ok(n) => format!("proposes {n}"),
                Err(_) => "no proposal".into(),
            };
            format!("{} {current} (target {target}, {proposal})", p.name)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

async fn direct_mode(
    ctx: &Ctx,
    clients: &ConnectionClients,
    job: &Job,
    service: &EcsService,
    readings: &[MetricInput],
    now: DateTime<Utc>,
) -> Done {
    let spec = &job.obj.spec;
    let current = service.desired_count;
    let running = service.running_count;
    let open = active_windows(&job.inputs.windows, now);
    let bounds = effective_bounds(
        Bounds {
            min: spec.min_replicas,
            max: spec.max_replicas,
        },
        &open,
    );
    let decision = evaluate(
        &EvaluationInput {
            now,
            current_replicas: current,
            running_replicas: running,
            bounds,
            metrics: readings,
            behavior: &job.inputs.behavior,
            fallback: spec.fallback.as_ref(),
        },
        &job.state,
    );
    let mut state = decision.state.clone();
    let mut able = desired_of(&decision.able_to_scale, CONDITION_ABLE_TO_SCALE);
    let mut write_error = None;
    let mut scaled = None;
    if decision.outcome != Outcome::Disabled && decision.rescale(current) {
        match clients
            .ecs
            .set_desired_count(
                &spec.service.cluster,
                &spec.service.service,
                decision.desired_replicas,
            )
            .await
        {
            Ok(()) => {
                state = decision.state_after_scale.clone();
                able = desired_of(&decision.able_after_rescale(), CONDITION_ABLE_TO_SCALE);
                let up = decision.desired_replicas > current;
                scaled = Some(if up {
                    ScaleDirection::Up
                } else {
                    ScaleDirection::Down
                });
                ctx.metrics
                    .scale_operations
                    .get_or_create(&crate::context::DirectionLabels {
                        direction: if up { "up" } else { "down" }.into(),
                    })
                    .inc();
                let why = match decision.outcome {
                    Outcome::OutOfBounds => format!(
                        "the count was outside the bounds {}..{}",
                        bounds.min, bounds.max
                    ),
                    Outcome::Fallback => "metrics kept failing: fallback".to_owned(),
                    _ => explain(&decision, &job.inputs),
                };
                let note = format!(
                    "desired count {current} → {} (running {running}, bounds {}..{}{}): {why}",
                    decision.desired_replicas,
                    bounds.min,
                    bounds.max,
                    if open.is_empty() {
                        String::new()
                    } else {
                        format!(
                            ", schedule {}",
                            open.iter()
                                .map(|w| w.name.as_str())
                                .collect::<Vec<_>>()
                                .join(",")
                        )
                    }
                );
                tracing::info!(kind = "ServiceScaling", object = %format!("{}/{}", job.key.0, job.key.1), %note, "scaled");
                ctx.events
                    .publish(
                        job.obj.as_ref(),
                        EventType::Normal,
                        if up {
                            events::SCALED_UP
                        } else {
                            events::SCALED_DOWN
                        },
                        // The action names the new count, so a reader filtering on it finds
                        // each scale.
                        &format!("ScaleTo{}", decision.desired_replicas),
                        note,
                    )
                    .await;
            }
            Err(e) => {
                ctx.metrics.controller.failure(&e);
                let msg = e.to_string();
                able = Desired::new(
                    CONDITION_ABLE_TO_SCALE,
                    false,
                    FAILED_UPDATE_SCALE,
                    msg.clone(),
                );
                write_error = Some(msg);
            }
        }
    }
    let metrics_failed = matches!(decision.outcome, Outcome::MetricsFailed | Outcome::Fallback);
    let ready = if let Some(msg) = &write_error {
        Desired::new(READY, false, rr::FAILED_UPDATE_SCALE, msg.clone())
    } else if metrics_failed {
        let msg = decision
            .scaling_active
            .as_ref()
            .map(|c| c.message.clone())
            .unwrap_or_else(|| "metrics could not be read".into());
        Desired::new(READY, false, rr::FAILED_GET_METRICS, msg)
    } else if decision.outcome == Outcome::Disabled {
        Desired::new(
            READY,
            true,
            rr::SCALING_DISABLED,
            "the service's desired count is 0; scaling resumes once it is scaled up",
        )
    } else {
        Desired::new(
            READY,
            true,
            rr::EVALUATED,
            "the service and its metrics were read and the decision applied",
        )
    };
    let mut conds = vec![able, ready];
    if let Some(c) = &decision.scaling_active {
        conds.push(desired_of(c, CONDITION_SCALING_ACTIVE));
    }
    if let Some(c) = &decision.scaling_limited {
        conds.push(desired_of(c, CONDITION_SCALING_LIMITED));
    }
    let desired_replicas = if write_error.is_some() {
        current
    } else {
        decision.desired_replicas
    };
    let metrics = metric_statuses(&decision);
    let schedules: Vec<String> = open.iter().map(|w| w.name.clone()).collect();
    let failed = i32::try_from(state.consecutive_failed_evaluations).unwrap_or(i32::MAX);
    finish(
        ctx,
        job,
        state,
        conds,
        move |s| {
            s.current_replicas = Some(current);
            s.desired_replicas = Some(desired_replicas);
            s.running_replicas = Some(running);
            if !metrics.is_empty() || decision.outcome == Outcome::Metrics {
                s.current_metrics = metrics;
            }
            s.active_schedules = schedules;
            s.consecutive_failed_evaluations = failed;
            if let Some(direction) = scaled {
                s.last_scale_time = Some(now);
                s.last_scale_direction = Some(direction);
            }
        },
        now,
    )
    .await
}

async fn aas_mode(
    ctx: &Ctx,
    clients: &ConnectionClients,
    job: &Job,
    service: &EcsService,
    now: DateTime<Utc>,
) -> Done {
    let spec = &job.obj.spec;
    let resource_id = ecs_resource_id(&spec.service.cluster, &spec.service.service);
    let open = active_windows(&job.inputs.windows, now);
    let result = match aas::declare(spec, &job.inputs.behavior, &job.inputs.windows, now) {
        Ok(d) => match aas::apply(&clients.autoscaling, &resource_id, &d).await {
            Ok(changed) => Ok((d, changed)),
            Err(e) => {
                ctx.metrics.controller.failure(&e);
                Err(e.to_string())
            }
        },
        Err(msg) => Err(msg),
    };
    let (able, active, ready) = match &result {
        Ok((d, changed)) => {
            if !changed.is_empty() {
                let note = changed.join("; ");
                // Once declared, any difference is drift (or a spec change) repaired.
                let declared_before = job
                    .status
                    .as_ref()
                    .and_then(|s| conditions::find(&s.conditions, READY))
                    .is_some_and(|c| c.reason == rr::DECLARED);
                let reason = if declared_before {
                    events::AUTOSCALING_REPAIRED
                } else {
                    events::AUTOSCALING_DECLARED
                };
                tracing::info!(kind = "ServiceScaling", object = %format!("{}/{}", job.key.0, job.key.1), %note, reason, "application auto scaling updated");
                ctx.events
                    .publish(job.obj.as_ref(), EventType::Normal, reason, "Declare", note)
                    .await;
            }
            let msg = format!(
                "scalable target {}..{}, {} target-tracking policies and {} scheduled actions in place; AWS owns the desired count",
                d.target.min_capacity,
                d.target.max_capacity,
                d.policies.len(),
                d.actions.len()
            );
            (
                Desired::new(
                    CONDITION_ABLE_TO_SCALE,
                    true,
                    reasons::SUCCEEDED_GET_SCALE,
                    "the controller was able to read the service's current count",
                ),
                Desired::new(CONDITION_SCALING_ACTIVE, true, rr::DECLARED, msg.clone()),
                Desired::new(READY, true, rr::DECLARED, msg),
            )
        }
        Err(msg) => (
            Desired::new(
                CONDITION_ABLE_TO_SCALE,
                false,
                rr::AUTOSCALING_FAILED,
                msg.clone(),
            ),
            Desired::new(
                CONDITION_SCALING_ACTIVE,
                false,
                rr::AUTOSCALING_FAILED,
                msg.clone(),
            ),
            Desired::new(READY, false, rr::AUTOSCALING_FAILED, msg.clone()),
        ),
    };
    let (current, running) = (service.desired_count, service.running_count);
    let schedules: Vec<String> = open.iter().map(|w| w.name.clone()).collect();
    finish(
        ctx,
        job,
        job.state.clone(),
        vec![able, active, ready],
        move |s| {
            s.current_replicas = Some(current);
            s.desired_replicas = Some(current);
            s.running_replicas = Some(running);
            s.active_schedules = schedules;
        },
        now,
    )
    .await
}

/// Writes the status (gate conditions + `conds` + `update`) when it changed, publishes a
/// Warning Event when Ready turns False with a new reason, and computes the next
/// deadline.
async fn finish(
    ctx: &Ctx,
    job: &Job,
    state: ScalingState,
    conds: Vec<Desired<'static>>,
    update: impl FnOnce(&mut ServiceScalingStatus),
    now: DateTime<Utc>,
) -> Done {
    use capstan_core::conditions::ObjectStatus as _;
    let before = job.status.clone().unwrap_or_default();
    let mut status = before.clone();
    let generation = job.obj.metadata.generation;
    status.set_observed_generation(generation);
    let ready_before =
        conditions::find(&before.conditions, READY).map(|c| (c.status.clone(), c.reason.clone()));
    let mut warn = None;
    for d in job.gate.iter().cloned().chain(conds) {
        if d.type_ == READY
            && d.status == Status::False
            && ready_before.as_ref() != Some(&(d.status.as_str().to_owned(), d.reason.to_owned()))
        {
            warn = Some((d.reason, d.message.clone()));
        }
        conditions::set(&mut status.conditions, d, generation, now);
    }
    update(&mut status);
    let next_eval = next_deadline(job, now);
    let mut done = Done {
        key: job.key.clone(),
        state,
        status: None,
        next_eval,
        gone: false,
        missing: 0,
    };
    if let Some((reason, message)) = warn {
        ctx.events
            .publish(
                job.obj.as_ref(),
                EventType::Warning,
                reason,
                "Evaluate",
                message,
            )
            .await;
    }
    if status == before {
        return done;
    }
    let api = kube::Api::<ServiceScaling>::namespaced(ctx.rt.client.clone(), &job.key.0);
    match capstan_core::ssa::apply_status(&api, &job.key.1, FIELD_MANAGER, &status).await {
        Ok(_) => done.status = Some(status),
        Err(kube::Error::Api(s)) if s.code == 404 => done.gone = true,
        Err(e) => {
            ctx.metrics.controller.failure(&e);
            tracing::warn!(kind = "ServiceScaling", object = %format!("{}/{}", job.key.0, job.key.1), error = %e, "writing status failed");
        }
    }
    done
}
