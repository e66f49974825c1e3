//! Table tests of the scheduler: each state of the run and its Jobs gives one action.

use std::collections::BTreeMap;

use super::*;
use crate::crd::{ConcurrencyPolicy, PipelineStatus, Promotion, Stage, StageStatus, StageType};

fn job_stage(name: &str, results: &[&str]) -> Stage {
    crate::crd::tests::job_stage(name, StageType::Test, results)
}

fn spec(revision: &str) -> PipelineSpec {
    PipelineSpec {
        connection_ref: None,
        revision: revision.into(),
        stages: vec![job_stage("test", &[]), job_stage("build", &["imageDigest"])],
        promotion: Promotion::Auto,
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
