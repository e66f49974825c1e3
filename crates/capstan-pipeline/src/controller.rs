//! The Pipeline controller.
//!
//! Reconcile: (1) resolve the connection the object names and refuse a namespace it
//! does not allow ([`capstan_core::gate`]); (2) validate what the schema cannot
//! ([`crate::validation::validate`]); (3) run: ask the [`scheduler`] for the next
//! action, claim it in status (a replace conditioned on the resourceVersion read, so a
//! stale Capstan gets 409 and stops), perform it (create a Job), record it, and ask
//! again, until the scheduler says wait. Stage transitions come from watch events on
//! the Pipeline's Jobs (the controller owns them), not from polling.
//!
//! Deploy stages and rollbacks act on ECS ([`crate::deploy`]); ECS has no watch, so
//! while a deployment the run follows is in progress the object is requeued every
//! [`DEPLOY_POLL`]. Every connection a Pipeline names (its own and its Deploy
//! stages') passes the gate, with the services it deploys, before any stage starts.
//!
//! Rooms: `gate` (before a run: valid spec, connections, service claims), `deploys`
//! (ECS deploys and rollbacks), `approvals`, `checks` (HTTP checks), `controls` (cancel,
//! retry, rollback annotations), `runs` (how runs and stages end), `status`
//! (conditions); this file holds the loop that asks the scheduler and performs its
//! answer.
//!
//! Crash points (tests; [`capstan_core::failpoints`]): `pipeline::after-start-run`
//! (the run's claim written), `pipeline::after-claim-stage` (a stage claimed, its Job
//! not created or its deploy not started), `pipeline::after-create-job` (the Job
//! created, nothing recorded), `pipeline::after-register` (a task definition
//! registered, not recorded), `pipeline::after-update-service` (the service updated,
//! its deployment not recorded), `pipeline::after-rollback-update` (the service put
//! back, not recorded).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use capstan_aws::ClientOptions;
use capstan_aws::clients::{ClientCache, ClientError};
use capstan_core::conditions::{self, Desired, READY, Status};
use capstan_core::connection::{ClusterConnection, ConnectionKind, ConnectionRef};
use capstan_core::events::{EventType, Publisher, ready_turned_false};
use capstan_core::failpoints::{self, crash_point};
use capstan_core::gate::{
    CONNECTION_ALLOWED, CONNECTION_READY, Gate, INVALID_SPEC, connection_gate, watch_connections_of,
};
use capstan_core::metrics::ControllerMetrics;
use capstan_core::runtime::{Runtime, run_controller};
use capstan_core::scope::ScopedResource;
use capstan_core::ssa::{replace_status_conditioned, update_status};
use chrono::{DateTime, Utc};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::controller::Action;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::approval::{self, Approval, ApprovalPhase, Verdict};
use crate::crd::ApprovalRecord;
use crate::crd::{
    ConcurrencyPolicy, DeployStage, Pipeline, PipelinePhase, PipelineSpec, PipelineStatus,
    RollbackPhase, RollbackStatus, RunSummary, StageAction, StagePhase, condition_types as ct,
    reasons,
};
use crate::deploy::{self, Clients, DeployError};
use crate::jobs;
use crate::scheduler::{self, Next};

mod approvals;
mod checks;
mod controls;
mod deploys;
mod gate;
mod metrics;
mod runs;
mod status;

use approvals::*;
use checks::*;
use controls::*;
use deploys::*;
use gate::*;
use metrics::RunMetrics;
use runs::*;
use status::*;

/// The field manager of every write this controller makes.
pub const FIELD_MANAGER: &str = "capstan-pipeline";

/// The controller's name (logs, readiness).
const NAME: &str = "pipeline";

