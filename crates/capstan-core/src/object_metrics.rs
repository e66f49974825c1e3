//! Per-object state series, as cert-manager's `certificate_ready_status`: readiness
//! (with its reason) of every SecretRotation, ServiceScaling, Pipeline and
//! ClusterConnection, and each kind's own figures (next and last rotation time, desired
//! and running count, the last run's phase). Labels are bounded: `kind`, `namespace`,
//! `name`, and a reason or phase from a fixed set.
//!
//! Only the leader exports them. A replica that stopped leading would otherwise keep
//! exporting what it last saw, and alerts would keep firing after a failover; so the
//! series go when the lease is lost ([`ObjectMetrics::set_leading`]), and an object's go
//! when it is deleted (or found gone when a watch lists again). Alerts join on
//! `capstan_leader`.
//!
//! The state is what the controllers' watches deliver (the whole object passes through
//! [`ObjectMetrics::observe`] before any cache keeps less of it), summarised to a few
//! numbers per object.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use kube::Resource;
use kube::ResourceExt as _;
use kube::runtime::watcher;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;

/// What one object's series say.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Its `Ready` condition is True.
    pub ready: bool,
    /// The `Ready` condition's reason (`Unknown` when it has none yet).
    pub reason: String,
    /// The kind's own series.
    pub samples: Vec<Sample>,
}

/// One value of a kind's own series.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The family (one of [`FAMILIES`], without the `capstan_` prefix).
    pub family: &'static str,
    /// One more label, from a fixed set (a Pipeline run's phase).
    pub label: Option<(&'static str, &'static str)>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// A sample without an extra label.
    pub fn new(family: &'static str, value: f64) -> Self {
        Self {
            family,
            label: None,
            value,
        }
    }
}

/// A custom resource that has per-object series.
pub trait Summarize: Resource<DynamicType = ()> {
    /// Its series now.
    fn summary(&self) -> Summary;
}

/// The families, with their help, in the order they are exported.
pub const FAMILIES: &[(&str, &str)] = &[
    (
        "object_ready",
        "1 when the object's Ready condition is True, 0 otherwise; reason is the condition's reason (leader only)",
    ),
    (
        "secret_rotation_next_rotation_timestamp_seconds",
        "When the SecretRotation rotates next, in Unix seconds (leader only)",
    ),
    (
        "secret_rotation_last_rotation_timestamp_seconds",
        "When the SecretRotation last rotated successfully, in Unix seconds (leader only)",
    ),
    (
        "secret_rotation_overdue",
        "1 when the SecretRotation's credential is older than its interval plus grace, its maximum age (condition Overdue); absent otherwise (leader only)",
    ),
    (
        "service_scaling_desired_replicas",
        "The count the ServiceScaling last set (leader only)",
    ),
    (
        "service_scaling_running_replicas",
        "The running tasks ECS reported for the ServiceScaling's service (leader only)",
    ),
    (
        "service_scaling_utilization_percent",
        "The ServiceScaling's last CPU or memory reading, in percent of the requested (leader only)",
    ),
    (
        "service_scaling_target_utilization_percent",
        "The ServiceScaling's target for CPU or memory, in percent (leader only)",
    ),
    (
        "service_scaling_max_replicas",
        "The ServiceScaling's maxReplicas (leader only)",
    ),
    (
        "pipeline_run_phase",
        "1 for the phase of the Pipeline's current or last run (leader only)",
    ),
    (
        "pipeline_awaiting_approval_since_timestamp_seconds",
        "Since when the Pipeline's run waits for an approval, in Unix seconds (leader only)",
    ),
];

