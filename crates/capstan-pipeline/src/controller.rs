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
}

impl Metrics {
    /// Registers the metrics.
    pub fn register(registry: &mut Registry) -> Self {
        Self {
            controller: ControllerMetrics::register(registry, NAME),
        }
    }
}

struct Ctx {
    rt: Runtime,
    metrics: ControllerMetrics,
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
    #[error("kubernetes: {0}")]
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

/// `Ready=False, InvalidSpec` with the validation's message when the spec cannot run.
fn cannot_run(obj: &Pipeline) -> Option<Desired<'static>> {
    // FieldError paths already start at `spec.`.
    crate::validation::validate(&obj.spec).err().map(|errors| {
        Desired::new(
            READY,
            false,
            INVALID_SPEC,
            crate::validation::summarize(&errors),
        )
    })
}

/// The ECS services a Pipeline deploys: (connection, cluster, service), each a name
/// (the last part of an ARN).
fn services_of(obj: &Pipeline) -> Vec<(String, String, String)> {
    let last = |s: &str| s.rsplit('/').next().unwrap_or(s).to_owned();
    obj.spec
        .stages
        .iter()
        .filter_map(|s| match s.action() {
            Some(StageAction::Deploy(d)) => Some((
                stage_connection(&obj.spec, d)
                    .unwrap_or_default()
                    .to_owned(),
                last(&d.cluster),
                last(&d.service),
            )),
            _ => None,
        })
        .collect()
}

/// `Ready=False, ServiceClaimed` when another Pipeline, created first, deploys one of
/// the same ECS services: two Pipelines rolling one service back and forth would undo
/// each other. Among Pipelines Capstan watches; the older one keeps the service.
fn claimed_elsewhere(ctx: &Ctx, obj: &Pipeline) -> Option<Desired<'static>> {
    let mine = services_of(obj);
    if mine.is_empty() {
        return None;
    }
    let key = |o: &Pipeline| {
        (
            o.metadata.creation_timestamp.clone().map(|t| t.0),
            o.namespace().unwrap_or_default(),
            o.name_any(),
        )
    };
    let me = key(obj);
    let stores = ctx.stores.lock().unwrap_or_else(|e| e.into_inner());
    for other in stores.iter().flat_map(|s| s.state()) {
        let them = key(&other);
        if (them.1.as_str(), them.2.as_str()) == (me.1.as_str(), me.2.as_str()) || them >= me {
            continue;
        }
        if let Some((conn, cluster, service)) =
            services_of(&other).into_iter().find(|s| mine.contains(s))
        {
            return Some(Desired::new(
                READY,
                false,
                reasons::SERVICE_CLAIMED,
                format!(
                    "ECS service {service} of cluster {cluster} (connection {conn}) is deployed by Pipeline {}/{}, created first; one service is deployed by one Pipeline",
                    them.1, them.2
                ),
            ));
        }
    }
    None
}

/// Every connection the Pipeline names: its own and its Deploy stages'.
fn connections_of(obj: &Pipeline) -> Vec<&ConnectionRef> {
    let mut refs: Vec<&ConnectionRef> = obj.spec.connection_ref.iter().collect();
    for s in &obj.spec.stages {
        if let Some(r) = s.deploy.as_ref().and_then(|d| d.connection_ref.as_ref())
            && !refs.iter().any(|x| x.name == r.name)
        {
            refs.push(r);
        }
    }
    refs
}

/// The connection a Deploy stage acts through: its own, or the Pipeline's.
fn stage_connection<'a>(spec: &'a PipelineSpec, deploy: &'a DeployStage) -> Option<&'a str> {
    deploy
        .connection_ref
        .as_ref()
        .or(spec.connection_ref.as_ref())
        .map(|c| c.name.as_str())
}

