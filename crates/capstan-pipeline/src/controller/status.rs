//! The conditions a Pipeline's status implies: Ready, Progressing and RolledBack.

use super::*;

/// `Ready` (did the spec's revision go through every stage), `Progressing` (is a run
/// under way) and `RolledBack` (did the last run put services back), from the status.
pub(super) fn set_conditions(st: &mut PipelineStatus, obj: &Pipeline, now: DateTime<Utc>) {
    let generation = obj.meta().generation;
    let revision = obj.spec.revision.as_str();
    let last = st.history.first().cloned();
    let ready = match &last {
        Some(r) if r.revision == revision && r.outcome == PipelinePhase::Succeeded => Desired::new(
            ct::READY,
            true,
            reasons::SUCCEEDED,
            format!("run {}: revision {revision} went through every stage", r.id),
        ),
        Some(r) if r.revision == revision && r.outcome == PipelinePhase::RollbackFailed => {
            Desired::new(
                ct::READY,
                false,
                reasons::ROLLBACK_FAILED,
                format!(
                    "run {}: stage {} failed and a service could not be put back; see status.stages[].rollback",
                    r.id,
                    r.failed_stage.as_deref().unwrap_or("-")
                ),
            )
        }
        Some(r)
            if r.revision == revision
                && r.failed_stage.is_none()
                && r.outcome == PipelinePhase::RolledBack =>
        {
            Desired::new(
                ct::READY,
                false,
                reasons::ROLLED_BACK,
                format!(
                    "run {}: the services were put back (a cancel, a newer revision or capstan.dev/rollback); see status.history",
                    r.id
                ),
            )
        }
        Some(r) if r.revision == revision => Desired::new(
            ct::READY,
            false,
            reasons::STAGE_FAILED,
            format!(
                "run {}: stage {} failed; see status.stages",
                r.id,
                r.failed_stage.as_deref().unwrap_or("-")
            ),
        ),
        _ => Desired::new(
            ct::READY,
            Status::Unknown,
            reasons::AWAITING_RUN,
            format!("revision {revision} has not been through every stage yet"),
        ),
    };
    let progressing = if st.phase == Some(PipelinePhase::RollingBack) {
        Desired::new(
            ct::PROGRESSING,
            true,
            reasons::ROLLING_BACK,
            format!(
                "run {}: putting back the services it changed",
                st.run_id.as_deref().unwrap_or_default()
            ),
        )
    } else if scheduler::run_active(st) {
        let stage = st
            .current_stage
            .as_deref()
            .and_then(|n| st.stages.iter().find(|s| s.name == n));
        Desired::new(
            ct::PROGRESSING,
            true,
            reasons::STAGE_RUNNING,
            match stage {
                Some(s) => format!(
                    "run {}: stage {} (attempt {})",
                    st.run_id.as_deref().unwrap_or_default(),
                    s.name,
                    s.attempt
                ),
                None => format!("run {} starting", st.run_id.as_deref().unwrap_or_default()),
            },
        )
    } else if obj.spec.suspend {
        Desired::new(
            ct::PROGRESSING,
            false,
            reasons::SUSPENDED,
            "spec.suspend is true",
        )
    } else {
        Desired::new(
            ct::PROGRESSING,
            false,
            reasons::RUN_FINISHED,
            "no run in progress",
        )
    };
    let rolled_back = match &last {
        Some(r) if r.outcome == PipelinePhase::RolledBack => Desired::new(
            ct::ROLLED_BACK,
            true,
            reasons::ROLLBACK_SUCCEEDED,
            format!(
                "run {}: every service it changed runs its previous task definition again",
                r.id
            ),
        ),
        Some(r) if r.outcome == PipelinePhase::RollbackFailed => Desired::new(
            ct::ROLLED_BACK,
            false,
            reasons::ROLLBACK_FAILED,
            format!(
                "run {}: a service could not be put back; see status.stages[].rollback",
                r.id
            ),
        ),
        _ => Desired::new(
            ct::ROLLED_BACK,
            false,
            reasons::NOTHING_TO_ROLL_BACK,
            "the last run put no service back",
        ),
    };
    st.observed_generation = generation;
    for d in [ready, progressing, rolled_back] {
        conditions::set(&mut st.conditions, d, generation, now);
    }
}
