//! The ServiceScaling controller.
//!
//! Two parts, because AWS must be called in batches across objects:
//!
//! 1. **Reconcile** (kube-runtime, per object, on every change to the object, its
//!    ClusterConnection or its namespace): resolve the connection and refuse a namespace
//!    it does not allow, or a service its scopes do not grant ([`capstan_core::gate`]);
//!    validate what the schema cannot ([`Inputs::from_spec`]); then record the object in the [`Registry`] and wait for the
//!    next change. A refused or invalid object is taken out of the registry and its
//!    `Ready=False` written there. Reconcile calls AWS only for the ApplicationAutoScaling
//!    finalizer ([`crate::cleanup`]): on deletion, or when the spec stops declaring on
//!    the service Capstan declared on.
//! 2. **The evaluation loop** ([`crate::evaluation`]): wakes at the earliest evaluation
//!    deadline of any registered object; takes every object due; per ClusterConnection
//!    and namespace (each batch a task of its own),
//!    reads their ECS services with one DescribeServices per 10 services and their
//!    metrics with one GetMetricData per 500 queries; runs [`crate::algorithm`] for each;
//!    writes the desired counts that change (UpdateService) or, in ApplicationAutoScaling
//!    mode, repairs the declared AWS objects; writes each status only when it changed.
//!    Every AWS call takes a token of the request budget of the connection's account
//!    and region, queued under the object's namespace ([`capstan_aws::budget`]); a
//!    missing cluster or service is looked for again with exponential backoff
//!    ([`crate::evaluation::missing_backoff`]). Deadlines sit on a grid of each
//!    object's evaluation interval (Unix time multiples), so objects with the same
//!    interval fall due together and share calls; a schedule window opening or closing,
//!    or `pausedUntil` ending, brings the deadline forward.
//!
//! The recommendation history and scale events live in the registry, in memory. After a
//! restart the first evaluation seeds the history with the current count (the HPA's way:
//! no jump) and the failure count comes back from status. A deleted object leaves the
//! registry on every path: its watch event (Delete), a status write answered 404, and
//! the loop's sweep of objects the controller's caches no longer hold (a deletion seen
//! only as a relist after a watch gap).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capstan_aws::ClientOptions;
use capstan_core::conditions::{Desired, READY};
use capstan_core::connection::{ClusterConnection, ConnectionKind};
use capstan_core::error::Categorized;
use capstan_core::events::Publisher;
use capstan_core::gate::{Gate, INVALID_SPEC, connection_gate, watch_connections};
use capstan_core::metrics::ControllerMetrics;
use capstan_core::runtime::{Runtime, key_of, run_controller_cached};
use capstan_core::schedule::check_min_duration;
use capstan_core::scope::ScopedResource;
use chrono::{DateTime, Utc};
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry as PromRegistry;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::aas;
use crate::algorithm::{
    MetricTarget, ResolvedBehavior, ScalingState, Window, metric_targets, windows_from_spec,
};
use crate::cleanup::{self, Settings};
use crate::clients::{ClientCache, RequestCounter};
use crate::crd::{ScalingMode, ServiceScaling, ServiceScalingStatus};

/// The field manager of every write this controller makes.
pub const FIELD_MANAGER: &str = "capstan-service-scaling";
/// The controller's name (logs, readiness, Events).
pub const CONTROLLER: &str = "service-scaling";

/// Labels of the scale counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    /// `up` or `down`.
    pub direction: String,
}

/// The controller's metrics, under `capstan_service_scaling_`.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub(crate) controller: ControllerMetrics,
    /// UpdateService calls that changed a desired count, by direction.
    pub(crate) scale_operations: Family<DirectionLabels, Counter>,
    /// Seconds one evaluation cycle of one connection took (reads, decisions, writes).
    pub(crate) evaluation_duration: Histogram,
    /// Objects evaluated.
    pub(crate) evaluations: Counter,
    /// Evaluation cycles (one per connection per tick).
    pub(crate) cycles: Counter,
    /// Metric reads that gave no value (call failed, no datapoint in the lookback).
    pub(crate) metric_read_failures: Counter,
    /// Requests sent to AWS, by `service:operation`.
    pub(crate) aws_requests: RequestCounter,
}