/// Passes every connection the Pipeline names through the gate, each with the ECS
/// services its Deploy stages deploy through it. `Err`: the refusal's conditions.
async fn gate_all(
    ctx: &Ctx,
    obj: &Pipeline,
    ns: &str,
) -> Result<
    Result<(BTreeMap<String, ClusterConnection>, Vec<Desired<'static>>), Vec<Desired<'static>>>,
    kube::Error,
> {
    let mut allowed = BTreeMap::new();
    for r in connections_of(obj) {
        let resources: Vec<ScopedResource> = obj
            .spec
            .stages
            .iter()
            .filter_map(|s| match s.action() {
                Some(StageAction::Deploy(d))
                    if stage_connection(&obj.spec, d) == Some(r.name.as_str()) =>
                {
                    Some(ScopedResource::EcsService {
                        cluster: d.cluster.clone(),
                        service: d.service.clone(),
                    })
                }
                _ => None,
            })
            .collect();
        match connection_gate(&ctx.rt, ns, Some(r), ConnectionKind::Aws, &resources).await? {
            Gate::Refused(conditions) => return Ok(Err(conditions)),
            Gate::Proceed(Some(conn), _) => {
                allowed.insert(r.name.clone(), *conn);
            }
            Gate::Proceed(None, _) => {}
        }
    }
    let mut conditions = Vec::new();
    if !allowed.is_empty() {
        let names: Vec<&str> = allowed.keys().map(String::as_str).collect();
        conditions.push(Desired::new(
            CONNECTION_READY,
            true,
            CONNECTION_ALLOWED,
            format!(
                "ClusterConnection{} {} allow{} namespace {ns:?} and the services its Deploy stages name",
                if names.len() > 1 { "s" } else { "" },
                names.join(", "),
                if names.len() > 1 { "" } else { "s" }
            ),
        ));
    }
    Ok(Ok((allowed, conditions)))
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
    };
    process_approvals(&ctx, &mut w).await?;
    match run_steps(&ctx, &mut w, &connections).await {
        Err(Error::Kube(kube::Error::Api(e))) if e.code == 409 => {
            // Someone wrote first (an edit, another Capstan): take the newer view.
            tracing::debug!(object = %key_of(&obj), "status claim lost; taking the newer view next");
            Ok(Action::requeue(Duration::from_millis(500)))
        }
        other => other,
    }
}

/// The gate refused the object, its spec is invalid, or it cannot run here: its
/// conditions (server-side apply), and a Warning Event when Ready turns false.
async fn refuse(
    ctx: &Ctx,
    obj: &Pipeline,
    conditions: Vec<Desired<'static>>,
) -> Result<Action, kube::Error> {
    let before = obj
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let warning = ready_turned_false(&before, &conditions);
    let api: Api<Pipeline> =
        Api::namespaced(ctx.rt.client.clone(), &obj.namespace().unwrap_or_default());
    update_status(
        &api,
        obj,
        obj.status.as_ref(),
        FIELD_MANAGER,
        ctx.rt.clock.now(),
        conditions,
        |_| {},
    )
    .await?;
    if let Some((reason, message)) = warning {
        ctx.events
            .publish(obj, EventType::Warning, &reason, "Reconcile", message)
            .await;
    }
    Ok(Action::await_change())
}

fn key_of(obj: &Pipeline) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// The Deploy section of the stage named `name` in the spec, if it is a Deploy stage.
fn deploy_of<'a>(spec: &'a PipelineSpec, name: &str) -> Option<&'a DeployStage> {
    spec.stages
        .iter()
        .find(|s| s.name == name)
        .and_then(|s| match s.action() {
            Some(StageAction::Deploy(d)) => Some(d),
            _ => None,
        })
}

/// The clients of the connection Deploy stage `d` acts through.
async fn clients_for(
    ctx: &Ctx,
    connections: &BTreeMap<String, ClusterConnection>,
    spec: &PipelineSpec,
    d: &DeployStage,
) -> Result<Clients, Error> {
    let conn = stage_connection(spec, d)
        .and_then(|n| connections.get(n))
        .ok_or_else(|| {
            DeployError::Refused("the stage's ClusterConnection did not pass the gate".into())
        })?;
    Ok(ctx.clients.get(conn).await?)
}

