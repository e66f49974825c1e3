//! `make bench`: Pipeline stage transitions at scale against the real local environment
//! (kube-apiserver and kube-controller-manager's Job controller from `capstan-testenv`),
//! the manager as a real process (`cargo bench` builds it in release). Prints
//! `FIGURE <name>: <value>` lines; asserts nothing; every wait has a deadline.
//!
//! 100 Pipelines (`CAPSTAN_BENCH_PIPELINES`) of five Job stages each run once. No kubelet
//! runs here: the bench plays it, moving each stage's Pod to Succeeded as soon as its
//! watch sees the Pod. It also watches the Jobs, and on its own clock measures:
//!
//! - **stage transition**: from seeing a stage's Job `Complete` to seeing the next
//!   stage's Job created (Capstan's part: the watch event, the reconcile, the status
//!   write, the Job create), p50 / p99 / max;
//! - **Job controller delay**: from the Pod's Succeeded patch to seeing the Job
//!   `Complete` (kube-controller-manager's part, reported apart: it batches its syncs);
//! - **API writes per run**: Pipeline writes (each watch event after creation is one),
//!   Jobs created and Capstan's Events (about the Pipelines), over the 100 runs;
//! - Capstan's CPU seconds per run and its RSS when all runs are done.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capstan_pipeline::crd::{Pipeline, PipelinePhase};
use capstan_pipeline::jobs::{CONTAINER, STAGE_LABEL};
use capstan_testenv::{TempNamespace, TestEnv};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use support::{cpu_secs, env_u64, figure, rss_of};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const STAGES: [&str; 5] = ["test", "lint", "build", "package", "smoke"];

#[derive(Default)]
struct Clock {
    /// Job name → when its Pod was moved to Succeeded.
    pod_done: HashMap<String, Instant>,
    /// Job name → when it was first seen Complete.
    complete: HashMap<String, Instant>,
    /// Stage transition latencies (ms).
    transitions: Vec<f64>,
    /// Job controller delays (ms).
    job_controller: Vec<f64>,
}

/// `<pipeline>-<run>-<stage>-<attempt>` of the stage before `job`, if any.
fn previous_job(job: &str) -> Option<String> {
    let parts: Vec<&str> = job.rsplitn(4, '-').collect();
    let [attempt, stage, run, pipeline] = parts.as_slice() else {
        return None;
    };
    let i = STAGES.iter().position(|s| s == stage)?;
    let prev = STAGES.get(i.checked_sub(1)?)?;
    Some(format!("{pipeline}-{run}-{prev}-{attempt}"))
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// Plays the kubelet: every stage Pod seen is moved to Succeeded at once.
fn play_kubelet(client: kube::Client, ns: &str, clock: Arc<Mutex<Clock>>) {
    let pods: Api<Pod> = Api::namespaced(client, ns);
    tokio::spawn(async move {
        let stream = watcher(pods.clone(), watcher::Config::default().labels(STAGE_LABEL));
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            let Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) = ev else {
                continue;
            };
            let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
            if matches!(phase.as_deref(), Some("Succeeded" | "Failed")) {
                continue;
            }
            let name = pod.metadata.name.clone().unwrap_or_default();
            let job = pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("batch.kubernetes.io/job-name").cloned())
                .unwrap_or_default();
            let pods = pods.clone();
            let clock = clock.clone();
            tokio::spawn(async move {
                let now = chrono::Utc::now().to_rfc3339();
                let status = json!({ "status": {
                    "phase": "Succeeded",
                    "containerStatuses": [{
                        "name": CONTAINER, "ready": false, "restartCount": 0,
                        "image": "busybox", "imageID": "",
                        "state": { "terminated": {
                            "exitCode": 0, "reason": "Completed",
                            "startedAt": now, "finishedAt": now
                        } }
                    }]
                }});
                if pods
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                    .await
                    .is_ok()
                {
                    clock
                        .lock()
                        .expect("lock")
                        .pod_done
                        .entry(job)
                        .or_insert_with(Instant::now);
                }
            });
        }
    });
}

/// Watches the Jobs: first sight of each Job (a transition's end) and of its Complete.
fn watch_jobs(client: kube::Client, ns: &str, clock: Arc<Mutex<Clock>>, created: Arc<AtomicU64>) {
    let jobs: Api<Job> = Api::namespaced(client, ns);
    tokio::spawn(async move {
        let mut seen = std::collections::HashSet::new();
        let stream = watcher(jobs, watcher::Config::default());
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            let Ok(watcher::Event::Apply(job) | watcher::Event::InitApply(job)) = ev else {
                continue;
            };
            let now = Instant::now();
            let name = job.metadata.name.clone().unwrap_or_default();
            let mut c = clock.lock().expect("lock");
            if seen.insert(name.clone()) {
                created.fetch_add(1, Ordering::SeqCst);
                if let Some(prev) = previous_job(&name)
                    && let Some(done) = c.complete.get(&prev).copied()
                {
                    c.transitions
                        .push(now.duration_since(done).as_secs_f64() * 1000.0);
                }
            }
            let complete = job
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Complete" && c.status == "True")
                });
            if complete && !c.complete.contains_key(&name) {
                c.complete.insert(name.clone(), now);
                if let Some(pod) = c.pod_done.get(&name).copied() {
                    c.job_controller
                        .push(now.duration_since(pod).as_secs_f64() * 1000.0);
                }
            }
        }
    });
}

