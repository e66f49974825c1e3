//! Step one of every resource reconcile: resolve the connection the object names and
//! refuse, in status, a namespace the connection does not allow, or a resource its
//! scopes do not grant the namespace.
//!
//! A refusal writes `Ready=False` and `ConnectionReady=False` with a reason
//! (`ConnectionNotAllowed`, `ResourceNotAllowed`, `ConnectionNotFound`,
//! `ConnectionWrongKind`) and a message naming the connection, then waits: the controllers also watch ClusterConnections
//! ([`watch_connections`]), so an administrator's change to the connection re-runs the
//! objects that reference it.
//!
//! The gate only decides; the caller writes the conditions together with its own, so
//! one reconcile makes at most one status write.

use std::fmt::Debug;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::Controller;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use k8s_openapi::NamespaceResourceScope;
use kube::runtime::controller::Action;
use tokio_util::sync::CancellationToken;

use crate::conditions::{Desired, ObjectStatus, READY, Status};
use crate::connection::{
    ClusterConnection, ConnectionKind, ConnectionRef, ConnectionRefError, resolve,
};
use crate::metrics::ControllerMetrics;
use crate::runtime::Runtime;
use crate::runtime::run_controller;
use crate::scope::ScopedResource;
use crate::ssa::update_status;

/// The condition saying whether the object's connection may be used.
pub const CONNECTION_READY: &str = "ConnectionReady";
/// Reason of `ConnectionReady=True`.
pub const CONNECTION_ALLOWED: &str = "ConnectionAllowed";

/// What the gate decided, with the conditions the caller writes (in one status write
/// together with its own).
#[derive(Debug)]
pub enum Gate {
    /// Go on: the resolved connection (if the object names one) and
    /// `ConnectionReady=True` (if it does).
    Proceed(Option<Box<ClusterConnection>>, Vec<Desired<'static>>),
    /// Refused: `ConnectionReady=False` and `Ready=False` with the reason; write them and
    /// wait for a change (to the object or to the connection).
    Refused(Vec<Desired<'static>>),
}

/// Resolves `reference` for an object in `namespace` that reaches `resources` through
/// it (checked against the connection's scopes). Errors are transient API failures
/// only; refusals are a [`Gate::Refused`].
pub async fn connection_gate(
    rt: &Runtime,
    namespace: &str,
    reference: Option<&ConnectionRef>,
    kind: ConnectionKind,
    resources: &[ScopedResource],
) -> Result<Gate, kube::Error> {
    let Some(reference) = reference else {
        return Ok(Gate::Proceed(None, Vec::new()));
    };
    match resolve(&rt.client, reference, namespace, kind, resources).await {
        Ok(conn) => {
            let msg = format!(
                "ClusterConnection {:?} allows namespace {namespace:?}",
                reference.name
            );
            let ready = Desired::new(CONNECTION_READY, true, CONNECTION_ALLOWED, msg);
            Ok(Gate::Proceed(Some(Box::new(conn)), vec![ready]))
        }
        Err(ConnectionRefError::Kube { source, .. }) => Err(source),
        Err(e) => {
            tracing::info!(namespace, reason = e.reason(), "connection refused: {e}");
            Ok(Gate::Refused(vec![
                Desired::new(CONNECTION_READY, false, e.reason(), e.to_string()),
                Desired::new(READY, false, e.reason(), e.to_string()),
            ]))
        }
    }
}

/// Adds watches on ClusterConnections and Namespaces to a controller: a change to a
/// connection re-runs every object (in the controller's cache) that names it, and a
/// change to a namespace (its labels may now match a connection's selector) re-runs
/// the objects in it that name a connection. So a refusal waits for a change instead
/// of polling.
pub fn watch_connections<K>(
    rt: &Runtime,
    controller: Controller<K>,
    connection_of: fn(&K) -> Option<&ConnectionRef>,
) -> Controller<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let store = controller.store();
    let by_connection = store.clone();
    let connections: Api<ClusterConnection> = Api::all(rt.client.clone());
    let namespaces: Api<Namespace> = Api::all(rt.client.clone());
    let config = || watcher::Config::default().any_semantic();
    controller
        .watches(connections, config(), move |conn| {
            let name = conn.name_any();
            by_connection
                .state()
                .into_iter()
                .filter(|o: &Arc<K>| connection_of(o).is_some_and(|r| r.name == name))
                .map(|o| ObjectRef::from_obj(&*o))
                .collect::<Vec<_>>()
        })
        .watches(namespaces, config(), move |ns| {
            let name = ns.name_any();
            store
                .state()
                .into_iter()
                .filter(|o: &Arc<K>| {
                    o.namespace().as_deref() == Some(name.as_str()) && connection_of(o).is_some()
                })
                .map(|o| ObjectRef::from_obj(&*o))
                .collect::<Vec<_>>()
        })
}

/// Which objects name which ClusterConnections, for controllers whose cache holds only
/// metadata ([`crate::runtime::metadata_cache`]): kept up to date from the watch events,
/// it holds only objects that name a connection.
#[derive(Debug, Default)]
pub struct ConnectionIndex {
    inner: std::sync::Mutex<IndexInner>,
}

#[derive(Debug, Default)]
struct IndexInner {
    /// Connection name → objects (namespace, name) naming it.
    by_connection: std::collections::HashMap<String, std::collections::HashSet<(String, String)>>,
    /// Object → the connections it names.
    of_object: std::collections::HashMap<(String, String), Vec<String>>,
}

impl ConnectionIndex {
    /// Records that `object` names `connections` (none: forgets it).
    pub fn set(&self, object: &(String, String), connections: Vec<String>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = inner.of_object.remove(object) {
            for c in old {
                if let Some(set) = inner.by_connection.get_mut(&c) {
                    set.remove(object);
                    if set.is_empty() {
                        inner.by_connection.remove(&c);
                    }
                }
            }
        }
        if connections.is_empty() {
            return;
        }
        for c in &connections {
            inner
                .by_connection
                .entry(c.clone())
                .or_default()
                .insert(object.clone());
        }
        inner.of_object.insert(object.clone(), connections);
    }

