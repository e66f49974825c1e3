//! The control annotations: `capstan.dev/cancel`, `capstan.dev/retry`,
//! `capstan.dev/rollback`, each acting once per value.

use super::*;

/// Acts on the control annotations, each value once (recorded in
/// `status.handledControls` in the same write as what it does): `capstan.dev/cancel`
/// stops the active run like a superseding revision (its Jobs deleted, what it deployed
/// rolled back), ending it `Cancelled`; `capstan.dev/retry: <stage>[:<token>]`
/// restarts the last run, if it did not succeed, from that stage (each stage from it on
/// back to Pending, to run as its next attempt), when every stage before it succeeded.
pub(super) async fn handle_controls(
    ctx: &Ctx,
    w: &mut Writer,
    job_api: &Api<Job>,
    pod_api: &Api<Pod>,
) -> Result<(), Error> {
    let annotations = w.obj.annotations().clone();
    let now = ctx.rt.clock.now();
    let spec = w.obj.spec.clone();
    for key in [
        crate::crd::CANCEL_ANNOTATION,
        crate::crd::RETRY_ANNOTATION,
        crate::crd::ROLLBACK_ANNOTATION,
    ] {
        let Some(value) = annotations.get(key).filter(|v| !v.is_empty()) else {
            continue;
        };
        let mut st = w.status();
        if st.handled_controls.get(key) == Some(value) {
            continue;
        }
        st.handled_controls.insert(key.to_owned(), value.clone());
        let run = st.run_id.clone().unwrap_or_default();
        let outcome: Result<String, String> = if key == crate::crd::CANCEL_ANNOTATION {
            if !scheduler::run_active(&st) || st.phase == Some(PipelinePhase::RollingBack) {
                Err("no run is active (or it is rolling back already); nothing cancelled".into())
            } else {
                let uid = w.obj.uid().unwrap_or_default();
                let running: Vec<String> =
                    jobs::observe(job_api, pod_api, &uid, st.run_number, |_| false)
                        .await?
                        .into_iter()
                        .filter(|(_, s)| *s == scheduler::JobState::Active)
                        .map(|(n, _)| n)
                        .collect();
                for name in &running {
                    jobs::delete(job_api, name).await?;
                }
                for s in &mut st.stages {
                    match s.phase {
                        StagePhase::Running => {
                            s.phase = StagePhase::Cancelled;
                            s.finished = Some(now);
                            s.set_message("cancelled (capstan.dev/cancel)");
                        }
                        StagePhase::Pending => s.phase = StagePhase::Skipped,
                        _ => {}
                    }
                }
                if !mark_rollbacks(&mut st, &spec) {
                    record_end(&mut st, now, PipelinePhase::Cancelled, None);
                }
                Ok(format!(
                    "run {run} cancelled; Jobs deleted: {}{}",
                    if running.is_empty() {
                        "none".to_owned()
                    } else {
                        running.join(", ")
                    },
                    if st.phase == Some(PipelinePhase::RollingBack) {
                        "; the services it changed are being put back"
                    } else {
                        ""
                    }
                ))
            }
        } else if key == crate::crd::RETRY_ANNOTATION {
            let stage = value.split(':').next().unwrap_or_default();
            retry_from(&mut st, stage, &spec).map(|()| {
                st.phase = Some(PipelinePhase::Running);
                st.current_stage = None;
                format!("run {run} retried from stage {stage}")
            })
        } else {
            let name = w.obj.name_any();
            roll_back_by_hand(&mut st, &spec, &name, now)
        };
        w.set_conditions(&mut st, now);
        w.write(&st).await?;
        let (kind, reason, note) = match outcome {
            Ok(note) if key == crate::crd::CANCEL_ANNOTATION => {
                (EventType::Normal, events::RUN_CANCELLED, note)
            }
            Ok(note) if key == crate::crd::RETRY_ANNOTATION => {
                (EventType::Normal, events::RUN_RETRIED, note)
            }
            Ok(note) => (EventType::Normal, events::ROLLBACK_STARTED, note),
            Err(why) => (
                EventType::Warning,
                events::CONTROL_REFUSED,
                format!("{key}={value}: {why}"),
            ),
        };
        ctx.events
            .publish(&w.obj, kind, reason, "Control", note)
            .await;
    }
    Ok(())
}

/// Starts a run of its own that puts every service the Pipeline's Deploy stages deploy
/// back on the task definition the last successful run before the last run left it on
/// (`status.history[].taskDefinitions`), or says why it cannot.
pub(super) fn roll_back_by_hand(
    st: &mut PipelineStatus,
    spec: &PipelineSpec,
    pipeline: &str,
    now: DateTime<Utc>,
) -> Result<String, String> {
    if scheduler::run_active(st) {
        return Err("a run is active; cancel it first (capstan.dev/cancel)".into());
    }
    let target = st
        .history
        .iter()
        .skip(1)
        .find(|r| r.outcome == PipelinePhase::Succeeded && !r.task_definitions.is_empty())
        .cloned()
        .ok_or("no successful run before the last one recorded its task definitions")?;
    let stages: Vec<crate::crd::StageStatus> = spec
        .stages
        .iter()
        .filter(|s| matches!(s.action(), Some(StageAction::Deploy(_))))
        .filter_map(|s| {
            let td = target.task_definitions.get(&s.name)?;
            let mut stage = crate::crd::StageStatus::pending(s.name.clone());
            stage.phase = StagePhase::Succeeded;
            stage.previous_task_definition = Some(td.clone());
            stage.rollback = Some(RollbackStatus::pending());
            stage.set_message(&format!("rolling back by hand to run {}", target.id));
            Some(stage)
        })
        .collect();
    if stages.is_empty() {
        return Err(format!(
            "run {} deployed none of the spec's Deploy stages",
            target.id
        ));
    }
    st.run_number += 1;
    st.run_id = Some(format!("{pipeline}-{}", st.run_number));
    st.run_started = Some(now);
    st.current_revision = Some(spec.revision.clone());
    st.queued_revision = None;
    st.images = target.images.clone();
    st.stages = stages;
    st.phase = Some(PipelinePhase::RollingBack);
    Ok(format!(
        "run {}: putting every service back on what run {} (revision {}) deployed",
        st.run_id.as_deref().unwrap_or_default(),
        target.id,
        target.revision
    ))
}

/// Resets the last run in `st` to restart at `stage`, or says why it cannot.
pub(super) fn retry_from(
    st: &mut PipelineStatus,
    stage: &str,
    spec: &PipelineSpec,
) -> Result<(), String> {
    if scheduler::run_active(st) || st.run_number == 0 {
        return Err("a run is active, or none has run; nothing to retry".into());
    }
    if st.phase == Some(PipelinePhase::Succeeded) {
        return Err(format!(
            "run {} succeeded; change spec.revision to run again",
            st.run_id.as_deref().unwrap_or_default()
        ));
    }
    if st.current_revision.as_deref() != Some(spec.revision.as_str()) {
        return Err("spec.revision changed since the last run; its new run starts instead".into());
    }
    let Some(from) = st.stages.iter().position(|s| s.name == stage) else {
        return Err(format!("the last run has no stage {stage}"));
    };
    if let Some(s) = st.stages[..from]
        .iter()
        .find(|s| s.phase != StagePhase::Succeeded)
    {
        return Err(format!(
            "stage {} before {stage} is {:?}; retry from it",
            s.name, s.phase
        ));
    }
    for s in &mut st.stages[from..] {
        s.reset();
    }
    Ok(())
}