type Key = (&'static str, String, String);

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<Key, Summary>,
    /// Per (kind, watched namespace or all), the objects a relist has seen so far.
    relisting: BTreeMap<(&'static str, Option<String>), BTreeSet<Key>>,
}

/// The per-object series of the process.
#[derive(Debug, Default)]
pub struct ObjectMetrics {
    state: Mutex<State>,
    leading: AtomicBool,
}

impl ObjectMetrics {
    /// Exports (leading) or stops exporting and forgets everything (not leading).
    pub fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::SeqCst);
        if !leading {
            let mut state = self.lock();
            state.objects.clear();
            state.relisting.clear();
        }
    }

    /// Whether the series are exported.
    pub fn leading(&self) -> bool {
        self.leading.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes in a watch event of a watch over `scope` (a namespace, or `None`: all).
    pub fn observe<K: Summarize>(&self, scope: Option<&str>, ev: &watcher::Event<K>) {
        let kind = kind_of::<K>();
        let key = |o: &K| (kind, o.namespace().unwrap_or_default(), o.name_any());
        let mut state = self.lock();
        match ev {
            watcher::Event::Apply(o) => {
                state.objects.insert(key(o), o.summary());
            }
            watcher::Event::Delete(o) => {
                state.objects.remove(&key(o));
            }
            watcher::Event::Init => {
                state
                    .relisting
                    .insert((kind, scope.map(str::to_owned)), BTreeSet::new());
            }
            watcher::Event::InitApply(o) => {
                let k = key(o);
                state.objects.insert(k.clone(), o.summary());
                if let Some(seen) = state.relisting.get_mut(&(kind, scope.map(str::to_owned))) {
                    seen.insert(k);
                }
            }
            watcher::Event::InitDone => {
                // Objects of this watch that the relist did not see were deleted
                // while it was away.
                if let Some(seen) = state.relisting.remove(&(kind, scope.map(str::to_owned))) {
                    state.objects.retain(|k, _| {
                        k.0 != kind || scope.is_some_and(|ns| k.1 != ns) || seen.contains(k)
                    });
                }
            }
        }
    }

    /// Forgets every object of `kind` (its controller stopped).
    pub fn forget_kind(&self, kind: &str) {
        self.lock().objects.retain(|k, _| k.0 != kind);
    }

    /// How many objects are summarised.
    pub fn len(&self) -> usize {
        self.lock().objects.len()
    }

    /// Whether no object is summarised.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn kind_of<K: Resource<DynamicType = ()>>() -> &'static str {
    // Kinds are few and fixed: leak each name once instead of allocating per object.
    static KINDS: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    let kind = K::kind(&());
    let mut kinds = KINDS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(k) = kinds.get(kind.as_ref()) {
        return k;
    }
    let leaked: &'static str = Box::leak(kind.into_owned().into_boxed_str());
    kinds.insert(leaked);
    leaked
}

impl Collector for ObjectMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if !self.leading() {
            return Ok(());
        }
        let state = self.lock();
        // Encoded as it is read: no copy of 10,000 objects' labels per scrape.
        for (family, help) in FAMILIES {
            // Every family is declared while leading, with or without series, so that
            // a dashboard or rule finds the name before the first object has one.
            let mut family_encoder =
                encoder.encode_descriptor(family, help, None, MetricType::Gauge)?;
            for ((kind, ns, name), summary) in &state.objects {
                let base = [
                    ("kind", *kind),
                    ("namespace", ns.as_str()),
                    ("name", name.as_str()),
                ];
                if *family == "object_ready" {
                    let labels = [
                        base[0],
                        base[1],
                        base[2],
                        ("reason", summary.reason.as_str()),
                    ];
                    ConstGauge::new(if summary.ready { 1.0 } else { 0.0 })
                        .encode(family_encoder.encode_family(&labels.as_slice())?)?;
                }
                for s in summary.samples.iter().filter(|s| s.family == *family) {
                    match s.label {
                        Some(extra) => {
                            let labels = [base[0], base[1], base[2], extra];
                            ConstGauge::new(s.value)
                                .encode(family_encoder.encode_family(&labels.as_slice())?)?;
                        }
                        None => ConstGauge::new(s.value)
                            .encode(family_encoder.encode_family(&base.as_slice())?)?,
                    }
                }
            }
        }
        Ok(())
    }
}