impl Metrics {
    /// Registers the metrics.
    pub fn register(registry: &mut PromRegistry) -> Self {
        let controller = ControllerMetrics::register(registry, "service_scaling");
        let m = Self {
            controller,
            scale_operations: Family::default(),
            evaluation_duration: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            evaluations: Counter::default(),
            cycles: Counter::default(),
            metric_read_failures: Counter::default(),
            aws_requests: RequestCounter(Family::default()),
        };
        let sub = registry.sub_registry_with_prefix("service_scaling");
        sub.register(
            "scale_operations",
            "Desired-count changes written to ECS, by direction",
            m.scale_operations.clone(),
        );
        sub.register(
            "evaluation_duration_seconds",
            "Duration of one evaluation cycle of one connection (all objects due), in seconds",
            m.evaluation_duration.clone(),
        );
        sub.register("evaluations", "Objects evaluated", m.evaluations.clone());
        sub.register(
            "evaluation_cycles",
            "Evaluation cycles (one per connection per tick)",
            m.cycles.clone(),
        );
        sub.register(
            "metric_read_failures",
            "Metric reads that gave no value (failed call or no datapoint in the lookback)",
            m.metric_read_failures.clone(),
        );
        sub.register(
            "aws_requests",
            "Requests sent to AWS (each attempt), by service:operation",
            m.aws_requests.0.clone(),
        );
        m
    }
}

/// What the algorithm needs from a spec, parsed once per spec change.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// Tolerances, windows and policies with the HPA defaults.
    pub behavior: ResolvedBehavior,
    /// Schedule windows.
    pub windows: Vec<Window>,
    /// Each metric's display name and target.
    pub targets: Vec<(String, MetricTarget)>,
    /// The evaluation interval.
    pub interval: Duration,
}

impl Inputs {
    /// Parses and checks what the schema cannot; `Err` is the InvalidSpec message.
    pub fn from_spec(obj: &ServiceScaling) -> Result<Self, String> {
        let spec = &obj.spec;
        let behavior = ResolvedBehavior::from_spec(spec).map_err(|e| e.to_string())?;
        let windows = windows_from_spec(spec).map_err(|e| e.to_string())?;
        let targets = metric_targets(spec).map_err(|e| e.to_string())?;
        let interval = check_min_duration(&spec.evaluation_interval)
            .map_err(|e| format!("spec.evaluationInterval: {e}"))?;
        for (i, w) in spec.schedules.iter().enumerate() {
            if let Some(d) = &w.duration {
                check_min_duration(d).map_err(|e| format!("spec.schedules[{i}].duration: {e}"))?;
            }
        }
        if spec.metric_period_seconds < 1
            || spec.metric_lookback_seconds < spec.metric_period_seconds
        {
            return Err(
                "metricLookbackSeconds must be at least metricPeriodSeconds, which must be positive"
                    .into(),
            );
        }
        if spec.mode == ScalingMode::ApplicationAutoScaling {
            aas::declare(spec, &behavior, &windows, Utc::now())?;
        }
        Ok(Self {
            behavior,
            windows,
            targets,
            interval,
        })
    }
}

/// An object's key: namespace and name.
pub type Key = (String, String);

/// One registered object.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) obj: Arc<ServiceScaling>,
    pub(crate) connection: Arc<ClusterConnection>,
    pub(crate) gate: Vec<Desired<'static>>,
    pub(crate) inputs: Arc<Inputs>,
    pub(crate) state: ScalingState,
    /// The status as last written (or, before the first write, as observed).
    pub(crate) status: Option<ServiceScalingStatus>,
    pub(crate) next_eval: DateTime<Utc>,
    pub(crate) busy: bool,
    /// Evaluations in a row that found the ECS cluster or service missing (they back
    /// off: see [`crate::evaluation::missing_backoff`]).
    pub(crate) missing: u32,
}

/// The objects the evaluation loop evaluates. Reconcile writes it; the loop reads it.
#[derive(Debug, Default)]
pub struct Registry {
    pub(crate) entries: Mutex<HashMap<Key, Entry>>,
    pub(crate) wake: Notify,
}

impl Registry {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many objects are registered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no object is registered.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Forgets a deleted object: it is evaluated no more.
    pub(crate) fn remove(&self, key: &Key) {
        self.lock().remove(key);
    }

