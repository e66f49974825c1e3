//! The SecretRotation controller.
//!
//! Reconcile pipeline, one object at a time:
//!
//! 1. **gate**: resolve the ClusterConnection the object names and refuse a namespace it
//!    does not allow, or a secret, path or ECS service its scopes do not grant the
//!    namespace ([`capstan_core::gate::connection_gate`]), before any other call;
//! 2. **validate** what the schema cannot ([`crate::validation::validate`]) and read the
//!    policy ([`Policy::from_spec`]); an invalid spec waits for a change;
//! 3. **decide** ([`rotation::plan`]): nothing due → write status, requeue at the next
//!    rotation time (no backend or target call at all between rotations);
//! 4. **build clients** ([`crate::context::build_clients`]): backend and target from the
//!    spec, the admin Secret from the object's namespace, Vault/AWS from the connection;
//!    before a rotation starts, check that the backend and target answer, so that an
//!    unresolvable reference gives `Ready=False` naming it with nothing changed;
//! 5. **claim** the step in status with an update conditioned on the resourceVersion
//!    read (a stale Capstan, whose view is older, gets 409 and stops);
//! 6. **do exactly one side effect** (store pending, set on the target, test, promote,
//!    deliver), **record it** (which claims the next step), and go on until the
//!    rotation is finished, waits for a rollout, or fails; then requeue.
//!
//! A leader lease does not fence: a Capstan frozen past its lease between its claim and
//! its side effect still runs it when resumed. Backends refuse such a stale write by
//! themselves (CAS, labels); the database write carries a fencing token
//! ([`crate::targets::Fence`]: object, rotation number, attempt) that the target keeps
//! and checks under a lock, so a stale `SetTarget` is refused ([`TargetError::Fenced`])
//! and its Capstan treats it as a lost claim. Rotation numbers only grow per object.
//!
//! A crash anywhere resumes from what the backend shows ([`rotation::resume`]). Every
//! step and delivery writes one audit line ([`crate::audit`]); Events mark rotations
//! started, finished and failed.

use std::sync::Arc;
use std::time::Duration;

use capstan_core::clock::from_k8s_time;
use capstan_core::conditions::{self, Desired, Status};
use capstan_core::connection::{ClusterConnection, ConnectionKind};
use capstan_core::error::Categorized;
use capstan_core::gate::{ConnectionIndex, Gate, connection_gate, watch_connections_indexed};

use capstan_core::runtime::{Runtime, metadata_cache, run_controller_cached};
use chrono::{DateTime, Utc};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use tokio_util::sync::CancellationToken;

use crate::audit::{self, Subject};
use crate::backend::{BackendError, Credential, RotationId, Version};
use crate::context::{Clients, Context, RefError, build_clients};
pub use crate::context::{FIELD_MANAGER, Metrics, OutcomeLabels};
use crate::crd::{
    Backend, ROTATE_NOW_ANNOTATION, RotationFailure, RotationInProgress, RotationOutcome,
    RotationStep, RotationSummary, RotationTrigger, SecretRotation, SecretRotationStatus, Target,
    condition_types as ct, reasons,
};
use crate::delivery;
use crate::generator::PasswordGenerator;
use crate::rotation::{self, BackendView, Outcome, Plan, Policy, Resume, Transition, Users};
use crate::targets::{Fence, TargetError};

/// Event reasons (CamelCase, stable).
pub mod events {
    /// A rotation started.
    pub const ROTATION_STARTED: &str = "RotationStarted";
    /// A rotation finished: the new credential is current and delivered.
    pub const ROTATION_SUCCEEDED: &str = "RotationSucceeded";
    /// An attempt failed definitively; a fresh value is tried.
    pub const ATTEMPT_FAILED: &str = "RotationAttemptFailed";
    /// Every attempt failed; the previous credential stays current.
    pub const ROTATION_FAILED: &str = "RotationFailed";
    /// A reference (admin Secret, database, Vault path, AWS secret) cannot be resolved.
    pub const REFERENCE_UNRESOLVED: &str = "ReferenceUnresolved";
}

/// How often a rotation waiting for its rollouts looks again.
const DELIVERY_POLL: Duration = Duration::from_secs(2);

/// Why a reconcile failed. Messages name objects, never values.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes call failed.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// The status claim was lost: someone (a stale or newer Capstan) wrote first.
    #[error("status claim lost on {0}: another writer changed the object")]
    ClaimLost(String),
}

impl Categorized for Error {
    fn category(&self) -> &'static str {
        match self {
            Error::Kube(e) => e.category(),
            Error::ClaimLost(_) => "claim_lost",
        }
    }
}

/// Runs the controller until `shutdown`.
pub async fn run(rt: Runtime, metrics: Metrics, shutdown: CancellationToken) {
    failpoints_from_env();
    let ctx = Arc::new(Context::new(rt.clone(), metrics));
    let index = Arc::new(ConnectionIndex::default());
    // 10,000 idle objects must fit in 64 MB: the cache keeps only metadata, and each
    // reconcile takes the whole object its watch event brought, or reads it.
    let cache = metadata_cache(ctx.fresh.clone(), index.clone(), connections_of);
    // A deleted object leaves the overdue gauge and the failure counts too.
    let forget = ctx.clone();
    let convert = move |ev: kube::runtime::watcher::Event<SecretRotation>| {
        if let kube::runtime::watcher::Event::Delete(o) = &ev {
            forget.forget(&key_of(o));
        }
        cache(ev)
    };
    run_controller_cached(
        &rt,
        "secret-rotation",
        ctx,
        reconcile,
        error_policy,
        // A refusal for the backend's connection or a separate ECS delivery connection
        // waits for a change to it.
        |c, _| watch_connections_indexed(&rt, c, index.clone()),
        convert,
        shutdown,
    )
    .await;
}

/// The ClusterConnections an object names: its backend's and its ECS delivery's.
fn connections_of(o: &SecretRotation) -> Vec<String> {
    let mut names: Vec<String> = o
        .spec
        .connection_ref
        .iter()
        .chain(o.spec.ecs_connection())
        .map(|r| r.name.clone())
        .collect();
    names.dedup();
    names
}

