//! How runs and stages end: a failure (Jobs stopped, rollbacks marked), a Job stage's
//! Job, and the history entry.

use super::*;

/// `message` cut to the status's limit.
pub(super) fn cut(message: &str) -> String {
    let mut s = crate::crd::StageStatus::pending("");
    s.set_message(message);
    s.message.unwrap_or_default()
}

/// Stage `index` failed: the Jobs still running stop, the stages not started are
/// skipped, and the run either rolls back what it deployed or ends `Failed`.
pub(super) async fn fail_run(
    ctx: &Ctx,
    w: &mut Writer,
    job_api: &Api<Job>,
    mut st: PipelineStatus,
    index: usize,
    message: &str,
    running: &[String],
) -> Result<(), Error> {
    // Stages running side by side stop with the run: their Jobs first (a crash after
    // this finds the run failed again and deletes nothing more).
    for name in running {
        jobs::delete(job_api, name).await?;
    }
    let now = ctx.rt.clock.now();
    let spec = w.obj.spec.clone();
    end_run(&mut st, now, Some((index, message)));
    let rolling_back = mark_rollbacks(&mut st, &spec);
    if rolling_back {
        // end_run recorded a Failed run; the rollback records the outcome instead.
        st.history.remove(0);
        st.phase = Some(PipelinePhase::RollingBack);
    }
    w.set_conditions(&mut st, now);
    w.write(&st).await?;
    let note = format!(
        "run {}: stage {} failed: {message}{}",
        st.run_id.as_deref().unwrap_or_default(),
        st.stages
            .get(index)
            .map(|s| s.name.as_str())
            .unwrap_or_default(),
        if rolling_back {
            "; rolling back the services it changed"
        } else {
            ""
        }
    );
    ctx.events
        .publish(
            &w.obj,
            EventType::Warning,
            events::STAGE_FAILED,
            "Run",
            note,
        )
        .await;
    Ok(())
}

/// Gives every Deploy stage of the run that may have changed its service (a task
/// definition registered) and has `rollbackOnFailure` a pending rollback; returns
/// whether there is any (the run is then `RollingBack`).
pub(super) fn mark_rollbacks(st: &mut PipelineStatus, spec: &PipelineSpec) -> bool {
    let mut any = false;
    for s in &mut st.stages {
        let wanted = deploy_of(spec, &s.name).is_some_and(|d| d.rollback_on_failure);
        if wanted && s.task_definition.is_some() && s.rollback.is_none() {
            s.rollback = Some(RollbackStatus::pending());
        }
        any |= s
            .rollback
            .as_ref()
            .is_some_and(|r| matches!(r.phase, RollbackPhase::Pending | RollbackPhase::Running));
    }
    if any {
        st.phase = Some(PipelinePhase::RollingBack);
    }
    any
}

/// Creates the Job the claimed stage `index` names. A stage whose templates no longer
/// render (a result missing) or whose Job the API refuses as invalid fails, with the
/// reason in its message; anything else is retried.
pub(super) async fn create_job(
    ctx: &Ctx,
    w: &mut Writer,
    api: &Api<Job>,
    index: usize,
) -> Result<(), Error> {
    let mut st = w.status();
    // A SmokeTest whose HTTP checks passed: its Job is claimed now.
    if let Some(s) = st.stages.get_mut(index)
        && s.job_name.is_none()
    {
        s.job_name = Some(scheduler::job_name(
            &w.obj.name_any(),
            st.run_number,
            &s.name,
            s.attempt.max(1),
        ));
        w.write(&st).await?;
    }
    let Some(stage_status) = st.stages.get(index) else {
        return Ok(());
    };
    let job_name = stage_status.job_name.clone().unwrap_or_default();
    let spec_stage = w
        .obj
        .spec
        .stages
        .iter()
        .find(|s| s.name == stage_status.name);
    let failure = match spec_stage.and_then(|s| s.action()) {
        Some(StageAction::Job(job)) => {
            match jobs::build(&w.obj, &st, &stage_status.name, job, &job_name) {
                Ok(built) => match jobs::create(api, &built).await {
                    Ok(jobs::Created::Foreign) => format!(
                        "a Job named {job_name} exists and is not this Pipeline's; delete or rename it"
                    ),
                    Ok(jobs::Created::Ours) => {
                        crash_point("pipeline::after-create-job");
                        let note = format!("stage {}: Job {job_name} created", stage_status.name);
                        ctx.events
                            .publish(
                                &w.obj,
                                EventType::Normal,
                                events::STAGE_STARTED,
                                "Run",
                                note,
                            )
                            .await;
                        return Ok(());
                    }
                    Err(kube::Error::Api(e)) if e.code == 422 => {
                        format!("the API server refused Job {job_name}: {}", e.message)
                    }
                    Err(e) => return Err(e.into()),
                },
                Err(e) => format!("its Job cannot be built: {e}"),
            }
        }
        _ => "the stage is no longer a Job stage of the spec".to_owned(),
    };
    fail_run(ctx, w, api, st, index, &failure, &[]).await
}

/// Ends the run in `st`: failed at stage `index` (the stages after it skipped, those
/// running cancelled), or succeeded; recorded in the history.
pub(super) fn end_run(st: &mut PipelineStatus, now: DateTime<Utc>, failed: Option<(usize, &str)>) {
    let mut failed_stage = None;
    if let Some((index, message)) = failed {
        let failed_name = st
            .stages
            .get(index)
            .map(|s| s.name.clone())
            .unwrap_or_default();
        for (i, s) in st.stages.iter_mut().enumerate() {
            if i == index {
                s.phase = StagePhase::Failed;
                s.finished = Some(now);
                s.set_message(message);
                failed_stage = Some(s.name.clone());
            } else if s.phase == StagePhase::Running {
                s.phase = StagePhase::Cancelled;
                s.finished = Some(now);
                s.set_message(&format!("cancelled: stage {failed_name} of the run failed"));
            } else if s.phase == StagePhase::Pending {
                s.phase = StagePhase::Skipped;
            }
        }
    }
    let outcome = if failed.is_some() {
        PipelinePhase::Failed
    } else {
        st.last_successful_revision.clone_from(&st.current_revision);
        PipelinePhase::Succeeded
    };
    record_end(st, now, outcome, failed_stage);
}

/// Ends the run in `st` with `outcome`, recorded in the history.
pub(super) fn record_end(
    st: &mut PipelineStatus,
    now: DateTime<Utc>,
    outcome: PipelinePhase,
    failed_stage: Option<String>,
) {
    st.phase = Some(outcome);
    st.current_stage = None;
    st.record_run(RunSummary {
        id: st.run_id.clone().unwrap_or_default(),
        revision: st.current_revision.clone().unwrap_or_default(),
        outcome,
        started: st.run_started.unwrap_or(now),
        finished: now,
        failed_stage,
        images: st.images.clone(),
        task_definitions: if outcome == PipelinePhase::Succeeded {
            st.stages
                .iter()
                .filter(|s| s.phase == StagePhase::Succeeded)
                .filter_map(|s| Some((s.name.clone(), s.task_definition.clone()?)))
                .collect()
        } else {
            BTreeMap::new()
        },
    });
}
