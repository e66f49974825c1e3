//! The evaluation loop: every tick, evaluate every registered object that is due, in
//! batches per ClusterConnection (see the [controller](crate::controller) docs for the
//! design).
//!
//! One cycle of one connection:
//! 1. objects that are suspended or paused are reported as such, with no AWS call;
//! 2. read: DescribeServices per cluster, 10 services per call; one GetMetricData for
//!    every metric of every Direct-mode object whose service exists (500 queries per
//!    call), over the longest lookback among them;
//! 3. per object: a missing cluster or service is `Ready=False` and nothing is written;
//!    Direct mode runs the algorithm and, when the count changes, calls UpdateService
//!    (rate-limited) and publishes a `ScaledUp`/`ScaledDown` Event with the numbers;
//!    ApplicationAutoScaling mode repairs the declared AWS objects;
//! 4. status, written only when it changed; the next deadline.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use capstan_aws::autoscaling::ecs_resource_id;
use capstan_aws::cloudwatch::{CloudWatchApi, Datapoint, MetricQuery};
use capstan_aws::ecs::{DESCRIBE_SERVICES_MAX, EcsApi, EcsError, EcsService};
use capstan_core::conditions::{self, Desired, READY, Status};
use capstan_core::connection::ClusterConnection;
use chrono::{DateTime, TimeDelta, Utc};
use futures::StreamExt;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use tokio_util::sync::CancellationToken;

use crate::aas;
use crate::algorithm::{
    Bounds, ConditionUpdate, Decision, EvaluationInput, MetricCurrent, MetricInput, MetricTarget,
    Outcome, ScalingState, active_windows, effective_bounds, evaluate, format_significant,
    next_window_change, reasons,
};
use crate::clients::ConnectionClients;
use crate::context::{Ctx, FIELD_MANAGER, Inputs, Key};
use crate::crd::{
    CONDITION_ABLE_TO_SCALE, CONDITION_SCALING_ACTIVE, CONDITION_SCALING_LIMITED, MetricKind,
    MetricStatus, ScaleDirection, ScalingMode, ServiceScaling, ServiceScalingStatus,
};

/// How long the loop waits after being woken by a registration, so that objects
/// registered together (a start-up, an `kubectl apply` of many) share one cycle.
const COALESCE: Duration = Duration::from_millis(200);
/// How many DescribeServices calls of one connection run at once.
const DESCRIBE_CONCURRENCY: usize = 4;
/// How many objects of one connection are decided and written at once.
const OBJECT_CONCURRENCY: usize = 16;

/// Ready reasons of this controller, besides the gate's and InvalidSpec.
pub mod ready_reasons {
    /// The last evaluation read the service and its metrics and applied its decision.
    pub const EVALUATED: &str = "Evaluated";
    /// ApplicationAutoScaling mode: the declared AWS objects are in place.
    pub const DECLARED: &str = "AutoScalingDeclared";
    /// `spec.suspend` is set.
    pub const SUSPENDED: &str = "Suspended";
    /// `spec.pausedUntil` is in the future.
    pub const PAUSED: &str = "Paused";
    /// The service's desired count is 0: autoscaling is off until it is scaled up.
    pub const SCALING_DISABLED: &str = "ScalingDisabled";
    /// The ECS cluster does not exist.
    pub const CLUSTER_NOT_FOUND: &str = "ClusterNotFound";
    /// The ECS service does not exist or is inactive.
    pub const SERVICE_NOT_FOUND: &str = "ServiceNotFound";
    /// DescribeServices failed (access, throttling, network).
    pub const SERVICE_UNREADABLE: &str = "ServiceUnreadable";
    /// No metric could be read, or a failing one blocks a scale-down.
    pub const FAILED_GET_METRICS: &str = "FailedGetMetrics";
    /// UpdateService failed.
    pub const FAILED_UPDATE_SCALE: &str = "FailedUpdateScale";
    /// Application Auto Scaling calls failed.
    pub const AUTOSCALING_FAILED: &str = "AutoScalingFailed";
    /// The connection's credentials could not be read.
    pub const CREDENTIALS_UNAVAILABLE: &str = "CredentialsUnavailable";
}
use ready_reasons as rr;

/// AbleToScale False: the service could not be read (HPA `FailedGetScale`).
const FAILED_GET_SCALE: &str = "FailedGetScale";
/// AbleToScale False: the write failed (HPA `FailedUpdateScale`).
const FAILED_UPDATE_SCALE: &str = "FailedUpdateScale";