fn error_policy(obj: Arc<Cached>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.controller.failure(err);
    match err {
        // A newer view is on its way through the watch.
        Error::ClaimLost(_) => Action::requeue(Duration::from_millis(500)),
        _ => Action::requeue(rotation::backoff(ctx.failed(&key_of(&*obj)))),
    }
}

/// What the controller's cache holds of a SecretRotation: its metadata.
type Cached = PartialObjectMeta<SecretRotation>;

fn key_of(obj: &impl Resource) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

// ---------------------------------------------------------------------------------------
// Failpoints (tests only): `FAILPOINTS="secret-rotation::after-SetTarget=return"` makes
// the process abort right after that side effect, before it is recorded;
// `secret-rotation::before-set-password=sleep(5000)` holds it in `SetTarget` after the
// pending value was read, right before the database write (where a frozen leader is
// dangerous).

fn failpoints_from_env() {
    #[cfg(feature = "failpoints")]
    if let Ok(spec) = std::env::var("FAILPOINTS") {
        for part in spec.split(';').filter(|p| !p.trim().is_empty()) {
            if let Some((name, actions)) = part.split_once('=')
                && let Err(e) = fail::cfg(name.trim(), actions.trim())
            {
                tracing::warn!(failpoint = name, error = %e, "bad failpoint");
            }
        }
    }
}

/// A crash-injection point after a side effect: with the `failpoints` feature and the
/// point configured to `return`, the process aborts here (as a crash would); `sleep(ms)`
/// and `pause` hold the reconcile. Compiled out otherwise.
fn crash_point(_name: &str) {
    #[cfg(feature = "failpoints")]
    {
        let _: Option<()> = fail::eval(_name, |_| {
            tracing::warn!(failpoint = _name, "failpoint: aborting");
            std::process::abort()
        });
    }
}

// ---------------------------------------------------------------------------------------
// Status writes, conditioned on the resourceVersion last read or written.

struct Writer {
    api: Api<SecretRotation>,
    obj: SecretRotation,
}

