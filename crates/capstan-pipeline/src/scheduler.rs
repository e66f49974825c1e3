//! The Pipeline's scheduler: a pure function from the spec, the status and the Jobs
//! observed for the current run to the next action ([`next`]). No client, no clock: the
//! controller ([`crate::controller`]) claims the action in status, performs it, records
//! it, and asks again. Table tests below cover each state.
//!
//! Runs: a run starts when `spec.revision` differs from the last run's and no run is
//! active; a newer revision that arrives while a run is active waits for it to end
//! (the `Queue` policy), and only the newest waits (revisions in between are never
//! run), or stops it (`Supersede`: its running Jobs are deleted, the run ends
//! `Superseded`). Stages run in list order; a stage that fails ends the run `Failed` and the
//! stages after it are `Skipped`. `spec.suspend` starts no stage; a running one
//! finishes.
//!
//! Job stages: the stage is claimed (status `Running`, attempt, the Job's name, which
//! derives from the run, the stage and the attempt), then its Job is created; a Job
//! already there (a crash between the two, a second Capstan) is found again by name,
//! never created twice. The Job's end comes as a watch event: `Complete` with the
//! results its container wrote to its termination message, or `Failed`.

use std::collections::BTreeMap;

use crate::crd::{
    ConcurrencyPolicy, MAX_RESULTS_BYTES, PipelinePhase, PipelineSpec, PipelineStatus, StageAction,
    StagePhase,
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
    /// Stage `index` failed: the run ends.
    StageFailed {
        /// The stage.
        index: usize,
        /// Why, for a person.
        message: String,
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
    // The stage of the run that is not yet done. Stages follow the list of the spec the
    // run started with; a spec edited mid-run keeps the names it had (`status.stages`).
    for (index, st) in status.stages.iter().enumerate() {
        match st.phase {
            StagePhase::Succeeded | StagePhase::Skipped => continue,
            StagePhase::Failed | StagePhase::RolledBack | StagePhase::Cancelled => {
                return Next::StageFailed {
                    index,
                    message: st.message.clone().unwrap_or_default(),
                };
            }
            StagePhase::Pending | StagePhase::WaitingForPromotion => {
                return if spec.suspend {
                    Next::Wait
                } else {
                    Next::StartStage { index }
                };
            }
            StagePhase::Running => {
                let Some(name) = st.job_name.as_deref() else {
                    return Next::CreateJob { index };
                };
                return match jobs.get(name) {
                    None => Next::CreateJob { index },
                    Some(JobState::Active) => Next::Wait,
                    Some(JobState::Failed { reason }) => Next::StageFailed {
                        index,
                        message: format!("Job {name} failed: {reason}"),
                    },
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
                        match parse_results(message.as_deref(), declared) {
                            Ok(results) => Next::StageSucceeded { index, results },
                            Err(why) => Next::StageFailed {
                                index,
                                message: format!("Job {name} completed, but {why}"),
                            },
                        }
                    }
                };
            }
        }
    }
    Next::FinishRun
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
