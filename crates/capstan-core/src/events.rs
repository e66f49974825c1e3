//! Kubernetes Events: one [`Publisher`] per controller, Events on transitions and errors
//! only (a reconcile that changes nothing publishes nothing).
//!
//! Warnings tell a `kubectl describe` reader why nothing happens: a refused connection,
//! an invalid spec, an unreachable system ([`ready_turned_false`]: when `Ready` turns
//! False with a new reason, not on every reconcile that finds it so), and reconciles
//! that keep failing ([`FailureStreaks`]).
//!
//! Publishing an Event is best effort: a failure is logged and never fails a reconcile,
//! since the status condition and the audit log carry the same facts durably.
//!
//! Why not kube's `Recorder`: it keeps every Event it published in memory to count
//! repeats into an `EventSeries`, and prunes that cache only when it publishes again. A
//! controller that rotates 10,000 objects then goes quiet kept 20,000 Events (two per
//! rotation) for as long as it stayed idle, which was a quarter of its memory. Capstan
//! publishes on transitions, so a repeat is rare (each rotation's Events name the
//! rotation) and series bring nothing: each Event is one create. The one thing kept is
//! a bounded memory of the Warnings of the last minute (at most 1,024), so that two
//! reconciles racing their own status write do not publish the same Warning twice.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client, Resource};

use crate::conditions::{Desired, READY, Status, find};

pub use kube::runtime::events::EventType;

/// The Event writer of one controller.
#[derive(Clone)]
pub struct Publisher {
    client: Client,
    controller: String,
    instance: String,
    /// Warnings published lately: (object, reason, note) → when. Two reconciles that
    /// both read the object before the first one's status write reached the cache would
    /// each see `Ready` turn False; the second Warning is the same one, and is dropped.
    recent: std::sync::Arc<std::sync::Mutex<RecentWarnings>>,
}

/// Warnings published lately: (object, reason, note) → when.
type RecentWarnings = std::collections::HashMap<(String, String, String), std::time::Instant>;

/// How long an identical Warning about the same object is not published again.
pub const WARNING_REPEAT_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
/// The most recent Warnings remembered (older ones are forgotten first).
const RECENT_WARNINGS: usize = 1024;

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
            recent: Default::default(),
        }
    }

    /// Whether the same Warning about the same object was published within
    /// [`WARNING_REPEAT_WINDOW`]; remembers it otherwise.
    fn repeated(&self, key: (String, String, String)) -> bool {
        let now = std::time::Instant::now();
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.retain(|_, at| now.duration_since(*at) < WARNING_REPEAT_WINDOW);
        if recent.contains_key(&key) {
            return true;
        }
        if recent.len() >= RECENT_WARNINGS
            && let Some(oldest) = recent
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(k, _)| k.clone())
        {
            recent.remove(&oldest);
        }
        recent.insert(key, now);
        false
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
        let note = note.into();
        let regarding = obj.object_ref(&());
        if matches!(type_, EventType::Warning) {
            let object = format!(
                "{}/{}/{}",
                regarding.kind.as_deref().unwrap_or_default(),
                regarding.namespace.as_deref().unwrap_or_default(),
                regarding
                    .uid
                    .as_deref()
                    .or(regarding.name.as_deref())
                    .unwrap_or_default()
            );
            if self.repeated((object, reason.to_owned(), note.clone())) {
                tracing::debug!(reason, "the same Warning was published lately; not again");
                return;
            }
        }
        let ev = event(
            &self.controller,
            &self.instance,
            regarding,
            type_,
            reason,
            action,
            note,
            Timestamp::now(),
        );
        let ns = ev.metadata.namespace.as_deref().unwrap_or("default");
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), ns);
        if let Err(e) = api.create(&PostParams::default(), &ev).await {
            let (kind, object) = regarding_key(&ev);
            tracing::warn!(%kind, %object, error = %crate::error::KubeMessage(&e), reason, "could not publish Event");
        }
    }
}

impl Publisher {
    /// Publishes a Warning when `desired` turns `Ready` False with a reason it did not
    /// have in `before` (see [`ready_turned_false`]): `kubectl describe` then shows why
    /// nothing happens, once per transition and not once per reconcile.
    pub async fn warn_on_ready_transition<K>(
        &self,
        obj: &K,
        before: &[Condition],
        desired: &[Desired<'_>],
        action: &str,
    ) where
        K: Resource<DynamicType = ()>,
    {
        if let Some((reason, message)) = ready_turned_false(before, desired) {
            self.publish(obj, EventType::Warning, &reason, action, message)
                .await;
        }
    }

    /// Publishes an Event about the object `regarding` names (built from a reference,
    /// e.g. a failed reconcile's, with no object at hand).
    pub async fn publish_ref(
        &self,
        regarding: ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let ev = event(
            &self.controller,
            &self.instance,
            regarding,
            type_,
            reason,
            action,
            note,
            Timestamp::now(),
        );
        let ns = ev.metadata.namespace.as_deref().unwrap_or("default");
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), ns);
        if let Err(e) = api.create(&PostParams::default(), &ev).await {
            let (kind, object) = regarding_key(&ev);
            tracing::warn!(%kind, %object, error = %crate::error::KubeMessage(&e), reason, "could not publish Event");
        }
    }
}