impl Writer {
    /// Replaces the status, failing with [`Error::ClaimLost`] if the object changed since
    /// it was read (HTTP 409).
    async fn write(&mut self, status: &SecretRotationStatus) -> Result<(), Error> {
        let mut o = self.obj.clone();
        o.status = Some(status.clone());
        o.metadata.managed_fields = None;
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        match self.api.replace_status(&o.name_any(), &params, &o).await {
            Ok(new) => {
                self.obj = new;
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Err(Error::ClaimLost(key_of(&self.obj))),
            Err(e) => Err(e.into()),
        }
    }

    /// Sets an annotation on the object, conditioned on the resourceVersion like a status
    /// write (HTTP 409 is [`Error::ClaimLost`]). A merge patch, not a replace: the cached
    /// object lacks what the cache drops (e.g. kubectl's last-applied annotation), which
    /// a replace would delete.
    async fn annotate(&mut self, key: &str, value: String) -> Result<(), Error> {
        let patch = serde_json::json!({
            "metadata": {
                "resourceVersion": self.obj.resource_version(),
                "annotations": { key: value },
            }
        });
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        match self
            .api
            .patch(&self.obj.name_any(), &params, &Patch::Merge(&patch))
            .await
        {
            Ok(new) => {
                self.obj = new;
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Err(Error::ClaimLost(key_of(&self.obj))),
            Err(e) => Err(e.into()),
        }
    }

    fn status(&self) -> SecretRotationStatus {
        self.obj.status.clone().unwrap_or_default()
    }
}

/// What the conditions say beyond the status record.
struct View<'a> {
    policy: Option<&'a Policy>,
    created: DateTime<Utc>,
    now: DateTime<Utc>,
    idle_reason: &'static str,
    ready_override: Option<(&'static str, String)>,
    delivery_empty: bool,
    gate: Vec<Desired<'static>>,
}

/// Sets the four conditions (plus the gate's) on `status` from the record and `view`.
fn set_conditions(status: &mut SecretRotationStatus, generation: Option<i64>, view: View<'_>) {
    let mut desired = view.gate;
    let last_failed = status.recent_rotations.first().filter(|r| {
        r.outcome == RotationOutcome::Failed
            && status.last_rotation_time.is_none_or(|t| t < r.finished)
    });
    desired.push(match (&view.ready_override, last_failed) {
        (Some((reason, msg)), _) => Desired::new(ct::READY, false, reason, msg.clone()),
        (None, Some(f)) => Desired::new(
            ct::READY,
            false,
            reasons::ROTATION_FAILED,
            format!(
                "rotation {} failed after {} attempt(s) ({}); the previous credential stays current",
                f.id,
                f.attempts,
                f.failure_reason.as_deref().unwrap_or("unknown")
            ),
        ),
        (None, None) if status.last_rotation_time.is_some() => Desired::new(
            ct::READY,
            true,
            reasons::CREDENTIAL_CURRENT,
            format!(
                "version {} is current, tested and delivered",
                status.current_version.as_deref().unwrap_or("-")
            ),
        ),
        (None, None) => Desired::new(
            ct::READY,
            Status::Unknown,
            reasons::AWAITING_FIRST_ROTATION,
            "no rotation has completed yet",
        ),
    });
    desired.push(match &status.rotation {
        Some(r) => {
            let retrying = r.attempt > 1
                || status
                    .last_failure
                    .as_ref()
                    .is_some_and(|f| f.time() >= r.started);
            let reason = match (retrying, r.trigger) {
                (true, _) => reasons::RETRYING,
                (false, RotationTrigger::Initial) => reasons::INITIAL_ROTATION,
                (false, RotationTrigger::Schedule) => reasons::SCHEDULED,
                (false, RotationTrigger::RotateNow) => reasons::ROTATE_NOW_REQUESTED,
            };
            Desired::new(
                ct::ROTATING,
                true,
                reason,
                format!(
                    "rotation {}: step {}, attempt {}",
                    r.id,
                    r.step.as_str(),
                    r.attempt
                ),
            )
        }
        None => Desired::new(
            ct::ROTATING,
            false,
            view.idle_reason,
            match view.idle_reason {
                reasons::SUSPENDED => "spec.suspend is true".to_owned(),
                reasons::OUTSIDE_WINDOW => "a rotation is due; waiting for the window".into(),
                _ => "no rotation due".into(),
            },
        ),
    });
    desired.push(if view.delivery_empty {
        Desired::new(
            ct::DELIVERED,
            true,
            reasons::NOTHING_TO_DELIVER,
            "spec.delivery is empty",
        )
    } else if status
        .rotation
        .as_ref()
        .is_some_and(|r| r.step == RotationStep::Deliver)
    {
        Desired::new(
            ct::DELIVERED,
            false,
            reasons::DELIVERY_IN_PROGRESS,
            "waiting for the delivery of the new version",
        )
    } else if status.last_rotation_time.is_some() {
        Desired::new(
            ct::DELIVERED,
            true,
            reasons::DELIVERED,
            format!(
                "version {} delivered",
                status.current_version.as_deref().unwrap_or("-")
            ),
        )
    } else {
        Desired::new(
            ct::DELIVERED,
            Status::Unknown,
            reasons::AWAITING_FIRST_ROTATION,
            "nothing delivered yet",
        )
    });
    let late = view
        .policy
        .is_some_and(|p| rotation::overdue(p, status, view.created, view.now));
    desired.push(if late {
        Desired::new(
            ct::OVERDUE,
            true,
            reasons::ROTATION_OVERDUE,
            "the scheduled rotation time passed without a successful rotation",
        )
    } else {
        Desired::new(ct::OVERDUE, false, reasons::ON_SCHEDULE, "on schedule")
    });
    status.observed_generation = generation;
    for d in desired {
        conditions::set(&mut status.conditions, d, generation, view.now);
    }
}

// ---------------------------------------------------------------------------------------

/// Everything one pass needs about its object.
struct Pass<'a> {
    ctx: &'a Context,
    key: String,
    uid: String,
    obj: &'a SecretRotation,
    policy: Policy,
    created: DateTime<Utc>,
    gate: Vec<Desired<'static>>,
    has_target: bool,
    delivery_empty: bool,
}

impl Pass<'_> {
    fn view(&self, idle: &'static str, ready_override: Option<(&'static str, String)>) -> View<'_> {
        View {
            policy: Some(&self.policy),
            created: self.created,
            now: self.ctx.rt.clock.now(),
            idle_reason: idle,
            ready_override,
            delivery_empty: self.delivery_empty,
            gate: self.gate.clone(),
        }
    }

    fn subject<'s>(&'s self, r: &'s RotationInProgress) -> Subject<'s> {
        Subject {
            object: &self.key,
            backend: self.obj.spec.backend.kind(),
            target: self.obj.spec.target.kind(),
            instance: &self.ctx.rt.instance,
            rotation: &r.id,
            attempt: r.attempt,
        }
    }

    fn id(&self, r: &RotationInProgress) -> RotationId {
        RotationId::new(
            self.uid.clone(),
            rotation::rotation_number(r),
            u32::try_from(r.attempt).unwrap_or(1),
        )
    }

    /// The fencing token of this attempt's database writes.
    fn fence(&self, r: &RotationInProgress) -> Fence {
        let id = self.id(r);
        Fence {
            object_uid: id.object_uid,
            rotation: id.rotation,
            attempt: id.attempt,
        }
    }

    /// Vault refused the backend's token: a login token (AppRole) is logged in afresh
    /// next time instead of being reused until its lease ends.
    fn forget_login_if_denied(&self, reason: &str) {
        if reason == "BackendAccessDenied"
            && matches!(self.obj.spec.backend, Backend::Vault(_))
            && let Some(c) = &self.obj.spec.connection_ref
        {
            crate::context::forget_vault_token(self.ctx, &c.name);
        }
    }

    async fn event(&self, type_: EventType, reason: &str, note: String) {
        self.ctx
            .events
            .publish(self.obj, type_, reason, "Rotate", note)
            .await;
    }

    /// The status with kinds, next time and conditions set.
    fn finish_status(
        &self,
        status: &mut SecretRotationStatus,
        idle: &'static str,
        ready_override: Option<(&'static str, String)>,
    ) {
        status.backend = Some(self.obj.spec.backend.kind());
        status.target = Some(self.obj.spec.target.kind());
        let now = self.ctx.rt.clock.now();
        status.next_rotation_time =
            match rotation::plan(&self.policy, status, None, self.created, now) {
                Plan::Wait { until, .. } => until,
                Plan::Start { .. } => Some(now),
                Plan::Continue => None,
            }
            .map(whole_second_after);
        if self.policy.suspend {
            status.next_rotation_time = None;
        }
        set_conditions(
            status,
            self.obj.meta().generation,
            self.view(idle, ready_override),
        );
        let late = conditions::is_true(&status.conditions, ct::OVERDUE);
        self.ctx.set_overdue(&self.key, late);
    }
}

/// `t` rounded up to a whole second: `status.nextRotationTime` reads as a plain date
/// in `kubectl get` (not nanoseconds), and is never before the time it stands for.
fn whole_second_after(t: DateTime<Utc>) -> DateTime<Utc> {
    let up = i64::from(t.timestamp_subsec_nanos() > 0);
    DateTime::from_timestamp(t.timestamp().saturating_add(up), 0).unwrap_or(t)
}

/// Reconciles one object with its AWS calls queued under its namespace's share of
/// the request budget.
async fn reconcile(cached: Arc<Cached>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = cached.namespace().unwrap_or_default();
    capstan_core::budget::in_namespace(ns, reconcile_object(cached, ctx)).await
}