/// Event reasons (CamelCase, stable).
pub mod events {
    /// A run started.
    pub const RUN_STARTED: &str = "RunStarted";
    /// A stage's Job was created.
    pub const STAGE_STARTED: &str = "StageStarted";
    /// A stage failed; the run ends.
    pub const STAGE_FAILED: &str = "StageFailed";
    /// Every stage of a run succeeded.
    pub const RUN_SUCCEEDED: &str = "RunSucceeded";
    /// A newer revision stopped the active run (`concurrencyPolicy: Supersede`).
    pub const RUN_SUPERSEDED: &str = "RunSuperseded";
    /// A Deploy stage registered its task definition and updated its service.
    pub const DEPLOY_STARTED: &str = "DeployStarted";
    /// A Deploy stage's deployment completed.
    pub const DEPLOY_SUCCEEDED: &str = "DeploySucceeded";
    /// A service the failed run changed is being put back.
    pub const ROLLBACK_STARTED: &str = "RollbackStarted";
    /// Every service the failed run changed was put back.
    pub const RUN_ROLLED_BACK: &str = "RunRolledBack";
    /// A service could not be put back; needs a person.
    pub const ROLLBACK_FAILED: &str = "RollbackFailed";
    /// A run waits at an Approval stage.
    pub const AWAITING_APPROVAL: &str = "AwaitingApproval";
    /// An Approval let the run go on.
    pub const APPROVED: &str = "Approved";
    /// An Approval rejected the run.
    pub const REJECTED: &str = "Rejected";
    /// The `capstan.dev/cancel` annotation stopped the active run.
    pub const RUN_CANCELLED: &str = "RunCancelled";
    /// The `capstan.dev/retry` annotation restarted the last run from a stage.
    pub const RUN_RETRIED: &str = "RunRetried";
    /// A control annotation could not act; the note says why.
    pub const CONTROL_REFUSED: &str = "ControlRefused";
}

/// The `tracing` target of the approval audit line (as SecretRotation's steps').
pub const AUDIT_TARGET: &str = "capstan::audit";

/// How often a deployment the run follows is read from ECS while it is in progress.
pub const DEPLOY_POLL: Duration = Duration::from_secs(2);

/// How often a run waiting for approval is looked at without an Approval event (its
/// timeout; the admission policy coming back).
pub const APPROVAL_RECHECK: Duration = Duration::from_secs(30);

/// The most actions one reconcile performs before it requeues (a run of Job stages
/// needs two per stage: record the last, claim the next).
const MAX_ACTIONS_PER_PASS: usize = 16;

/// The controller's metrics, under `capstan_pipeline_`.
#[derive(Clone, Debug)]
pub struct Metrics {
    controller: ControllerMetrics,
    runs: RunMetrics,
}

impl Metrics {
    /// Registers the metrics.
    pub fn register(registry: &mut Registry) -> Self {
        let controller = ControllerMetrics::register(registry, NAME);
        let sub = registry.sub_registry_with_prefix(NAME);
        Self {
            controller,
            runs: RunMetrics::register(sub),
        }
    }
}

struct Ctx {
    rt: Runtime,
    metrics: ControllerMetrics,
    runs: RunMetrics,
    events: Publisher,
    clients: ClientCache<Clients>,
    settings: Settings,
    /// The controllers' caches of Pipelines (one per watched namespace, or one), to
    /// find the Pipeline that claimed an ECS service first.
    stores: std::sync::Mutex<Vec<kube::runtime::reflector::Store<Pipeline>>>,
}

