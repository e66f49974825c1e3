//! [`Fresh`]: the whole objects of the latest watch events, each held until the
//! reconcile of its object takes it, and never older than what this process last wrote
//! to that object itself.
//!
//! A controller that writes an object several times in one reconcile (a claim per step)
//! gets one watch event per write, some of them after the reconcile ended. Without a
//! floor, the next reconcile would take the event of an intermediate write: a snapshot
//! older than its own last write. It would redo the work recorded since (a duplicate
//! step, a duplicate audit line) and then lose the conditioned status write that
//! follows (409), as if someone else had changed the object. [`Fresh::wrote`] records
//! each write's result; until the watch brings an event at least that new, a reconcile
//! takes the written object, and older events are not held.
//!
//! Order comes from [`compare_resource_versions`] (Kubernetes' comparable resource
//! versions, KEP-5504, GA in 1.35). A version that is not comparable is treated as
//! newer, as before the floor existed.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use kube::{Api, Client, Resource, ResourceExt};

use super::{Watched, strip_for_cache};

/// How many whole objects [`Fresh`] holds at most: a few times the reconcile
/// concurrency, so that the objects a burst is working on come from their watch events.
pub const FRESH_CAPACITY: usize = 256;

/// The (namespace, name) of an object.
pub fn key_of<K: Resource>(o: &K) -> (String, String) {
    (o.namespace().unwrap_or_default(), o.name_any())
}

/// Orders two resourceVersions of objects of the same type, as Kubernetes defines it
/// since 1.35 (KEP-5504, client-go's `CompareResourceVersion`): a resourceVersion is a
/// decimal integer without leading zeros, and a longer one is larger. `None` when either
/// is not of that form (a server that does not promise comparable versions).
pub fn compare_resource_versions(a: &str, b: &str) -> Option<Ordering> {
    let well_formed = |v: &str| {
        !v.is_empty() && v.bytes().all(|c| c.is_ascii_digit()) && (v == "0" || !v.starts_with('0'))
    };
    (well_formed(a) && well_formed(b)).then(|| a.len().cmp(&b.len()).then_with(|| a.cmp(b)))
}

/// Whether `a` is known to be older than `b`.
fn older<K: Resource>(a: &K, b: &K) -> bool {
    match (a.resource_version(), b.resource_version()) {
        (Some(a), Some(b)) => compare_resource_versions(&a, &b) == Some(Ordering::Less),
        _ => false,
    }
}

type Key = (String, String);

/// Whole objects of the latest watch events, each held until the reconcile of its
/// object takes it (see [`super::metadata_cache`]), and this process's own last write of
/// each object until the watch catches up with it.
///
/// A controller that writes an object several times in one reconcile (a claim per step)
/// gets one watch event per write, some of them after the reconcile ended. Without a
/// floor, the next reconcile would take the event of an intermediate write: a snapshot
/// older than its own last write, from which it would redo the work recorded since and
/// then lose its conditioned status write (409). [`Fresh::wrote`] records each write's
/// result; until the watch brings an event at least that new, a reconcile takes the
/// written object, and older events are not held. Order comes from
/// [`compare_resource_versions`].
///
/// A write whose echo the watch has already delivered (the watch can be quicker than
/// the write's answer) sets no floor: per namespace, Fresh keeps the newest
/// resourceVersion the watch delivered (a watch delivers its events in resourceVersion
/// order), so no floor outlives its echo and an idle object holds nothing here.
pub struct Fresh<K> {
    objects: Mutex<HashMap<Key, Arc<K>>>,
    /// Objects as this process last wrote them, until an event at least as new arrives.
    written: Mutex<HashMap<Key, Arc<K>>>,
    /// Per namespace, the newest resourceVersion a watch event brought.
    delivered: Mutex<HashMap<String, String>>,
}

impl<K> Default for Fresh<K> {
    fn default() -> Self {
        Self {
            objects: Mutex::new(HashMap::new()),
            written: Mutex::new(HashMap::new()),
            delivered: Mutex::new(HashMap::new()),
        }
    }
}

