//! Prometheus metrics, with `prometheus-client`.
//!
//! One [`Registry`] per process, served at `/metrics` by the manager. Each controller
//! registers a [`ControllerMetrics`] under its own prefix (`capstan_secret_rotation_`,
//! ...) plus the domain figures users alert on, registered by the controller crate.
//! Labels are bounded: error categories come from [`crate::error::Categorized`], never
//! from object names or messages.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::error::Categorized;

/// The label set of a failure: its error category.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CategoryLabels {
    /// A stable category string (see [`Categorized`]).
    pub category: String,
}

/// The figures every controller reports.
#[derive(Clone, Debug)]
pub struct ControllerMetrics {
    reconciles: Counter,
    failures: Family<CategoryLabels, Counter>,
    duration: Histogram,
}

impl ControllerMetrics {
    /// Registers the metrics of controller `name` (snake_case, e.g. `secret_rotation`)
    /// in `registry`, as `capstan_<name>_reconciles_total`,
    /// `capstan_<name>_reconcile_failures_total{category}` and
    /// `capstan_<name>_reconcile_duration_seconds`.
    pub fn register(registry: &mut Registry, name: &str) -> Self {
        let sub = registry.sub_registry_with_prefix(name);
        let m = Self {
            reconciles: Counter::default(),
            failures: Family::default(),
            duration: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
        };
        sub.register(
            "reconciles",
            "Reconciliations started",
            m.reconciles.clone(),
        );
        sub.register(
            "reconcile_failures",
            "Reconciliations that failed, by error category",
            m.failures.clone(),
        );
        sub.register(
            "reconcile_duration_seconds",
            "Duration of reconciliations in seconds",
            m.duration.clone(),
        );
        m
    }

    /// Counts a reconcile and times it until the returned guard drops.
    pub fn start(&self) -> ReconcileTimer {
        self.reconciles.inc();
        ReconcileTimer {
            start: Instant::now(),
            histogram: self.duration.clone(),
        }
    }

    /// Counts a failed reconcile under the error's category.
    pub fn failure(&self, error: &dyn Categorized) {
        self.failures
            .get_or_create(&CategoryLabels {
                category: error.category().into(),
            })
            .inc();
    }
}

/// Observes the reconcile duration when dropped.
#[derive(Debug)]
pub struct ReconcileTimer {
    start: Instant,
    histogram: Histogram,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

/// A new registry with the `capstan` prefix.
pub fn new_registry() -> Registry {
    Registry::with_prefix("capstan")
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    struct E;
    impl Categorized for E {
        fn category(&self) -> &'static str {
            "backend_unreachable"
        }
    }

    #[test]
    fn controller_metrics_are_prefixed_and_labelled_by_category() {
        let mut r = new_registry();
        let m = ControllerMetrics::register(&mut r, "secret_rotation");
        drop(m.start());
        m.failure(&E);
        let mut out = String::new();
        encode(&mut out, &r).unwrap_or_default();
        assert!(
            out.contains("capstan_secret_rotation_reconciles_total 1"),
            "{out}"
        );
        assert!(
            out.contains(
                "capstan_secret_rotation_reconcile_failures_total{category=\"backend_unreachable\"} 1"
            ),
            "{out}"
        );
        assert!(out.contains("capstan_secret_rotation_reconcile_duration_seconds_count 1"));
    }
}