/// The kind and `namespace/name` (or `name`) of the object an Event is about, as every
/// log line spells an object.
fn regarding_key(ev: &K8sEvent) -> (String, String) {
    let r = ev.regarding.clone().unwrap_or_default();
    let name = r.name.unwrap_or_default();
    let object = match r.namespace {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name,
    };
    (r.kind.unwrap_or_default(), object)
}

/// The Warning a status change calls for: `Ready` in `desired` is False with a
/// (status, reason) that `before` did not have, as (reason, message). `None` when Ready
/// stays as it was (another reconcile of a persistently refused object), or is not
/// False.
pub fn ready_turned_false(
    before: &[Condition],
    desired: &[Desired<'_>],
) -> Option<(String, String)> {
    let ready = desired
        .iter()
        .rev()
        .find(|d| d.type_ == READY && d.status == Status::False)?;
    let was = find(before, READY);
    let same = was.is_some_and(|c| c.status == ready.status.as_str() && c.reason == ready.reason);
    (!same).then(|| (ready.reason.to_owned(), ready.message.clone()))
}

/// Reason of the Warning published when an object's reconciles keep failing.
pub const RECONCILE_FAILING: &str = "ReconcileFailing";

/// How many reconciles of one object must fail in a row before a Warning says so.
pub const REPEATED_FAILURES: u32 = 3;

/// Consecutive failed reconciles per object, for one Warning Event
/// ([`RECONCILE_FAILING`]) when they repeat: at the [`REPEATED_FAILURES`]th failure in a
/// row, and not again until a reconcile succeeds (no Event per retry).
#[derive(Debug, Default)]
pub struct FailureStreaks {
    streaks: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

impl FailureStreaks {
    /// Records a failed reconcile of `key`; true exactly when this failure makes the
    /// streak [`REPEATED_FAILURES`] long (time to publish).
    pub fn failed(&self, key: &str) -> bool {
        let mut streaks = self.streaks.lock().unwrap_or_else(|e| e.into_inner());
        let n = streaks.entry(key.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        *n == REPEATED_FAILURES
    }

    /// Records a successful reconcile of `key`: the streak ends.
    pub fn succeeded(&self, key: &str) {
        self.streaks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// The most an Event's note may hold: the API server refuses a longer one (and the
/// Event with it), which an error with its causes easily is.
pub const NOTE_MAX_BYTES: usize = 1024;

/// `note` cut to [`NOTE_MAX_BYTES`] on a character boundary, marked with `…` when cut.
fn bounded_note(mut note: String) -> String {
    if note.len() <= NOTE_MAX_BYTES {
        return note;
    }
    let mut end = NOTE_MAX_BYTES - '…'.len_utf8();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    note.truncate(end);
    note.push('…');
    note
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
        note: Some(bounded_note(note)),
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

    fn ready(status: &str, reason: &str) -> Vec<Condition> {
        vec![Condition {
            type_: READY.into(),
            status: status.into(),
            reason: reason.into(),
            message: "m".into(),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                Timestamp::from_second(1_800_000_000).expect("time"),
            ),
            observed_generation: None,
        }]
    }

    /// A Warning goes out when Ready turns False or changes its False reason, and not
    /// when a reconcile finds it as it was (a persistently invalid object).
    #[test]
    fn warnings_follow_ready_transitions_only() {
        let invalid = [Desired::new(READY, false, "InvalidSpec", "bad interval")];
        assert_eq!(
            ready_turned_false(&[], &invalid),
            Some(("InvalidSpec".into(), "bad interval".into()))
        );
        assert!(ready_turned_false(&ready("True", "CredentialCurrent"), &invalid).is_some());
        assert!(ready_turned_false(&ready("False", "ConnectionNotAllowed"), &invalid).is_some());
        assert_eq!(
            ready_turned_false(&ready("False", "InvalidSpec"), &invalid),
            None
        );
        let fine = [Desired::new(READY, true, "CredentialCurrent", "ok")];
        assert_eq!(
            ready_turned_false(&ready("False", "InvalidSpec"), &fine),
            None
        );
        assert_eq!(ready_turned_false(&[], &[]), None);
    }

    /// The API server refuses an Event whose note exceeds 1024 bytes (a reconcile
    /// error with its causes did): the note is cut to fit.
    #[test]
    fn long_notes_are_cut_to_what_the_api_accepts() {
        let regarding = ObjectReference {
            name: Some("db".into()),
            namespace: Some("shop".into()),
            ..ObjectReference::default()
        };
        let now = Timestamp::from_second(1_800_000_000).expect("time");
        let long = "é".repeat(2000);
        let ev = event("c", "i", regarding, EventType::Warning, "R", "A", long, now);
        let note = ev.note.expect("note");
        assert!(note.len() <= NOTE_MAX_BYTES, "{}", note.len());
        assert!(note.ends_with('…'));
        assert_eq!(bounded_note("short".into()), "short");
    }

    #[test]
    fn repeated_failures_warn_once_per_streak() {
        let s = FailureStreaks::default();
        let fired: Vec<bool> = (0..6).map(|_| s.failed("ns/a")).collect();
        assert_eq!(fired, [false, false, true, false, false, false]);
        assert!(!s.failed("ns/b"), "streaks are per object");
        s.succeeded("ns/a");
        let fired: Vec<bool> = (0..3).map(|_| s.failed("ns/a")).collect();
        assert_eq!(fired, [false, false, true], "a new streak warns again");
    }

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