/// What the Pipeline controller takes beyond the [`Runtime`].
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// The ValidatingAdmissionPolicy (and binding of the same name) that verifies who
    /// creates an Approval (`--approval-policy`); `None`: no Approval is honoured.
    pub approval_policy: Option<String>,
    /// What SmokeTest HTTP checks may reach (`--http-check-allow`); empty: nothing.
    pub http_allow: crate::http_check::AllowList,
}

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes call failed.
    #[error("kubernetes: {}", capstan_core::error::KubeMessage(.0))]
    Kube(#[from] kube::Error),
    /// An AWS call failed (retried).
    #[error(transparent)]
    Aws(#[from] DeployError),
    /// A connection's clients could not be built.
    #[error(transparent)]
    Clients(#[from] ClientError),
}

impl From<capstan_aws::ecs::EcsError> for Error {
    fn from(e: capstan_aws::ecs::EcsError) -> Self {
        Error::Aws(DeployError::Ecs(e))
    }
}

impl capstan_core::error::Categorized for Error {
    fn category(&self) -> &'static str {
        match self {
            Error::Kube(e) => e.category(),
            Error::Aws(DeployError::Ecs(e)) => e.category(),
            Error::Aws(DeployError::Ecr(e)) => e.category(),
            Error::Aws(DeployError::Refused(_)) => "refused",
            Error::Clients(_) => "aws_clients",
        }
    }
}

async fn reconcile(obj: Arc<Pipeline>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let _timer = ctx.metrics.start();
    let ns = obj.namespace().unwrap_or_default();
    let (connections, mut conditions) = match gate_all(&ctx, &obj, &ns).await? {
        Ok(allowed) => allowed,
        Err(conditions) => return refuse(&ctx, &obj, conditions).await.map_err(Error::from),
    };
    if let Some(invalid) = cannot_run(&obj) {
        conditions.push(invalid);
        return refuse(&ctx, &obj, conditions).await.map_err(Error::from);
    }
    if let Some(claimed) = claimed_elsewhere(&ctx, &obj) {
        conditions.push(claimed);
        refuse(&ctx, &obj, conditions).await?;
        // The other Pipeline may go or change: look again now and then.
        return Ok(Action::requeue(Duration::from_secs(60)));
    }
    let mut w = Writer {
        api: Api::namespaced(ctx.rt.client.clone(), &ns),
        obj: (*obj).clone(),
        connection_ready: conditions,
        approval_problem: None,
        runs: ctx.runs.clone(),
    };
    process_approvals(&ctx, &mut w).await?;
    match run_steps(&ctx, &mut w, &connections).await {
        Err(Error::Kube(kube::Error::Api(e))) if e.code == 409 => {
            // Someone wrote first (an edit, another Capstan): take the newer view.
            tracing::debug!(kind = "Pipeline", object = %key_of(&obj), "status claim lost; taking the newer view next");
            Ok(Action::requeue(Duration::from_millis(500)))
        }
        other => other,
    }
}

fn key_of(obj: &Pipeline) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// Asks the scheduler, claims, performs, records, until it says wait.
async fn run_steps(
    ctx: &Ctx,
    w: &mut Writer,
    connections: &BTreeMap<String, ClusterConnection>,
) -> Result<Action, Error> {
    let ns = w.obj.namespace().unwrap_or_default();
    let uid = w.obj.uid().unwrap_or_default();
    let job_api: Api<Job> = Api::namespaced(ctx.rt.client.clone(), &ns);
    let pod_api: Api<Pod> = Api::namespaced(ctx.rt.client.clone(), &ns);
    handle_controls(ctx, w, &job_api, &pod_api).await?;
    for _ in 0..MAX_ACTIONS_PER_PASS {
        let spec = w.obj.spec.clone();
        let mut st = w.status();
        let declares = |stage: &str| {
            spec.stages.iter().any(|s| {
                s.name == stage
                    && matches!(s.action(), Some(StageAction::Job(j)) if !j.results.is_empty())
            })
        };
        let observed = if scheduler::run_active(&st) {
            jobs::observe(&job_api, &pod_api, &uid, st.run_number, declares).await?
        } else {
            BTreeMap::new()
        };
        let deploys = observe_deployments(ctx, connections, &spec, &mut st).await?;
        let now = ctx.rt.clock.now();
        if scheduler::run_active(&st)
            && st.current_revision.as_deref() != Some(spec.revision.as_str())
            && spec.concurrency_policy == ConcurrencyPolicy::Queue
        {
            st.queue(&spec.revision);
        }
        let next = scheduler::next(&spec, &st, &observed, &deploys, now);
        tracing::debug!(kind = "Pipeline", object = %key_of(&w.obj), ?next, "next");
        match next {
            Next::Wait => {
                w.set_conditions(&mut st, now);
                if st != w.status() {
                    w.write(&st).await?;
                }
                return Ok(if !scheduler::followed_deployments(&st).is_empty() {
                    Action::requeue(DEPLOY_POLL)
                } else if checks_pending(&spec, &st) {
                    Action::requeue(Duration::from_secs(1))
                } else if scheduler::waiting_for_approval(&spec, &st).is_some() {
                    // Approvals wake it through their watch; this catches the timeout
                    // and a policy that comes back.
                    Action::requeue(APPROVAL_RECHECK)
                } else {
                    Action::await_change()
                });
            }
            Next::StartRun => {
                st.start_run(&spec);
                st.run_number += 1;
                st.run_id = Some(format!("{}-{}", w.obj.name_any(), st.run_number));
                st.run_started = Some(now);
                st.phase = Some(PipelinePhase::Running);
                w.set_conditions(&mut st, now);
                w.write(&st).await?;
                crash_point("pipeline::after-start-run");
                let note = format!(
                    "run {} started for revision {}",
                    st.run_id.as_deref().unwrap_or_default(),
                    spec.revision
                );
                ctx.events
                    .publish(&w.obj, EventType::Normal, events::RUN_STARTED, "Run", note)
                    .await;
            }
            Next::StartStage { index } => {
                let name = w.obj.name_any();
                let run_number = st.run_number;
                let Some(stage) = st.stages.get_mut(index) else {
                    return Ok(Action::requeue(Duration::from_secs(1)));
                };
                let is_deploy = deploy_of(&spec, &stage.name).is_some();
                let checks_first = spec
                    .stages
                    .iter()
                    .any(|s| s.name == stage.name && !s.checks().is_empty());
                let approvers = spec
                    .stages
                    .iter()
                    .find(|s| s.name == stage.name)
                    .and_then(|s| match s.action() {
                        Some(StageAction::Approval(a)) => Some(a.approvers.clone()),
                        _ => None,
                    });
                stage.phase = StagePhase::Running;
                stage.attempt += 1;
                stage.started = Some(now);
                if let Some(approvers) = approvers {
                    let stage_name = stage.name.clone();
                    st.current_stage = Some(stage_name.clone());
                    w.set_conditions(&mut st, now);
                    w.write(&st).await?;
                    let who = if approvers.users.is_empty() && approvers.groups.is_empty() {
                        "anyone allowed to create Approvals".to_owned()
                    } else {
                        format!(
                            "users [{}] or groups [{}]",
                            approvers.users.join(", "),
                            approvers.groups.join(", ")
                        )
                    };
                    let note = format!(
                        "run {} waits at stage {stage_name} for an Approval by {who}",
                        st.run_id.as_deref().unwrap_or_default()
                    );
                    ctx.events
                        .publish(
                            &w.obj,
                            EventType::Normal,
                            events::AWAITING_APPROVAL,
                            "Approval",
                            note,
                        )
                        .await;
                    continue;
                }
                // A SmokeTest with HTTP checks claims its Job once they pass.
                if !is_deploy && !checks_first {
                    stage.job_name = Some(scheduler::job_name(
                        &name,
                        run_number,
                        &stage.name,
                        stage.attempt,
                    ));
                }
                st.current_stage = Some(stage.name.clone());
                w.set_conditions(&mut st, now);
                // The claim, then the Job or the deploy.
                w.write(&st).await?;
                crash_point("pipeline::after-claim-stage");
                if is_deploy {
                    deploy_stage(ctx, w, connections, &job_api, index).await?;
                } else if !checks_first {
                    create_job(ctx, w, &job_api, index).await?;
                }
            }
            Next::CreateJob { index } => create_job(ctx, w, &job_api, index).await?,
            Next::Deploy { index } => deploy_stage(ctx, w, connections, &job_api, index).await?,
            Next::FollowDeployment {
                index,
                id,
                rollback,
            } => {
                if let Some(stage) = st.stages.get_mut(index) {
                    match stage.rollback.as_mut() {
                        Some(rb) if rollback => rb.deployment_id = Some(id.clone()),
                        _ => {
                            stage.deployment_id = Some(id.clone());
                            stage.set_message(&format!(
                                "following deployment {id}: a forced redeploy of the same task definition"
                            ));
                        }
                    }
                }
                w.set_conditions(&mut st, now);
                w.write(&st).await?;
            }
            Next::StageSucceeded { index, results } => {
                let mut deployed = None;
                if let Some(stage) = st.stages.get_mut(index) {
                    stage.phase = StagePhase::Succeeded;
                    stage.finished = Some(now);
                    stage.results = results;
                    if stage.job_name.is_some() {
                        stage.set_message("the Job completed");
                    } else if let Some(a) = stage.approval.clone() {
                        stage.set_message(&format!(
                            "approved by {} (Approval {})",
                            a.username, a.name
                        ));
                    } else {
                        let note = format!(
                            "deployment {} completed: the service runs {}",
                            stage.deployment_id.as_deref().unwrap_or_default(),
                            stage.task_definition.as_deref().unwrap_or_default()
                        );
                        stage.set_message(&note);
                        deployed = Some(format!("stage {}: {note}", stage.name));
                    }
                }
                w.set_conditions(&mut st, now);
                w.write(&st).await?;
                if let Some(note) = deployed {
                    ctx.events
                        .publish(
                            &w.obj,
                            EventType::Normal,
                            events::DEPLOY_SUCCEEDED,
                            "Deploy",
                            note,
                        )
                        .await;
                }
            }
            Next::StageFailed {
                index,
                message,
                running,
            } => fail_run(ctx, w, &job_api, st, index, &message, &running).await?,
            Next::Supersede { running } => {
                // The Jobs first: a crash after this finds the run active and deletes
                // (nothing) again; the other way round would leave a Job running.
                for name in &running {
                    jobs::delete(&job_api, name).await?;
                }
                for s in &mut st.stages {
                    match s.phase {
                        StagePhase::Running => {
                            s.phase = StagePhase::Cancelled;
                            s.finished = Some(now);
                            s.set_message(&format!(
                                "cancelled: revision {} superseded this run",
                                spec.revision
                            ));
                        }
                        StagePhase::Pending => s.phase = StagePhase::Skipped,
                        _ => {}
                    }
                }
                let run = st.run_id.clone().unwrap_or_default();
                let rolling_back = mark_rollbacks(&mut st, &spec);
                if !rolling_back {
                    record_end(&mut st, now, PipelinePhase::Superseded, None);
                }
                w.set_conditions(&mut st, now);
                w.write(&st).await?;
                let note = format!(
                    "run {run} stopped for revision {} (concurrencyPolicy Supersede); Jobs deleted: {}{}",
                    spec.revision,
                    if running.is_empty() {
                        "none".to_owned()
                    } else {
                        running.join(", ")
                    },
                    if rolling_back {
                        "; the services it changed are being put back"
                    } else {
                        ""
                    }
                );
                ctx.events
                    .publish(
                        &w.obj,
                        EventType::Normal,
                        events::RUN_SUPERSEDED,
                        "Run",
                        note,
                    )
                    .await;
            }
            Next::StartRollback { index } => start_rollback(ctx, w, connections, st, index).await?,
            Next::RunCheck { index, request } => {
                run_check(ctx, w, &job_api, st, index, request).await?;
            }
            Next::RollbackEnded { index, outcome } => {
                let mut failure = None;
                if let Some(stage) = st.stages.get_mut(index) {
                    let rb = stage.rollback.get_or_insert_with(RollbackStatus::pending);
                    rb.finished = Some(now);
                    match outcome {
                        Ok(()) => {
                            rb.phase = RollbackPhase::Succeeded;
                            rb.message = Some(format!(
                                "the service runs {} again",
                                stage
                                    .previous_task_definition
                                    .as_deref()
                                    .unwrap_or_default()
                            ));
                            // The failed stage stays Failed (its rollback says it was
                            // put back); the others were deployed, then rolled back.
                            if stage.phase != StagePhase::Failed {
                                stage.phase = StagePhase::RolledBack;
                            }
                        }
                        Err(why) => {
                            rb.phase = RollbackPhase::Failed;
                            rb.message = Some(cut(&why));
                            failure = Some(format!("stage {}: {why}", stage.name));
                        }
                    }
                }
                w.set_conditions(&mut st, now);
                w.write(&st).await?;
                if let Some(note) = failure {
                    ctx.events
                        .publish(
                            &w.obj,
                            EventType::Warning,
                            events::ROLLBACK_FAILED,
                            "Rollback",
                            note,
                        )
                        .await;
                }
            }
            Next::FinishRollback => {
                let failed = st.stages.iter().any(|s| {
                    s.rollback
                        .as_ref()
                        .is_some_and(|r| r.phase == RollbackPhase::Failed)
                });
                let failed_stage = st
                    .stages
                    .iter()
                    .find(|s| s.phase == StagePhase::Failed)
                    .map(|s| s.name.clone());
                let outcome = if failed {
                    PipelinePhase::RollbackFailed
                } else {
                    PipelinePhase::RolledBack
                };
                st.rollbacks += 1;
                record_end(&mut st, now, outcome, failed_stage);
                w.set_conditions(&mut st, now);
                w.write(&st).await?;
                let run = st.run_id.as_deref().unwrap_or_default();
                let (kind, reason, note) = if failed {
                    (
                        EventType::Warning,
                        events::ROLLBACK_FAILED,
                        format!(
                            "run {run}: a service could not be put back; see status.stages[].rollback"
                        ),
                    )
                } else {
                    (
                        EventType::Normal,
                        events::RUN_ROLLED_BACK,
                        format!(
                            "run {run}: every service it changed runs its previous task definition again"
                        ),
                    )
                };
                ctx.events
                    .publish(&w.obj, kind, reason, "Rollback", note)
                    .await;
            }
            Next::FinishRun => {
                end_run(&mut st, now, None);
                w.set_conditions(&mut st, now);
                w.write(&st).await?;
                let note = format!(
                    "run {}: revision {} went through every stage",
                    st.run_id.as_deref().unwrap_or_default(),
                    st.current_revision.as_deref().unwrap_or_default()
                );
                ctx.events
                    .publish(
                        &w.obj,
                        EventType::Normal,
                        events::RUN_SUCCEEDED,
                        "Run",
                        note,
                    )
                    .await;
            }
        }
    }
    Ok(Action::requeue(Duration::from_millis(200)))
}

/// Writes the status with a replace conditioned on the resourceVersion last read or
/// written (409 when someone else wrote since).
struct Writer {
    api: Api<Pipeline>,
    obj: Pipeline,
    /// `ConnectionReady`, from the gate.
    connection_ready: Vec<Desired<'static>>,
    /// Why no Approval can be honoured now (the admission policy), if so.
    approval_problem: Option<String>,
    runs: RunMetrics,
}

impl Writer {
    async fn write(&mut self, status: &PipelineStatus) -> Result<(), kube::Error> {
        let before = self.status();
        let mut o = self.obj.clone();
        o.status = Some(status.clone());
        self.obj = replace_status_conditioned(&self.api, o, FIELD_MANAGER).await?;
        self.runs.observe(&self.obj.spec, &before, status);
        Ok(())
    }

    fn status(&self) -> PipelineStatus {
        self.obj.status.clone().unwrap_or_default()
    }

    /// The conditions of `st`: the gate's, and those the run implies.
    fn set_conditions(&self, st: &mut PipelineStatus, now: DateTime<Utc>) {
        let generation = self.obj.meta().generation;
        for d in &self.connection_ready {
            conditions::set(&mut st.conditions, d.clone(), generation, now);
        }
        set_conditions(st, &self.obj, now);
        let awaiting = match scheduler::waiting_for_approval(&self.obj.spec, st) {
            Some((_, stage)) => {
                let run = st.run_id.as_deref().unwrap_or_default();
                match &self.approval_problem {
                    Some(why) => Desired::new(
                        ct::AWAITING_APPROVAL,
                        true,
                        reasons::APPROVAL_POLICY_MISSING,
                        format!(
                            "run {run} waits at stage {stage}, but no Approval can be honoured: {why}"
                        ),
                    ),
                    None => Desired::new(
                        ct::AWAITING_APPROVAL,
                        true,
                        reasons::WAITING_FOR_APPROVAL,
                        format!(
                            "run {run} waits at stage {stage} for an Approval (spec.runId {run}, spec.stage {stage})"
                        ),
                    ),
                }
            }
            None => Desired::new(
                ct::AWAITING_APPROVAL,
                false,
                reasons::NOT_WAITING,
                "no run waits for approval",
            ),
        };
        conditions::set(&mut st.conditions, awaiting, generation, now);
    }
}

/// Runs the controller with the default [`Settings`] until `shutdown`.
pub async fn run(rt: Runtime, metrics: Metrics, shutdown: CancellationToken) {
    run_with(rt, metrics, Settings::default(), shutdown).await;
}

/// Runs the controller until `shutdown`.
pub async fn run_with(
    rt: Runtime,
    metrics: Metrics,
    settings: Settings,
    shutdown: CancellationToken,
) {
    failpoints::from_env();
    let options = ClientOptions::from_settings(&rt.aws, &rt.instance);
    let ctx = Arc::new(Ctx {
        events: Publisher::new(rt.client.clone(), FIELD_MANAGER, &rt.instance),
        clients: deploy::client_cache(
            rt.client.clone(),
            rt.own_namespace.clone(),
            options,
            rt.aws.budgets.clone(),
        ),
        rt: rt.clone(),
        metrics: metrics.controller,
        runs: metrics.runs,
        settings,
        stores: std::sync::Mutex::new(Vec::new()),
    });
    let stores_ctx = ctx.clone();
    let error_policy = |_obj: Arc<Pipeline>, err: &Error, ctx: Arc<Ctx>| {
        ctx.metrics.failure(err);
        Action::requeue(Duration::from_secs(5))
    };
    let client = rt.client.clone();
    run_controller(
        &rt,
        NAME,
        ctx,
        reconcile,
        error_policy,
        |c, ns| {
            let jobs: Api<Job> = match ns {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            };
            let approvals: Api<Approval> = match ns {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            };
            stores_ctx
                .stores
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(c.store());
            watch_connections_of(&rt, c, connections_of)
                .owns(
                    jobs,
                    watcher::Config::default().labels(jobs::PIPELINE_UID_LABEL),
                )
                .watches(approvals, watcher::Config::default(), |a: Approval| {
                    a.namespace().map(|ns| {
                        kube::runtime::reflector::ObjectRef::new(&a.spec.pipeline).within(&ns)
                    })
                })
        },
        shutdown,
    )
    .await;
}