    /// Records `obj` with its connection and parsed inputs. A new object, a new spec
    /// generation or a changed connection is evaluated at once; an unchanged one (a
    /// status write coming back through the watch) keeps its deadline and history.
    fn upsert(
        &self,
        obj: Arc<ServiceScaling>,
        connection: Arc<ClusterConnection>,
        gate: Vec<Desired<'static>>,
        inputs: Inputs,
        now: DateTime<Utc>,
    ) {
        let key = (obj.namespace().unwrap_or_default(), obj.name_any());
        let mut entries = self.lock();
        // An object being deleted (a finalizer holds it) is not evaluated any more.
        if obj.metadata.deletion_timestamp.is_some() {
            entries.remove(&key);
            return;
        }
        let evaluate_now = match entries.get_mut(&key) {
            Some(e) => {
                let changed = e.obj.metadata.generation != obj.metadata.generation
                    || e.connection.resource_version() != connection.resource_version()
                    || e.gate != gate;
                e.obj = obj;
                e.connection = connection;
                e.gate = gate;
                if changed {
                    e.inputs = Arc::new(inputs);
                    e.next_eval = now;
                }
                changed
            }
            None => {
                let status = obj.status.clone();
                let failed = status
                    .as_ref()
                    .map(|s| u32::try_from(s.consecutive_failed_evaluations).unwrap_or(0))
                    .unwrap_or(0);
                entries.insert(
                    key,
                    Entry {
                        obj,
                        connection,
                        gate,
                        inputs: Arc::new(inputs),
                        state: ScalingState {
                            consecutive_failed_evaluations: failed,
                            ..ScalingState::default()
                        },
                        status,
                        next_eval: now,
                        busy: false,
                        missing: 0,
                    },
                );
                true
            }
        };
        drop(entries);
        if evaluate_now {
            self.wake.notify_one();
        }
    }

    /// Takes `key` out of the registry, so that nothing evaluates (or declares for) it
    /// again. `false` while an evaluation of it is in flight: it is then held back from
    /// the next cycle, and the caller asks again shortly.
    pub(crate) fn retire(&self, key: &Key) -> bool {
        let mut entries = self.lock();
        match entries.get_mut(key) {
            Some(e) if e.busy => {
                e.next_eval = DateTime::<Utc>::MAX_UTC;
                false
            }
            Some(_) => {
                entries.remove(key);
                true
            }
            None => true,
        }
    }
}

/// What reconcile and the evaluation loop share.
pub(crate) struct Ctx {
    pub(crate) rt: Runtime,
    pub(crate) metrics: Metrics,
    pub(crate) registry: Arc<Registry>,
    pub(crate) clients: ClientCache,
    pub(crate) events: Publisher,
    pub(crate) settings: Settings,
    pub(crate) stores: Mutex<Vec<(Store<ServiceScaling>, Arc<AtomicBool>)>>,
}

/// Why a reconcile failed (transient API errors only; refusals are status).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the connection or writing status failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl Categorized for Error {
    fn category(&self) -> &'static str {
        match self {
            Error::Kube(e) => e.category(),
        }
    }
}

/// Reconciles one object; the AWS calls its finalizer makes are queued under its
/// namespace's share of the request budget.
async fn reconcile(obj: Arc<ServiceScaling>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = obj.namespace().unwrap_or_default();
    capstan_core::budget::in_namespace(ns, reconcile_object(obj, ctx)).await
}

