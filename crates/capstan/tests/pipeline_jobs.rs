//! Pipeline Job stages on the real API server and kube-controller-manager's real Job
//! controller: Capstan creates each stage's Job, the Job controller creates its Pod, and
//! the test plays the kubelet (no kubelet runs here): it moves the Pod to Succeeded or
//! Failed with the container's termination message, as a kubelet would after the
//! container exits. The Job controller then marks the Job Complete or Failed, and
//! Capstan, woken by the Job's watch event, records the stage and starts the next.
//!
//! - a run of three stages, a Build's result feeding the next stage's arguments;
//! - a new revision starts run 2; a failing stage ends it, the rest skipped;
//! - a reference to a result no earlier stage declares is refused with its field path
//!   (by the controller: arguments are free text at admission), and nothing runs.
//!
//! Deploy stages: pipeline_deploy.rs.

mod common;

use common::pipeline::{
    Setup, args, condition, job_stage, jobs_of, pipeline, set_revision, status_until,
};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use capstan_pipeline::crd::{Pipeline, PipelinePhase, StagePhase};
use capstan_testenv::await_condition;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);

/// `Supersede`: a new revision stops the run whose Job is still running; the Job is
/// deleted and no Pod of it remains (a plain delete of a Job would leave its Pods); the
/// new revision runs. `Queue` (default): the run finishes first; a revision replaced
/// while waiting is skipped, recorded, and never runs.
#[tokio::test]
async fn new_revisions_supersede_or_queue() {
    let t = Setup::new().await;
    let (kube, ns, client) = (t.kube, &t.ns, t.client.clone());
    let (api, job_api) = (t.api.clone(), t.jobs.clone());
    let pod_api: Api<Pod> = ns.api(client.clone());
    let release = Arc::new(AtomicBool::new(false));
    let released = release.clone();
    // Revision 1.0's tests hang until released; everything else passes.
    t.play(Arc::new(move |_: &str, env: &BTreeMap<String, String>| {
        let held = env.get("REVISION").map(String::as_str) == Some("1.0")
            && !released.load(Ordering::SeqCst);
        (!held).then(|| (0, String::new()))
    }));
    let env = json!([{ "name": "REVISION", "value": "{{ revision }}" }]);
    let mut fast = pipeline(
        "fast",
        "1.0",
        vec![job_stage(
            "test",
            "Test",
            json!({ "image": "busybox", "env": env }),
        )],
    );
    fast["spec"]["concurrencyPolicy"] = json!("Supersede");
    common::rotation::create(&api, fast).await;
    let m = common::start(kube, "pipeline-policies", &args(ns.name())).await;
    let pods_of = |job: &'static str| {
        let pod_api = pod_api.clone();
        async move {
            pod_api
                .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
                .await
                .expect("pods")
                .items
                .len()
        }
    };
    let deadline = Instant::now() + TIMEOUT;
    while pods_of("fast-1-test-1").await == 0 {
        assert!(
            Instant::now() < deadline,
            "no Pod for run 1\n{}",
            m.all_logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    set_revision(&api, "fast", "2.0").await;
    let st = status_until(&api, "fast", &m, "run 2 not done", |s| {
        s.run_number == 2 && s.phase == Some(PipelinePhase::Succeeded)
    })
    .await;
    assert_eq!(
        st.history[1].outcome,
        PipelinePhase::Superseded,
        "{:?}",
        st.history
    );
    assert_eq!(st.history[1].revision, "1.0");
    let deadline = Instant::now() + TIMEOUT;
    while job_api
        .get_opt("fast-1-test-1")
        .await
        .expect("get")
        .is_some()
        || pods_of("fast-1-test-1").await > 0
    {
        assert!(
            Instant::now() < deadline,
            "the superseded run's Job or Pod remains\n{}",
            m.all_logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Queue: 2.0 waits, 3.0 replaces it, then 1.0's run is released.
    common::rotation::create(
        &api,
        pipeline(
            "queued",
            "1.0",
            vec![job_stage(
                "test",
                "Test",
                json!({ "image": "busybox", "env": env }),
            )],
        ),
    )
    .await;
    let deadline = Instant::now() + TIMEOUT;
    while pods_of("queued-1-test-1").await == 0 {
        assert!(
            Instant::now() < deadline,
            "no Pod for run 1\n{}",
            m.all_logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    set_revision(&api, "queued", "2.0").await;
    status_until(&api, "queued", &m, "2.0 not queued", |s| {
        s.queued_revision.as_deref() == Some("2.0")
    })
    .await;
    set_revision(&api, "queued", "3.0").await;
    let st = status_until(&api, "queued", &m, "3.0 not queued", |s| {
        s.queued_revision.as_deref() == Some("3.0")
    })
    .await;
    assert_eq!(st.skipped_revisions, ["2.0"]);
    assert_eq!(st.run_number, 1, "no run while one is active");
    release.store(true, Ordering::SeqCst);
    let st = status_until(&api, "queued", &m, "3.0 not run", |s| {
        s.run_number == 2 && s.phase == Some(PipelinePhase::Succeeded)
    })
    .await;
    let runs: Vec<(&str, PipelinePhase)> = st
        .history
        .iter()
        .map(|r| (r.revision.as_str(), r.outcome))
        .collect();
    assert_eq!(
        runs,
        [
            ("3.0", PipelinePhase::Succeeded),
            ("1.0", PipelinePhase::Succeeded)
        ]
    );
    assert_eq!(st.queued_revision, None);
    let names: Vec<String> = jobs_of(&job_api)
        .await
        .into_keys()
        .filter(|n| n.starts_with("queued-"))
        .collect();
    assert_eq!(names, ["queued-1-test-1", "queued-2-test-1"]);
}

/// Three stages; the Build reports the digest it pushed, which the third stage gets in
/// its arguments. Then revision 2.0, whose tests fail: run 2 ends Failed at `test`,
/// `build` and `verify` skipped, and no Job of theirs exists.
#[tokio::test]
async fn job_stages_run_in_order_and_results_feed_later_stages() {
    let t = Setup::new().await;
    let (kube, ns) = (t.kube, &t.ns);
    let (api, job_api) = (t.api.clone(), t.jobs.clone());
    t.play(Arc::new(|stage: &str, env: &BTreeMap<String, String>| {
        Some(match (stage, env.get("REVISION").map(String::as_str)) {
            ("test", Some("2.0")) => (1, "2 tests failed".into()),
            ("build", Some(rev)) => (
                0,
                json!({ "imageDigest": format!("sha256:d1g{rev}") }).to_string(),
            ),
            _ => (0, String::new()),
        })
    }));
    let env = json!([{ "name": "REVISION", "value": "{{ revision }}" }]);
    common::rotation::create(
        &api,
        pipeline(
            "app",
            "1.0",
            vec![
                job_stage("test", "Test", json!({ "image": "busybox", "env": env })),
                job_stage(
                    "build",
                    "Build",
                    json!({ "image": "busybox", "env": env, "results": ["imageDigest"] }),
                ),
                job_stage(
                    "verify",
                    "Test",
                    json!({ "image": "busybox:{{ revision }}",
                            "args": ["--digest={{ stages.build.results.imageDigest }}", "--rev={{ revision }}"] }),
                ),
            ],
        ),
    )
    .await;
    let m = common::start(kube, "pipeline-jobs", &args(ns.name())).await;
    let o = await_condition(
        &api,
        "app",
        |o: &Pipeline| condition(o, "Ready").is_some_and(|(s, _, _)| s == "True"),
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("run 1 not done: {e}\n{}", m.all_logs()));
    let st = o.status.expect("status");
    assert_eq!(st.phase, Some(PipelinePhase::Succeeded));
    assert_eq!(st.run_id.as_deref(), Some("app-1"));
    assert_eq!(st.last_successful_revision.as_deref(), Some("1.0"));
    assert!(
        st.stages.iter().all(|s| s.phase == StagePhase::Succeeded),
        "{:?}",
        st.stages
    );
    assert_eq!(st.stages[1].results["imageDigest"], "sha256:d1g1.0");
    assert_eq!(st.history.len(), 1);
    assert_eq!(st.history[0].outcome, PipelinePhase::Succeeded);
    let jobs = jobs_of(&job_api).await;
    assert_eq!(
        jobs.keys().cloned().collect::<Vec<_>>(),
        ["app-1-build-1", "app-1-test-1", "app-1-verify-1"],
        "one Job per stage"
    );
    let verify = &jobs["app-1-verify-1"];
    let c = &verify
        .spec
        .as_ref()
        .expect("spec")
        .template
        .spec
        .as_ref()
        .expect("pod")
        .containers[0];
    assert_eq!(c.image.as_deref(), Some("busybox:1.0"));
    assert_eq!(
        c.args.clone().unwrap_or_default(),
        ["--digest=sha256:d1g1.0", "--rev=1.0"]
    );
    let owner = &verify.metadata.owner_references.as_ref().expect("owned")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("Pipeline", Some(true))
    );

    // Revision 2.0: its tests fail.
    api.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "revision": "2.0" } })),
    )
    .await
    .expect("new revision");
    let o = await_condition(
        &api,
        "app",
        |o: &Pipeline| {
            o.status
                .as_ref()
                .is_some_and(|s| s.run_number == 2 && s.phase == Some(PipelinePhase::Failed))
        },
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("run 2 did not fail: {e}\n{}", m.all_logs()));
    let st = o.status.as_ref().expect("status");
    let phases: Vec<StagePhase> = st.stages.iter().map(|s| s.phase).collect();
    assert_eq!(
        phases,
        [StagePhase::Failed, StagePhase::Skipped, StagePhase::Skipped]
    );
    assert!(
        st.stages[0]
            .message
            .as_deref()
            .is_some_and(|m| m.contains("app-2-test-1 failed")),
        "{:?}",
        st.stages[0]
    );
    let (ready, reason, _) = condition(&o, "Ready").expect("Ready");
    assert_eq!((ready.as_str(), reason.as_str()), ("False", "StageFailed"));
    assert_eq!(st.history.len(), 2);
    assert_eq!(st.history[0].failed_stage.as_deref(), Some("test"));
    assert_eq!(st.last_successful_revision.as_deref(), Some("1.0"));
    let names: Vec<String> = jobs_of(&job_api).await.into_keys().collect();
    assert_eq!(
        names,
        [
            "app-1-build-1",
            "app-1-test-1",
            "app-1-verify-1",
            "app-2-test-1"
        ]
    );
}