/// Counts watch events (each one a write) on objects of kind `K` that `keep` keeps.
fn count_events<K>(api: Api<K>, keep: fn(&K) -> bool) -> Arc<AtomicU64>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let n = Arc::new(AtomicU64::new(0));
    let counted = n.clone();
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default());
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            if let Ok(watcher::Event::Apply(o)) = ev
                && keep(&o)
            {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    n
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let pipelines = usize::try_from(env_u64("CAPSTAN_BENCH_PIPELINES", 100))?;
    let limit = Duration::from_secs(env_u64("CAPSTAN_BENCH_PIPELINE_LIMIT_SECS", 300));
    let env = TestEnv::get();
    let kube = env.kube().await?;
    let client = kube.client().await;
    let ns = TempNamespace::create(kube).await?;
    let clock = Arc::new(Mutex::new(Clock::default()));
    let jobs_created = Arc::new(AtomicU64::new(0));
    play_kubelet(client.clone(), ns.name(), clock.clone());
    watch_jobs(
        client.clone(),
        ns.name(),
        clock.clone(),
        jobs_created.clone(),
    );
    let api: Api<Pipeline> = ns.api(client.clone());
    let pipeline_writes = count_events(api.clone(), |_| true);
    // Capstan's Events only (the Job controller writes its own about the Jobs).
    let event_writes = count_events(ns.api::<Event>(client.clone()), |e: &Event| {
        e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("Pipeline")
    });
    let m = common::start_with_level(
        kube,
        "bench-pipeline",
        "info",
        &[
            "--leader-elect=false",
            "--namespaces",
            ns.name(),
            "--own-namespace",
            ns.name(),
            "--controllers",
            "pipeline",
        ],
        &[],
    )
    .await;
    m.await_ready(Duration::from_secs(120)).await;
    let pid = m.child.id().unwrap_or_default();
    let cpu_before = cpu_secs(pid);
    let stages: Vec<_> = STAGES
        .iter()
        .map(|s| json!({ "name": s, "type": "Test", "job": { "image": "busybox" } }))
        .collect();
    let started = Instant::now();
    stream::iter(0..pipelines)
        .map(|i| {
            let api = api.clone();
            let obj: Pipeline = serde_json::from_value(json!({
                "apiVersion": "capstan.dev/v1alpha1", "kind": "Pipeline",
                "metadata": { "name": format!("p{i:03}") },
                "spec": { "revision": "1.0", "stages": stages }
            }))
            .expect("pipeline");
            async move { api.create(&PostParams::default(), &obj).await.map(|_| ()) }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    let created_writes = pipelines as u64;
    let deadline = started + limit;
    let done = loop {
        let list = api.list(&Default::default()).await?;
        let done = list
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase) == Some(PipelinePhase::Succeeded))
            .count();
        if done == pipelines || Instant::now() > deadline {
            break done;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let elapsed = started.elapsed();
    // Let the last watch events arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = cpu_secs(pid) - cpu_before;
    let runs = done.max(1) as f64;
    let (mut transitions, mut job_controller) = {
        let c = clock.lock().expect("lock");
        (c.transitions.clone(), c.job_controller.clone())
    };
    figure(
        "pipelines run (of 5 Job stages each)",
        format!("{done} of {pipelines} in {:.1} s", elapsed.as_secs_f64()),
    );
    figure(
        "stage transition: Job Complete seen -> next Job seen, ms (p50 / p99 / max, n)",
        format!(
            "{:.0} / {:.0} / {:.0}, {}",
            percentile(&mut transitions, 0.5),
            percentile(&mut transitions, 0.99),
            percentile(&mut transitions, 1.0),
            transitions.len()
        ),
    );
    figure(
        "Job controller: Pod Succeeded -> Job Complete seen, ms (p50 / p99)",
        format!(
            "{:.0} / {:.0}",
            percentile(&mut job_controller, 0.5),
            percentile(&mut job_controller, 0.99)
        ),
    );
    let pl = pipeline_writes
        .load(Ordering::SeqCst)
        .saturating_sub(created_writes);
    let jobs = jobs_created.load(Ordering::SeqCst);
    let evs = event_writes.load(Ordering::SeqCst);
    figure(
        "API writes per run (Pipeline status / Jobs / Events)",
        format!(
            "{:.1} ({:.1} / {:.1} / {:.1})",
            (pl + jobs + evs) as f64 / runs,
            pl as f64 / runs,
            jobs as f64 / runs,
            evs as f64 / runs
        ),
    );
    figure(
        "Capstan CPU per run, ms",
        format!("{:.1}", cpu * 1000.0 / runs),
    );
    figure(
        "Capstan RSS after the runs, MiB",
        rss_of(i32::try_from(pid).unwrap_or_default()),
    );
    Ok(())
}
