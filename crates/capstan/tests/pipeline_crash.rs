//! Pipeline crash safety: the manager is killed (aborted by a failpoint, as a crash
//! would) right after each side effect of a run (the run claimed, a stage claimed, its
//! Job created), then a new manager resumes. After each: the run completes, with
//! exactly one run and exactly one Job per stage attempt. The same for Deploy stages
//! and rollbacks: one registered task definition and one UpdateService per deployment.

mod common;

use common::pipeline::{Aws, Setup, args, job_stage, jobs_of, pipeline, status_until};

use std::sync::Arc;
use std::time::Duration;

use capstan_pipeline::crd::PipelinePhase;
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);

/// Starts a manager that aborts at failpoint `point` (as a crash would) and waits until
/// it has; returns it (its logs, and its audit check when dropped).
async fn crash_at(
    kube: &'static capstan_testenv::Kube,
    identity: &str,
    ns: &str,
    point: &str,
) -> common::Manager {
    let fp = format!("{point}=return");
    let mut crashing =
        common::start_with_env(kube, identity, &args(ns), &[("FAILPOINTS", fp.as_str())]).await;
    let status = tokio::time::timeout(TIMEOUT, crashing.child.wait())
        .await
        .unwrap_or_else(|_| panic!("not crashed at {point}:\n{}", crashing.all_logs()))
        .expect("wait");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(6), "aborted (SIGABRT) at {point}");
    crashing
}

#[tokio::test]
async fn a_crash_after_any_side_effect_resumes_without_repeating_it() {
    let t = Setup::new().await;
    let (kube, ns) = (t.kube, &t.ns);
    let (api, job_api) = (t.api.clone(), t.jobs.clone());
    t.play(Arc::new(|_: &str, _: &_| Some((0, String::new()))));
    let points = [
        "pipeline::after-start-run",
        "pipeline::after-claim-stage",
        "pipeline::after-create-job",
    ];
    for (i, point) in points.iter().enumerate() {
        let name = format!("crash-{i}");
        common::rotation::create(
            &api,
            pipeline(
                &name,
                "1.0",
                vec![
                    job_stage("a", "Test", json!({ "image": "busybox" })),
                    job_stage("b", "Build", json!({ "image": "busybox" })),
                ],
            ),
        )
        .await;
        let crashing = crash_at(kube, &format!("pl-crash-{i}"), ns.name(), point).await;
        let m = common::start(kube, &format!("pl-resume-{i}"), &args(ns.name())).await;
        let st = status_until(&api, &name, &m, &format!("no resume after {point}"), |s| {
            s.phase == Some(PipelinePhase::Succeeded)
        })
        .await;
        assert_eq!(st.run_number, 1, "one run after {point}");
        assert_eq!(st.history.len(), 1, "after {point}");
        let jobs: Vec<String> = jobs_of(&job_api)
            .await
            .into_keys()
            .filter(|n| n.starts_with(&format!("{name}-")))
            .collect();
        assert_eq!(
            jobs,
            [format!("{name}-1-a-1"), format!("{name}-1-b-1")],
            "one Job per stage after a crash at {point}"
        );
        drop(m);
        drop(crashing);
    }
}

/// The same for Deploy stages: a kill after the stage is claimed, after its task
/// definition is registered, after the service is updated, and after a rollback's
/// update; a new manager finds each side effect again. Afterwards the family has
/// exactly one revision registered by the run, and the emulator counted exactly one
/// UpdateService per deployment (plus one per rollback).
#[tokio::test]
async fn a_crash_during_a_deploy_or_rollback_repeats_no_side_effect() {
    let t = Setup::new().await;
    let aws = Aws::new(&t).await;
    let (kube, ns, api) = (t.kube, &t.ns, t.api.clone());
    // The smoke test fails: the run rolls its deploy back.
    t.play(Arc::new(|stage: &str, _: &_| {
        Some(if stage == "smoke" {
            (1, String::new())
        } else {
            (0, String::new())
        })
    }));
    aws.push("1.0", None).await;
    let points = [
        ("pipeline::after-claim-stage", false),
        ("pipeline::after-register", false),
        ("pipeline::after-update-service", false),
        ("pipeline::after-rollback-update", true),
    ];
    for (i, (point, rollback)) in points.iter().enumerate() {
        let name = format!("deploy-crash-{i}");
        let initial = aws.create_service(&name, 2, 0.5).await;
        let mut stages = vec![aws.deploy_stage("deploy", &name, &aws.image("1.0"))];
        if *rollback {
            stages.push(job_stage(
                "smoke",
                "SmokeTest",
                json!({ "image": "busybox" }),
            ));
        }
        common::rotation::create(&api, aws.pipeline(&name, "1.0", stages)).await;
        let crashing = crash_at(kube, &format!("pl-deploy-crash-{i}"), ns.name(), point).await;
        let m = common::start(kube, &format!("pl-deploy-resume-{i}"), &args(ns.name())).await;
        let want = if *rollback {
            PipelinePhase::RolledBack
        } else {
            PipelinePhase::Succeeded
        };
        let st = status_until(&api, &name, &m, &format!("no resume after {point}"), |s| {
            s.phase == Some(want)
        })
        .await;
        assert_eq!(st.run_number, 1, "one run after {point}");
        assert_eq!(
            aws.revisions(&name).await.len(),
            2,
            "one task definition registered after a crash at {point}"
        );
        let updates =
            common::scaling::emulator_count(&format!("ecs:UpdateService:{}/{name}", aws.cluster))
                .await;
        assert_eq!(
            updates,
            if *rollback { 2 } else { 1 },
            "UpdateService calls after a crash at {point}"
        );
        let svc = aws.service(&name).await;
        let expected = if *rollback {
            initial
        } else {
            st.stages[0].task_definition.clone().expect("deployed")
        };
        assert_eq!(
            svc.task_definition(),
            Some(expected.as_str()),
            "after {point}"
        );
        drop(m);
        drop(crashing);
    }
}