/// A snapshot of one due object.
struct Job {
    key: Key,
    obj: Arc<ServiceScaling>,
    connection: Arc<ClusterConnection>,
    gate: Vec<Desired<'static>>,
    inputs: Arc<Inputs>,
    state: ScalingState,
    status: Option<ServiceScalingStatus>,
    /// Evaluations in a row that found the cluster or service missing.
    missing: u32,
}

/// What evaluating one object leaves behind.
struct Done {
    key: Key,
    state: ScalingState,
    status: Option<ServiceScalingStatus>,
    next_eval: DateTime<Utc>,
    gone: bool,
    /// Evaluations in a row that found the cluster or service missing (0: found).
    missing: u32,
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
    use std::hash::{Hash, Hasher};
    let doublings = missing.saturating_sub(1).min(20);
    let base = interval
        .saturating_mul(1u32 << doublings)
        .min(MISSING_BACKOFF_MAX);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (key, missing).hash(&mut h);
    let jitter = base.mul_f64((h.finish() % 1000) as f64 / 5000.0);
    base + jitter
}

/// Runs until `shutdown`.
///
/// Each batch (one connection and namespace) runs as its own task, so a namespace whose
/// calls wait for the request budget does not hold back the next cycle of another
/// namespace; an object is never in two batches at once (`busy`).
pub(crate) async fn run_loop(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    let mut batches = tokio::task::JoinSet::new();
    loop {
        let sleep = {
            let entries = ctx.registry.lock();
            let now = ctx.rt.clock.now();
            entries
                .values()
                .filter(|e| !e.busy)
                .map(|e| e.next_eval)
                .min()
                .map(|t| (t - now).to_std().unwrap_or(Duration::ZERO))
                .unwrap_or(Duration::from_secs(60))
        };
        tokio::select! {
            _ = shutdown.cancelled() => {
                batches.abort_all();
                return;
            }
            _ = tokio::time::sleep(sleep) => {}
            Some(_) = batches.join_next(), if !batches.is_empty() => {}
            _ = ctx.registry.wake.notified() => {
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        batches.abort_all();
                        return;
                    }
                    _ = tokio::time::sleep(COALESCE) => {}
                }
            }
        }
        prune(&ctx);
        let now = ctx.rt.clock.now();
        let jobs = take_due(&ctx, now);
        if jobs.is_empty() {
            continue;
        }
        // One batch per connection and namespace: each namespace's calls queue under
        // its own fair share of the account's request budget.
        let mut groups: BTreeMap<(String, String), Vec<Job>> = BTreeMap::new();
        for job in jobs {
            groups
                .entry((job.connection.name_any(), job.key.0.clone()))
                .or_default()
                .push(job);
        }
        for ((_, ns), jobs) in groups {
            let ctx = ctx.clone();
            batches.spawn(async move {
                let done =
                    capstan_core::budget::in_namespace(ns, evaluate_batch(&ctx, jobs, now)).await;
                record(&ctx, done, now);
            });
        }
    }
}

/// [`evaluate_connection`] as a boxed `Send` future: proving the future `Send` here,
/// where its lifetimes are concrete, lets the loop spawn it.
fn evaluate_batch<'a>(
    ctx: &'a Ctx,
    jobs: Vec<Job>,
    now: DateTime<Utc>,
) -> futures::future::BoxFuture<'a, Vec<Done>> {
    Box::pin(evaluate_connection(ctx, jobs, now))
}

/// Writes what a batch left behind into the registry.
fn record(ctx: &Ctx, done: Vec<Done>, now: DateTime<Utc>) {
    let mut entries = ctx.registry.lock();
    for d in done {
        if d.gone {
            entries.remove(&d.key);
            continue;
        }
        if let Some(e) = entries.get_mut(&d.key) {
            e.busy = false;
            e.state = d.state;
            e.missing = d.missing;
            if d.status.is_some() {
                e.status = d.status;
            }
            // A spec change during the cycle already asked for an evaluation now.
            if e.next_eval <= now {
                e.next_eval = d.next_eval;
            }
        }
    }
}

