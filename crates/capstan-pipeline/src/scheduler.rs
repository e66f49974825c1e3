//! The Pipeline's scheduler: a pure function from the spec, the status and the Jobs
//! observed for the current run to the next action ([`next`]). No client, no clock: the
//! controller ([`crate::controller`]) claims the action in status, performs it, records
//! it, and asks again. Table tests below cover each state.
//!
//! Runs: a run starts when `spec.revision` differs from the last run's and no run is
//! active; a newer revision that arrives while a run is active waits for it to end
//! (the `Queue` policy), and only the newest waits (revisions in between are never
//! run), or stops it (`Supersede`: its running Jobs are deleted, the run ends
//! `Superseded`). Stages run in list order, or, with `dependsOn`, as soon as the stages
//! they name have succeeded (side by side when several can). A stage that fails ends
//! the run `Failed`: stages still running are cancelled (their Jobs deleted), the rest
//! `Skipped`. `spec.suspend` starts no stage; a running one finishes.
//!
//! Job stages: the stage is claimed (status `Running`, attempt, the Job's name, which
//! derives from the run, the stage and the attempt), then its Job is created; a Job
//! already there (a crash between the two, a second Capstan) is found again by name,
//! never created twice. The Job's end comes as a watch event: `Complete` with the
//! results its container wrote to its termination message, or `Failed`.

use std::collections::BTreeMap;

use crate::crd::{
    ConcurrencyPolicy, MAX_RESULTS_BYTES, PipelinePhase, PipelineSpec, PipelineStatus, Stage,
    StageAction, StagePhase,
};

/// What Capstan sees of a stage's Job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    /// Created, not finished.
    Active,
    /// `Complete`, with its Pod's termination message (the results), if any.
    Succeeded {
        /// The termination message of the Job's succeeded Pod.
        message: Option<String>,
    },
    /// `Failed`, with the Job's reason and message.
    Failed {
        /// Why, as the Job's `Failed` condition says.
        reason: String,
    },
}

/// The next thing to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Nothing until a Job or the object changes.
    Wait,
    /// Start a new run for `spec.revision`.
    StartRun,
    /// Claim stage `index`'s first attempt, then create its Job.
    StartStage {
        /// The stage.
        index: usize,
    },
    /// Create the Job the claimed stage `index` names (the claim was written, the Job
    /// is not there).
    CreateJob {
        /// The stage.
        index: usize,
    },
    /// Stage `index` succeeded with these results.
    StageSucceeded {
        /// The stage.
        index: usize,
        /// Its declared results.
        results: BTreeMap<String, String>,
    },
    /// Stage `index` failed: the run ends; the Jobs of stages still running side by
    /// side are deleted.
    StageFailed {
        /// The stage.
        index: usize,
        /// Why, for a person.
        message: String,
        /// The run's other Jobs that have not finished.
        running: Vec<String>,
    },
    /// Every stage succeeded: the run ends.
    FinishRun,
    /// A newer revision supersedes the active run: delete these running Jobs, end the
    /// run `Superseded`.
    Supersede {
        /// The run's Jobs that have not finished.
        running: Vec<String>,
    },
}

/// Whether a run is under way (started, not ended).
pub fn run_active(status: &PipelineStatus) -> bool {
    matches!(
        status.phase,
        Some(PipelinePhase::Pending | PipelinePhase::Running)
    ) && status.run_number > 0
}

