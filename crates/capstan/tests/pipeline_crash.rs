//! Pipeline crash safety: the manager is killed (aborted by a failpoint, as a crash
//! would) right after each side effect of a run (the run claimed, a stage claimed, its
//! Job created), then a new manager resumes. After each: the run completes, with
//! exactly one run and exactly one Job per stage attempt.

mod common;

use common::pipeline::{Setup, args, job_stage, jobs_of, pipeline, status_until};

use std::sync::Arc;
use std::time::Duration;

use capstan_pipeline::crd::PipelinePhase;
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);

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
        let fp = format!("{point}=return");
        let mut crashing = common::start_with_env(
            kube,
            &format!("pl-crash-{i}"),
            &args(ns.name()),
            &[("FAILPOINTS", fp.as_str())],
        )
        .await;
        let status = tokio::time::timeout(TIMEOUT, crashing.child.wait())
            .await
            .unwrap_or_else(|_| panic!("not crashed at {point}:\n{}", crashing.all_logs()))
            .expect("wait");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(6), "aborted (SIGABRT) at {point}");
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