/// Drops registered objects the controller's caches no longer hold (deleted), once every
/// cache has synced.
fn prune(ctx: &Ctx) {
    let stores = ctx.stores.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if stores.is_empty()
        || stores
            .iter()
            .any(|(_, synced)| !synced.load(Ordering::Acquire))
    {
        return;
    }
    let mut entries = ctx.registry.lock();
    entries.retain(|(ns, name), e| {
        e.busy || {
            let r = ObjectRef::<ServiceScaling>::new(name).within(ns);
            stores.iter().any(|(s, _)| s.get(&r).is_some())
        }
    });
}

fn take_due(ctx: &Ctx, now: DateTime<Utc>) -> Vec<Job> {
    let mut entries = ctx.registry.lock();
    entries
        .iter_mut()
        .filter(|(_, e)| !e.busy && e.next_eval <= now)
        .map(|(key, e)| {
            e.busy = true;
            Job {
                key: key.clone(),
                obj: e.obj.clone(),
                connection: e.connection.clone(),
                gate: e.gate.clone(),
                inputs: e.inputs.clone(),
                state: e.state.clone(),
                status: e.status.clone(),
                missing: e.missing,
            }
        })
        .collect()
}

/// The next evaluation: the next multiple of the interval (in Unix time), or earlier
/// when a schedule window opens or closes or a pause ends before it.
fn next_deadline(job: &Job, now: DateTime<Utc>) -> DateTime<Utc> {
    deadline_after(
        job.inputs.interval,
        &job.inputs.windows,
        job.obj.spec.paused_until,
        now,
    )
}

