//! Table tests of the scheduler: each state of the run and its Jobs gives one action.

use std::collections::BTreeMap;

use super::*;
use crate::crd::{
    ConcurrencyPolicy, PipelineStatus, RollbackStatus, Stage, StageStatus, StageType,
};

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .expect("a time")
        .with_timezone(&Utc)
}

/// The scheduler with no deployment followed, at [`t0`].
fn next(spec: &PipelineSpec, status: &PipelineStatus, jobs: &BTreeMap<String, JobState>) -> Next {
    super::next(spec, status, jobs, &BTreeMap::new(), t0())
}

fn job_stage(name: &str, results: &[&str]) -> Stage {
    crate::crd::tests::job_stage(name, StageType::Test, results)
}

fn spec(revision: &str) -> PipelineSpec {
    PipelineSpec {
        connection_ref: None,
        revision: revision.into(),
        stages: vec![job_stage("test", &[]), job_stage("build", &["imageDigest"])],
        suspend: false,
        concurrency_policy: crate::crd::ConcurrencyPolicy::Queue,
    }
}

/// A run of `revision` (number 1) with the stages in these phases; a Running stage
/// names its Job.
fn running(revision: &str, phases: &[StagePhase]) -> PipelineStatus {
    let mut st = PipelineStatus::default();
    st.start_run(&spec(revision));
    st.run_number = 1;
    st.phase = Some(PipelinePhase::Running);
    for (s, phase) in st.stages.iter_mut().zip(phases) {
        s.phase = *phase;
        if *phase == StagePhase::Running {
            s.attempt = 1;
            s.job_name = Some(job_name("shop", 1, &s.name, 1));
        }
    }
    st
}

fn jobs(entries: &[(&str, JobState)]) -> BTreeMap<String, JobState> {
    entries
        .iter()
        .map(|(n, s)| ((*n).to_owned(), s.clone()))
        .collect()
}

fn done(message: &str) -> JobState {
    JobState::Succeeded {
        message: Some(message.into()),
    }
}

#[test]
fn runs_start_on_a_new_revision_and_queue_behind_an_active_one() {
    use StagePhase::*;
    let none = BTreeMap::new();
    // A new object: its revision has no run yet.
    assert_eq!(
        next(&spec("1"), &PipelineStatus::default(), &none),
        Next::StartRun
    );
    // The last run moved this revision: nothing to do.
    let mut finished = running("1", &[Succeeded, Succeeded]);
    finished.phase = Some(PipelinePhase::Succeeded);
    assert_eq!(next(&spec("1"), &finished, &none), Next::Wait);
    // A failed run is not retried by itself.
    finished.phase = Some(PipelinePhase::Failed);
    assert_eq!(next(&spec("1"), &finished, &none), Next::Wait);
    // A newer revision starts a run once the last one ended...
    assert_eq!(next(&spec("2"), &finished, &none), Next::StartRun);
    // ...but waits behind an active one (Queue): the active run goes on.
    let active = running("1", &[Running, Pending]);
    assert_eq!(
        next(
            &spec("2"),
            &active,
            &jobs(&[("shop-1-test-1", JobState::Active)])
        ),
        Next::Wait
    );
    // Suspended: no new run.
    let mut suspended = spec("2");
    suspended.suspend = true;
    assert_eq!(next(&suspended, &finished, &none), Next::Wait);
}

/// `Supersede`: a new revision stops the active run, naming its running Jobs; the
/// same revision does not.
#[test]
fn a_new_revision_supersedes_the_active_run_under_supersede() {
    use StagePhase::*;
    let mut s = spec("2");
    s.concurrency_policy = ConcurrencyPolicy::Supersede;
    let active = running("1", &[Succeeded, Running]);
    let observed = jobs(&[
        ("shop-1-test-1", done("{}")),
        ("shop-1-build-1", JobState::Active),
    ]);
    assert_eq!(
        next(&s, &active, &observed),
        Next::Supersede {
            running: vec!["shop-1-build-1".into()]
        }
    );
    s.revision = "1".into();
    assert_eq!(next(&s, &active, &observed), Next::Wait);
    // Queue records the waiting revision; a newer one skips it.
    let mut st = active.clone();
    st.queue("2");
    st.queue("3");
    st.queue("3");
    assert_eq!(st.queued_revision.as_deref(), Some("3"));
    assert_eq!(st.skipped_revisions, ["2"]);
    st.start_run(&spec("3"));
    assert_eq!(st.queued_revision, None);
}