/// The next action, from the spec (validated, Job stages only), the status and the Jobs
/// of the current run by name.
pub fn next(
    spec: &PipelineSpec,
    status: &PipelineStatus,
    jobs: &BTreeMap<String, JobState>,
) -> Next {
    if !run_active(status) {
        let new_revision = status.current_revision.as_deref() != Some(spec.revision.as_str())
            || status.run_number == 0;
        return if new_revision && !spec.suspend {
            Next::StartRun
        } else {
            Next::Wait
        };
    }
    if spec.concurrency_policy == ConcurrencyPolicy::Supersede
        && status.current_revision.as_deref() != Some(spec.revision.as_str())
    {
        let running = jobs
            .iter()
            .filter(|(_, s)| **s == JobState::Active)
            .map(|(n, _)| n.clone())
            .collect();
        return Next::Supersede { running };
    }
    // Stages follow the list of the spec the run started with (`status.stages`); a spec
    // edited mid-run is read by stage name. First a running stage whose Job ended, then
    // one whose Job is missing, then a pending stage whose dependencies all succeeded.
    let active: Vec<String> = jobs
        .iter()
        .filter(|(_, s)| **s == JobState::Active)
        .map(|(n, _)| n.clone())
        .collect();
    let others = |name: &str| -> Vec<String> {
        active
            .iter()
            .filter(|n| n.as_str() != name)
            .cloned()
            .collect()
    };
    let mut create = None;
    let mut start = None;
    for (index, st) in status.stages.iter().enumerate() {
        match st.phase {
            StagePhase::Succeeded | StagePhase::Skipped => {}
            StagePhase::Failed | StagePhase::RolledBack | StagePhase::Cancelled => {
                return Next::StageFailed {
                    index,
                    message: st.message.clone().unwrap_or_default(),
                    running: active.clone(),
                };
            }
            StagePhase::Pending | StagePhase::WaitingForPromotion => {
                if start.is_none() && !spec.suspend && dependencies_met(spec, status, index) {
                    start = Some(index);
                }
            }
            StagePhase::Running => {
                let Some(name) = st.job_name.as_deref() else {
                    create.get_or_insert(index);
                    continue;
                };
                match jobs.get(name) {
                    None => {
                        create.get_or_insert(index);
                    }
                    Some(JobState::Active) => {}
                    Some(JobState::Failed { reason }) => {
                        return Next::StageFailed {
                            index,
                            message: format!("Job {name} failed: {reason}"),
                            running: others(name),
                        };
                    }
                    Some(JobState::Succeeded { message }) => {
                        let declared = spec
                            .stages
                            .iter()
                            .find(|s| s.name == st.name)
                            .and_then(|s| match s.action() {
                                Some(StageAction::Job(j)) => Some(j.results.as_slice()),
                                _ => None,
                            })
                            .unwrap_or_default();
                        return match parse_results(message.as_deref(), declared) {
                            Ok(results) => Next::StageSucceeded { index, results },
                            Err(why) => Next::StageFailed {
                                index,
                                message: format!("Job {name} completed, but {why}"),
                                running: others(name),
                            },
                        };
                    }
                }
            }
        }
    }
    if let Some(index) = create {
        return Next::CreateJob { index };
    }
    if let Some(index) = start {
        return Next::StartStage { index };
    }
    let done = status
        .stages
        .iter()
        .all(|s| matches!(s.phase, StagePhase::Succeeded | StagePhase::Skipped));
    if done { Next::FinishRun } else { Next::Wait }
}

/// Whether every stage that stage `index` of the run waits for has succeeded: its
/// `dependsOn` in the spec (by name), or, for a stage no longer in the spec, the one
/// before it in the run.
fn dependencies_met(spec: &PipelineSpec, status: &PipelineStatus, index: usize) -> bool {
    let Some(st) = status.stages.get(index) else {
        return false;
    };
    let succeeded = |name: &str| {
        status
            .stages
            .iter()
            .find(|s| s.name == name)
            .is_none_or(|s| s.phase == StagePhase::Succeeded)
    };
    match spec.stages.iter().position(|s| s.name == st.name) {
        Some(i) => Stage::dependencies(&spec.stages, i)
            .into_iter()
            .all(|d| succeeded(&spec.stages[d].name)),
        None => index
            .checked_sub(1)
            .and_then(|p| status.stages.get(p))
            .is_none_or(|p| p.phase == StagePhase::Succeeded),
    }
}

/// The declared results from a Job's termination message: a JSON object of string
/// values, at most [`MAX_RESULTS_BYTES`]. Keys not declared are left out (they reach no
/// stage); a declared key missing is an error. Errors name keys, never values.
pub fn parse_results(
    message: Option<&str>,
    declared: &[String],
) -> Result<BTreeMap<String, String>, String> {
    if declared.is_empty() {
        return Ok(BTreeMap::new());
    }
    let message = message.unwrap_or_default();
    if message.len() > MAX_RESULTS_BYTES {
        return Err(format!(
            "its termination message is {} bytes, more than {MAX_RESULTS_BYTES}",
            message.len()
        ));
    }
    let value: serde_json::Value = serde_json::from_str(message)
        .map_err(|_| "its termination message is not a JSON object of string values".to_owned())?;
    let object = value
        .as_object()
        .ok_or("its termination message is not a JSON object of string values")?;
    let mut results = BTreeMap::new();
    for key in declared {
        match object.get(key) {
            Some(serde_json::Value::String(v)) => {
                results.insert(key.clone(), v.clone());
            }
            Some(_) => return Err(format!("its result `{key}` is not a string")),
            None => return Err(format!("it did not report the result `{key}`")),
        }
    }
    Ok(results)
}

/// The longest Kubernetes name a Job may have and still be a label value
/// (`batch.kubernetes.io/job-name`).
pub const MAX_JOB_NAME: usize = 63;

/// The name of attempt `attempt` of stage `stage` in run `run` of Pipeline `pipeline`:
/// `<pipeline>-<run>-<stage>-<attempt>`, with the Pipeline's name shortened (and a hash
/// of it added) when the whole would exceed [`MAX_JOB_NAME`].
pub fn job_name(pipeline: &str, run: i64, stage: &str, attempt: i32) -> String {
    let tail = format!("-{run}-{stage}-{attempt}");
    if pipeline.len() + tail.len() <= MAX_JOB_NAME {
        return format!("{pipeline}{tail}");
    }
    let hash = format!("{:08x}", fnv1a(pipeline.as_bytes()) as u32);
    let room = MAX_JOB_NAME.saturating_sub(tail.len() + hash.len() + 1);
    let prefix = pipeline[..room.min(pipeline.len())].trim_end_matches('-');
    format!("{prefix}-{hash}{tail}")
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests;
