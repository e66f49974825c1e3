//! What every controller needs from the manager, and the loop that runs one.
//!
//! The manager builds one [`Runtime`] (client, watched namespaces, concurrency, this
//! instance's identity, the clock, readiness) and hands it to each controller crate's
//! `run`. [`run_controller`] is the shared loop: one kube-runtime `Controller` per
//! watched namespace (or one for all), bounded concurrency, readiness once the watch
//! has synced, graceful shutdown on the manager's token, a log line per failure, and a
//! Warning Event (`ReconcileFailing`) when an object's reconciles fail several times in
//! a row (once per streak), so `kubectl describe` shows e.g. a status write the API
//! keeps refusing.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use futures::future::join_all;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::NamespaceResourceScope;
use kube::core::PartialObjectMeta;
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;

mod fresh;
pub use fresh::{FRESH_CAPACITY, Fresh, compare_resource_versions, key_of};

/// The manager's gifts to every controller.
#[derive(Clone)]
pub struct Runtime {
    /// The Kubernetes client.
    pub client: Client,
    /// The namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
    /// The most reconciles one controller runs at once (per watched namespace).
    pub concurrency: u16,
    /// This instance's identity (pod name), for Events and audit lines.
    pub instance: String,
    /// Capstan's own namespace: where the Secrets holding connection credentials live.
    pub own_namespace: String,
    /// Capstan's service account token (a file kubelet keeps fresh), for Vault's
    /// Kubernetes auth.
    pub service_account_token_file: std::path::PathBuf,
    /// The clock domain logic reads.
    pub clock: Arc<dyn Clock>,
    /// Readiness flags, read by `/readyz`.
    pub readiness: Readiness,
    /// How every controller talks to AWS: retries and the shared request budgets.
    pub aws: AwsSettings,
    /// The per-object series (exported by the leader only), fed by every watch.
    pub objects: Arc<crate::object_metrics::ObjectMetrics>,
}

/// The AWS client settings of the process, built once from `capstan run`'s flags and
/// used by every controller (connection checks, SecretRotation, ServiceScaling).
#[derive(Clone, Debug)]
pub struct AwsSettings {
    /// Turn off the SDK's retries (`--aws-no-retries`; tests against the emulator).
    pub no_retries: bool,
    /// The request budgets every AWS call of the process takes its token from.
    pub budgets: Arc<crate::budget::Budgets>,
}

impl Default for AwsSettings {
    /// Retries on, no budget limits (tests and benches that do not exercise budgets).
    fn default() -> Self {
        Self {
            no_retries: false,
            budgets: Arc::new(crate::budget::Budgets::unlimited()),
        }
    }
}

impl Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("namespaces", &self.namespaces)
            .field("concurrency", &self.concurrency)
            .field("instance", &self.instance)
            .field("own_namespace", &self.own_namespace)
            .field("aws", &self.aws)
            .finish_non_exhaustive()
    }
}

/// Named readiness flags: the process is ready when every registered flag is set.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<Mutex<BTreeMap<String, bool>>>);

impl Readiness {
    /// Registers a flag, initially not ready.
    pub fn register(&self, name: &str) -> ReadyFlag {
        self.lock().insert(name.to_owned(), false);
        ReadyFlag {
            readiness: self.clone(),
            name: name.to_owned(),
        }
    }

