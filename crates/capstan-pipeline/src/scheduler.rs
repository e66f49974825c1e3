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
//!
//! Deploy stages: the stage is claimed, then [`Next::Deploy`] pins the images, registers
//! the task definition and updates the service (each recorded, each found again after
//! a crash); then the stage follows its own deployment ([`DeployState`], read from ECS
//! by the controller) to `COMPLETED`, a failure (the rollout `FAILED`, `maxFailedTasks`
//! failed tasks, the timeout), a forced redeploy of the same task definition (followed),
//! or someone else's deployment (a failure: the run does not fight it).
//!
//! Rollback: when a stage fails, every Deploy stage of the run that changed its service
//! (with `rollbackOnFailure`) gets a pending rollback, and the run is `RollingBack`:
//! newest first, one at a time, each waits for its own deployment to end, then puts the
//! service back on the previous task definition and follows that deployment. The run
//! ends `RolledBack`, or `RollbackFailed` when one could not be put back.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::crd::{
    ConcurrencyPolicy, Decision, MAX_RESULTS_BYTES, PipelinePhase, PipelineSpec, PipelineStatus,
    RollbackPhase, Stage, StageAction, StagePhase,
};

/// What Capstan sees of an ECS deployment it follows (by id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeployState {
    /// Rolling out; `failed` tasks failed so far (fewer than `maxFailedTasks`).
    InProgress,
    /// `rolloutState` COMPLETED.
    Completed,
    /// `rolloutState` FAILED, or `maxFailedTasks` tasks failed: why, for a person.
    Failed {
        /// Why.
        message: String,
    },
    /// The deployment is no longer the service's newest, and the newest runs the same
    /// task definition (a forced redeploy, e.g. SecretRotation's): follow it.
    Replaced {
        /// The newest deployment's id.
        by: String,
    },
    /// The service's newest deployment runs another task definition: someone else
    /// deployed meanwhile.
    Overtaken {
        /// The task definition it runs now.
        task_definition: String,
    },
}

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
    /// run `Superseded` (or roll back what it deployed first).
    Supersede {
        /// The run's Jobs that have not finished.
        running: Vec<String>,
    },
    /// Pin the images, register the task definition and update the service of the
    /// claimed Deploy stage `index` (each step skipped when already done).
    Deploy {
        /// The stage.
        index: usize,
    },
    /// Record that Deploy stage `index` (or its rollback) now follows deployment `id`,
    /// a forced redeploy of the same task definition.
    FollowDeployment {
        /// The stage.
        index: usize,
        /// The deployment to follow.
        id: String,
        /// Whether it is the stage's rollback that follows it.
        rollback: bool,
    },
    /// Put the service of Deploy stage `index` back on its previous task definition.
    StartRollback {
        /// The stage.
        index: usize,
    },
    /// The rollback of stage `index` ended: `Ok` or why it failed.
    RollbackEnded {
        /// The stage.
        index: usize,
        /// `Err` with the reason when the service could not be put back.
        outcome: Result<(), String>,
    },
    /// Every rollback ended: the run ends `RolledBack` or `RollbackFailed`.
    FinishRollback,
    /// Make the next HTTP check request of SmokeTest stage `index`.
    RunCheck {
        /// The stage.
        index: usize,
        /// Which request (0-based, across the stage's checks in order).
        request: i32,
    },
}

/// The check and attempt of request `request` of a stage's checks, if any is left.
pub fn check_of(
    checks: &[crate::crd::HttpCheck],
    request: i32,
) -> Option<(usize, &crate::crd::HttpCheck)> {
    let mut left = request;
    for (i, c) in checks.iter().enumerate() {
        if left < c.count {
            return Some((i, c));
        }
        left -= c.count;
    }
    None
}

/// Whether a run is under way (started, not ended).
pub fn run_active(status: &PipelineStatus) -> bool {
    matches!(
        status.phase,
        Some(PipelinePhase::Pending | PipelinePhase::Running | PipelinePhase::RollingBack)
    ) && status.run_number > 0
}

/// The deployments the scheduler needs to see now: (stage index, deployment id,
/// whether it is the stage's rollback). The controller reads each from ECS.
pub fn followed_deployments(status: &PipelineStatus) -> Vec<(usize, String, bool)> {
    let mut out = Vec::new();
    if !run_active(status) {
        return out;
    }
    for (i, st) in status.stages.iter().enumerate() {
        match st
            .rollback
            .as_ref()
            .map(|r| (r.phase, r.deployment_id.as_ref()))
        {
            Some((RollbackPhase::Running, Some(id))) => out.push((i, id.clone(), true)),
            Some((RollbackPhase::Pending, _)) => {
                if let Some(id) = &st.deployment_id {
                    out.push((i, id.clone(), false));
                }
            }
            None if st.phase == StagePhase::Running => {
                if let Some(id) = &st.deployment_id {
                    out.push((i, id.clone(), false));
                }
            }
            _ => {}
        }
    }
    out
}

