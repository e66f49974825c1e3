//! Kubernetes Events: one [`Recorder`] per controller, Events on transitions and errors
//! only (a reconcile that changes nothing publishes nothing).
//!
//! Publishing an Event is best effort: a failure is logged and never fails a reconcile,
//! since the status condition and the audit log carry the same facts durably.

use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};

/// Builds the recorder of one controller. `instance` is this Capstan's identity (pod
/// name), shown as the Event's reporting instance.
pub fn recorder(client: Client, controller: &str, instance: &str) -> Recorder {
    Recorder::new(
        client,
        Reporter {
            controller: controller.to_owned(),
            instance: Some(instance.to_owned()),
        },
    )
}

/// Publishes an Event about `obj`. `note` is for humans and must hold no secret value.
pub async fn publish<K>(
    recorder: &Recorder,
    obj: &K,
    type_: EventType,
    reason: &str,
    action: &str,
    note: impl Into<String>,
) where
    K: Resource<DynamicType = ()>,
{
    let reference = obj.object_ref(&());
    let ev = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note.into()),
        action: action.to_owned(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, &reference).await {
        tracing::warn!(error = %e, reason, "could not publish Event");
    }
}
