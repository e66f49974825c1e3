//! Step one of every resource reconcile: resolve the connection the object names and
//! refuse, in status, a namespace the connection does not allow.
//!
//! A refusal writes `Ready=False` and `ConnectionReady=False` with a reason
//! (`ConnectionNotAllowed`, `ConnectionNotFound`, `ConnectionWrongKind`) and a message
//! naming the connection, then waits: the controllers also watch ClusterConnections
//! ([`watch_connections`]), so an administrator's change to the connection re-runs the
//! objects that reference it.

use std::fmt::Debug;
use std::sync::Arc;

use k8s_openapi::NamespaceResourceScope;
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::conditions::{Desired, ObjectStatus, READY};
use crate::connection::{ClusterConnection, ConnectionKind, ConnectionRef, resolve};
use crate::runtime::Runtime;
use crate::ssa::update_status;

/// The condition saying whether the object's connection may be used.
pub const CONNECTION_READY: &str = "ConnectionReady";
/// Reason of `ConnectionReady=True`.
pub const CONNECTION_ALLOWED: &str = "ConnectionAllowed";

/// What the gate decided.
#[derive(Debug)]
pub enum Gate {
    /// Go on; the resolved connection, if the object names one.
    Proceed(Option<Box<ClusterConnection>>),
    /// Refused and reported in status; return this action.
    Refused(Action),
}

/// Resolves `reference` for `obj`. On refusal, writes the conditions and returns
/// [`Gate::Refused`]; on success, records `ConnectionReady=True` and returns the
/// connection. Errors are transient API failures only.
pub async fn connection_gate<K, S>(
    rt: &Runtime,
    obj: &K,
    status: Option<&S>,
    reference: Option<&ConnectionRef>,
    kind: ConnectionKind,
    field_manager: &str,
) -> Result<Gate, kube::Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
    S: ObjectStatus,
{
    let Some(reference) = reference else { return Ok(Gate::Proceed(None)) };
    let ns = obj.namespace().unwrap_or_default();
    let api: Api<K> = Api::namespaced(rt.client.clone(), &ns);
    let now = rt.clock.now();
    match resolve(&rt.client, reference, &ns, kind).await {
        Ok(conn) => {
            let msg = format!("ClusterConnection {:?} allows namespace {ns:?}", reference.name);
            update_status(
                &api,
                obj,
                status,
                field_manager,
                now,
                vec![Desired::new(CONNECTION_READY, true, CONNECTION_ALLOWED, msg)],
                |_| {},
            )
            .await?;
            Ok(Gate::Proceed(Some(Box::new(conn))))
        }
        Err(e) if e.is_transient() => match e {
            crate::connection::ConnectionRefError::Kube { source, .. } => Err(source),
            _ => Ok(Gate::Refused(Action::requeue(std::time::Duration::from_secs(30)))),
        },
        Err(e) => {
            tracing::info!(object = %obj.name_any(), namespace = %ns, reason = e.reason(), "connection refused");
            update_status(
                &api,
                obj,
                status,
                field_manager,
                now,
                vec![
                    Desired::new(CONNECTION_READY, false, e.reason(), e.to_string()),
                    Desired::new(READY, false, e.reason(), e.to_string()),
                ],
                |_| {},
            )
            .await?;
            Ok(Gate::Refused(Action::await_change()))
        }
    }
}

/// Adds a watch on ClusterConnections to a controller: a change to a connection
/// re-runs every object (in the controller's cache) that names it.
pub fn watch_connections<K>(
    rt: &Runtime,
    controller: Controller<K>,
    connection_of: fn(&K) -> Option<&str>,
) -> Controller<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let store = controller.store();
    let api: Api<ClusterConnection> = Api::all(rt.client.clone());
    controller.watches(api, watcher::Config::default().any_semantic(), move |conn| {
        let name = conn.name_any();
        store
            .state()
            .into_iter()
            .filter(|o: &Arc<K>| connection_of(o) == Some(name.as_str()))
            .map(|o| ObjectRef::from_obj(&*o))
            .collect::<Vec<_>>()
    })
}