/// Whether `started + timeout` is before `now`.
fn timed_out(
    started: Option<DateTime<Utc>>,
    timeout: Option<std::time::Duration>,
    now: DateTime<Utc>,
) -> bool {
    match (
        started,
        timeout.and_then(|t| chrono::Duration::from_std(t).ok()),
    ) {
        (Some(s), Some(t)) => now > s + t,
        _ => false,
    }
}

/// The timeout of the Deploy stage named `name` in `spec`.
fn deploy_timeout(spec: &PipelineSpec, name: &str) -> Option<std::time::Duration> {
    spec.stages
        .iter()
        .find(|s| s.name == name)
        .and_then(|s| match s.action() {
            Some(StageAction::Deploy(d)) => d.timeout.duration().ok(),
            _ => None,
        })
}

/// The rollback's next action: newest stage first, one at a time.
fn next_rollback(
    spec: &PipelineSpec,
    status: &PipelineStatus,
    deploys: &BTreeMap<String, DeployState>,
    now: DateTime<Utc>,
) -> Next {
    for (index, st) in status.stages.iter().enumerate().rev() {
        let Some(rb) = &st.rollback else { continue };
        let timeout = deploy_timeout(spec, &st.name);
        match rb.phase {
            RollbackPhase::Succeeded | RollbackPhase::Failed => continue,
            RollbackPhase::Pending => {
                // A deployment in flight is left to end (or time out) first.
                let own = st.deployment_id.as_ref().and_then(|id| deploys.get(id));
                if own == Some(&DeployState::InProgress) && !timed_out(st.started, timeout, now) {
                    return Next::Wait;
                }
                return Next::StartRollback { index };
            }
            RollbackPhase::Running => {
                let Some(id) = &rb.deployment_id else {
                    return Next::StartRollback { index };
                };
                return match deploys.get(id) {
                    None => Next::Wait,
                    Some(DeployState::InProgress) if timed_out(rb.started, timeout, now) => {
                        Next::RollbackEnded {
                            index,
                            outcome: Err(format!(
                                "the rollback deployment {id} did not complete within the stage's timeout"
                            )),
                        }
                    }
                    Some(DeployState::InProgress) => Next::Wait,
                    Some(DeployState::Completed) => Next::RollbackEnded {
                        index,
                        outcome: Ok(()),
                    },
                    Some(DeployState::Failed { message }) => Next::RollbackEnded {
                        index,
                        outcome: Err(format!("the rollback deployment {id} failed: {message}")),
                    },
                    Some(DeployState::Replaced { by }) => Next::FollowDeployment {
                        index,
                        id: by.clone(),
                        rollback: true,
                    },
                    Some(DeployState::Overtaken { task_definition }) => Next::RollbackEnded {
                        index,
                        outcome: Err(format!(
                            "someone deployed {task_definition} during the rollback; Capstan leaves it as it is"
                        )),
                    },
                };
            }
        }
    }
    Next::FinishRollback
}