/// The `Ready` condition of `conditions` as (True, reason).
pub fn ready_of(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> (bool, String) {
    match conditions.iter().find(|c| c.type_ == "Ready") {
        Some(c) => (
            c.status == "True",
            if c.reason.is_empty() {
                "Unknown".to_owned()
            } else {
                c.reason.clone()
            },
        ),
        None => (false, "Unknown".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;
    use std::sync::Arc;

    impl Summarize for ConfigMap {
        fn summary(&self) -> Summary {
            let data = self.data.clone().unwrap_or_default();
            Summary {
                ready: data.get("ready").is_some_and(|v| v == "true"),
                reason: data.get("reason").cloned().unwrap_or_default(),
                samples: vec![Sample::new(
                    "service_scaling_desired_replicas",
                    data.get("n").and_then(|v| v.parse().ok()).unwrap_or(0.0),
                )],
            }
        }
    }

    fn cm(ns: &str, name: &str, ready: bool, n: u32) -> ConfigMap {
        serde_json::from_value(serde_json::json!({
            "metadata": { "namespace": ns, "name": name },
            "data": { "ready": ready.to_string(), "reason": if ready { "Ok" } else { "Failed" }, "n": n.to_string() }
        }))
        .expect("configmap")
    }

    fn scrape(m: &Arc<ObjectMetrics>) -> String {
        let mut registry = Registry::with_prefix("capstan");
        registry.register_collector(Box::new(m.clone()));
        let mut text = String::new();
        encode(&mut text, &registry).expect("encode");
        text
    }

    #[test]
    fn only_the_leader_exports_and_losing_the_lease_forgets() {
        let m = Arc::new(ObjectMetrics::default());
        m.observe(None, &watcher::Event::Apply(cm("a", "x", true, 3)));
        assert!(
            !scrape(&m).contains("capstan_object_ready"),
            "a standby exports nothing"
        );
        m.set_leading(true);
        m.observe(None, &watcher::Event::Apply(cm("a", "x", true, 3)));
        m.observe(None, &watcher::Event::Apply(cm("b", "y", false, 1)));
        let text = scrape(&m);
        assert!(
            text.contains(
                r#"capstan_object_ready{kind="ConfigMap",namespace="a",name="x",reason="Ok"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"capstan_object_ready{kind="ConfigMap",namespace="b",name="y",reason="Failed"} 0"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"capstan_service_scaling_desired_replicas{kind="ConfigMap",namespace="a",name="x"} 3"#),
            "{text}"
        );
        m.set_leading(false);
        assert!(!scrape(&m).contains("capstan_object_ready"));
        m.set_leading(true);
        assert!(m.is_empty(), "what the old term saw is forgotten");
    }

    #[test]
    fn deleted_objects_go_and_a_relist_drops_what_it_did_not_see() {
        let m = Arc::new(ObjectMetrics::default());
        m.set_leading(true);
        m.observe(Some("a"), &watcher::Event::Apply(cm("a", "x", true, 1)));
        m.observe(Some("a"), &watcher::Event::Apply(cm("a", "gone", true, 1)));
        m.observe(Some("b"), &watcher::Event::Apply(cm("b", "other", true, 1)));
        m.observe(Some("a"), &watcher::Event::Delete(cm("a", "x", true, 1)));
        assert_eq!(m.len(), 2);
        // A relist of namespace a sees only `new`: `gone` was deleted meanwhile; b's
        // objects are another watch's.
        m.observe(Some("a"), &watcher::Event::<ConfigMap>::Init);
        m.observe(
            Some("a"),
            &watcher::Event::InitApply(cm("a", "new", false, 2)),
        );
        m.observe(Some("a"), &watcher::Event::<ConfigMap>::InitDone);
        let text = scrape(&m);
        assert!(!text.contains(r#"name="gone""#), "{text}");
        assert!(
            text.contains(r#"name="new""#) && text.contains(r#"name="other""#),
            "{text}"
        );
        m.forget_kind("ConfigMap");
        assert!(m.is_empty());
    }
}
