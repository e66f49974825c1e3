//! What the SecretRotation tests do to and read from their objects: create them, ask for
//! a rotation, wait for rotations to finish; the Deployments that consume a credential,
//! whose rollouts the test completes (no Deployment controller or kubelet runs here).

use std::time::Duration;

use capstan_core::conditions::find;
use capstan_secret_rotation::crd::SecretRotation;
use capstan_testenv::await_condition;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// How long a test waits for rotations.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Creates an object from its JSON (`apiVersion`, `kind`, `metadata`, `spec`).
pub async fn create<K>(api: &Api<K>, value: Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(value).expect("object");
    api.create(&PostParams::default(), &obj)
        .await
        .expect("create");
}

/// Creates SecretRotation `name` with `spec`.
pub async fn create_rotation(api: &Api<SecretRotation>, name: &str, spec: Value) {
    create(
        api,
        json!({
            "apiVersion": "capstan.dev/v1alpha1", "kind": "SecretRotation",
            "metadata": { "name": name }, "spec": spec
        }),
    )
    .await;
}

/// Asks for a rotation now: the `capstan.dev/rotate-now` annotation set to `token`.
pub async fn rotate_now(api: &Api<SecretRotation>, name: &str, token: &str) {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"capstan.dev/rotate-now": token}}})),
    )
    .await
    .expect("annotate");
}

/// Finished rotations (`status.rotationCount`).
pub fn count(o: &SecretRotation) -> i64 {
    o.status.as_ref().map_or(0, |s| s.rotation_count)
}

/// Ready=True with reason CredentialCurrent.
pub fn is_current(o: &SecretRotation) -> bool {
    o.status
        .as_ref()
        .and_then(|s| find(&s.conditions, "Ready"))
        .is_some_and(|c| c.status == "True" && c.reason == "CredentialCurrent")
}

/// Waits until `name` has finished `n` rotations and is current; panics with the
/// manager's logs otherwise.
pub async fn await_rotations(
    api: &Api<SecretRotation>,
    name: &str,
    n: i64,
    m: &super::Manager,
) -> SecretRotation {
    await_rotations_within(api, name, n, m, TIMEOUT).await
}

/// [`await_rotations`] with its own timeout.
pub async fn await_rotations_within(
    api: &Api<SecretRotation>,
    name: &str,
    n: i64,
    m: &super::Manager,
    timeout: Duration,
) -> SecretRotation {
    await_condition(
        api,
        name,
        |o: &SecretRotation| count(o) >= n && is_current(o),
        timeout,
    )
    .await
    .unwrap_or_else(|e| panic!("{name}: not {n} rotations: {e}\n{}", m.all_logs()))
}

/// The arguments of a SecretRotation-only manager watching `ns`, which is also its own
/// namespace.
pub fn manager_args(ns: &str) -> Vec<String> {
    vec![
        "--leader-elect=false".into(),
        "--namespaces".into(),
        ns.into(),
        "--own-namespace".into(),
        ns.into(),
        "--controllers".into(),
        "secret-rotation".into(),
    ]
}

/// A SecretRotation-only manager for `ns` ([`manager_args`]).
pub async fn start(
    kube: &'static capstan_testenv::Kube,
    ns: &str,
    identity: &str,
) -> super::Manager {
    let args = manager_args(ns);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    super::start(kube, identity, &args).await
}

/// Ready's status and reason.
pub fn ready_reason(o: &SecretRotation) -> Option<(String, String)> {
    let c = find(&o.status.as_ref()?.conditions, "Ready")?;
    Some((c.status.clone(), c.reason.clone()))
}

/// The audit trail's step lines (deliveries left out) about `object` (`namespace/name`)
/// in manager logs, as JSON objects.
pub fn step_lines<'a>(logs: impl IntoIterator<Item = &'a String>, object: &str) -> Vec<Value> {
    logs.into_iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v["target"] == "capstan::audit" && v["object"] == object && v["workload"].is_null()
        })
        .collect()
}

/// How many `done` lines each (rotation, attempt, step) has in `lines`, and which of
/// them are recovered.
pub fn done_counts(
    lines: &[Value],
) -> std::collections::BTreeMap<(String, u64, String), (usize, usize)> {
    let mut counts = std::collections::BTreeMap::new();
    for v in lines.iter().filter(|v| v["outcome"] == "done") {
        let key = (
            v["rotation"].as_str().unwrap_or_default().to_owned(),
            v["attempt"].as_u64().unwrap_or_default(),
            v["step"].as_str().unwrap_or_default().to_owned(),
        );
        let e = counts.entry(key).or_insert((0, 0));
        e.0 += 1;
        if v["recovered"] == true {
            e.1 += 1;
        }
    }
    counts
}

/// A one-replica Deployment `name` (Pods labelled `app: <name>`) with the object labels
/// `labels`.
pub async fn create_deployment(api: &Api<Deployment>, name: &str, labels: Value) {
    create(
        api,
        json!({
            "metadata": { "name": name, "labels": labels },
            "spec": {
                "replicas": 1,
                "selector": { "matchLabels": { "app": name } },
                "template": {
                    "metadata": { "labels": { "app": name } },
                    "spec": { "containers": [{ "name": "c", "image": "example/app:1" }] }
                }
            }
        }),
    )
    .await;
}

/// Plays the Deployment controller once: the rollout of `name`'s current generation is
/// complete.
pub async fn complete_rollout(api: &Api<Deployment>, name: &str) -> Result<(), kube::Error> {
    let generation = api.get(name).await?.metadata.generation;
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "observedGeneration": generation, "replicas": 1, "updatedReplicas": 1,
            "availableReplicas": 1, "readyReplicas": 1
        }})),
    )
    .await
    .map(|_| ())
}