/// The next action, from the spec (validated), the status, the Jobs of the current run
/// by name, the deployments it follows by id ([`followed_deployments`]) and the time.
pub fn next(
    spec: &PipelineSpec,
    status: &PipelineStatus,
    jobs: &BTreeMap<String, JobState>,
    deploys: &BTreeMap<String, DeployState>,
    now: DateTime<Utc>,
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
    if status.phase == Some(PipelinePhase::RollingBack) {
        return next_rollback(spec, status, deploys, now);
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
            StagePhase::Pending => {
                if start.is_none() && !spec.suspend && dependencies_met(spec, status, index) {
                    start = Some(index);
                }
            }
            StagePhase::Running
                if st.job_name.is_none() && !checks_of(spec, &st.name).is_empty() =>
            {
                let checks = checks_of(spec, &st.name);
                match check_of(checks, st.checks_passed) {
                    Some((_, c)) => {
                        let interval = c
                            .interval
                            .duration()
                            .ok()
                            .and_then(|d| chrono::Duration::from_std(d).ok());
                        let due = match (st.last_check, interval) {
                            (Some(last), Some(d)) => now >= last + d,
                            _ => true,
                        };
                        if due {
                            return Next::RunCheck {
                                index,
                                request: st.checks_passed,
                            };
                        }
                    }
                    // Every check passed: the Job, if the stage has one, else done.
                    None if has_job(spec, &st.name) => {
                        create.get_or_insert(index);
                    }
                    None => {
                        return Next::StageSucceeded {
                            index,
                            results: BTreeMap::new(),
                        };
                    }
                }
            }
            StagePhase::Running if st.job_name.is_none() && is_approval(spec, &st.name) => {
                match &st.approval {
                    Some(a) if a.decision == Decision::Approve => {
                        return Next::StageSucceeded {
                            index,
                            results: BTreeMap::new(),
                        };
                    }
                    Some(a) => {
                        return Next::StageFailed {
                            index,
                            message: format!("rejected by {} (Approval {})", a.username, a.name),
                            running: active.clone(),
                        };
                    }
                    None if timed_out(st.started, approval_timeout(spec, &st.name), now) => {
                        return Next::StageFailed {
                            index,
                            message: "no Approval was honoured within the stage's timeout".into(),
                            running: active.clone(),
                        };
                    }
                    None => {}
                }
            }
            StagePhase::Running if st.job_name.is_none() && is_deploy(spec, &st.name) => {
                let Some(id) = &st.deployment_id else {
                    create.get_or_insert(index);
                    continue;
                };
                let failed = |message: String| Next::StageFailed {
                    index,
                    message,
                    running: active.clone(),
                };
                match deploys.get(id) {
                    None => {}
                    Some(DeployState::InProgress)
                        if timed_out(st.started, deploy_timeout(spec, &st.name), now) =>
                    {
                        return failed(format!(
                            "deployment {id} did not complete within the stage's timeout"
                        ));
                    }
                    Some(DeployState::InProgress) => {}
                    Some(DeployState::Completed) => {
                        return Next::StageSucceeded {
                            index,
                            results: BTreeMap::new(),
                        };
                    }
                    Some(DeployState::Failed { message }) => {
                        return failed(format!("deployment {id} failed: {message}"));
                    }
                    Some(DeployState::Replaced { by }) => {
                        return Next::FollowDeployment {
                            index,
                            id: by.clone(),
                            rollback: false,
                        };
                    }
                    Some(DeployState::Overtaken { task_definition }) => {
                        return failed(format!(
                            "someone else deployed {task_definition} to the service during deployment {id}"
                        ));
                    }
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
        return if is_deploy(spec, &status.stages[index].name) {
            Next::Deploy { index }
        } else {
            Next::CreateJob { index }
        };
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

/// The HTTP checks of the stage named `name` in `spec`.
fn checks_of<'a>(spec: &'a PipelineSpec, name: &str) -> &'a [crate::crd::HttpCheck] {
    spec.stages
        .iter()
        .find(|s| s.name == name)
        .map(|s| s.checks())
        .unwrap_or_default()
}

/// Whether the stage named `name` in `spec` has a Job.
fn has_job(spec: &PipelineSpec, name: &str) -> bool {
    spec.stages
        .iter()
        .any(|s| s.name == name && matches!(s.action(), Some(StageAction::Job(_))))
}

/// Whether the stage named `name` is an Approval stage of `spec`.
fn is_approval(spec: &PipelineSpec, name: &str) -> bool {
    spec.stages
        .iter()
        .any(|s| s.name == name && matches!(s.action(), Some(StageAction::Approval(_))))
}

/// The timeout of the Approval stage named `name` in `spec`.
fn approval_timeout(spec: &PipelineSpec, name: &str) -> Option<std::time::Duration> {
    spec.stages
        .iter()
        .find(|s| s.name == name)
        .and_then(|s| match s.action() {
            Some(StageAction::Approval(a)) => a.timeout.duration().ok(),
            _ => None,
        })
}

/// The Approval stage of the run that waits for a decision, if any: (index, name).
pub fn waiting_for_approval<'a>(
    spec: &PipelineSpec,
    status: &'a PipelineStatus,
) -> Option<(usize, &'a str)> {
    if !run_active(status) || status.phase == Some(PipelinePhase::RollingBack) {
        return None;
    }
    status.stages.iter().enumerate().find_map(|(i, s)| {
        (s.phase == StagePhase::Running && s.approval.is_none() && is_approval(spec, &s.name))
            .then_some((i, s.name.as_str()))
    })
}

/// Whether the stage named `name` is a Deploy stage of `spec`.
fn is_deploy(spec: &PipelineSpec, name: &str) -> bool {
    spec.stages
        .iter()
        .any(|s| s.name == name && matches!(s.action(), Some(StageAction::Deploy(_))))
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
