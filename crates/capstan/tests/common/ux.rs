//! What the kubectl-facing tests share: a manager for one namespace, Ready as a triple,
//! the Warning Events about an object, and a touch that makes a controller reconcile.

use std::time::{Duration, Instant};

use capstan_core::conditions::find;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, Resource};
use serde_json::json;

/// A manager of `controllers` for `ns`, which is also its own namespace.
pub async fn start(
    kube: &'static capstan_testenv::Kube,
    ns: &str,
    identity: &str,
    controllers: &str,
) -> super::Manager {
    let args = [
        "--leader-elect=false",
        "--namespaces",
        ns,
        "--own-namespace",
        ns,
        "--controllers",
        controllers,
    ];
    super::start(kube, identity, &args).await
}

/// Ready's status, reason and message.
pub fn ready(
    conditions: Option<&Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>,
) -> Option<(String, String, String)> {
    let c = find(conditions?, "Ready")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// The Warning Events in `ns` about the object named `name` with `reason`.
pub async fn warnings(client: &Client, ns: &str, name: &str, reason: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| {
            e.type_.as_deref() == Some("Warning")
                && e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
        })
        .collect()
}

/// Polls until the Warning `reason` about `name` exists; returns how many there are.
pub async fn await_warning(
    client: &Client,
    ns: &str,
    name: &str,
    reason: &str,
    m: &super::Manager,
) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = warnings(client, ns, name, reason).await.len();
        if n > 0 {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "no Warning {reason} about {ns}/{name}\n{}",
            m.all_logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Touches an object (a label change), which makes its controller reconcile it again.
pub async fn touch<K>(api: &Api<K>, name: &str, n: usize)
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"touched": n.to_string()}}})),
    )
    .await
    .expect("touch");
}
