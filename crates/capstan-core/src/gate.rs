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

use crate::conditions::{Desired, READY};
use crate::connection::{
    ClusterConnection, ConnectionKind, ConnectionRef, ConnectionRefError, resolve,
};
pub use crate::connection_index::ConnectionIndex;
use crate::runtime::Runtime;
use crate::scope::ScopedResource;

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
    watch_connections_by(
        rt,
        controller,
        move |o| connection_of(o).is_some(),
        move |o, name| connection_of(o).is_some_and(|r| r.name == name),
    )
}

/// [`watch_connections`] for objects that name several connections (a Pipeline's own
/// and its Deploy stages').
pub fn watch_connections_of<K>(
    rt: &Runtime,
    controller: Controller<K>,
    connections_of: fn(&K) -> Vec<&ConnectionRef>,
) -> Controller<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    watch_connections_by(
        rt,
        controller,
        move |o| !connections_of(o).is_empty(),
        move |o, name| connections_of(o).iter().any(|r| r.name == name),
    )
}

fn watch_connections_by<K>(
    rt: &Runtime,
    controller: Controller<K>,
    names_any: impl Fn(&K) -> bool + Send + Sync + 'static,
    names: impl Fn(&K, &str) -> bool + Send + Sync + 'static,
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
                .filter(|o: &Arc<K>| names(o, &name))
                .map(|o| ObjectRef::from_obj(&*o))
                .collect::<Vec<_>>()
        })
        .watches(namespaces, config(), move |ns| {
            let name = ns.name_any();
            store
                .state()
                .into_iter()
                .filter(|o: &Arc<K>| {
                    o.namespace().as_deref() == Some(name.as_str()) && names_any(o)
                })
                .map(|o| ObjectRef::from_obj(&*o))
                .collect::<Vec<_>>()
        })
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