/// Reads every deployment the run follows from ECS; records the failed tasks of the
/// stages' own deployments in `st`.
async fn observe_deployments(
    ctx: &Ctx,
    connections: &BTreeMap<String, ClusterConnection>,
    spec: &PipelineSpec,
    st: &mut PipelineStatus,
) -> Result<BTreeMap<String, scheduler::DeployState>, Error> {
    let mut deploys = BTreeMap::new();
    for (index, id, rollback) in scheduler::followed_deployments(st) {
        let stage = &st.stages[index];
        let Some(d) = deploy_of(spec, &stage.name) else {
            continue;
        };
        let ours = if rollback {
            stage.previous_task_definition.clone()
        } else {
            stage.task_definition.clone()
        }
        .unwrap_or_default();
        let clients = clients_for(ctx, connections, spec, d).await?;
        let (state, failed) = deploy::observe(
            &clients.ecs,
            &d.cluster,
            &d.service,
            &id,
            &ours,
            d.max_failed_tasks,
        )
        .await?;
        if !rollback && !failed.is_empty() {
            st.stages[index].failed_tasks = failed;
        }
        deploys.insert(id, state);
    }
    Ok(deploys)
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
        tracing::debug!(object = %key_of(&w.obj), ?next, "next");
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

/// Acts on the control annotations, each value once (recorded in
/// `status.handledControls` in the same write as what it does): `capstan.dev/cancel`
/// stops the active run like a superseding revision (its Jobs deleted, what it deployed
/// rolled back), ending it `Cancelled`; `capstan.dev/retry: <stage>[:<token>]`
/// restarts the last run, if it did not succeed, from that stage (each stage from it on
/// back to Pending, to run as its next attempt), when every stage before it succeeded.
async fn handle_controls(
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
fn roll_back_by_hand(
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
fn retry_from(st: &mut PipelineStatus, stage: &str, spec: &PipelineSpec) -> Result<(), String> {
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

/// Whether a stage of the run has HTTP checks left to make.
fn checks_pending(spec: &PipelineSpec, st: &PipelineStatus) -> bool {
    scheduler::run_active(st)
        && st.stages.iter().any(|s| {
            s.phase == StagePhase::Running
                && s.job_name.is_none()
                && spec.stages.iter().any(|x| {
                    x.name == s.name && scheduler::check_of(x.checks(), s.checks_passed).is_some()
                })
        })
}

/// Makes request `request` of SmokeTest stage `index`'s HTTP checks: a pass is counted
/// in status; a failure (or a URL the allow-list refuses) fails the stage with the
/// status code and the expectation that failed, never the body.
async fn run_check(
    ctx: &Ctx,
    w: &mut Writer,
    job_api: &Api<Job>,
    mut st: PipelineStatus,
    index: usize,
    request: i32,
) -> Result<(), Error> {
    let spec = w.obj.spec.clone();
    let Some(name) = st.stages.get(index).map(|s| s.name.clone()) else {
        return Ok(());
    };
    let checks = spec
        .stages
        .iter()
        .find(|s| s.name == name)
        .map(|s| s.checks().to_vec())
        .unwrap_or_default();
    let total: i32 = checks.iter().map(|c| c.count).sum();
    let Some((i, check)) = scheduler::check_of(&checks, request) else {
        return Ok(());
    };
    let rendered = (|| -> Result<_, crate::template::TemplateError> {
        let url = jobs::render(&st, &check.url)?;
        let headers = check
            .headers
            .iter()
            .map(|h| Ok((h.name.clone(), jobs::render(&st, &h.value)?)))
            .collect::<Result<Vec<_>, crate::template::TemplateError>>()?;
        let equals = check
            .json_field
            .as_ref()
            .map(|f| jobs::render(&st, &f.equals))
            .transpose()?;
        Ok((url, headers, equals))
    })();
    let outcome = match rendered {
        Ok((url, headers, equals)) => {
            crate::http_check::run(
                check,
                &url,
                equals.as_deref(),
                &headers,
                &ctx.settings.http_allow,
            )
            .await
        }
        Err(e) => Err(format!("check {i} cannot be rendered: {e}")),
    };
    let now = ctx.rt.clock.now();
    match outcome {
        Ok(code) => {
            let stage = &mut st.stages[index];
            stage.checks_passed = request + 1;
            stage.last_check = Some(now);
            stage.set_message(&format!(
                "HTTP check {}/{total} passed ({code})",
                request + 1
            ));
            w.set_conditions(&mut st, now);
            w.write(&st).await?;
            Ok(())
        }
        Err(why) => {
            let message = format!("HTTP check {}/{total} failed: {why}", request + 1);
            fail_run(ctx, w, job_api, st, index, &message, &[]).await
        }
    }
}

/// `message` cut to the status's limit.
fn cut(message: &str) -> String {
    let mut s = crate::crd::StageStatus::pending("");
    s.set_message(message);
    s.message.unwrap_or_default()
}

/// Stage `index` failed: the Jobs still running stop, the stages not started are
/// skipped, and the run either rolls back what it deployed or ends `Failed`.
async fn fail_run(
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
fn mark_rollbacks(st: &mut PipelineStatus, spec: &PipelineSpec) -> bool {
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

/// Decides the Approvals that name this Pipeline and have no phase yet: the one that
/// decides the stage waiting (verified by the admission policy, created after it, for
/// this run and stage, by a listed approver) is recorded in the stage's status (the
/// claim), then marked `Honoured`, with an Event and an audit line; the others are
/// marked `Void` with the reason. While the policy is missing nothing is honoured and
/// `approval_problem` says why (AwaitingApproval, `ApprovalPolicyMissing`).
async fn process_approvals(ctx: &Ctx, w: &mut Writer) -> Result<(), Error> {
    let spec = w.obj.spec.clone();
    let has_approvals = spec
        .stages
        .iter()
        .any(|s| matches!(s.action(), Some(StageAction::Approval(_))));
    if !has_approvals {
        return Ok(());
    }
    let ns = w.obj.namespace().unwrap_or_default();
    let name = w.obj.name_any();
    let api: Api<Approval> = Api::namespaced(ctx.rt.client.clone(), &ns);
    let since =
        approval::policy_since(&ctx.rt.client, ctx.settings.approval_policy.as_deref()).await?;
    w.approval_problem = since.clone().err();
    let mut pending: Vec<Approval> = api
        .list(&kube::api::ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|a| a.spec.pipeline == name && a.status.as_ref().and_then(|s| s.phase).is_none())
        .collect();
    if pending.is_empty() {
        return Ok(());
    }
    let created = |a: &Approval| {
        a.metadata
            .creation_timestamp
            .as_ref()
            .and_then(|t| DateTime::from_timestamp(t.0.as_second(), 0))
    };
    pending.sort_by_key(|a| (created(a), a.name_any()));
    let mut st = w.status();
    let waiting = scheduler::waiting_for_approval(&spec, &st).map(|(i, n)| (i, n.to_owned()));
    let rules = waiting.as_ref().and_then(|(_, n)| {
        spec.stages
            .iter()
            .find(|s| &s.name == n)
            .and_then(|s| match s.action() {
                Some(StageAction::Approval(a)) => Some(a.clone()),
                _ => None,
            })
    });
    let run = st.run_id.clone().unwrap_or_default();
    let now = ctx.rt.clock.now();
    let mut marks: Vec<(String, ApprovalPhase, String)> = Vec::new();
    let mut honoured: Option<Approval> = None;
    for a in &pending {
        let aname = a.name_any();
        if let Some(s) = st
            .stages
            .iter()
            .find(|s| s.approval.as_ref().is_some_and(|r| r.name == aname))
        {
            // Recorded before a crash; only the mark is missing.
            marks.push((
                aname,
                ApprovalPhase::Honoured,
                format!("recorded by run {run}, stage {}", s.name),
            ));
            continue;
        }
        let target = match (&waiting, &rules) {
            (Some((_, stage)), Some(r)) => Some((run.as_str(), stage.as_str(), r)),
            _ => None,
        };
        match approval::judge(
            a,
            created(a),
            target,
            since.clone().ok(),
            honoured.is_some(),
        ) {
            Verdict::Hold => {}
            Verdict::Void(why) => marks.push((aname, ApprovalPhase::Void, why)),
            Verdict::Honour => {
                if let Some((i, stage)) = &waiting
                    && let Some(s) = st.stages.get_mut(*i)
                {
                    s.approval = Some(ApprovalRecord {
                        name: aname.clone(),
                        decision: a.spec.decision,
                        username: a.spec.approver.username.clone(),
                        groups: a.spec.approver.groups.clone(),
                        at: now,
                    });
                    marks.push((
                        aname,
                        ApprovalPhase::Honoured,
                        format!("run {run}, stage {stage}: {:?}", a.spec.decision),
                    ));
                    honoured = Some(a.clone());
                }
            }
        }
    }
    if let (Some(a), Some((_, stage))) = (&honoured, &waiting) {
        // The claim first: a crash after it finds the record and only marks.
        w.set_conditions(&mut st, now);
        w.write(&st).await?;
        let approve = a.spec.decision == crate::crd::Decision::Approve;
        tracing::info!(
            target: AUDIT_TARGET,
            object = %key_of(&w.obj),
            run = %run,
            stage = %stage,
            approval = %a.name_any(),
            decision = if approve { "Approve" } else { "Reject" },
            approver = %a.spec.approver.username,
            groups = %a.spec.approver.groups.join(","),
            instance = %ctx.rt.instance,
            "approval"
        );
        let note = format!(
            "run {run}, stage {stage}: {} by {} (groups: {}; Approval {})",
            if approve { "approved" } else { "rejected" },
            a.spec.approver.username,
            a.spec.approver.groups.join(", "),
            a.name_any()
        );
        let (kind, reason) = if approve {
            (EventType::Normal, events::APPROVED)
        } else {
            (EventType::Warning, events::REJECTED)
        };
        ctx.events
            .publish(&w.obj, kind, reason, "Approval", note)
            .await;
    }
    for (n, phase, message) in marks {
        match approval::mark(&api, &n, phase, &cut(&message)).await {
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            other => other?,
        }
    }
    Ok(())
}

/// The claimed Deploy stage `index`: pins its images (recorded), finds or registers its
/// task definition (recorded with the one it replaces), updates the service unless it
/// runs it already, and records the deployment to follow. A step that cannot succeed
/// (an image not in ECR, a container the task definition lacks, a service that is not
/// ECS-deployed) fails the stage with the reason; AWS errors are retried.
async fn deploy_stage(
    ctx: &Ctx,
    w: &mut Writer,
    connections: &BTreeMap<String, ClusterConnection>,
    job_api: &Api<Job>,
    index: usize,
) -> Result<(), Error> {
    let spec = w.obj.spec.clone();
    let mut st = w.status();
    let Some(name) = st.stages.get(index).map(|s| s.name.clone()) else {
        return Ok(());
    };
    let Some(d) = deploy_of(&spec, &name) else {
        let why = "the stage is no longer a Deploy stage of the spec";
        return fail_run(ctx, w, job_api, st, index, why, &[]).await;
    };
    let clients = clients_for(ctx, connections, &spec, d).await?;
    let run_id = st.run_id.clone().unwrap_or_default();
    let refused = |e: DeployError| match e {
        DeployError::Refused(why) => Ok(why),
        other => Err(Error::Aws(other)),
    };

    // 1. The images, pinned by digest (the run's pins first).
    let mut pins = st.images.clone();
    let mut images = BTreeMap::new();
    for c in &d.containers {
        let rendered = match jobs::render(&st, &c.image) {
            Ok(r) => r,
            Err(e) => {
                let why = format!("the image of container {} cannot be rendered: {e}", c.name);
                return fail_run(ctx, w, job_api, st, index, &why, &[]).await;
            }
        };
        match deploy::pin_image(&clients.ecr, &rendered, &mut pins).await {
            Ok(pinned) => {
                images.insert(c.name.clone(), pinned);
            }
            Err(e) => {
                let why = refused(e)?;
                return fail_run(ctx, w, job_api, st, index, &why, &[]).await;
            }
        }
    }
    if pins != st.images {
        st.images = pins;
        w.write(&st).await?;
    }

    // 2. The task definition, registered once per run and stage.
    if st.stages[index].task_definition.is_none() {
        let previous = st.stages[index].previous_task_definition.clone();
        match deploy::register(
            &clients.ecs,
            &d.cluster,
            &d.service,
            &run_id,
            &name,
            &images,
            previous.as_deref(),
        )
        .await
        {
            Ok(done) => {
                if done.registered {
                    crash_point("pipeline::after-register");
                }
                let stage = &mut st.stages[index];
                stage.task_definition = Some(done.task_definition.clone());
                stage.previous_task_definition = Some(done.previous.clone());
                stage.set_message(&format!(
                    "registered {} (replacing {}); updating the service",
                    done.task_definition, done.previous
                ));
                w.write(&st).await?;
            }
            Err(e) => {
                let why = refused(e)?;
                return fail_run(ctx, w, job_api, st, index, &why, &[]).await;
            }
        }
    }

    // 3. The service, unless it runs the task definition already.
    let ours = st.stages[index].task_definition.clone().unwrap_or_default();
    match deploy::update(&clients.ecs, &d.cluster, &d.service, &ours).await {
        Ok((id, updated)) => {
            if updated {
                crash_point("pipeline::after-update-service");
            }
            let stage = &mut st.stages[index];
            stage.deployment_id = Some(id.clone());
            stage.set_message(&format!("deployment {id} of {ours} in progress"));
            let now = ctx.rt.clock.now();
            w.set_conditions(&mut st, now);
            w.write(&st).await?;
            let images: Vec<String> = images
                .into_iter()
                .map(|(c, i)| format!("{c}={i}"))
                .collect();
            let note = format!(
                "stage {name}: service {} of cluster {} updated to {ours} ({}), deployment {id}",
                d.service,
                d.cluster,
                images.join(", ")
            );
            ctx.events
                .publish(
                    &w.obj,
                    EventType::Normal,
                    events::DEPLOY_STARTED,
                    "Deploy",
                    note,
                )
                .await;
            Ok(())
        }
        Err(e) => {
            let why = refused(e)?;
            fail_run(ctx, w, job_api, st, index, &why, &[]).await
        }
    }
}

/// Puts the service of Deploy stage `index` back on the task definition it replaced,
/// while it still runs the run's; records the deployment to follow, or the refusal.
async fn start_rollback(
    ctx: &Ctx,
    w: &mut Writer,
    connections: &BTreeMap<String, ClusterConnection>,
    mut st: PipelineStatus,
    index: usize,
) -> Result<(), Error> {
    let spec = w.obj.spec.clone();
    let now = ctx.rt.clock.now();
    let Some(stage) = st.stages.get(index) else {
        return Ok(());
    };
    let name = stage.name.clone();
    let ours = stage.task_definition.clone().unwrap_or_default();
    let previous = stage.previous_task_definition.clone().unwrap_or_default();
    let outcome = match deploy_of(&spec, &name) {
        None => Err(format!(
            "stage {name} is no longer a Deploy stage of the spec; put its service back by hand on {previous}"
        )),
        Some(d) => {
            let clients = clients_for(ctx, connections, &spec, d).await?;
            // A rollback by hand (capstan.dev/rollback) has no task definition of its
            // own run to compare: it puts back whatever runs now.
            let put_back = if ours.is_empty() {
                deploy::update(&clients.ecs, &d.cluster, &d.service, &previous).await
            } else {
                deploy::roll_back(&clients.ecs, &d.cluster, &d.service, &ours, &previous).await
            };
            match put_back {
                Ok((id, updated)) => {
                    if updated {
                        crash_point("pipeline::after-rollback-update");
                    }
                    Ok((id, d.service.clone()))
                }
                Err(DeployError::Refused(why)) => Err(why),
                Err(e) => return Err(e.into()),
            }
        }
    };
    let stage = &mut st.stages[index];
    let rb = stage.rollback.get_or_insert_with(RollbackStatus::pending);
    let (kind, reason, note) = match outcome {
        Ok((id, service)) => {
            rb.phase = RollbackPhase::Running;
            rb.started = Some(now);
            rb.deployment_id = Some(id.clone());
            rb.message = Some(format!("deployment {id} of {previous} in progress"));
            (
                EventType::Normal,
                events::ROLLBACK_STARTED,
                format!(
                    "stage {name}: putting service {service} back on {previous} (deployment {id})"
                ),
            )
        }
        Err(why) => {
            rb.phase = RollbackPhase::Failed;
            rb.started = Some(now);
            rb.finished = Some(now);
            rb.message = Some(cut(&why));
            (
                EventType::Warning,
                events::ROLLBACK_FAILED,
                format!("stage {name}: {why}"),
            )
        }
    };
    st.current_stage = Some(name);
    w.set_conditions(&mut st, now);
    w.write(&st).await?;
    ctx.events
        .publish(&w.obj, kind, reason, "Rollback", note)
        .await;
    Ok(())
}

/// Creates the Job the claimed stage `index` names. A stage whose templates no longer
/// render (a result missing) or whose Job the API refuses as invalid fails, with the
/// reason in its message; anything else is retried.
async fn create_job(ctx: &Ctx, w: &mut Writer, api: &Api<Job>, index: usize) -> Result<(), Error> {
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
fn end_run(st: &mut PipelineStatus, now: DateTime<Utc>, failed: Option<(usize, &str)>) {
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
fn record_end(
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

/// `Ready` (did the spec's revision go through every stage), `Progressing` (is a run
/// under way) and `RolledBack` (did the last run put services back), from the status.
fn set_conditions(st: &mut PipelineStatus, obj: &Pipeline, now: DateTime<Utc>) {
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

/// Writes the status with a replace conditioned on the resourceVersion last read or
/// written (409 when someone else wrote since).
struct Writer {
    api: Api<Pipeline>,
    obj: Pipeline,
    /// `ConnectionReady`, from the gate.
    connection_ready: Vec<Desired<'static>>,
    /// Why no Approval can be honoured now (the admission policy), if so.
    approval_problem: Option<String>,
}

impl Writer {
    async fn write(&mut self, status: &PipelineStatus) -> Result<(), kube::Error> {
        let mut o = self.obj.clone();
        o.status = Some(status.clone());
        self.obj = replace_status_conditioned(&self.api, o, FIELD_MANAGER).await?;
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