    /// The objects naming `connection`.
    pub fn naming(&self, connection: &str) -> Vec<(String, String)> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .by_connection
            .get(connection)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The objects in `namespace` that name a connection.
    pub fn in_namespace(&self, namespace: &str) -> Vec<(String, String)> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .of_object
            .keys()
            .filter(|(ns, _)| ns == namespace)
            .cloned()
            .collect()
    }
}

/// [`watch_connections`] for a controller whose cache holds only metadata: the objects
/// to re-run come from `index` instead of the cached objects' specs.
pub fn watch_connections_indexed<C>(
    rt: &Runtime,
    controller: Controller<C>,
    index: Arc<ConnectionIndex>,
) -> Controller<C>
where
    C: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let by_connection = index.clone();
    let connections: Api<ClusterConnection> = Api::all(rt.client.clone());
    let namespaces: Api<Namespace> = Api::all(rt.client.clone());
    let config = || watcher::Config::default().any_semantic();
    let to_ref = |(ns, name): (String, String)| ObjectRef::<C>::new(&name).within(&ns);
    controller
        .watches(connections, config(), move |conn| {
            by_connection
                .naming(&conn.name_any())
                .into_iter()
                .map(to_ref)
                .collect::<Vec<_>>()
        })
        .watches(namespaces, config(), move |ns| {
            index
                .in_namespace(&ns.name_any())
                .into_iter()
                .map(to_ref)
                .collect::<Vec<_>>()
        })
}

/// The reason a resource gives while its domain step is not part of the build.
pub const NOT_IMPLEMENTED: &str = "NotImplemented";
/// The reason a resource gives when its spec fails the controller's validation.
pub const INVALID_SPEC: &str = "InvalidSpec";

/// What a resource whose domain step is not built yet needs to be reconciled.
#[derive(Debug)]
pub struct Unimplemented<K> {
    /// The controller's name (logs, readiness).
    pub name: &'static str,
    /// The field manager of its status writes.
    pub field_manager: &'static str,
    /// The connection an object names.
    pub connection_of: fn(&K) -> Option<&ConnectionRef>,
    /// The kind of system that connection must point at.
    pub kind_of: fn(&K) -> ConnectionKind,
    /// The controller's own validation: `Err` holds the message.
    pub validate: fn(&K) -> Result<(), String>,
    /// What is missing, said in `Ready`'s message.
    pub missing: &'static str,
}

struct UnimplementedCtx<K> {
    rt: Runtime,
    metrics: ControllerMetrics,
    spec: Unimplemented<K>,
    events: crate::events::Publisher,
}