/// A result of a stage that does not finish first (listed before, so admission lets it
/// through, but `dependsOn: []` starts the stage with the run): `Ready=False,
/// InvalidSpec` with the field path, and no run. A Job of the name a stage's Job would
/// have, which is not the Pipeline's: the stage fails saying so, and the Job is left
/// alone.
#[tokio::test]
async fn pipelines_that_cannot_run_say_why_and_create_nothing() {
    let t = Setup::new().await;
    let (kube, ns) = (t.kube, &t.ns);
    let (api, job_api) = (t.api.clone(), t.jobs.clone());
    common::rotation::create(&api, {
        let mut p = pipeline(
            "undeclared",
            "1.0",
            vec![
                job_stage(
                    "build",
                    "Build",
                    json!({ "image": "busybox", "results": ["imageDigest"] }),
                ),
                job_stage(
                    "verify",
                    "Test",
                    json!({ "image": "busybox", "args": ["{{ stages.build.results.imageDigest }}"] }),
                ),
            ],
        );
        p["spec"]["stages"][1]["dependsOn"] = json!([]);
        p
    })
    .await;
    let m = common::start(kube, "pipeline-refusals", &args(ns.name())).await;
    let o = await_condition(
        &api,
        "undeclared",
        |o: &Pipeline| condition(o, "Ready").is_some_and(|(_, r, _)| r == "InvalidSpec"),
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("not refused: {e}\n{}", m.all_logs()));
    let (_, _, message) = condition(&o, "Ready").expect("Ready");
    assert!(
        message.contains("spec.stages[1].job.args[0]")
            && message.contains("does not finish before this one starts"),
        "{message}"
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        assert!(jobs_of(&job_api).await.is_empty(), "a Job was created");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(o.status.as_ref().map(|s| s.run_number), Some(0));

    // Someone's own Job already has the name of stage `test`'s Job in run 1.
    common::rotation::create(
        &job_api,
        json!({
            "metadata": { "name": "taken-1-test-1" },
            "spec": { "template": { "spec": {
                "restartPolicy": "Never",
                "containers": [{ "name": "c", "image": "busybox" }]
            } } }
        }),
    )
    .await;
    common::rotation::create(
        &api,
        pipeline(
            "taken",
            "1.0",
            vec![job_stage("test", "Test", json!({ "image": "busybox" }))],
        ),
    )
    .await;
    let o = await_condition(
        &api,
        "taken",
        |o: &Pipeline| {
            o.status
                .as_ref()
                .is_some_and(|s| s.phase == Some(PipelinePhase::Failed))
        },
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("not failed: {e}\n{}", m.all_logs()));
    let message = o.status.as_ref().expect("status").stages[0]
        .message
        .clone()
        .unwrap_or_default();
    assert!(message.contains("is not this Pipeline's"), "{message}");
    let theirs = job_api.get("taken-1-test-1").await.expect("still there");
    assert!(theirs.metadata.owner_references.is_none(), "left alone");
}

/// `dependsOn`: `lint` and `unit` start together (`unit` names no dependency), `build`
/// waits for both. (A `dependsOn` naming a later stage is refused at admission:
/// tests/admission.rs.)
#[tokio::test]
async fn stages_with_dependencies_run_side_by_side() {
    let t = Setup::new().await;
    let (kube, ns, client) = (t.kube, &t.ns, t.client.clone());
    let api = t.api.clone();
    // lint's Pod finishes only once unit's exists: they must run side by side.
    let pods: Api<Pod> = ns.api(client.clone());
    let unit_seen = Arc::new(AtomicBool::new(false));
    let seen = unit_seen.clone();
    tokio::spawn(async move {
        loop {
            let list = pods
                .list(&ListParams::default().labels("capstan.dev/stage=unit"))
                .await
                .map(|l| l.items.len())
                .unwrap_or_default();
            if list > 0 {
                seen.store(true, Ordering::SeqCst);
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let gate = unit_seen.clone();
    t.play(Arc::new(
        move |stage: &str, _: &BTreeMap<String, String>| {
            (stage != "lint" || gate.load(Ordering::SeqCst)).then(|| (0, String::new()))
        },
    ));
    let mut p = pipeline(
        "fan",
        "1.0",
        vec![
            job_stage("lint", "Test", json!({ "image": "busybox" })),
            job_stage("unit", "Test", json!({ "image": "busybox" })),
            job_stage("build", "Build", json!({ "image": "busybox" })),
        ],
    );
    p["spec"]["stages"][1]["dependsOn"] = json!([]);
    p["spec"]["stages"][2]["dependsOn"] = json!(["lint", "unit"]);
    common::rotation::create(&api, p).await;
    let m = common::start(kube, "pipeline-fan", &args(ns.name())).await;
    let st = status_until(&api, "fan", &m, "fan-out run not done", |s| {
        s.phase == Some(PipelinePhase::Succeeded)
    })
    .await;
    let at = |name: &str| {
        let s = st.stages.iter().find(|s| s.name == name).expect("stage");
        (s.started.expect("started"), s.finished.expect("finished"))
    };
    let (lint, unit, build) = (at("lint"), at("unit"), at("build"));
    assert!(
        unit.0 < lint.1,
        "unit started before lint finished: {lint:?} {unit:?}"
    );
    assert!(
        build.0 >= lint.1 && build.0 >= unit.1,
        "build waited: {build:?}"
    );
}

/// `capstan.dev/retry: <stage>` restarts a failed run from that stage as its next
/// attempt (new Job names; the stages before it are not rerun), once per value;
/// `capstan.dev/cancel` stops an active run, deleting its running Job; a retry that
/// cannot act says why in a Warning Event.
#[tokio::test]
async fn failed_runs_are_retried_from_a_stage_and_active_runs_cancelled() {
    let t = Setup::new().await;
    let (kube, ns) = (t.kube, &t.ns);
    let (api, job_api) = (t.api.clone(), t.jobs.clone());
    let fixed = Arc::new(AtomicBool::new(false));
    let fixed_seen = fixed.clone();
    // Stage `b` fails until fixed; stage `hang` never ends.
    t.play(Arc::new(
        move |stage: &str, _: &BTreeMap<String, String>| match stage {
            "b" if !fixed_seen.load(Ordering::SeqCst) => Some((1, String::new())),
            "hang" => None,
            _ => Some((0, String::new())),
        },
    ));
    let stages = vec![
        job_stage("a", "Test", json!({ "image": "busybox" })),
        job_stage("b", "Build", json!({ "image": "busybox" })),
    ];
    common::rotation::create(&api, pipeline("flaky", "1.0", stages)).await;
    let m = common::start(kube, "pipeline-controls", &args(ns.name())).await;
    status_until(&api, "flaky", &m, "run 1 fails", |s| {
        s.phase == Some(PipelinePhase::Failed)
    })
    .await;
    fixed.store(true, Ordering::SeqCst);
    let annotate = |key: &'static str, value: &'static str| {
        let api = api.clone();
        async move {
            api.patch(
                "flaky",
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "annotations": { key: value } } })),
            )
            .await
            .expect("annotate");
        }
    };
    annotate("capstan.dev/retry", "b").await;
    let st = status_until(&api, "flaky", &m, "the retry succeeds", |s| {
        s.phase == Some(PipelinePhase::Succeeded)
    })
    .await;
    assert_eq!(st.run_number, 1, "a retry is the same run");
    assert_eq!((st.stages[0].attempt, st.stages[1].attempt), (1, 2));
    let names: Vec<String> = jobs_of(&job_api).await.into_keys().collect();
    assert_eq!(names, ["flaky-1-a-1", "flaky-1-b-1", "flaky-1-b-2"]);
    assert_eq!(st.history[0].outcome, PipelinePhase::Succeeded);
    assert_eq!(st.history[1].outcome, PipelinePhase::Failed);
    // The same value again does nothing; a stage the run lacks is refused.
    annotate("capstan.dev/retry", "nope:1").await;
    let deadline = Instant::now() + TIMEOUT;
    while !t
        .event_reasons("flaky")
        .await
        .iter()
        .any(|r| r == "ControlRefused")
    {
        assert!(
            Instant::now() < deadline,
            "no ControlRefused:\n{}",
            m.all_logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let st = api
        .get("flaky")
        .await
        .expect("pipeline")
        .status
        .expect("status");
    assert_eq!(st.phase, Some(PipelinePhase::Succeeded));
    assert_eq!(jobs_of(&job_api).await.len(), 3, "nothing ran again");

    // Cancel: the hanging Job is deleted, the run ends Cancelled.
    common::rotation::create(
        &api,
        pipeline(
            "stuck",
            "1.0",
            vec![job_stage("hang", "Test", json!({ "image": "busybox" }))],
        ),
    )
    .await;
    status_until(&api, "stuck", &m, "hanging", |s| {
        s.stages[0].phase == StagePhase::Running
    })
    .await;
    api.patch(
        "stuck",
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "annotations": { "capstan.dev/cancel": "2026-12-07T17:00:00Z" } } })),
    )
    .await
    .expect("cancel");
    let st = status_until(&api, "stuck", &m, "cancelled", |s| {
        s.phase == Some(PipelinePhase::Cancelled)
    })
    .await;
    assert_eq!(st.stages[0].phase, StagePhase::Cancelled);
    let deadline = Instant::now() + TIMEOUT;
    while jobs_of(&job_api).await.contains_key("stuck-1-hang-1") {
        assert!(Instant::now() < deadline, "the cancelled run's Job remains");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        t.event_reasons("stuck")
            .await
            .iter()
            .any(|r| r == "RunCancelled")
    );
}
