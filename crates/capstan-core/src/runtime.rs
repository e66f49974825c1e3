//! What every controller needs from the manager, and the loop that runs one.
//!
//! The manager builds one [`Runtime`] (client, watched namespaces, concurrency, this
//! instance's identity, the clock, readiness) and hands it to each controller crate's
//! `run`. [`run_controller`] is the shared loop: one kube-runtime `Controller` per
//! watched namespace (or one for all), bounded concurrency, readiness once the watch
//! has synced, graceful shutdown on the manager's token, and a log line per failure.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use futures::future::join_all;
use k8s_openapi::NamespaceResourceScope;
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;

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
}

impl Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("namespaces", &self.namespaces)
            .field("concurrency", &self.concurrency)
            .field("instance", &self.instance)
            .field("own_namespace", &self.own_namespace)
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

/// Runs one controller for `K` in every watched namespace until `shutdown` fires.
/// `configure` adds `owns`/`watches` relations to each `Controller` built.
pub async fn run_controller<K, Ctx, E, Rec, Fut, Pol>(
    rt: &Runtime,
    name: &'static str,
    ctx: Arc<Ctx>,
    reconcile: Rec,
    error_policy: Pol,
    configure: impl Fn(Controller<K>, Option<&str>) -> Controller<K>,
    shutdown: CancellationToken,
) where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Eq + Hash + Clone + Debug + Unpin,
    Ctx: Send + Sync + 'static,
    E: std::error::Error + Send + 'static,
    Rec: FnMut(Arc<K>, Arc<Ctx>) -> Fut + Clone,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
    Pol: Fn(Arc<K>, &E, Arc<Ctx>) -> Action + Clone,
{
    let scopes: Vec<Option<String>> = if rt.namespaces.is_empty() {
        vec![None]
    } else {
        rt.namespaces.iter().cloned().map(Some).collect()
    };
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
        let trigger = watcher(api, watcher::Config::default().any_semantic())
            .modify(strip_for_cache)
            .reflect(writer)
            .applied_objects();
        let controller = Controller::for_stream(trigger, reader)
            .with_config(kube::runtime::Config::default().concurrency(rt.concurrency));
        let controller = configure(controller, ns.as_deref());
        let store = controller.store();
        let token = shutdown.clone();
        let ready = async move {
            if store.wait_until_ready().await.is_ok() {
                flag.set(true);
                tracing::info!(controller = name, namespace = %scope, "watch synced");
            }
        };
        let stream = controller
            .graceful_shutdown_on(async move { token.cancelled().await })
            .run(reconcile.clone(), error_policy.clone(), ctx.clone())
            .for_each(move |res| async move {
                match res {
                    Ok(_) => {}
                    Err(kube::runtime::controller::Error::ReconcilerFailed(e, obj)) => {
                        tracing::warn!(controller = name, object = %obj, error = %e, "reconcile failed");
                    }
                    Err(e) => tracing::debug!(controller = name, error = %e, "controller event"),
                }
            });
        async move {
            tokio::join!(ready, stream);
        }
    });
    join_all(runs).await;
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
