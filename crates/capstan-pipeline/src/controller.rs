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
//! Job stages run. Deploy stages (ECS), and what depends on them (smoke tests after a
//! deploy, approvals, rollbacks), are not in this build: a Pipeline with a Deploy stage
//! gets `Ready=Unknown, NotImplemented` naming that, and nothing starts.
//!
//! Crash points (tests; [`capstan_core::failpoints`]): `pipeline::after-start-run`
//! (the run's claim written), `pipeline::after-claim-stage` (a stage claimed, its Job
//! not created), `pipeline::after-create-job` (the Job created, nothing recorded).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use capstan_core::conditions::{self, Desired, READY, Status};
use capstan_core::connection::ConnectionKind;
use capstan_core::events::{EventType, Publisher, ready_turned_false};
use capstan_core::failpoints::{self, crash_point};
use capstan_core::gate::{Gate, INVALID_SPEC, NOT_IMPLEMENTED, connection_gate, watch_connections};
use capstan_core::metrics::ControllerMetrics;
use capstan_core::runtime::{Runtime, run_controller};
use capstan_core::ssa::{replace_status_conditioned, update_status};
use chrono::{DateTime, Utc};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::controller::Action;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::crd::{
    ConcurrencyPolicy, Pipeline, PipelinePhase, PipelineStatus, RunSummary, StageAction,
    StagePhase, StageType, condition_types as ct, reasons,
};
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
}

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
}

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes call failed.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
}

impl capstan_core::error::Categorized for Error {
    fn category(&self) -> &'static str {
        match self {
            Error::Kube(e) => e.category(),
        }
    }
}

/// `Ready` when the spec cannot run: `InvalidSpec` with the validation's message, or
/// `NotImplemented` for Deploy stages. `None`: it runs.
fn cannot_run(obj: &Pipeline) -> Option<Desired<'static>> {
    // FieldError paths already start at `spec.`.
    if let Err(errors) = crate::validation::validate(&obj.spec) {
        return Some(Desired::new(
            READY,
            false,
            INVALID_SPEC,
            crate::validation::summarize(&errors),
        ));
    }
    let deploys: Vec<&str> = obj
        .spec
        .stages
        .iter()
        .filter(|s| s.type_ == StageType::Deploy)
        .map(|s| s.name.as_str())
        .collect();
    (!deploys.is_empty()).then(|| {
        Desired::new(
            READY,
            Status::Unknown,
            NOT_IMPLEMENTED,
            format!(
                "the spec is valid and its connection allowed; Deploy stages ({}) are not part of this Capstan build yet, so no run starts (Job-only pipelines run)",
                deploys.join(", ")
            ),
        )
    })
}