    /// Whether every registered flag is set, and the names of those that are not.
    pub fn check(&self) -> Result<(), Vec<String>> {
        let waiting: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, ready)| !**ready)
            .map(|(n, _)| n.clone())
            .collect();
        if waiting.is_empty() {
            Ok(())
        } else {
            Err(waiting)
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, bool>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One readiness flag.
#[derive(Clone, Debug)]
pub struct ReadyFlag {
    readiness: Readiness,
    name: String,
}

impl ReadyFlag {
    /// Sets or clears the flag.
    pub fn set(&self, ready: bool) {
        self.readiness.lock().insert(self.name.clone(), ready);
    }
}

/// What a controller can watch: a namespaced resource kube can list, cache and share
/// between tasks.
pub trait Watched:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static
{
}

/// Runs one controller for `K` in every watched namespace until `shutdown` fires, its
/// cache holding whole objects (minus [`strip_for_cache`]). `configure` adds
/// `owns`/`watches` relations to each `Controller` built.
pub async fn run_controller<K, Ctx, E, Rec, Fut, Pol>(
    rt: &Runtime,
    name: &'static str,
    ctx: Arc<Ctx>,
    reconcile: Rec,
    error_policy: Pol,
    configure: impl Fn(Controller<K>, Option<&str>) -> Controller<K>,
    shutdown: CancellationToken,
) where
    K: Watched + crate::object_metrics::Summarize,
    Ctx: Send + Sync + 'static,
    E: std::error::Error + Send + 'static,
    Rec: FnMut(Arc<K>, Arc<Ctx>) -> Fut + Clone,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
    Pol: Fn(Arc<K>, &E, Arc<Ctx>) -> Action + Clone,
{
    run_controller_cached(
        rt,
        name,
        ctx,
        reconcile,
        error_policy,
        configure,
        |ev: watcher::Event<K>| ev,
        shutdown,
    )
    .await;
}

/// Like [`run_controller`], but the cache holds what `convert` makes of each watch
/// event's object (`C`, e.g. only its metadata: see [`metadata_cache`]); the controller
/// reconciles `C`.
#[allow(clippy::too_many_arguments)]
pub async fn run_controller_cached<K, C, Ctx, E, Rec, Fut, Pol, Conv>(
    rt: &Runtime,
    name: &'static str,
    ctx: Arc<Ctx>,
    reconcile: Rec,
    error_policy: Pol,
    configure: impl Fn(Controller<C>, Option<&str>) -> Controller<C>,
    convert: Conv,
    shutdown: CancellationToken,
) where
    K: Watched + crate::object_metrics::Summarize,
    C: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    Ctx: Send + Sync + 'static,
    E: std::error::Error + Send + 'static,
    Rec: FnMut(Arc<C>, Arc<Ctx>) -> Fut + Clone,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
    Pol: Fn(Arc<C>, &E, Arc<Ctx>) -> Action + Clone,
    Conv: Fn(watcher::Event<K>) -> watcher::Event<C> + Clone + Send + 'static,
{
    let scopes: Vec<Option<String>> = if rt.namespaces.is_empty() {
        vec![None]
    } else {
        rt.namespaces.iter().cloned().map(Some).collect()
    };
    let streaks = Arc::new(crate::events::FailureStreaks::default());
    let events =
        crate::events::Publisher::new(rt.client.clone(), &format!("capstan-{name}"), &rt.instance);
    let runs = scopes.into_iter().map(|ns| {
        let api: Api<K> = match &ns {
            Some(ns) => Api::namespaced(rt.client.clone(), ns),
            None => Api::all(rt.client.clone()),
        };
        let scope = ns.clone().unwrap_or_else(|| "*".into());
        let flag = rt.readiness.register(&format!("{name}/{scope}"));
        // The cache holds every watched object for the life of the process: drop what
        // no controller reads before it reaches the cache.
        let (reader, writer) = reflector::store();
        // With backoff: a watch the API server refuses (e.g. 403 under too narrow RBAC)
        // is retried with growing delays instead of in a tight loop.
        let objects = rt.objects.clone();
        let observed_scope = ns.clone();
        let trigger = watcher(api, watcher::Config::default().any_semantic())
            .default_backoff()
            // The per-object series see every event's whole object, before any cache
            // keeps less of it.
            .inspect_ok(move |ev| objects.observe(observed_scope.as_deref(), ev))
            .modify(strip_for_cache)
            .map_ok(convert.clone())
            .reflect(writer)
            .applied_objects();
        let controller = Controller::for_stream(trigger, reader)
            .with_config(kube::runtime::Config::default().concurrency(rt.concurrency));
        let controller = configure(controller, ns.as_deref());
        let store = controller.store();
        let token = shutdown.clone();
        let scope_for_log: Arc<str> = scope.clone().into();
        let streaks = streaks.clone();
        let events = events.clone();
        let ready = async move {
            if store.wait_until_ready().await.is_ok() {
                flag.set(true);
                tracing::info!(controller = name, namespace = %scope, "watch synced");
            }
        };
        let stream = controller
            .graceful_shutdown_on(async move { token.cancelled().await })
            .run(reconcile.clone(), error_policy.clone(), ctx.clone())
            .for_each(move |res| {
                let scope = scope_for_log.clone();
                let streaks = streaks.clone();
                let events = events.clone();
                async move {
                    match res {
                        Ok((obj, _)) => streaks.succeeded(&streak_key(&obj)),
                        Err(kube::runtime::controller::Error::ReconcilerFailed(e, obj)) => {
                            tracing::warn!(controller = name, kind = %K::kind(&()), object = %streak_key(&obj), error = %e, "reconcile failed");
                            // Repeated failures (e.g. a status write the API keeps
                            // refusing) also show in `kubectl describe`, once per streak.
                            if streaks.failed(&streak_key(&obj)) {
                                let note = format!(
                                    "{} reconciles in a row failed; the last: {}",
                                    crate::events::REPEATED_FAILURES,
                                    crate::error::with_causes(&e)
                                );
                                tokio::spawn(async move {
                                    events
                                        .publish_ref(
                                            (*obj).into(),
                                            crate::events::EventType::Warning,
                                            crate::events::RECONCILE_FAILING,
                                            "Reconcile",
                                            note,
                                        )
                                        .await;
                                });
                            }
                        }
                        // A failed list or watch (RBAC refusing it, the API server away):
                        // the controller cannot see its objects, so say so loudly.
                        Err(kube::runtime::controller::Error::QueueError(e)) => {
                            tracing::warn!(controller = name, namespace = %scope, error = %watch_message(&e), "watch failed");
                        }
                        Err(e) => {
                            tracing::debug!(controller = name, error = %e, "controller event");
                        }
                    }
                }
            });
        async move {
            tokio::join!(ready, stream);
        }
    });
    join_all(runs).await;
    // Stopped (shutdown or lost leadership): what it saw is no longer current.
    rt.objects.forget_kind(&K::kind(&()));
}

/// A watch failure as a person reads it: the API server's refusal without kube's dump
/// of its Status (see [`crate::error::KubeMessage`]).
fn watch_message(e: &kube::runtime::watcher::Error) -> String {
    use crate::error::KubeMessage;
    use kube::runtime::watcher::Error as W;
    match e {
        W::InitialListFailed(k) => format!("listing: {}", KubeMessage(k)),
        W::WatchStartFailed(k) => format!("starting the watch: {}", KubeMessage(k)),
        W::WatchFailed(k) => format!("watching: {}", KubeMessage(k)),
        W::WatchError(s) => format!("watch: {} ({}, {})", s.message, s.reason, s.code),
        other => crate::error::with_causes(other),
    }
}

/// `namespace/name` (or `name`), as every log line spells an object.
fn streak_key<C: Resource>(obj: &reflector::ObjectRef<C>) -> String {
    format!(
        "{}/{}",
        obj.namespace.as_deref().unwrap_or_default(),
        obj.name
    )
}

/// The conversion of [`run_controller_cached`] that caches only each object's metadata
/// (as controller-runtime's metadata-only caches do): the whole object of each watch
/// event waits in `fresh` until its reconcile takes it ([`Fresh::take`], which reads the
/// object from the API when no event is behind the reconcile, e.g. a requeue), and
/// `index` learns which ClusterConnections the object names (`connections_of`), for
/// [`crate::gate::watch_connections_indexed`]. An idle object then costs its metadata
/// and its place in the scheduler, not a whole copy: what lets 10,000 SecretRotations
/// fit in 64 MB.
pub fn metadata_cache<K>(
    fresh: Arc<Fresh<K>>,
    index: Arc<crate::connection_index::ConnectionIndex>,
    connections_of: fn(&K) -> Vec<String>,
) -> impl Fn(watcher::Event<K>) -> watcher::Event<PartialObjectMeta<K>> + Clone + Send + 'static
where
    K: Watched,
{
    move |ev| {
        let meta = |o: &K| PartialObjectMeta::<K> {
            types: None,
            metadata: o.meta().clone(),
            _phantom: std::marker::PhantomData,
        };
        // The metadata is copied for the cache; the object itself moves to `fresh`.
        let keep = |o: K| {
            index.set(&key_of(&o), connections_of(&o));
            let cached = meta(&o);
            fresh.put(o);
            cached
        };
        match ev {
            watcher::Event::Apply(o) => watcher::Event::Apply(keep(o)),
            watcher::Event::InitApply(o) => watcher::Event::InitApply(keep(o)),
            watcher::Event::Delete(o) => {
                index.set(&key_of(&o), Vec::new());
                fresh.forget(&o);
                watcher::Event::Delete(meta(&o))
            }
            watcher::Event::Init => watcher::Event::Init,
            watcher::Event::InitDone => watcher::Event::InitDone,
        }
    }
}

/// kubectl's client-side apply keeps the whole applied object in this annotation.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops from a watched object what no controller reads: managedFields (often the
/// largest part of an object) and kubectl's last-applied copy of the spec (objects
/// applied with `kubectl apply` would otherwise be cached twice). Writes never send a
/// cached object whole: status writes go to the status subresource (which ignores
/// metadata) and metadata writes are patches.
pub fn strip_for_cache<K: Resource>(o: &mut K) {
    o.managed_fields_mut().clear();
    o.annotations_mut().remove(LAST_APPLIED);
}