async fn reconcile_object(cached: Arc<Cached>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.controller.start();
    // The cache holds a copy without status; work on the whole object.
    let Some(obj) = ctx.fresh.take(&ctx.rt.client, &*cached).await? else {
        // Gone (its Delete event may have been missed while the watch restarted).
        ctx.forget(&key_of(&*cached));
        return Ok(Action::await_change());
    };
    let ns = obj.namespace().unwrap_or_default();
    let key = key_of(&*obj);
    let mut w = Writer {
        api: Api::namespaced(ctx.rt.client.clone(), &ns),
        obj: (*obj).clone(),
    };
    let now = ctx.rt.clock.now();
    let status = w.status();
    let generation = obj.meta().generation;
    let created = obj
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(now, from_k8s_time);

    // 1. Gate.
    let kind = match obj.spec.backend {
        Backend::Vault(_) => ConnectionKind::Vault,
        _ => ConnectionKind::Aws,
    };
    let resources = obj.spec.scoped_resources();
    let (connection, gate) = match connection_gate(
        &ctx.rt,
        &ns,
        obj.spec.connection_ref.as_ref(),
        kind,
        &resources,
    )
    .await?
    {
        Gate::Refused(conds) => {
            return refuse(&ctx, &mut w, &status, generation, conds).await;
        }
        Gate::Proceed(conn, conds) => (conn, conds),
    };
    // The ECS connection, when it is not the one above.
    let ecs_connection = match obj.spec.ecs_connection() {
        None => None,
        Some(r)
            if obj
                .spec
                .connection_ref
                .as_ref()
                .is_some_and(|c| c.name == r.name) =>
        {
            connection.clone()
        }
        Some(r) => match connection_gate(
            &ctx.rt,
            &ns,
            Some(r),
            ConnectionKind::Aws,
            &obj.spec.ecs_scoped_resources(),
        )
        .await?
        {
            Gate::Refused(conds) => {
                return refuse(&ctx, &mut w, &status, generation, conds).await;
            }
            Gate::Proceed(conn, _) => conn,
        },
    };

    // 2. Validate.
    let delivery_empty = obj.spec.delivery.as_ref().is_none_or(|d| d.is_empty());
    let policy = match crate::validation::validate(&obj.spec)
        .map_err(|e| crate::validation::summarize(&e))
        .and_then(|()| Policy::from_spec(&obj.spec))
    {
        Ok(p) => p,
        Err(msg) => {
            let warning = capstan_core::events::ready_turned_false(
                &status.conditions,
                &[Desired::new(
                    ct::READY,
                    false,
                    reasons::INVALID_SPEC,
                    msg.clone(),
                )],
            );
            let mut st = status.clone();
            set_conditions(
                &mut st,
                generation,
                View {
                    policy: None,
                    created,
                    now,
                    idle_reason: reasons::IDLE,
                    ready_override: Some((reasons::INVALID_SPEC, msg)),
                    delivery_empty,
                    gate,
                },
            );
            if st != status {
                w.write(&st).await?;
            }
            if let Some((reason, note)) = warning {
                ctx.events
                    .publish(&w.obj, EventType::Warning, &reason, "Validate", note)
                    .await;
            }
            return Ok(Action::await_change());
        }
    };
    let pass = Pass {
        ctx: &ctx,
        key: key.clone(),
        uid: obj.uid().unwrap_or_default(),
        obj: &obj,
        policy,
        created,
        gate,
        has_target: !matches!(obj.spec.target, Target::ValueOnly(_)),
        delivery_empty,
    };

    // 3. Decide.
    let token = obj
        .annotations()
        .get(ROTATE_NOW_ANNOTATION)
        .map(String::as_str);
    match rotation::plan(&pass.policy, &status, token, created, now) {
        Plan::Wait { reason, until } => {
            let mut st = status.clone();
            pass.finish_status(&mut st, reason, None);
            if st != status {
                w.write(&st).await?;
            }
            Ok(match until {
                Some(t) => Action::requeue(rotation::until(t, now).max(Duration::from_millis(200))),
                None => Action::await_change(),
            })
        }
        Plan::Start { trigger, token } => {
            let clients = match clients_or_report(
                &pass,
                &mut w,
                connection.as_deref(),
                ecs_connection.as_deref(),
            )
            .await?
            {
                Ok(c) => c,
                Err(action) => return Ok(action),
            };
            // Everything the rotation needs must answer before anything changes.
            let current = match precheck(&clients).await {
                Ok(current) => current,
                Err(e) => return report_unresolved(&pass, &mut w, e).await,
            };
            let mut st = status.clone();
            let active = st
                .active_username
                .clone()
                .or_else(|| current.as_ref().and_then(|v| v.credential.username.clone()));
            let username = rotation::next_username(&pass.policy.users, active.as_deref());
            let mut r = rotation::start(trigger, token.clone(), username, now);
            // Rotation numbers (clock milliseconds) must grow per object even if this
            // Capstan's clock is behind the last one's: they order the target's fences.
            if let Some(last) = st
                .recent_rotations
                .iter()
                .filter_map(|s| s.id.parse::<u64>().ok())
                .max()
                && rotation::rotation_number(&r) <= last
            {
                r.id = (last + 1).to_string();
            }
            if token.is_some() {
                st.observed_rotate_now_token = token;
            }
            st.current_version = current.map(|v| v.id);
            st.rotation = Some(r.clone());
            pass.finish_status(&mut st, reasons::IDLE, None);
            w.write(&st).await?;
            ctx.succeeded(&key);
            pass.event(
                EventType::Normal,
                events::ROTATION_STARTED,
                format!("rotation {} started ({:?})", r.id, r.trigger),
            )
            .await;
            run_steps(&pass, &mut w, &clients, true).await
        }
        Plan::Continue => {
            let clients = match clients_or_report(
                &pass,
                &mut w,
                connection.as_deref(),
                ecs_connection.as_deref(),
            )
            .await?
            {
                Ok(c) => c,
                Err(action) => return Ok(action),
            };
            run_steps(&pass, &mut w, &clients, false).await
        }
    }
}

/// The connection gate refused the object: its conditions, and a Warning Event when
/// that is new (once per transition, not per reconcile); then wait for a change.
async fn refuse(
    ctx: &Context,
    w: &mut Writer,
    status: &SecretRotationStatus,
    generation: Option<i64>,
    conds: Vec<Desired<'static>>,
) -> Result<Action, Error> {
    let now = ctx.rt.clock.now();
    let warning = capstan_core::events::ready_turned_false(&status.conditions, &conds);
    let mut st = status.clone();
    st.observed_generation = generation;
    for d in conds {
        conditions::set(&mut st.conditions, d, generation, now);
    }
    if st != *status {
        w.write(&st).await?;
    }
    if let Some((reason, note)) = warning {
        ctx.events
            .publish(&w.obj, EventType::Warning, &reason, "Reconcile", note)
            .await;
    }
    Ok(Action::await_change())
}

/// Builds the clients, or reports the unresolvable reference and says when to retry.
async fn clients_or_report(
    pass: &Pass<'_>,
    w: &mut Writer,
    connection: Option<&ClusterConnection>,
    ecs_connection: Option<&ClusterConnection>,
) -> Result<Result<Clients, Action>, Error> {
    let ns = pass.obj.namespace().unwrap_or_default();
    match build_clients(pass.ctx, &ns, &pass.obj.spec, connection, ecs_connection).await {
        Ok(c) => Ok(Ok(c)),
        Err(e) => report_unresolved(pass, w, e).await.map(Err),
    }
}