/// The pure part of [`next_deadline`].
fn deadline_after(
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

/// The last path segment of a name or ARN (`cluster/main` → `main`).
fn short(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// The CloudWatch query of a spec's metric.
fn metric_query(obj: &ServiceScaling, index: usize) -> Option<MetricQuery> {
    let spec = &obj.spec;
    let m = spec.metrics.get(index)?;
    let ecs = |name: &str| MetricQuery {
        namespace: "AWS/ECS".into(),
        metric_name: name.into(),
        dimensions: vec![
            (
                "ClusterName".into(),
                short(&spec.service.cluster).to_owned(),
            ),
            (
                "ServiceName".into(),
                short(&spec.service.service).to_owned(),
            ),
        ],
        stat: "Average".into(),
        period_seconds: spec.metric_period_seconds,
    };
    Some(match m.kind()? {
        MetricKind::Cpu(_) => ecs("CPUUtilization"),
        MetricKind::Memory(_) => ecs("MemoryUtilization"),
        MetricKind::CloudWatch(cw) => MetricQuery {
            namespace: cw.namespace.clone(),
            metric_name: cw.metric_name.clone(),
            dimensions: cw
                .dimensions
                .iter()
                .map(|d| (d.name.clone(), d.value.clone()))
                .collect(),
            stat: aas::statistic_name(cw.statistic).to_owned(),
            period_seconds: spec.metric_period_seconds,
        },
    })
}

/// Why the whole read of a cycle failed, per object.
type Lookup = Result<EcsService, EcsError>;

async fn describe_all(
    clients: &ConnectionClients,
    jobs: &[Job],
) -> HashMap<(String, String), Lookup> {
    let mut by_cluster: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for job in jobs {
        let s = &job.obj.spec.service;
        let names = by_cluster.entry(s.cluster.clone()).or_default();
        if !names.contains(&s.service) {
            names.push(s.service.clone());
        }
    }
    let calls = by_cluster.into_iter().flat_map(|(cluster, names)| {
        names
            .chunks(DESCRIBE_SERVICES_MAX)
            .map(|chunk| (cluster.clone(), chunk.to_vec()))
            .collect::<Vec<_>>()
    });
    futures::stream::iter(calls)
        .map(|(cluster, names)| async move {
            let result = clients.ecs.describe_services(&cluster, &names).await;
            let entries: Vec<((String, String), Lookup)> = match result {
                Ok(lookups) => names
                    .into_iter()
                    .zip(lookups)
                    .map(|(n, l)| ((cluster.clone(), n), l))
                    .collect(),
                Err(e) => names
                    .into_iter()
                    .map(|n| ((cluster.clone(), n), Err(e.clone())))
                    .collect(),
            };
            entries
        })
        .buffer_unordered(DESCRIBE_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Metric values per (job index, metric index).
async fn read_metrics(
    ctx: &Ctx,
    clients: &ConnectionClients,
    jobs: &[(usize, &Job)],
    now: DateTime<Utc>,
) -> HashMap<(usize, usize), Result<f64, String>> {
    let mut keys = Vec::new();
    let mut queries = Vec::new();
    let mut lookback = 0i64;
    let mut out = HashMap::new();
    for (i, job) in jobs {
        lookback = lookback.max(i64::from(job.obj.spec.metric_lookback_seconds));
        for m in 0..job.obj.spec.metrics.len() {
            match metric_query(&job.obj, m) {
                Some(q) => {
                    keys.push((*i, m));
                    queries.push(q);
                }
                None => {
                    out.insert((*i, m), Err("the metric sets no kind".to_owned()));
                }
            }
        }
    }
    if queries.is_empty() {
        return out;
    }
    let end = SystemTime::from(now);
    let start = SystemTime::from(now - TimeDelta::seconds(lookback.max(1)));
    match clients
        .cloudwatch
        .get_metric_data(&queries, start, end)
        .await
    {
        Ok(series) => {
            for ((i, m), points) in keys.into_iter().zip(series) {
                let job = jobs.iter().find(|(j, _)| *j == i).map(|(_, j)| *j);
                let own = job
                    .map(|j| i64::from(j.obj.spec.metric_lookback_seconds))
                    .unwrap_or(lookback);
                out.insert((i, m), newest(&points, now, own));
            }
        }
        Err(e) => {
            let msg = e.to_string();
            for k in keys {
                out.insert(k, Err(msg.clone()));
            }
        }
    }
    let failures = out.values().filter(|v| v.is_err()).count();
    ctx.metrics
        .metric_read_failures
        .inc_by(u64::try_from(failures).unwrap_or(0));
    out
}

/// The newest datapoint no older than `lookback` seconds.
fn newest(points: &[Datapoint], now: DateTime<Utc>, lookback: i64) -> Result<f64, String> {
    let cutoff = SystemTime::from(now - TimeDelta::seconds(lookback));
    points
        .iter()
        .filter(|p| p.timestamp >= cutoff)
        .max_by_key(|p| p.timestamp)
        .map(|p| p.value)
        .ok_or_else(|| format!("no datapoint in the last {lookback}s"))
}

async fn evaluate_connection(ctx: &Ctx, jobs: Vec<Job>, now: DateTime<Utc>) -> Vec<Done> {
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
                tracing::info!(namespace = %job.key.0, name = %job.key.1, %note, "scaled");
                ctx.events
                    .publish(
                        job.obj.as_ref(),
                        EventType::Normal,
                        if up { "ScaledUp" } else { "ScaledDown" },
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
                    "AutoScalingRepaired"
                } else {
                    "AutoScalingDeclared"
                };
                tracing::info!(namespace = %job.key.0, name = %job.key.1, %note, reason, "application auto scaling updated");
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
            tracing::warn!(namespace = %job.key.0, name = %job.key.1, error = %e, "writing status failed");
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::windows_from_spec;
    use serde_json::json;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    fn object(spec: serde_json::Value) -> ServiceScaling {
        serde_json::from_value(json!({
            "apiVersion": "capstan.dev/v1alpha1", "kind": "ServiceScaling",
            "metadata": { "name": "web", "namespace": "shop" },
            "spec": spec
        }))
        .expect("object")
    }

    /// A missing service is looked for after the interval, then twice, four times...
    /// as long, never more than 5 minutes (plus at most 20% jitter), and two objects
    /// missing together do not come back at the same instant.
    #[test]
    fn a_missing_service_backs_off_exponentially_with_a_cap() {
        let key = ("ns".to_owned(), "ghost".to_owned());
        let second = Duration::from_secs(1);
        let waits: Vec<Duration> = (1..=12).map(|n| missing_backoff(second, n, &key)).collect();
        for (n, w) in waits.iter().enumerate() {
            let base = (second * (1u32 << n)).min(MISSING_BACKOFF_MAX);
            assert!(
                *w >= base && *w <= base.mul_f64(1.2),
                "miss {}: {w:?}",
                n + 1
            );
        }
        assert!(waits[11] <= MISSING_BACKOFF_MAX.mul_f64(1.2));
        let others: Vec<Duration> = (0..20)
            .map(|i| missing_backoff(second * 10, 3, &("ns".to_owned(), format!("g{i}"))))
            .collect();
        let distinct: std::collections::BTreeSet<_> = others.iter().collect();
        assert!(distinct.len() > 10, "{others:?}");
    }

    /// Deadlines sit on the interval's grid (so objects with one interval share a
    /// cycle), and come forward for a window change or the end of a pause.
    #[test]
    fn deadlines_follow_the_grid_windows_and_pauses() {
        let now = t("2026-11-27T10:00:07.300Z");
        let every_15s = Duration::from_secs(15);
        assert_eq!(
            deadline_after(every_15s, &[], None, now),
            t("2026-11-27T10:00:15Z")
        );
        assert_eq!(
            deadline_after(every_15s, &[], None, t("2026-11-27T10:00:15Z")),
            t("2026-11-27T10:00:30Z"),
            "a deadline on the grid moves to the next point"
        );
        let o = object(json!({
            "connectionRef": {"name": "c"},
            "service": {"cluster": "main", "service": "web"},
            "maxReplicas": 10,
            "metrics": [{"cpuUtilization": {"targetPercent": 60}}],
            "schedules": [{"name": "sale", "start": "2026-11-27T10:00:10Z",
                "end": "2026-11-27T11:00:00Z", "minReplicas": 5}]
        }));
        let windows = windows_from_spec(&o.spec).expect("windows");
        assert_eq!(
            deadline_after(every_15s, &windows, None, now),
            t("2026-11-27T10:00:10Z")
        );
        assert_eq!(
            deadline_after(every_15s, &[], Some(t("2026-11-27T10:00:08Z")), now),
            t("2026-11-27T10:00:08Z")
        );
        assert_eq!(
            deadline_after(every_15s, &[], Some(t("2026-11-27T09:00:00Z")), now),
            t("2026-11-27T10:00:15Z"),
            "a pause in the past changes nothing"
        );
    }

    /// CPU and memory read AWS/ECS with the cluster's and service's names (from ARNs
    /// too); a CloudWatch metric keeps its own namespace, dimensions and statistic.
    #[test]
    fn metric_queries_name_the_service() {
        let o = object(json!({
            "connectionRef": {"name": "c"},
            "service": {"cluster": "arn:aws:ecs:us-east-1:123456789012:cluster/main",
                        "service": "web"},
            "maxReplicas": 10,
            "metricPeriodSeconds": 1,
            "metrics": [
                {"memoryUtilization": {"targetPercent": 70}},
                {"cloudWatch": {"namespace": "AWS/SQS", "metricName": "Depth",
                    "dimensions": [{"name": "QueueName", "value": "orders"}],
                    "statistic": "Sum", "target": {"averageValuePerTask": 10.0}}}
            ]
        }));
        let mem = metric_query(&o, 0).expect("memory");
        assert_eq!(mem.namespace, "AWS/ECS");
        assert_eq!(mem.metric_name, "MemoryUtilization");
        assert_eq!(mem.stat, "Average");
        assert_eq!(mem.period_seconds, 1);
        assert_eq!(
            mem.dimensions,
            vec![
                ("ClusterName".to_owned(), "main".to_owned()),
                ("ServiceName".to_owned(), "web".to_owned())
            ]
        );
        let sqs = metric_query(&o, 1).expect("sqs");
        assert_eq!(
            (sqs.namespace.as_str(), sqs.stat.as_str()),
            ("AWS/SQS", "Sum")
        );
        assert_eq!(
            sqs.dimensions,
            vec![("QueueName".to_owned(), "orders".to_owned())]
        );
        assert!(metric_query(&o, 2).is_none());
    }

    /// The newest datapoint inside the lookback wins; none inside it is a failure.
    #[test]
    fn the_newest_datapoint_in_the_lookback_is_the_value() {
        let now = t("2026-11-27T10:00:00Z");
        let at = |s: i64, value: f64| Datapoint {
            timestamp: SystemTime::from(now - TimeDelta::seconds(s)),
            value,
        };
        let points = [at(50, 10.0), at(5, 30.0), at(20, 20.0)];
        assert_eq!(newest(&points, now, 60), Ok(30.0));
        assert_eq!(newest(&points[..1], now, 60), Ok(10.0));
        let stale = newest(&points[..1], now, 30).expect_err("stale");
        assert!(stale.contains("30s"), "{stale}");
        assert!(newest(&[], now, 30).is_err());
    }
}