async fn reconcile_object(obj: Arc<ServiceScaling>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let _timer = ctx.metrics.controller.start();
    if obj.metadata.deletion_timestamp.is_some() {
        return cleanup::finalize(&ctx, &obj).await;
    }
    let ns = obj.namespace().unwrap_or_default();
    let key = (ns.clone(), obj.name_any());
    let service = ScopedResource::EcsService {
        cluster: obj.spec.service.cluster.clone(),
        service: obj.spec.service.service.clone(),
    };
    // Where Capstan declared before (a recorded annotation the tenant can write) must be
    // in scope too, or cleaning it up could reach another team's service.
    let mut resources = vec![service];
    if let Some(before) = cleanup::recorded(&obj).and_then(|r| cleanup::scoped(&r))
        && !resources.contains(&before)
    {
        resources.push(before);
    }
    let gate = connection_gate(
        &ctx.rt,
        &ns,
        Some(&obj.spec.connection_ref),
        ConnectionKind::Aws,
        &resources,
    )
    .await?;
    // Objects declared in AWS on a service the spec no longer declares on go first,
    // whether or not the rest of the spec is valid.
    if let Gate::Proceed(Some(conn), conditions) = &gate
        && let Some(action) = cleanup::leave_old_resource(&ctx, &obj, conn, conditions).await?
    {
        return Ok(action);
    }
    let refusal = match gate {
        Gate::Refused(conditions) => conditions,
        Gate::Proceed(conn, mut conditions) => match (conn, Inputs::from_spec(&obj)) {
            (Some(conn), Ok(inputs)) => {
                if let Some(action) = cleanup::ensure_finalizer(&ctx, &obj).await? {
                    return Ok(action);
                }
                let now = ctx.rt.clock.now();
                ctx.registry
                    .upsert(obj.clone(), Arc::from(conn), conditions, inputs, now);
                return Ok(Action::await_change());
            }
            (_, Err(msg)) => {
                conditions.push(Desired::new(READY, false, INVALID_SPEC, msg));
                conditions
            }
            (None, Ok(_)) => {
                conditions.push(Desired::new(
                    READY,
                    false,
                    INVALID_SPEC,
                    "connectionRef names no connection",
                ));
                conditions
            }
        },
    };
    // Refused or invalid: no evaluation until the object or its connection changes.
    let previous = {
        let mut entries = ctx.registry.lock();
        entries.remove(&key).and_then(|e| e.status)
    };
    let current = previous.or_else(|| obj.status.clone());
    // Refused or invalid is also a Warning Event, once per transition.
    let warning = capstan_core::events::ready_turned_false(
        current.as_ref().map_or(&[][..], |s| &s.conditions),
        &refusal,
    );
    let api = kube::Api::<ServiceScaling>::namespaced(ctx.rt.client.clone(), &ns);
    capstan_core::ssa::update_status(
        &api,
        obj.as_ref(),
        current.as_ref(),
        FIELD_MANAGER,
        ctx.rt.clock.now(),
        refusal,
        |_| {},
    )
    .await?;
    if let Some((reason, note)) = warning {
        ctx.events
            .publish(
                obj.as_ref(),
                kube::runtime::events::EventType::Warning,
                &reason,
                "Reconcile",
                note,
            )
            .await;
    }
    Ok(Action::await_change())
}

fn error_policy(_obj: Arc<ServiceScaling>, err: &Error, ctx: Arc<Ctx>) -> Action {
    ctx.metrics.controller.failure(err);
    Action::requeue(Duration::from_secs(15))
}

/// Runs the controller with the default [`Settings`] until `shutdown`.
pub async fn run(rt: Runtime, metrics: Metrics, shutdown: CancellationToken) {
    run_with(rt, metrics, Settings::default(), shutdown).await;
}

/// Runs the controller until `shutdown`: the reconcile loop that maintains the registry
/// and the evaluation loop that evaluates it.
pub async fn run_with(
    rt: Runtime,
    metrics: Metrics,
    settings: Settings,
    shutdown: CancellationToken,
) {
    let options = ClientOptions::from_settings(&rt.aws, &rt.instance);
    let ctx = Arc::new(Ctx {
        clients: ClientCache::new(
            rt.client.clone(),
            rt.own_namespace.clone(),
            options,
            metrics.aws_requests.clone(),
            rt.aws.budgets.clone(),
        ),
        events: Publisher::new(rt.client.clone(), CONTROLLER, &rt.instance),
        rt: rt.clone(),
        metrics,
        settings,
        registry: Arc::new(Registry::default()),
        stores: Mutex::new(Vec::new()),
    });
    let evaluation = crate::evaluation::run_loop(ctx.clone(), shutdown.clone());
    // A deletion takes the object out of the registry as its watch event passes, before
    // the cache drops it: nothing else would (a deleted object is never reconciled, and
    // a missing service's status never changes, so no status write meets a 404).
    let registry = ctx.registry.clone();
    let forget_deleted = move |ev: watcher::Event<ServiceScaling>| {
        if let watcher::Event::Delete(o) = &ev {
            registry.remove(&key_of(o));
        }
        ev
    };
    let controllers = run_controller_cached(
        &rt,
        CONTROLLER,
        ctx.clone(),
        reconcile,
        error_policy,
        |c, _| {
            // The loop prunes deleted objects only once every cache has synced.
            let store = c.store();
            let synced = Arc::new(AtomicBool::new(false));
            ctx.stores
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((store.clone(), synced.clone()));
            tokio::spawn(async move {
                if store.wait_until_ready().await.is_ok() {
                    synced.store(true, Ordering::Release);
                }
            });
            watch_connections(&rt, c, |o: &ServiceScaling| Some(&o.spec.connection_ref))
        },
        forget_deleted,
        shutdown,
    );
    tokio::join!(controllers, evaluation);
}
