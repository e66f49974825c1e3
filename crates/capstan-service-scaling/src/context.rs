//! What the ServiceScaling controller's reconcile ([`crate::controller`]), its
//! evaluation loop ([`crate::evaluation`]) and its finalizer ([`crate::cleanup`]) share:
//! the registry of objects to evaluate and their validated [`Inputs`], the shared
//! context `Ctx`, the metrics, the field manager and the finalizer's settings. It
//! imports none of them, so none of them imports another through it.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capstan_core::conditions::Desired;
use capstan_core::connection::ClusterConnection;
use capstan_core::error::Categorized;
use capstan_core::events::Publisher;
use capstan_core::metrics::ControllerMetrics;
use capstan_core::runtime::Runtime;
use capstan_core::schedule::check_min_duration;
use chrono::{DateTime, Utc};
use kube::ResourceExt;
use kube::runtime::reflector::Store;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry as PromRegistry;
use tokio::sync::Notify;

use crate::aas;
use crate::algorithm::{
    MetricTarget, ResolvedBehavior, ScalingState, Window, metric_targets, windows_from_spec,
};
use crate::clients::{ClientCache, RequestCounter};
use crate::crd::{ScalingMode, ServiceScaling, ServiceScalingStatus};

/// How long a deletion waits for the cleanup by default.
pub const DEFAULT_CLEANUP_TIMEOUT: Duration = Duration::from_secs(600);

/// The controller's settings for the finalizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// How long after its deletion a ServiceScaling waits for its Application Auto
    /// Scaling objects to be removed before it is deleted anyway.
    pub cleanup_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            cleanup_timeout: DEFAULT_CLEANUP_TIMEOUT,
        }
    }
}

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
    pub(crate) fn upsert(
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
    #[error("Kubernetes API: {}", capstan_core::error::KubeMessage(.0))]
    Kube(#[from] kube::Error),
}

impl Categorized for Error {
    fn category(&self) -> &'static str {
        match self {
            Error::Kube(e) => e.category(),
        }
    }
}