/// Runs a controller whose domain step is not built yet: per object, the gate, then the
/// controller's validation, then an honest `Ready=Unknown, NotImplemented` naming what
/// is missing, in one status write; never a false `Ready=True`.
pub async fn run_unimplemented<K, S>(
    rt: Runtime,
    metrics: ControllerMetrics,
    spec: Unimplemented<K>,
    status_of: fn(&K) -> Option<&S>,
    shutdown: CancellationToken,
) where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
    S: ObjectStatus + Send + Sync + 'static,
{
    let name = spec.name;
    let connection_of = spec.connection_of;
    let ctx = Arc::new(UnimplementedCtx {
        events: crate::events::Publisher::new(rt.client.clone(), spec.field_manager, &rt.instance),
        rt: rt.clone(),
        metrics,
        spec,
    });
    let reconcile = move |obj: Arc<K>, ctx: Arc<UnimplementedCtx<K>>| async move {
        let _timer = ctx.metrics.start();
        let spec = &ctx.spec;
        let ns = obj.namespace().unwrap_or_default();
        let conditions = match connection_gate(
            &ctx.rt,
            &ns,
            (spec.connection_of)(&obj),
            (spec.kind_of)(&obj),
            &[],
        )
        .await?
        {
            Gate::Refused(conditions) => conditions,
            Gate::Proceed(_, mut conditions) => {
                conditions.push(match (spec.validate)(&obj) {
                    Err(msg) => Desired::new(READY, false, INVALID_SPEC, msg),
                    Ok(()) => Desired::new(
                        READY,
                        Status::Unknown,
                        NOT_IMPLEMENTED,
                        format!(
                            "the spec is valid and its connection allowed; {}",
                            spec.missing
                        ),
                    ),
                });
                conditions
            }
        };
        // A refusal or an invalid spec is also a Warning Event, once per transition.
        let before = status_of(&obj)
            .cloned()
            .unwrap_or_default()
            .conditions_mut()
            .clone();
        let warning = crate::events::ready_turned_false(&before, &conditions);
        let api: Api<K> = Api::namespaced(ctx.rt.client.clone(), &ns);
        let now = ctx.rt.clock.now();
        update_status(
            &api,
            obj.as_ref(),
            status_of(&obj),
            spec.field_manager,
            now,
            conditions,
            |_| {},
        )
        .await?;
        if let Some((reason, message)) = warning {
            ctx.events
                .publish(
                    obj.as_ref(),
                    crate::events::EventType::Warning,
                    &reason,
                    "Reconcile",
                    message,
                )
                .await;
        }
        Ok::<_, kube::Error>(Action::await_change())
    };
    let error_policy = |_obj: Arc<K>, err: &kube::Error, ctx: Arc<UnimplementedCtx<K>>| {
        ctx.metrics.failure(err);
        Action::requeue(std::time::Duration::from_secs(15))
    };
    run_controller(
        &rt,
        name,
        ctx,
        reconcile,
        error_policy,
        |c, _| watch_connections(&rt, c, connection_of),
        shutdown,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::ConnectionIndex;

    fn key(ns: &str, name: &str) -> (String, String) {
        (ns.to_owned(), name.to_owned())
    }

    #[test]
    fn index_follows_changes_and_forgets_objects_without_connections() {
        let ix = ConnectionIndex::default();
        ix.set(&key("shop", "db"), vec!["aws".into(), "ecs".into()]);
        ix.set(&key("shop", "key"), vec!["vault".into()]);
        ix.set(&key("bank", "db"), vec!["aws".into()]);
        let mut aws = ix.naming("aws");
        aws.sort();
        assert_eq!(aws, vec![key("bank", "db"), key("shop", "db")]);
        assert_eq!(ix.in_namespace("shop").len(), 2);

        // shop/db now names only vault: it leaves aws and ecs.
        ix.set(&key("shop", "db"), vec!["vault".into()]);
        assert_eq!(ix.naming("aws"), vec![key("bank", "db")]);
        assert!(ix.naming("ecs").is_empty());
        assert_eq!(ix.naming("vault").len(), 2);

        // Deleted (or naming none): gone everywhere.
        ix.set(&key("shop", "db"), Vec::new());
        ix.set(&key("shop", "key"), Vec::new());
        assert!(ix.naming("vault").is_empty());
        assert!(ix.in_namespace("shop").is_empty());
    }
}
