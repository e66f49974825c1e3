//! Status conditions, following the Kubernetes API conventions: a list keyed by
//! `type` (a list-map, so server-side apply merges by type), each entry with `status`,
//! `reason` (CamelCase), `message`, `observedGeneration` and `lastTransitionTime`, which
//! moves only when `status` changes. With a `Ready` condition `kubectl wait
//! --for=condition=Ready` works on every Capstan resource.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::{Schema, SchemaGenerator};

use crate::clock::to_k8s_time;

/// The condition every Capstan resource carries: the object is in its declared state.
pub const READY: &str = "Ready";

/// The value of a condition's `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `"True"`.
    True,
    /// `"False"`.
    False,
    /// `"Unknown"`.
    Unknown,
}

impl Status {
    /// The string the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }
}

impl From<bool> for Status {
    fn from(b: bool) -> Self {
        if b { Status::True } else { Status::False }
    }
}

/// What a controller wants one condition to say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired<'a> {
    /// The condition type, e.g. [`READY`].
    pub type_: &'a str,
    /// Its status.
    pub status: Status,
    /// A CamelCase reason, a constant of the controller.
    pub reason: &'a str,
    /// A message for humans. Never a secret value.
    pub message: String,
}

impl<'a> Desired<'a> {
    /// A condition of `type_` with the given status, reason and message.
    pub fn new(
        type_: &'a str,
        status: impl Into<Status>,
        reason: &'a str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status: status.into(),
            reason,
            message: message.into(),
        }
    }
}

/// Sets one condition in `conditions`, keeping `lastTransitionTime` when the status
/// does not change. Returns whether anything a reader would see changed, so callers
/// write status only then.
pub fn set(
    conditions: &mut Vec<Condition>,
    desired: Desired<'_>,
    observed_generation: Option<i64>,
    now: DateTime<Utc>,
) -> bool {
    let status = desired.status.as_str();
    match conditions.iter_mut().find(|c| c.type_ == desired.type_) {
        Some(c) => {
            let changed = c.status != status
                || c.reason != desired.reason
                || c.message != desired.message
                || c.observed_generation != observed_generation;
            if c.status != status {
                c.last_transition_time = to_k8s_time(now);
            }
            c.status = status.to_owned();
            c.reason = desired.reason.to_owned();
            c.message = desired.message;
            c.observed_generation = observed_generation;
            changed
        }
        None => {
            conditions.push(Condition {
                type_: desired.type_.to_owned(),
                status: status.to_owned(),
                reason: desired.reason.to_owned(),
                message: desired.message,
                observed_generation,
                last_transition_time: to_k8s_time(now),
            });
            true
        }
    }
}

/// The condition of `type_`, if present.
pub fn find<'c>(conditions: &'c [Condition], type_: &str) -> Option<&'c Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of `type_` is present and `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

/// Schema for a `conditions` field: an array of `Condition` marked as a list-map keyed
/// by `type`, as the API conventions ask. Use with
/// `#[schemars(schema_with = "capstan_core::conditions::schema")]`.
pub fn schema(generator: &mut SchemaGenerator) -> Schema {
    let mut s = generator.subschema_for::<Vec<Condition>>();
    s.insert("x-kubernetes-list-type".into(), "map".into());
    s.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    s
}

/// A status struct with conditions and an observed generation: every Capstan status.
pub trait ObjectStatus: serde::Serialize + Clone + Default + PartialEq {
    /// The conditions list.
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
    /// Sets the top-level `observedGeneration`.
    fn set_observed_generation(&mut self, generation: Option<i64>);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap_or_default()
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut c = Vec::new();
        assert!(set(
            &mut c,
            Desired::new(READY, false, "Pending", "waiting"),
            Some(1),
            t(0)
        ));
        let first = c[0].last_transition_time.clone();
        // Same status, new reason: visible change, same transition time.
        assert!(set(
            &mut c,
            Desired::new(READY, false, "Blocked", "other"),
            Some(1),
            t(10)
        ));
        assert_eq!(c[0].last_transition_time, first);
        // Identical: nothing changed, nothing to write.
        assert!(!set(
            &mut c,
            Desired::new(READY, false, "Blocked", "other"),
            Some(1),
            t(20)
        ));
        // Status flips: the transition time moves.
        assert!(set(
            &mut c,
            Desired::new(READY, true, "Ready", "ok"),
            Some(1),
            t(30)
        ));
        assert_eq!(c[0].last_transition_time, to_k8s_time(t(30)));
        assert_eq!(c.len(), 1);
        assert!(is_true(&c, READY));
    }

    #[test]
    fn a_new_generation_is_a_change() {
        let mut c = Vec::new();
        set(
            &mut c,
            Desired::new(READY, true, "Ready", "ok"),
            Some(1),
            t(0),
        );
        assert!(set(
            &mut c,
            Desired::new(READY, true, "Ready", "ok"),
            Some(2),
            t(1)
        ));
    }

    #[test]
    fn schema_is_a_list_map_keyed_by_type() {
        let mut g = schemars::generate::SchemaSettings::openapi3().into_generator();
        let s = schema(&mut g);
        let v = serde_json::to_value(&s).unwrap_or_default();
        assert_eq!(v["x-kubernetes-list-type"], "map");
        assert_eq!(v["x-kubernetes-list-map-keys"][0], "type");
    }
}
