//! Waiting for Kubernetes objects to reach a state.

use std::fmt::Debug;
use std::time::Duration;

use futures::StreamExt as _;
use kube::api::Api;
use kube::runtime::watcher::watch_object;
use kube::{Resource, ResourceExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Waits until the object `name` exists and `predicate` holds for it, and returns it.
///
/// Watches the object (no polling). On timeout the error shows the last seen status (or
/// that the object was never seen), so a failing test says what the controller did.
///
/// ```no_run
/// # async fn f(api: kube::Api<k8s_openapi::api::apps::v1::Deployment>) -> capstan_testenv::Result<()> {
/// use std::time::Duration;
/// let d = capstan_testenv::await_condition(&api, "web", |d| {
///     d.status.as_ref().and_then(|s| s.ready_replicas) == Some(2)
/// }, Duration::from_secs(10)).await?;
/// # Ok(()) }
/// ```
pub async fn await_condition<K, P>(
    api: &Api<K>,
    name: &str,
    mut predicate: P,
    timeout: Duration,
) -> Result<K>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug + Send + 'static,
    K::DynamicType: Default,
    P: FnMut(&K) -> bool,
{
    let mut found = None;
    await_state(
        api,
        name,
        timeout,
        "to satisfy the condition",
        |obj| match obj {
            Some(obj) if predicate(obj) => {
                found = Some(obj.clone());
                true
            }
            _ => false,
        },
    )
    .await?;
    found.ok_or_else(|| Error::other("await_condition", "condition met without an object"))
}

/// Waits until the object `name` does not exist (deleted, and its finalizers done).
pub async fn await_deleted<K>(api: &Api<K>, name: &str, timeout: Duration) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug + Send + 'static,
    K::DynamicType: Default,
{
    await_state(api, name, timeout, "to be deleted", |obj| obj.is_none()).await
}

async fn await_state<K, P>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    goal: &str,
    mut done: P,
) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug + Send + 'static,
    K::DynamicType: Default,
    P: FnMut(Option<&K>) -> bool,
{
    let mut last: Option<Option<K>> = None;
    let mut last_error: Option<String> = None;
    let stream = watch_object(api.clone(), name);
    futures::pin_mut!(stream);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(obj))) => {
                if done(obj.as_ref()) {
                    return Ok(());
                }
                last = Some(obj);
            }
            Ok(Some(Err(e))) => {
                last_error = Some(e.to_string());
                // The watcher re-lists on the next poll; don't spin on a failing server.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(None) => {
                return Err(Error::other(
                    format!("watching {name}"),
                    "the watch ended unexpectedly",
                ));
            }
            Err(_) => {
                let kind = K::kind(&K::DynamicType::default()).into_owned();
                let ns = api_namespace(&last);
                let mut last_seen = match &last {
                    None => "nothing yet (no answer from the watch)".to_owned(),
                    Some(None) => "the object does not exist".to_owned(),
                    Some(Some(obj)) => describe(obj),
                };
                if let Some(e) = last_error {
                    last_seen.push_str(&format!("; last watch error: {e}"));
                }
                return Err(Error::Timeout {
                    what: format!("{kind} {ns}{name} {goal}"),
                    timeout,
                    last_seen,
                });
            }
        }
    }
}

fn api_namespace<K: Resource>(last: &Option<Option<K>>) -> String {
    match last {
        Some(Some(obj)) => obj.namespace().map(|n| format!("{n}/")).unwrap_or_default(),
        _ => String::new(),
    }
}

/// The object's `status` (or, without one, its whole body) as compact JSON.
fn describe<K: Serialize + Resource>(obj: &K) -> String {
    let value = serde_json::to_value(obj).unwrap_or_default();
    let shown = match value.get("status") {
        Some(status) => format!("status {status}"),
        None => format!("object {value}"),
    };
    let rv = obj.resource_version().unwrap_or_default();
    let deleting = if obj.meta().deletion_timestamp.is_some() {
        " (being deleted)"
    } else {
        ""
    };
    format!("{shown} at resourceVersion {rv}{deleting}")
}
