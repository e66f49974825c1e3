//! Kubernetes Events: one [`Publisher`] per controller, Events on transitions and errors
//! only (a reconcile that changes nothing publishes nothing).
//!
//! Publishing an Event is best effort: a failure is logged and never fails a reconcile,
//! since the status condition and the audit log carry the same facts durably.
//!
//! Why not kube's `Recorder`: it keeps every Event it published in memory to count
//! repeats into an `EventSeries`, and prunes that cache only when it publishes again. A
//! controller that rotates 10,000 objects then goes quiet kept 20,000 Events (two per
//! rotation) for as long as it stayed idle, which was a quarter of its memory. Capstan
//! publishes on transitions, so a repeat is rare (each rotation's Events name the
//! rotation) and series bring nothing: each Event is one create, and nothing stays
//! behind.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client, Resource};

pub use kube::runtime::events::EventType;

/// The Event writer of one controller.
#[derive(Clone)]
pub struct Publisher {
    client: Client,
    controller: String,
    instance: String,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("controller", &self.controller)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// The publisher of `controller` (the Events' reporting controller, e.g.
    /// `capstan.dev/secret-rotation`); `instance` is this Capstan's identity (pod name),
    /// shown as the reporting instance.
    pub fn new(client: Client, controller: &str, instance: &str) -> Self {
        Self {
            client,
            controller: controller.to_owned(),
            instance: instance.to_owned(),
        }
    }

    /// Publishes an Event about `obj`. `note` is for humans and must hold no secret
    /// value. Cluster-scoped objects get their Events in `default`, as with kubectl.
    pub async fn publish<K>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: impl Into<String>,
    ) where
        K: Resource<DynamicType = ()>,
    {
        let ev = event(
            &self.controller,
            &self.instance,
            obj.object_ref(&()),
            type_,
            reason,
            action,
            note.into(),
            Timestamp::now(),
        );
        let ns = ev.metadata.namespace.as_deref().unwrap_or("default");
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), ns);
        if let Err(e) = api.create(&PostParams::default(), &ev).await {
            tracing::warn!(error = %e, reason, "could not publish Event");
        }
    }
}

/// The Event `controller` (reporting instance `instance`) writes about `regarding`
/// (built, not sent). Each argument is one field of the Event.
#[allow(clippy::too_many_arguments)]
pub fn event(
    controller: &str,
    instance: &str,
    regarding: ObjectReference,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
    now: Timestamp,
) -> K8sEvent {
    let object = regarding.name.as_deref().unwrap_or(controller);
    K8sEvent {
        metadata: ObjectMeta {
            // The scheme of client-go's and kube's recorders: unique per object and
            // instant, and readable in `kubectl get events`.
            name: Some(format!("{object}.{:x}", now.as_nanosecond())),
            namespace: regarding.namespace.clone(),
            ..ObjectMeta::default()
        },
        action: Some(action.to_owned()),
        reason: Some(reason.to_owned()),
        note: Some(note),
        type_: Some(
            match type_ {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            }
            .to_owned(),
        ),
        event_time: Some(MicroTime(now)),
        reporting_controller: Some(controller.to_owned()),
        reporting_instance: Some(instance.to_owned()),
        regarding: Some(regarding),
        ..K8sEvent::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_object_controller_and_instance() {
        let regarding = ObjectReference {
            name: Some("db".into()),
            namespace: Some("shop".into()),
            ..ObjectReference::default()
        };
        let now = Timestamp::from_second(1_800_000_000).expect("time");
        let ev = event(
            "capstan.dev/secret-rotation",
            "capstan-0",
            regarding,
            EventType::Warning,
            "AttemptFailed",
            "Rotate",
            "no value here".into(),
            now,
        );
        assert_eq!(ev.metadata.namespace.as_deref(), Some("shop"));
        assert!(
            ev.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("db."))
        );
        assert_eq!(ev.type_.as_deref(), Some("Warning"));
        assert_eq!(
            ev.reporting_controller.as_deref(),
            Some("capstan.dev/secret-rotation")
        );
        assert_eq!(ev.reporting_instance.as_deref(), Some("capstan-0"));
        assert_eq!(ev.event_time, Some(MicroTime(now)));
        assert!(ev.series.is_none());
    }
}