async fn reconcile(obj: Arc<Pipeline>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let _timer = ctx.metrics.start();
    let ns = obj.namespace().unwrap_or_default();
    let gate = connection_gate(
        &ctx.rt,
        &ns,
        obj.spec.connection_ref.as_ref(),
        ConnectionKind::Aws,
        &[],
    )
    .await?;
    let refusal = match gate {
        Gate::Refused(conditions) => Some(conditions),
        Gate::Proceed(_, mut conditions) => cannot_run(&obj).map(|d| {
            conditions.push(d);
            conditions
        }),
    };
    if let Some(conditions) = refusal {
        return refuse(&ctx, &obj, conditions).await.map_err(Error::from);
    }
    let mut w = Writer {
        api: Api::namespaced(ctx.rt.client.clone(), &ns),
        obj: (*obj).clone(),
    };
    match run_steps(&ctx, &mut w).await {
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

/// Asks the scheduler, claims, performs, records, until it says wait.
async fn run_steps(ctx: &Ctx, w: &mut Writer) -> Result<Action, Error> {
    let ns = w.obj.namespace().unwrap_or_default();
    let uid = w.obj.uid().unwrap_or_default();
    let job_api: Api<Job> = Api::namespaced(ctx.rt.client.clone(), &ns);
    let pod_api: Api<Pod> = Api::namespaced(ctx.rt.client.clone(), &ns);
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
        let now = ctx.rt.clock.now();
        if scheduler::run_active(&st)
            && st.current_revision.as_deref() != Some(spec.revision.as_str())
            && spec.concurrency_policy == ConcurrencyPolicy::Queue
        {
            st.queue(&spec.revision);
        }
        let next = scheduler::next(&spec, &st, &observed);
        tracing::debug!(object = %key_of(&w.obj), ?next, "next");
        match next {
            Next::Wait => {
                set_conditions(&mut st, &w.obj, now);
                if st != w.status() {
                    w.write(&st).await?;
                }
                return Ok(Action::await_change());
            }
            Next::StartRun => {
                st.start_run(&spec);
                st.run_number += 1;
                st.run_id = Some(format!("{}-{}", w.obj.name_any(), st.run_number));
                st.run_started = Some(now);
                st.phase = Some(PipelinePhase::Running);
                set_conditions(&mut st, &w.obj, now);
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
                stage.phase = StagePhase::Running;
                stage.attempt = 1;
                stage.started = Some(now);
                stage.job_name = Some(scheduler::job_name(&name, run_number, &stage.name, 1));
                st.current_stage = Some(stage.name.clone());
                set_conditions(&mut st, &w.obj, now);
                // The claim, then the Job.
                w.write(&st).await?;
                crash_point("pipeline::after-claim-stage");
                create_job(ctx, w, &job_api, index).await?;
            }
            Next::CreateJob { index } => create_job(ctx, w, &job_api, index).await?,
            Next::StageSucceeded { index, results } => {
                if let Some(stage) = st.stages.get_mut(index) {
                    stage.phase = StagePhase::Succeeded;
                    stage.finished = Some(now);
                    stage.results = results;
                    stage.set_message("the Job completed");
                }
                set_conditions(&mut st, &w.obj, now);
                w.write(&st).await?;
            }
            Next::StageFailed {
                index,
                message,
                running,
            } => {
                // Stages running side by side stop with the run: their Jobs first (a
                // crash after this finds the run failed again and deletes nothing more).
                for name in &running {
                    jobs::delete(&job_api, name).await?;
                }
                end_run(&mut st, now, Some((index, &message)));
                set_conditions(&mut st, &w.obj, now);
                w.write(&st).await?;
                let note = format!(
                    "run {}: stage {} failed: {message}",
                    st.run_id.as_deref().unwrap_or_default(),
                    st.stages
                        .get(index)
                        .map(|s| s.name.as_str())
                        .unwrap_or_default()
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
            }
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
                record_end(&mut st, now, PipelinePhase::Superseded, None);
                set_conditions(&mut st, &w.obj, now);
                w.write(&st).await?;
                let note = format!(
                    "run {run} stopped for revision {} (concurrencyPolicy Supersede); Jobs deleted: {}",
                    spec.revision,
                    if running.is_empty() {
                        "none".to_owned()
                    } else {
                        running.join(", ")
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
            Next::FinishRun => {
                end_run(&mut st, now, None);
                set_conditions(&mut st, &w.obj, now);
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

/// Creates the Job the claimed stage `index` names. A stage whose templates no longer
/// render (a result missing) or whose Job the API refuses as invalid fails, with the
/// reason in its message; anything else is retried.
async fn create_job(ctx: &Ctx, w: &mut Writer, api: &Api<Job>, index: usize) -> Result<(), Error> {
    let st = w.status();
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
    let mut st = st;
    let now = ctx.rt.clock.now();
    end_run(&mut st, now, Some((index, &failure)));
    set_conditions(&mut st, &w.obj, now);
    w.write(&st).await?;
    Ok(())
}

/// Ends the run in `st`: failed at stage `index` (the stages after it skipped), or
/// succeeded; recorded in the history.
fn end_run(st: &mut PipelineStatus, now: DateTime<Utc>, failed: Option<(usize, &str)>) {
    let mut failed_stage = None;
    if let Some((index, message)) = failed {
        for (i, s) in st.stages.iter_mut().enumerate() {
            if i == index {
                s.phase = StagePhase::Failed;
                s.finished = Some(now);
                s.set_message(message);
                failed_stage = Some(s.name.clone());
            } else if s.phase == StagePhase::Running {
                s.phase = StagePhase::Cancelled;
                s.finished = Some(now);
                s.set_message("cancelled: another stage of the run failed");
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
    });
}

/// `Ready` (did the spec's revision go through every stage) and `Progressing` (is a
/// run under way), from the status.
fn set_conditions(st: &mut PipelineStatus, obj: &Pipeline, now: DateTime<Utc>) {
    let generation = obj.meta().generation;
    let revision = obj.spec.revision.as_str();
    let last = st.history.first().cloned();
    let ready = match last {
        Some(r) if r.revision == revision && r.outcome == PipelinePhase::Succeeded => Desired::new(
            ct::READY,
            true,
            reasons::SUCCEEDED,
            format!("run {}: revision {revision} went through every stage", r.id),
        ),
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
    let progressing = if scheduler::run_active(st) {
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
    st.observed_generation = generation;
    for d in [ready, progressing] {
        conditions::set(&mut st.conditions, d, generation, now);
    }
}

/// Writes the status with a replace conditioned on the resourceVersion last read or
/// written (409 when someone else wrote since).
struct Writer {
    api: Api<Pipeline>,
    obj: Pipeline,
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
}

/// Runs the controller until `shutdown`.
pub async fn run(rt: Runtime, metrics: Metrics, shutdown: CancellationToken) {
    failpoints::from_env();
    let ctx = Arc::new(Ctx {
        events: Publisher::new(rt.client.clone(), FIELD_MANAGER, &rt.instance),
        rt: rt.clone(),
        metrics: metrics.controller,
    });
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
            watch_connections(&rt, c, |o: &Pipeline| o.spec.connection_ref.as_ref()).owns(
                jobs,
                watcher::Config::default().labels(jobs::PIPELINE_UID_LABEL),
            )
        },
        shutdown,
    )
    .await;
}