impl<K> Debug for Fresh<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fresh")
            .field("held", &self.len())
            .field("written", &lock(&self.written).len())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<K> Fresh<K> {
    /// How many whole objects of watch events wait for their reconcile.
    pub fn len(&self) -> usize {
        lock(&self.objects).len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many of this process's writes the watch has not caught up with yet.
    pub fn writes_ahead_of_watch(&self) -> usize {
        lock(&self.written).len()
    }
}

impl<K: Watched> Fresh<K> {
    /// Holds the object of a watch event for its reconcile, unless [`FRESH_CAPACITY`]
    /// objects already wait (a burst: startup with thousands of objects, a mass
    /// rotate-now; then its reconcile reads it from the API, and memory stays bounded),
    /// or it is older than this process's own last write of it (the reconcile takes
    /// that write instead). A newer event replaces a held object.
    pub(super) fn put(&self, o: K) {
        let key = key_of(&o);
        if let Some(rv) = o.resource_version() {
            let mut delivered = lock(&self.delivered);
            let newer = delivered
                .get(&key.0)
                .is_none_or(|d| compare_resource_versions(&rv, d) == Some(Ordering::Greater));
            if newer {
                delivered.insert(key.0.clone(), rv);
            }
        }
        {
            let mut written = lock(&self.written);
            if let Some(w) = written.get(&key) {
                if older(&o, w) {
                    return;
                }
                // The watch has caught up with the write.
                written.remove(&key);
            }
        }
        let mut held = lock(&self.objects);
        if held.len() < FRESH_CAPACITY || held.contains_key(&key) {
            held.insert(key, Arc::new(o));
        }
    }

    /// Forgets a deleted object.
    pub(super) fn forget(&self, o: &K) {
        let key = key_of(o);
        lock(&self.objects).remove(&key);
        lock(&self.written).remove(&key);
    }

    /// Records an object as this process just wrote it (the API's answer to the write):
    /// until the watch brings an event at least as new, reconciles of it start from
    /// this, never from an older event.
    pub fn wrote(&self, mut o: K) {
        strip_for_cache(&mut o);
        let key = key_of(&o);
        {
            let mut held = lock(&self.objects);
            match held.get(&key) {
                // The watch already brought this write's echo, or a later change
                // (someone wrote right after this process): no floor is needed.
                Some(h) if !older(h.as_ref(), &o) => return,
                Some(_) => {
                    held.remove(&key);
                }
                None => {}
            }
        }
        // The echo came and went unheld (more than FRESH_CAPACITY objects waiting).
        let passed = o.resource_version().is_some_and(|rv| {
            lock(&self.delivered).get(&key.0).is_some_and(|d| {
                matches!(
                    compare_resource_versions(d, &rv),
                    Some(Ordering::Greater | Ordering::Equal)
                )
            })
        });
        if !passed {
            lock(&self.written).insert(key, Arc::new(o));
        }
    }

    /// The object of the latest watch event (taken), else this process's own last write
    /// the watch has not caught up with.
    fn take_held(&self, key: &Key) -> Option<Arc<K>> {
        if let Some(o) = lock(&self.objects).remove(key) {
            return Some(o);
        }
        lock(&self.written).get(key).cloned()
    }

    /// The whole object behind the cached copy `cached`: the one its latest watch event
    /// brought (taken, so it is held no longer), else this process's own last write of
    /// it if the watch has not caught up with that yet, else read from the API (`None`:
    /// it is gone).
    pub async fn take<C: Resource>(
        &self,
        client: &Client,
        cached: &C,
    ) -> Result<Option<Arc<K>>, kube::Error> {
        let key = key_of(cached);
        if let Some(o) = self.take_held(&key) {
            return Ok(Some(o));
        }
        let api: Api<K> = Api::namespaced(client.clone(), &key.0);
        Ok(api.get_opt(&key.1).await?.map(|mut o| {
            strip_for_cache(&mut o);
            Arc::new(o)
        }))
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;

    use super::*;

    fn cm(name: &str, rv: &str) -> ConfigMap {
        let mut c = ConfigMap::default();
        c.metadata.name = Some(name.into());
        c.metadata.namespace = Some("ns".into());
        c.metadata.resource_version = Some(rv.into());
        c
    }

    fn held_rv(fresh: &Fresh<ConfigMap>, name: &str) -> Option<String> {
        lock(&fresh.objects)
            .get(&("ns".into(), name.into()))
            .and_then(|o| o.metadata.resource_version.clone())
    }

    #[test]
    fn holds_at_most_its_capacity_and_keeps_the_newest_event() {
        let fresh = Fresh::<ConfigMap>::default();
        for i in 0..FRESH_CAPACITY + 50 {
            fresh.put(cm(&format!("o{i}"), "1"));
        }
        assert_eq!(fresh.len(), FRESH_CAPACITY);
        // A held object is replaced by its newer event even when full.
        fresh.put(cm("o0", "2"));
        assert_eq!(held_rv(&fresh, "o0").as_deref(), Some("2"));
        assert_eq!(held_rv(&fresh, &format!("o{}", FRESH_CAPACITY + 1)), None);
    }

    #[test]
    fn resource_versions_compare_as_kubernetes_defines() {
        use Ordering::*;
        for (a, b, want) in [
            ("9", "10", Some(Less)),
            ("10", "9", Some(Greater)),
            ("123", "123", Some(Equal)),
            ("120", "123", Some(Less)),
            ("0", "1", Some(Less)),
            ("", "1", None),
            ("01", "1", None),
            ("1a", "2", None),
            ("-1", "2", None),
        ] {
            assert_eq!(compare_resource_versions(a, b), want, "{a} vs {b}");
        }
    }

    /// A reconcile never starts from an event older than this process's own last write:
    /// the echoes of its intermediate writes, arriving after it, are not held; the
    /// write's own echo (or anything newer) is, and ends the floor.
    #[test]
    fn a_reconcile_never_takes_an_event_older_than_its_own_write() {
        let fresh = Fresh::<ConfigMap>::default();
        let key: Key = ("ns".into(), "o".into());
        let taken = |f: &Fresh<ConfigMap>| {
            f.take_held(&key)
                .and_then(|o| o.metadata.resource_version.clone())
        };
        fresh.put(cm("o", "10"));
        // The reconcile took "10" and wrote 11, 12, 13.
        assert_eq!(taken(&fresh).as_deref(), Some("10"));
        fresh.wrote(cm("o", "11"));
        fresh.wrote(cm("o", "12"));
        fresh.wrote(cm("o", "13"));
        // The echo of the first write arrives after the reconcile ended.
        fresh.put(cm("o", "11"));
        assert_eq!(held_rv(&fresh, "o"), None, "an older event is not held");
        assert_eq!(taken(&fresh).as_deref(), Some("13"));
        fresh.put(cm("o", "12"));
        assert_eq!(taken(&fresh).as_deref(), Some("13"));
        // The write's echo ends the floor; a newer write by someone else is taken.
        fresh.put(cm("o", "13"));
        assert_eq!(fresh.writes_ahead_of_watch(), 0);
        fresh.put(cm("o", "20"));
        assert_eq!(taken(&fresh).as_deref(), Some("20"));
        assert_eq!(
            taken(&fresh),
            None,
            "nothing held: the reconcile reads the API"
        );
    }

    /// A write whose echo the watch delivered first sets no floor, whether the echo is
    /// held or was dropped at capacity: nothing stays behind for an idle object.
    #[test]
    fn a_write_whose_echo_came_first_sets_no_floor() {
        let fresh = Fresh::<ConfigMap>::default();
        fresh.put(cm("o", "7"));
        fresh.wrote(cm("o", "7"));
        assert_eq!(fresh.writes_ahead_of_watch(), 0);
        assert_eq!(held_rv(&fresh, "o").as_deref(), Some("7"));
        // At capacity the echo of "p" is not held, but it was delivered.
        for i in 0..FRESH_CAPACITY {
            fresh.put(cm(&format!("x{i}"), "1"));
        }
        fresh.put(cm("p", "20"));
        assert_eq!(held_rv(&fresh, "p"), None);
        fresh.wrote(cm("p", "20"));
        assert_eq!(fresh.writes_ahead_of_watch(), 0);
        // A write the watch has not reached yet does set one.
        fresh.wrote(cm("q", "21"));
        assert_eq!(fresh.writes_ahead_of_watch(), 1);
    }

    /// A write replaces a held event older than it; a held newer event (someone wrote
    /// right after this process, and the watch was quicker than the write's answer)
    /// stays, and the write sets no floor.
    #[test]
    fn a_write_replaces_an_older_held_event_only() {
        let fresh = Fresh::<ConfigMap>::default();
        fresh.put(cm("o", "5"));
        fresh.wrote(cm("o", "6"));
        assert_eq!(held_rv(&fresh, "o"), None);
        assert_eq!(fresh.writes_ahead_of_watch(), 1);
        fresh.put(cm("p", "9"));
        fresh.wrote(cm("p", "8"));
        assert_eq!(held_rv(&fresh, "p").as_deref(), Some("9"));
        assert_eq!(fresh.writes_ahead_of_watch(), 1, "no floor for p");
    }
}