#[test]
fn stages_run_in_order_driven_by_their_jobs() {
    use StagePhase::*;
    let s = spec("1");
    let none = BTreeMap::new();
    type Case = (
        &'static str,
        Vec<StagePhase>,
        BTreeMap<String, JobState>,
        Next,
    );
    let cases: Vec<Case> = vec![
        (
            "a new run starts its first stage",
            vec![Pending, Pending],
            none.clone(),
            Next::StartStage { index: 0 },
        ),
        (
            "claimed, Job not there (crash between claim and create)",
            vec![Running, Pending],
            none.clone(),
            Next::CreateJob { index: 0 },
        ),
        (
            "the Job runs",
            vec![Running, Pending],
            jobs(&[("shop-1-test-1", JobState::Active)]),
            Next::Wait,
        ),
        (
            "the Job completed (no results declared)",
            vec![Running, Pending],
            jobs(&[("shop-1-test-1", JobState::Succeeded { message: None })]),
            Next::StageSucceeded {
                index: 0,
                results: BTreeMap::new(),
            },
        ),
        (
            "the next stage starts",
            vec![Succeeded, Pending],
            none.clone(),
            Next::StartStage { index: 1 },
        ),
        (
            "the Job failed",
            vec![Succeeded, Running],
            jobs(&[(
                "shop-1-build-1",
                JobState::Failed {
                    reason: "BackoffLimitExceeded".into(),
                },
            )]),
            Next::StageFailed {
                index: 1,
                message: "Job shop-1-build-1 failed: BackoffLimitExceeded".into(),
                running: vec![],
            },
        ),
        (
            "results come from the termination message",
            vec![Succeeded, Running],
            jobs(&[(
                "shop-1-build-1",
                done(r#"{"imageDigest":"sha256:ab","other":"x"}"#),
            )]),
            Next::StageSucceeded {
                index: 1,
                results: BTreeMap::from([("imageDigest".into(), "sha256:ab".into())]),
            },
        ),
        (
            "a declared result missing fails the stage",
            vec![Succeeded, Running],
            jobs(&[("shop-1-build-1", done(r#"{"other":"x"}"#))]),
            Next::StageFailed {
                index: 1,
                message:
                    "Job shop-1-build-1 completed, but it did not report the result `imageDigest`"
                        .into(),
                running: vec![],
            },
        ),
        (
            "every stage succeeded",
            vec![Succeeded, Succeeded],
            none.clone(),
            Next::FinishRun,
        ),
    ];
    for (name, phases, jobs, want) in cases {
        assert_eq!(next(&s, &running("1", &phases), &jobs), want, "{name}");
    }
    // Suspended mid-run: a running stage goes on, no new stage starts.
    let mut suspended = spec("1");
    suspended.suspend = true;
    assert_eq!(
        next(&suspended, &running("1", &[Succeeded, Pending]), &none),
        Next::Wait
    );
    assert_eq!(
        next(
            &suspended,
            &running("1", &[Running, Pending]),
            &jobs(&[("shop-1-test-1", done("{}"))])
        ),
        Next::StageSucceeded {
            index: 0,
            results: BTreeMap::new()
        }
    );
}

/// `dependsOn`: `lint` and `test` start with the run and run side by side; `build`
/// waits for both. A failure cancels what still runs beside it.
#[test]
fn stages_with_dependencies_run_side_by_side() {
    use StagePhase::*;
    let mut s = spec("1");
    s.stages = vec![
        job_stage("lint", &[]),
        job_stage("test", &[]),
        job_stage("build", &[]),
    ];
    s.stages[1].depends_on = Some(vec![]);
    s.stages[2].depends_on = Some(vec!["lint".into(), "test".into()]);
    let mut st = PipelineStatus::default();
    st.start_run(&s);
    st.run_number = 1;
    st.phase = Some(PipelinePhase::Running);
    let set = |st: &mut PipelineStatus, phases: [StagePhase; 3]| {
        for (x, p) in st.stages.iter_mut().zip(phases) {
            x.phase = p;
            x.job_name = (p == Running).then(|| job_name("shop", 1, &x.name, 1));
        }
    };
    let none = BTreeMap::new();
    set(&mut st, [Pending, Pending, Pending]);
    assert_eq!(next(&s, &st, &none), Next::StartStage { index: 0 });
    // lint runs: test starts beside it; build waits.
    set(&mut st, [Running, Pending, Pending]);
    let lint_running = jobs(&[("shop-1-lint-1", JobState::Active)]);
    assert_eq!(next(&s, &st, &lint_running), Next::StartStage { index: 1 });
    set(&mut st, [Running, Running, Pending]);
    let both = jobs(&[
        ("shop-1-lint-1", JobState::Active),
        ("shop-1-test-1", JobState::Active),
    ]);
    assert_eq!(next(&s, &st, &both), Next::Wait);
    // One done, the other running: build still waits.
    set(&mut st, [Succeeded, Running, Pending]);
    assert_eq!(
        next(&s, &st, &jobs(&[("shop-1-test-1", JobState::Active)])),
        Next::Wait
    );
    set(&mut st, [Succeeded, Succeeded, Pending]);
    assert_eq!(next(&s, &st, &none), Next::StartStage { index: 2 });
    // test fails while lint runs: lint's Job goes with the run.
    set(&mut st, [Running, Running, Pending]);
    let failed = jobs(&[
        ("shop-1-lint-1", JobState::Active),
        (
            "shop-1-test-1",
            JobState::Failed {
                reason: "BackoffLimitExceeded".into(),
            },
        ),
    ]);
    assert_eq!(
        next(&s, &st, &failed),
        Next::StageFailed {
            index: 1,
            message: "Job shop-1-test-1 failed: BackoffLimitExceeded".into(),
            running: vec!["shop-1-lint-1".into()],
        }
    );
}

#[test]
fn results_are_a_bounded_json_object_of_strings() {
    let declared = vec!["imageDigest".to_owned()];
    assert!(parse_results(Some("not json"), &declared).is_err());
    assert!(parse_results(Some("[1]"), &declared).is_err());
    assert!(parse_results(Some(r#"{"imageDigest":1}"#), &declared).is_err());
    let big = format!(r#"{{"imageDigest":"{}"}}"#, "a".repeat(MAX_RESULTS_BYTES));
    let err = parse_results(Some(&big), &declared).expect_err("too big");
    assert!(err.contains("more than 4096"), "{err}");
    assert!(!err.contains("aaaa"), "no value in the error: {err}");
    assert_eq!(parse_results(None, &[]), Ok(BTreeMap::new()));
}

#[test]
fn job_names_derive_from_run_stage_and_attempt_and_fit_a_label() {
    assert_eq!(job_name("shop", 3, "build", 1), "shop-3-build-1");
    let long = "a".repeat(60);
    let name = job_name(&long, 12, "unit-tests", 2);
    assert!(name.len() <= MAX_JOB_NAME, "{name}");
    assert!(name.ends_with("-12-unit-tests-2"), "{name}");
    // Two long names that share a prefix still differ.
    let other = format!("{}b", "a".repeat(59));
    assert_ne!(job_name(&other, 12, "unit-tests", 2), name);
    // Stable.
    assert_eq!(job_name(&long, 12, "unit-tests", 2), name);
}

#[test]
fn a_status_entry_defaults_to_no_attempt() {
    let s = StageStatus::pending("x");
    assert_eq!((s.attempt, s.results.is_empty()), (0, true));
}

// Deploy stages and rollbacks.

fn deploy_stage(name: &str, cluster: &str) -> Stage {
    Stage {
        name: name.into(),
        type_: StageType::Deploy,
        job: None,
        deploy: crate::crd::tests::deploy(cluster, "15m"),
        approval: None,
        http: None,
        depends_on: None,
    }
}

/// test, staging (Deploy), smoke, production (Deploy).
fn deploy_spec() -> PipelineSpec {
    PipelineSpec {
        stages: vec![
            job_stage("test", &[]),
            deploy_stage("staging", "staging"),
            crate::crd::tests::job_stage("smoke", StageType::SmokeTest, &[]),
            deploy_stage("production", "production"),
        ],
        ..spec("1")
    }
}

/// A run of [`deploy_spec`] with the stages in these phases; a Running Deploy stage
/// has started at [`t0`] and follows deployment `d-<stage>` when `deployed`.
fn deploying(phases: &[StagePhase], deployed: bool) -> PipelineStatus {
    let mut st = PipelineStatus::default();
    st.start_run(&deploy_spec());
    st.run_number = 1;
    st.phase = Some(PipelinePhase::Running);
    for (s, phase) in st.stages.iter_mut().zip(phases) {
        s.phase = *phase;
        if *phase != StagePhase::Pending {
            s.attempt = 1;
            s.started = Some(t0());
        }
        let is_deploy = s.name == "staging" || s.name == "production";
        if is_deploy && *phase != StagePhase::Pending && deployed {
            s.task_definition = Some(format!("td-{}:2", s.name));
            s.previous_task_definition = Some(format!("td-{}:1", s.name));
            s.deployment_id = Some(format!("d-{}", s.name));
        } else if *phase == StagePhase::Running && !is_deploy {
            s.job_name = Some(job_name("shop", 1, &s.name, 1));
        }
    }
    st
}

fn deployments(entries: &[(&str, DeployState)]) -> BTreeMap<String, DeployState> {
    entries
        .iter()
        .map(|(n, s)| ((*n).to_owned(), s.clone()))
        .collect()
}

#[test]
fn a_deploy_stage_follows_its_own_deployment() {
    use StagePhase::*;
    let spec = deploy_spec();
    let none: BTreeMap<String, JobState> = BTreeMap::new();
    let no_deploys: BTreeMap<String, DeployState> = BTreeMap::new();
    let later = |minutes| t0() + chrono::Duration::minutes(minutes);
    // Claimed, not deployed yet (or a crash before the deployment was recorded).
    let claimed = deploying(&[Succeeded, Running, Pending, Pending], false);
    assert_eq!(
        super::next(&spec, &claimed, &none, &no_deploys, t0()),
        Next::Deploy { index: 1 }
    );
    let st = deploying(&[Succeeded, Running, Pending, Pending], true);
    assert_eq!(
        followed_deployments(&st),
        vec![(1, "d-staging".to_owned(), false)]
    );
    let cases = [
        (DeployState::InProgress, 1, Next::Wait),
        (
            DeployState::Completed,
            1,
            Next::StageSucceeded {
                index: 1,
                results: BTreeMap::new(),
            },
        ),
        (
            DeployState::Replaced { by: "d-2".into() },
            1,
            Next::FollowDeployment {
                index: 1,
                id: "d-2".into(),
                rollback: false,
            },
        ),
    ];
    for (state, minutes, want) in cases {
        let d = deployments(&[("d-staging", state.clone())]);
        assert_eq!(
            super::next(&spec, &st, &none, &d, later(minutes)),
            want,
            "{state:?}"
        );
    }
    let failed = |state: DeployState, minutes| {
        let d = deployments(&[("d-staging", state)]);
        match super::next(&spec, &st, &none, &d, later(minutes)) {
            Next::StageFailed {
                index: 1, message, ..
            } => message,
            other => panic!("expected the stage to fail, got {other:?}"),
        }
    };
    // The stage's 15m timeout.
    assert!(failed(DeployState::InProgress, 16).contains("timeout"));
    assert!(
        failed(
            DeployState::Failed {
                message: "2 of its tasks failed".into()
            },
            1
        )
        .contains("2 of its tasks failed")
    );
    assert!(
        failed(
            DeployState::Overtaken {
                task_definition: "td-other:9".into()
            },
            1
        )
        .contains("td-other:9")
    );
    // No observation (ECS not read): nothing to decide.
    assert_eq!(
        super::next(&spec, &st, &none, &no_deploys, later(1)),
        Next::Wait
    );
}

#[test]
fn rollbacks_run_newest_first_one_at_a_time() {
    use StagePhase::*;
    let spec = deploy_spec();
    let none: BTreeMap<String, JobState> = BTreeMap::new();
    let no_deploys: BTreeMap<String, DeployState> = BTreeMap::new();
    let mut st = deploying(&[Succeeded, Succeeded, Succeeded, Failed], true);
    st.phase = Some(PipelinePhase::RollingBack);
    for i in [1, 3] {
        st.stages[i].rollback = Some(RollbackStatus::pending());
    }
    // Production (the newest) first; its failed deployment is not in progress.
    let d = deployments(&[(
        "d-production",
        DeployState::Failed {
            message: "x".into(),
        },
    )]);
    assert_eq!(
        followed_deployments(&st),
        vec![
            (1, "d-staging".to_owned(), false),
            (3, "d-production".to_owned(), false)
        ]
    );
    assert_eq!(
        super::next(&spec, &st, &none, &d, t0()),
        Next::StartRollback { index: 3 }
    );
    // Production's rollback runs: staging waits for it.
    let rb = st.stages[3].rollback.as_mut().expect("rollback");
    rb.phase = RollbackPhase::Running;
    rb.started = Some(t0());
    rb.deployment_id = Some("rb-production".into());
    assert!(followed_deployments(&st).contains(&(3, "rb-production".to_owned(), true)));
    let cases = [
        (DeployState::InProgress, Next::Wait),
        (
            DeployState::Completed,
            Next::RollbackEnded {
                index: 3,
                outcome: Ok(()),
            },
        ),
        (
            DeployState::Replaced { by: "rb-2".into() },
            Next::FollowDeployment {
                index: 3,
                id: "rb-2".into(),
                rollback: true,
            },
        ),
    ];
    for (state, want) in cases {
        let d = deployments(&[("rb-production", state.clone())]);
        assert_eq!(super::next(&spec, &st, &none, &d, t0()), want, "{state:?}");
    }
    for state in [
        DeployState::Failed {
            message: "x".into(),
        },
        DeployState::Overtaken {
            task_definition: "td-other:9".into(),
        },
    ] {
        let d = deployments(&[("rb-production", state.clone())]);
        assert!(
            matches!(
                super::next(&spec, &st, &none, &d, t0()),
                Next::RollbackEnded {
                    index: 3,
                    outcome: Err(_)
                }
            ),
            "{state:?}"
        );
    }
    // Production put back: staging next, then the run ends.
    let rb = st.stages[3].rollback.as_mut().expect("rollback");
    rb.phase = RollbackPhase::Succeeded;
    assert_eq!(
        super::next(&spec, &st, &none, &no_deploys, t0()),
        Next::StartRollback { index: 1 }
    );
    st.stages[1].rollback.as_mut().expect("rollback").phase = RollbackPhase::Failed;
    assert_eq!(
        super::next(&spec, &st, &none, &no_deploys, t0()),
        Next::FinishRollback
    );
}

#[test]
fn a_deploy_in_flight_ends_before_it_is_rolled_back() {
    use StagePhase::*;
    let spec = deploy_spec();
    let none: BTreeMap<String, JobState> = BTreeMap::new();
    // Staging was deploying when a stage beside it failed.
    let mut st = deploying(&[Failed, Cancelled, Skipped, Skipped], true);
    st.phase = Some(PipelinePhase::RollingBack);
    st.stages[1].rollback = Some(RollbackStatus::pending());
    let in_flight = deployments(&[("d-staging", DeployState::InProgress)]);
    assert_eq!(super::next(&spec, &st, &none, &in_flight, t0()), Next::Wait);
    // Past the stage's timeout it is rolled back anyway.
    let late = t0() + chrono::Duration::minutes(16);
    assert_eq!(
        super::next(&spec, &st, &none, &in_flight, late),
        Next::StartRollback { index: 1 }
    );
    let ended = deployments(&[("d-staging", DeployState::Completed)]);
    assert_eq!(
        super::next(&spec, &st, &none, &ended, t0()),
        Next::StartRollback { index: 1 }
    );
}

#[test]
fn http_checks_run_in_order_then_the_job() {
    use StagePhase::*;
    let none: BTreeMap<String, JobState> = BTreeMap::new();
    let no_deploys: BTreeMap<String, DeployState> = BTreeMap::new();
    let mut smoke = crate::crd::tests::job_stage("smoke", StageType::SmokeTest, &[]);
    smoke.http = Some(vec![
        serde_json::from_value(
            serde_json::json!({ "url": "http://a/", "count": 2, "interval": "10s" }),
        )
        .expect("check"),
    ]);
    let spec = PipelineSpec {
        stages: vec![job_stage("test", &[]), smoke],
        ..spec("1")
    };
    let mut st = PipelineStatus::default();
    st.start_run(&spec);
    st.run_number = 1;
    st.phase = Some(PipelinePhase::Running);
    st.stages[0].phase = Succeeded;
    st.stages[1].phase = Running;
    assert_eq!(
        super::next(&spec, &st, &none, &no_deploys, t0()),
        Next::RunCheck {
            index: 1,
            request: 0
        }
    );
    st.stages[1].checks_passed = 1;
    st.stages[1].last_check = Some(t0());
    // The next request waits for the interval.
    assert_eq!(
        super::next(&spec, &st, &none, &no_deploys, t0()),
        Next::Wait
    );
    let later = t0() + chrono::Duration::seconds(10);
    assert_eq!(
        super::next(&spec, &st, &none, &no_deploys, later),
        Next::RunCheck {
            index: 1,
            request: 1
        }
    );
    // Every check passed: the stage's Job.
    st.stages[1].checks_passed = 2;
    assert_eq!(
        super::next(&spec, &st, &none, &no_deploys, later),
        Next::CreateJob { index: 1 }
    );
    // Without a Job, the stage succeeds.
    let mut only_checks = spec.clone();
    only_checks.stages[1].job = None;
    assert_eq!(
        super::next(&only_checks, &st, &none, &no_deploys, later),
        Next::StageSucceeded {
            index: 1,
            results: BTreeMap::new()
        }
    );
}
