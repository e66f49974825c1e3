//! What the Pipeline tests share: a namespace with its APIs ([`Setup`]), a played
//! kubelet (no kubelet runs here) that moves a stage's Pod to Succeeded or Failed with
//! its termination message, the manager's arguments, Pipeline and stage JSON, and waits
//! on status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use capstan_core::conditions::find;
use capstan_pipeline::crd::Pipeline;
use capstan_pipeline::jobs::{CONTAINER, STAGE_LABEL};
use capstan_testenv::{TempNamespace, TestEnv, await_condition};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(60);

/// A test namespace, its Pipeline and Job APIs, and the kubelet the test plays there
/// ([`Setup::play`]), stopped when this is dropped.
pub struct Setup {
    pub kube: &'static capstan_testenv::Kube,
    pub ns: TempNamespace,
    pub client: kube::Client,
    pub api: Api<Pipeline>,
    pub jobs: Api<Job>,
    stop: CancellationToken,
    _stop: tokio_util::sync::DropGuard,
}

impl Setup {
    pub async fn new() -> Self {
        let kube = TestEnv::get().kube().await.expect("kube");
        let ns = TempNamespace::create(kube).await.expect("ns");
        let client = kube.client().await;
        let stop = CancellationToken::new();
        Self {
            kube,
            api: ns.api(client.clone()),
            jobs: ns.api(client.clone()),
            ns,
            client,
            _stop: stop.clone().drop_guard(),
            stop,
        }
    }

    /// Plays the kubelet in the namespace with `outcome` until this is dropped.
    pub fn play(&self, outcome: Outcome) {
        play_kubelet(
            self.client.clone(),
            self.ns.name(),
            outcome,
            self.stop.clone(),
        );
    }
}

/// What the played kubelet does with a stage's Pod: exit code and termination message,
/// from the stage and the Pod's environment; `None` keeps it running.
pub type Outcome =
    Arc<dyn Fn(&str, &BTreeMap<String, String>) -> Option<(i32, String)> + Send + Sync>;

/// Plays the kubelet in `ns` until `stop`: every Pod of a stage that has not finished
/// is moved to Succeeded (exit 0) or Failed, with its termination message.
pub fn play_kubelet(client: kube::Client, ns: &str, outcome: Outcome, stop: CancellationToken) {
    let pods: Api<Pod> = Api::namespaced(client, ns);
    tokio::spawn(async move {
        while !stop.is_cancelled() {
            let list = pods
                .list(&ListParams::default().labels(STAGE_LABEL))
                .await
                .map(|l| l.items)
                .unwrap_or_default();
            for pod in list {
                let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
                if matches!(phase.as_deref(), Some("Succeeded" | "Failed")) {
                    continue;
                }
                let name = pod.metadata.name.clone().unwrap_or_default();
                let stage = pod
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(STAGE_LABEL).cloned())
                    .unwrap_or_default();
                let c = &pod.spec.as_ref().expect("spec").containers[0];
                let env: BTreeMap<String, String> = c
                    .env
                    .iter()
                    .flatten()
                    .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
                    .collect();
                let Some((code, message)) = outcome(&stage, &env) else {
                    continue;
                };
                let now = chrono::Utc::now().to_rfc3339();
                let status = json!({ "status": {
                    "phase": if code == 0 { "Succeeded" } else { "Failed" },
                    "containerStatuses": [{
                        "name": CONTAINER, "ready": false, "restartCount": 0,
                        "image": c.image, "imageID": "",
                        "state": { "terminated": {
                            "exitCode": code,
                            "reason": if code == 0 { "Completed" } else { "Error" },
                            "message": message, "startedAt": now, "finishedAt": now
                        } }
                    }]
                }});
                let _ = pods
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

pub fn args(ns: &str) -> [&str; 7] {
    [
        "--leader-elect=false",
        "--namespaces",
        ns,
        "--own-namespace",
        ns,
        "--controllers",
        "pipeline",
    ]
}

pub fn job_stage(name: &str, type_: &str, job: Value) -> Value {
    json!({ "name": name, "type": type_, "job": job })
}

pub fn pipeline(name: &str, revision: &str, stages: Vec<Value>) -> Value {
    json!({
        "apiVersion": "capstan.dev/v1alpha1", "kind": "Pipeline",
        "metadata": { "name": name },
        "spec": { "revision": revision, "promotion": "Auto", "stages": stages }
    })
}

pub async fn set_revision(api: &Api<Pipeline>, name: &str, revision: &str) {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "revision": revision } })),
    )
    .await
    .expect("new revision");
}

pub async fn status_until(
    api: &Api<Pipeline>,
    name: &str,
    m: &super::Manager,
    what: &str,
    done: impl Fn(&capstan_pipeline::PipelineStatus) -> bool,
) -> capstan_pipeline::PipelineStatus {
    await_condition(
        api,
        name,
        |o: &Pipeline| o.status.as_ref().is_some_and(&done),
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("{what}: {e}\n{}", m.all_logs()))
    .status
    .expect("status")
}

pub fn condition(o: &Pipeline, type_: &str) -> Option<(String, String, String)> {
    let c = find(&o.status.as_ref()?.conditions, type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

pub async fn jobs_of(api: &Api<Job>) -> BTreeMap<String, Job> {
    api.list(&ListParams::default())
        .await
        .expect("jobs")
        .items
        .into_iter()
        .map(|j| (j.metadata.name.clone().unwrap_or_default(), j))
        .collect()
}