async fn precheck(clients: &Clients) -> Result<Option<Version>, RefError> {
    clients.target.check().await.map_err(|e| RefError {
        reason: e.reason(),
        message: e.to_string(),
    })?;
    clients.backend.current().await.map_err(|e| RefError {
        reason: e.reason(),
        message: e.to_string(),
    })
}

/// `Ready=False` naming the reference; nothing else changes. Retried with backoff.
async fn report_unresolved(pass: &Pass<'_>, w: &mut Writer, e: RefError) -> Result<Action, Error> {
    pass.forget_login_if_denied(e.reason);
    let before = w.status();
    let mut st = before.clone();
    let was = conditions::find(&before.conditions, ct::READY).map(|c| c.reason.clone());
    pass.finish_status(&mut st, reasons::IDLE, Some((e.reason, e.message.clone())));
    if st != before {
        w.write(&st).await?;
    }
    if was.as_deref() != Some(e.reason) {
        tracing::info!(object = %pass.key, reason = e.reason, "reference unresolved: {}", e.message);
        pass.event(EventType::Warning, events::REFERENCE_UNRESOLVED, e.message)
            .await;
    }
    Ok(Action::requeue(rotation::backoff(
        pass.ctx.failed(&pass.key),
    )))
}

/// How one step ended, with what the record needs.
enum StepResult {
    Done(Option<String>),
    Waiting,
    Transient(&'static str, String),
    Rejected(&'static str, String),
    ClaimLost(String),
}

fn from_backend(e: BackendError) -> StepResult {
    if e.is_conflict() {
        StepResult::ClaimLost(e.to_string())
    } else {
        StepResult::Transient(e.reason(), e.to_string())
    }
}

fn from_target(e: TargetError, testing: bool) -> StepResult {
    if matches!(e, TargetError::Fenced { .. }) {
        // A newer attempt wrote the database: this Capstan is stale.
        return StepResult::ClaimLost(e.to_string());
    }
    let login_failed = matches!(e, TargetError::LoginFailed { .. });
    if e.is_definitive_rejection() || (testing && login_failed) {
        StepResult::Rejected(e.reason(), e.to_string())
    } else {
        StepResult::Transient(e.reason(), e.to_string())
    }
}

/// Runs the steps of the rotation in progress: claim, one side effect, record, until it
/// finishes, waits, or fails. `started`: this pass has just claimed a new rotation, so
/// the backend can hold nothing of it (its token is new) and need not be read again.
async fn run_steps(
    pass: &Pass<'_>,
    w: &mut Writer,
    clients: &Clients,
    started: bool,
) -> Result<Action, Error> {
    let backend = clients.backend.as_ref();
    let mut st = w.status();
    let Some(mut r) = st.rotation.clone() else {
        return Ok(Action::requeue(Duration::from_millis(200)));
    };

    // Resume from what the backend shows (after a crash, or a takeover).
    let id = pass.id(&r);
    let (current, view) = if started {
        let nothing = BackendView {
            promoted: false,
            pending: false,
        };
        (None, nothing)
    } else {
        let current = match backend.current().await {
            Ok(c) => c,
            Err(e) => return record_result(pass, w, st, r, from_backend(e)).await,
        };
        let pending = match backend.pending(&id).await {
            Ok(p) => p,
            Err(e) => return record_result(pass, w, st, r, from_backend(e)).await,
        };
        let token = id.token();
        let view = BackendView {
            promoted: current
                .as_ref()
                .is_some_and(|v| v.rotation_token.as_deref() == Some(token.as_str())),
            pending: pending.is_some(),
        };
        (current, view)
    };
    let mut claimed = true;
    match rotation::resume(r.step, view) {
        Resume::Run(step) if step != r.step => {
            if view.promoted
                && st.current_version.as_deref() != current.as_ref().map(|v| v.id.as_str())
            {
                st.previous_version = st.current_version.take();
                st.current_version = current.as_ref().map(|v| v.id.clone());
                st.active_username = r.username.clone();
            }
            r.step = step;
            claimed = false;
        }
        Resume::Run(_) => {}
        Resume::PendingLost => {
            return record_result(
                pass,
                w,
                st,
                r,
                StepResult::Rejected(
                    "PendingLost",
                    "the pending value of this attempt is gone".into(),
                ),
            )
            .await;
        }
    }

    // A pass that resumes works from a snapshot that may be stale (a Capstan frozen past
    // its lease, a lagging watch). CreatePending is the one side effect without a fence
    // of its own (a backend's pending write is idempotent per token, not conditioned on
    // the rotation still being in progress), so it is claimed again: a write conditioned
    // on the resourceVersion read, which a stale snapshot fails (and which changes
    // nothing when the snapshot is current).
    if !started && r.step == RotationStep::CreatePending {
        claimed = false;
    }
    loop {
        if !claimed {
            st.rotation = Some(r.clone());
            pass.finish_status(&mut st, reasons::IDLE, None);
            w.write(&st).await?;
        }
        let result = execute(pass, w, &mut st, &r, clients).await;
        match result {
            StepResult::Done(version) => {
                audit::step(&pass.subject(&r), r.step, version.as_deref(), "done");
                crash_point(&format!("secret-rotation::after-{}", r.step.as_str()));
                pass.ctx.succeeded(&pass.key);
                // Keep the pending version in the record the next claims write (and the
                // audit lines of the later steps carry).
                if r.step == RotationStep::CreatePending {
                    r.pending_version.clone_from(&version);
                }
                match rotation::after_step(
                    &r,
                    Outcome::Done,
                    pass.has_target,
                    pass.policy.max_attempts,
                    0,
                ) {
                    Transition::Advance(next) => {
                        claimed = !rotation::needs_claim(next.step, !pass.delivery_empty);
                        r = next;
                    }
                    Transition::Finished => return finish(pass, w, st, r).await,
                    // Done never retries or gives up.
                    _ => return Ok(Action::requeue(Duration::from_millis(200))),
                }
            }
            StepResult::Rejected(reason, msg) => {
                audit::step(
                    &pass.subject(&r),
                    r.step,
                    r.pending_version.as_deref(),
                    "rejected",
                );
                match rotation::after_step(
                    &r,
                    Outcome::Rejected,
                    pass.has_target,
                    pass.policy.max_attempts,
                    0,
                ) {
                    Transition::NewAttempt(next) => {
                        let _ = backend.discard_pending(&pass.id(&r)).await;
                        st.last_failure = Some(RotationFailure::new(
                            pass.ctx.rt.clock.now(),
                            r.step,
                            reason,
                            &msg,
                            &[],
                        ));
                        pass.event(
                            EventType::Warning,
                            events::ATTEMPT_FAILED,
                            format!("rotation {} attempt {} failed at {}: {reason}; trying a fresh value", r.id, r.attempt, r.step.as_str()),
                        )
                        .await;
                        r = next;
                        claimed = false;
                    }
                    _ => return give_up(pass, w, st, r, clients, reason, &msg).await,
                }
            }
            other => return record_result(pass, w, st, r, other).await,
        }
    }
}

/// Records a result that ends this pass (waiting, transient failure, lost claim,
/// rejection found while resuming).
async fn record_result(
    pass: &Pass<'_>,
    w: &mut Writer,
    mut st: SecretRotationStatus,
    r: RotationInProgress,
    result: StepResult,
) -> Result<Action, Error> {
    let now = pass.ctx.rt.clock.now();
    match result {
        StepResult::Waiting | StepResult::Done(_) => {
            st.rotation = Some(r);
            pass.finish_status(&mut st, reasons::IDLE, None);
            if st != w.status() {
                w.write(&st).await?;
            }
            Ok(Action::requeue(DELIVERY_POLL))
        }
        StepResult::Transient(reason, msg) => {
            pass.forget_login_if_denied(reason);
            audit::step(
                &pass.subject(&r),
                r.step,
                r.pending_version.as_deref(),
                "retry",
            );
            tracing::info!(object = %pass.key, step = r.step.as_str(), reason, "step failed, will retry: {msg}");
            st.last_failure = Some(RotationFailure::new(now, r.step, reason, &msg, &[]));
            st.rotation = Some(r);
            pass.finish_status(&mut st, reasons::IDLE, None);
            w.write(&st).await?;
            Ok(Action::requeue(rotation::backoff(
                pass.ctx.failed(&pass.key),
            )))
        }
        StepResult::ClaimLost(msg) => {
            audit::step(
                &pass.subject(&r),
                r.step,
                r.pending_version.as_deref(),
                "claim-lost",
            );
            tracing::warn!(object = %pass.key, step = r.step.as_str(), "claim lost: {msg}");
            Ok(Action::requeue(Duration::from_secs(1)))
        }
        StepResult::Rejected(reason, msg) => {
            // Found while resuming: a new attempt, claimed, then the next pass goes on.
            match rotation::after_step(
                &r,
                Outcome::Rejected,
                pass.has_target,
                pass.policy.max_attempts,
                0,
            ) {
                Transition::NewAttempt(next) => {
                    st.last_failure = Some(RotationFailure::new(now, r.step, reason, &msg, &[]));
                    st.rotation = Some(next);
                    pass.finish_status(&mut st, reasons::IDLE, None);
                    w.write(&st).await?;
                    Ok(Action::requeue(Duration::from_millis(100)))
                }
                _ => {
                    // No clients needed: nothing was set with a value of this attempt
                    // that the backend still holds.
                    finish_failed(pass, w, st, r, reason, &msg).await
                }
            }
        }
    }
}

/// Runs one step's side effect.
async fn execute(
    pass: &Pass<'_>,
    w: &mut Writer,
    st: &mut SecretRotationStatus,
    r: &RotationInProgress,
    clients: &Clients,
) -> StepResult {
    let id = pass.id(r);
    let backend = clients.backend.as_ref();
    let target = clients.target.as_ref();
    let user = r.username.clone().unwrap_or_default();
    let pending = || async {
        match backend.pending(&id).await {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err(StepResult::Rejected(
                "PendingLost",
                "the pending value of this attempt is gone".into(),
            )),
            Err(e) => Err(from_backend(e)),
        }
    };
    match r.step {
        RotationStep::CreatePending => {
            let generator = match PasswordGenerator::new(&pass.obj.spec.generator) {
                Ok(g) => g,
                Err(e) => return StepResult::Transient("InvalidGenerator", e.to_string()),
            };
            let credential = Credential::new(r.username.clone(), generator.generate());
            match backend.put_pending(&id, &credential).await {
                Ok(v) => {
                    if let Some(rec) = st.rotation.as_mut() {
                        rec.pending_version = Some(v.id.clone());
                    }
                    StepResult::Done(Some(v.id))
                }
                Err(e) => from_backend(e.scrubbed(&[&credential.value])),
            }
        }
        RotationStep::SetTarget => {
            let v = match pending().await {
                Ok(v) => v,
                Err(res) => return res,
            };
            if let Users::Alternating(first, _) = &pass.policy.users {
                let like = (user != *first).then_some(first.as_str());
                if let Err(e) = target.ensure_user(&user, like).await {
                    return from_target(e, false);
                }
            }
            crash_point("secret-rotation::before-set-password");
            match target
                .set_password_fenced(&user, &v.credential.value, &pass.fence(r))
                .await
            {
                Ok(()) => StepResult::Done(Some(v.id)),
                Err(e) => from_target(e, false),
            }
        }
        RotationStep::TestTarget => {
            let v = match pending().await {
                Ok(v) => v,
                Err(res) => return res,
            };
            match target.test_login(&user, &v.credential.value).await {
                Ok(()) => StepResult::Done(Some(v.id)),
                Err(e) => from_target(e, true),
            }
        }
        RotationStep::Finish => {
            match backend
                .promote_if_current(&id, st.current_version.as_deref())
                .await
            {
                Ok(v) => {
                    if st.current_version.as_deref() != Some(v.id.as_str()) {
                        st.previous_version = st.current_version.take();
                        st.current_version = Some(v.id.clone());
                    }
                    st.active_username = v.credential.username.clone().or(r.username.clone());
                    StepResult::Done(Some(v.id))
                }
                Err(e) => from_backend(e),
            }
        }
        RotationStep::Deliver => deliver(pass, w, r, clients).await,
    }
}

/// The Deliver step: the Secret, then the rollouts and ECS deployments; done once every
/// rollout and ECS deployment completed.
async fn deliver(
    pass: &Pass<'_>,
    w: &mut Writer,
    r: &RotationInProgress,
    clients: &Clients,
) -> StepResult {
    let Some(d) = pass.obj.spec.delivery.as_ref().filter(|d| !d.is_empty()) else {
        return StepResult::Done(None);
    };
    let client = &pass.ctx.rt.client;
    let ns = pass.obj.namespace().unwrap_or_default();
    let current = match clients.backend.current().await {
        Ok(Some(v)) => v,
        Ok(None) => {
            return StepResult::Transient(
                "BackendEmpty",
                "the backend holds no current value".into(),
            );
        }
        Err(e) => return from_backend(e),
    };
    let version = current.id.clone();
    let subject = pass.subject(r);
    if let Some(secret) = &d.secret {
        let have = match delivery::delivered_version(client, &ns, &secret.name).await {
            Ok(v) => v,
            Err(e) => return StepResult::Transient(reasons::DELIVERY_FAILED, e.to_string()),
        };
        if have.as_deref() != Some(version.as_str()) {
            let values = delivery::template_values(
                &pass.obj.spec.target,
                current.credential.username.as_deref(),
                &current.credential.value,
            );
            let data = match delivery::render(secret, &pass.obj.spec.target, &values) {
                Ok(d) => d,
                Err(e) => return StepResult::Transient(reasons::DELIVERY_FAILED, e.to_string()),
            };
            if let Err(e) = delivery::write_secret(client, pass.obj, secret, data, &version).await {
                return StepResult::Transient(reasons::DELIVERY_FAILED, e.to_string());
            }
            audit::delivery(
                &subject,
                &format!("Secret/{}", secret.name),
                &version,
                "written",
            );
        }
    }
    let mut delivered = true;
    if !d.rollouts.is_empty() {
        let workloads = match delivery::workloads(client, &ns, d).await {
            Ok(w) => w,
            Err(e) => return StepResult::Transient(reasons::DELIVERY_FAILED, e.to_string()),
        };
        let max = usize::try_from(d.max_concurrent_rollouts).unwrap_or(1);
        let now = pass.ctx.rt.clock.now();
        for wl in delivery::to_restart(&workloads, &version, max) {
            if let Err(e) = delivery::restart(client, &ns, wl, &version, now).await {
                return StepResult::Transient(reasons::DELIVERY_FAILED, e.to_string());
            }
            audit::delivery(&subject, &wl.label(), &version, "restarted");
        }
        delivered &= delivery::workloads_delivered(&workloads, &version);
    }
    if !d.ecs_services.is_empty() {
        let Some(ecs) = clients.ecs.as_ref() else {
            return StepResult::Transient(
                reasons::DELIVERY_FAILED,
                "delivery.ecsServices is set but no AWS connection was built".into(),
            );
        };
        match deliver_ecs(w, &subject, ecs, &d.ecs_services, &version).await {
            Ok(done) => delivered &= done,
            Err(res) => return res,
        }
    }
    if delivered {
        StepResult::Done(Some(version))
    } else {
        StepResult::Waiting
    }
}

/// Annotation recording the ECS deployments forced for a version:
/// `{"version": "<id>", "deployments": {"<cluster>/<service>": "<deployment id>"},
/// "replaced": {"<cluster>/<service>": "<PRIMARY before the force>"}}`.
pub const ECS_DEPLOYMENTS_ANNOTATION: &str = "capstan.dev/ecs-deployments";

/// What [`ECS_DEPLOYMENTS_ANNOTATION`] holds.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct EcsRecord {
    version: String,
    #[serde(default)]
    deployments: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    replaced: std::collections::BTreeMap<String, String>,
}

/// ECS delivery of `version`: a forced deployment of every service not yet forced for
/// it (recorded on the object with a conditioned write, so a restarted Capstan forces
/// nothing again), then done once each service's PRIMARY deployment is COMPLETED and is
/// the recorded one or a later one (not the PRIMARY from before the force, which a read
/// right after the force may still show). A crash between the force and its record forces again on resume
/// (at least once: a service never keeps the old credential). A FAILED deployment is
/// reported and looked at again with backoff.
async fn deliver_ecs(
    w: &mut Writer,
    subject: &Subject<'_>,
    ecs: &capstan_aws::ecs::SdkEcs,
    services: &[crate::crd::EcsService],
    version: &str,
) -> Result<bool, StepResult> {
    use capstan_aws::ecs::{DeploymentState, EcsApi};
    let key = |s: &crate::crd::EcsService| format!("{}/{}", s.cluster, s.service);
    let mut record = w
        .obj
        .annotations()
        .get(ECS_DEPLOYMENTS_ANNOTATION)
        .and_then(|a| serde_json::from_str::<EcsRecord>(a).ok())
        .filter(|rec| rec.version == version)
        .unwrap_or_else(|| EcsRecord {
            version: version.to_owned(),
            ..EcsRecord::default()
        });
    let mut forced = false;
    let mut failure = None;
    for s in services {
        if record.deployments.contains_key(&key(s)) {
            continue;
        }
        let before = match ecs.deployment_state(&s.cluster, &s.service).await {
            Ok((_, before)) => before,
            Err(e) => {
                failure = Some(StepResult::Transient(
                    reasons::DELIVERY_FAILED,
                    e.to_string(),
                ));
                break;
            }
        };
        match ecs.force_new_deployment(&s.cluster, &s.service).await {
            Ok(id) => {
                record.deployments.insert(key(s), id.unwrap_or_default());
                record.replaced.insert(key(s), before.unwrap_or_default());
                audit::delivery(
                    subject,
                    &format!("EcsService/{}", key(s)),
                    version,
                    "redeployed",
                );
                forced = true;
            }
            Err(e) => {
                failure = Some(StepResult::Transient(
                    reasons::DELIVERY_FAILED,
                    e.to_string(),
                ));
                break;
            }
        }
    }
    if forced {
        let json = serde_json::to_string(&record).unwrap_or_default();
        match w.annotate(ECS_DEPLOYMENTS_ANNOTATION, json).await {
            Ok(()) => {}
            Err(Error::ClaimLost(m)) => return Err(StepResult::ClaimLost(m)),
            Err(e) => {
                return Err(StepResult::Transient(
                    reasons::DELIVERY_FAILED,
                    e.to_string(),
                ));
            }
        }
    }
    if let Some(f) = failure {
        return Err(f);
    }
    let mut done = true;
    for s in services {
        let (state, primary) = ecs
            .deployment_state(&s.cluster, &s.service)
            .await
            .map_err(|e| StepResult::Transient(reasons::DELIVERY_FAILED, e.to_string()))?;
        let k = key(s);
        let forced_id = record.deployments.get(&k);
        let replaced = record.replaced.get(&k).filter(|r| !r.is_empty());
        let ours = forced_id.is_some_and(|id| {
            primary.as_deref() == Some(id.as_str())
                || primary
                    .as_deref()
                    .is_some_and(|p| replaced.is_some_and(|r| r != p))
                || (id.is_empty() && replaced.is_none())
        });
        match (state, ours) {
            (DeploymentState::Completed, true) => {}
            (DeploymentState::Failed, true) => {
                return Err(StepResult::Transient(
                    reasons::DELIVERY_FAILED,
                    format!("ECS deployment of {} failed", key(s)),
                ));
            }
            _ => done = false,
        }
    }
    Ok(done)
}

/// The rotation is delivered: record it and schedule the next one.
async fn finish(
    pass: &Pass<'_>,
    w: &mut Writer,
    mut st: SecretRotationStatus,
    r: RotationInProgress,
) -> Result<Action, Error> {
    let now = pass.ctx.rt.clock.now();
    st.rotation = None;
    st.last_rotation_time = Some(now);
    st.rotation_count += 1;
    if r.rotate_now_token.is_some() {
        st.completed_rotate_now_token
            .clone_from(&r.rotate_now_token);
    }
    st.record_rotation(RotationSummary {
        id: r.id.clone(),
        trigger: r.trigger,
        started: r.started,
        finished: now,
        outcome: RotationOutcome::Succeeded,
        attempts: r.attempt,
        version: st.current_version.clone(),
        username: r.username.clone(),
        failure_reason: None,
    });
    pass.finish_status(&mut st, reasons::IDLE, None);
    w.write(&st).await?;
    let seconds = (now - r.started).num_milliseconds() as f64 / 1000.0;
    pass.ctx
        .metrics
        .rotation_finished(RotationOutcome::Succeeded, seconds);
    pass.event(
        EventType::Normal,
        events::ROTATION_SUCCEEDED,
        format!(
            "rotation {} finished: version {} is current and delivered",
            r.id,
            st.current_version.as_deref().unwrap_or("-")
        ),
    )
    .await;
    Ok(match st.next_rotation_time {
        Some(t) => Action::requeue(rotation::until(t, now).max(Duration::from_millis(200))),
        None => Action::await_change(),
    })
}

/// Attempts used up: discard the pending value and, with a single user whose password
/// may already have changed, set the current value back so it keeps logging in.
async fn give_up(
    pass: &Pass<'_>,
    w: &mut Writer,
    st: SecretRotationStatus,
    r: RotationInProgress,
    clients: &Clients,
    reason: &'static str,
    msg: &str,
) -> Result<Action, Error> {
    let _ = clients.backend.discard_pending(&pass.id(&r)).await;
    if let (Users::Single(user), true) = (&pass.policy.users, r.step >= RotationStep::SetTarget)
        && let Ok(Some(current)) = clients.backend.current().await
        && let Err(e) = clients
            .target
            .set_password_fenced(user, &current.credential.value, &pass.fence(&r))
            .await
    {
        tracing::warn!(object = %pass.key, error = %e, "could not set the current value back on the target");
    }
    finish_failed(pass, w, st, r, reason, msg).await
}

async fn finish_failed(
    pass: &Pass<'_>,
    w: &mut Writer,
    mut st: SecretRotationStatus,
    r: RotationInProgress,
    reason: &'static str,
    msg: &str,
) -> Result<Action, Error> {
    let now = pass.ctx.rt.clock.now();
    audit::step(&pass.subject(&r), r.step, None, "gave-up");
    st.last_failure = Some(RotationFailure::new(now, r.step, reason, msg, &[]));
    st.rotation = None;
    if r.rotate_now_token.is_some() {
        st.completed_rotate_now_token
            .clone_from(&r.rotate_now_token);
    }
    st.record_rotation(RotationSummary {
        id: r.id.clone(),
        trigger: r.trigger,
        started: r.started,
        finished: now,
        outcome: RotationOutcome::Failed,
        attempts: r.attempt,
        version: None,
        username: r.username.clone(),
        failure_reason: Some(reason.to_owned()),
    });
    pass.finish_status(&mut st, reasons::IDLE, None);
    w.write(&st).await?;
    let seconds = (now - r.started).num_milliseconds() as f64 / 1000.0;
    pass.ctx
        .metrics
        .rotation_finished(RotationOutcome::Failed, seconds);
    pass.event(
        EventType::Warning,
        events::ROTATION_FAILED,
        format!(
            "rotation {} failed after {} attempt(s) at {}: {reason}; the previous credential stays current",
            r.id,
            r.attempt,
            r.step.as_str()
        ),
    )
    .await;
    Ok(match st.next_rotation_time {
        Some(t) => Action::requeue(rotation::until(t, now).max(Duration::from_millis(200))),
        None => Action::await_change(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `status.nextRotationTime` holds whole seconds (`kubectl get` prints it as
    /// `2026-12-03T09:40:13Z`, not with nanoseconds), never earlier than the due time,
    /// and stable: the same due time always gives the same value (no status write per
    /// pass).
    #[test]
    fn next_rotation_time_is_rounded_up_to_a_whole_second() {
        let due = DateTime::parse_from_rfc3339("2026-12-03T09:40:12.123456789Z")
            .expect("time")
            .with_timezone(&Utc);
        let shown = whole_second_after(due);
        assert!(shown >= due);
        assert_eq!(
            serde_json::to_string(&shown).expect("json"),
            "\"2026-12-03T09:40:13Z\""
        );
        assert_eq!(whole_second_after(shown), shown);
        assert_eq!(whole_second_after(due), shown);
    }
}
