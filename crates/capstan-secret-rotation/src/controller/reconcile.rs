//! One reconcile pass: **gate** (the ClusterConnections the object names), **validate**
//! (what the schema cannot check), **decide** ([`rotation::plan`]: wait, start or
//! continue). Starting or continuing a rotation builds the clients first and hands over
//! to the steps ([`super::steps::run_steps`]).

use std::sync::Arc;

use capstan_core::clock::from_k8s_time;
use capstan_core::conditions::{self, Desired};
use capstan_core::connection::{ClusterConnection, ConnectionKind};
use capstan_core::gate::{Gate, connection_gate};
use chrono::{DateTime, Utc};
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use super::conditions::{View, set_conditions};
use super::pass::{Cached, Error, Pass, events, key_of, requeue_at};
use super::status::Writer;
use super::steps::run_steps;
use crate::backend::Version;
use crate::context::{Clients, Connections, Context, RefError, build_clients};
use crate::crd::{
    ROTATE_NOW_ANNOTATION, Retiring, RotationTrigger, SecretRotation, SecretRotationStatus, Target,
    condition_types as ct, reasons,
};
use crate::rotation::{self, Plan, Policy};

/// Reconciles one object with its AWS calls queued under its namespace's share of
/// the request budget. A status claim lost to another writer (an edit of the object,
/// another Capstan) ends the pass without failing it: the newer view of the object is
/// on its way through the watch.
pub(super) async fn reconcile(cached: Arc<Cached>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = cached.namespace().unwrap_or_default();
    match capstan_core::budget::in_namespace(ns, reconcile_object(cached, ctx.clone())).await {
        Err(Error::ClaimLost(key)) => {
            ctx.metrics.claim_lost();
            tracing::debug!(kind = "SecretRotation", object = %key, "status claim lost to a newer writer; taking the newer view next");
            Ok(Action::requeue(std::time::Duration::from_millis(500)))
        }
        other => other,
    }
}

/// The connections a gate let through, and its conditions.
struct Gated {
    connection: Option<Box<ClusterConnection>>,
    ecs_connection: Option<Box<ClusterConnection>>,
    target_connection: Option<Box<ClusterConnection>>,
    conditions: Vec<Desired<'static>>,
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
    let mut w = Writer {
        api: Api::namespaced(ctx.rt.client.clone(), &ns),
        obj: (*obj).clone(),
        fresh: ctx.fresh.clone(),
    };
    let now = ctx.rt.clock.now();
    let status = w.status();
    let created = obj
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(now, from_k8s_time);

    // 1. Gate.
    let gated = match gate(&ctx, &ns, &obj).await? {
        Ok(g) => g,
        Err(conds) => return refuse(&ctx, &mut w, &status, conds).await,
    };

    // 2. Validate.
    let delivery_empty = obj.spec.delivery.as_ref().is_none_or(|d| d.is_empty());
    let policy = match crate::validation::validate(&obj.spec)
        .map_err(|e| crate::validation::summarize(&e))
        .and_then(|()| Policy::from_spec(&obj.spec))
    {
        Ok(p) => p,
        Err(msg) => {
            let view = View {
                policy: None,
                created,
                now,
                idle_reason: reasons::IDLE,
                ready_override: None,
                delivery_empty,
                gate: gated.conditions,
                stuck_after: ctx.settings.stuck_after,
            };
            return invalid(&ctx, &mut w, &status, view, msg).await;
        }
    };
    let pass = Pass {
        ctx: &ctx,
        key: key_of(&*obj),
        uid: obj.uid().unwrap_or_default(),
        obj: &obj,
        policy,
        created,
        gate: gated.conditions,
        has_target: !matches!(obj.spec.target, Target::ValueOnly(_)),
        delivery_empty,
    };

    // 3. Decide.
    let connections = Connections {
        main: gated.connection.as_deref(),
        ecs: gated.ecs_connection.as_deref(),
        target: gated.target_connection.as_deref(),
    };
    decide(&pass, &mut w, status, now, connections).await
}

/// The connection gate of the backend's connection and, when it is another one, of
/// the ECS delivery's; `Err` holds the conditions of a refusal.
async fn gate(
    ctx: &Context,
    ns: &str,
    obj: &SecretRotation,
) -> Result<Result<Gated, Vec<Desired<'static>>>, Error> {
    let (connection, conditions) = match connection_gate(
        &ctx.rt,
        ns,
        obj.spec.connection_ref.as_ref(),
        obj.spec.backend.connection_kind(),
        &obj.spec.scoped_resources(),
    )
    .await?
    {
        Gate::Refused(conds) => return Ok(Err(conds)),
        Gate::Proceed(conn, conds) => (conn, conds),
    };
    // The ECS connection, when it is not the one above.
    let same = |name: &str| {
        obj.spec
            .connection_ref
            .as_ref()
            .is_some_and(|c| c.name == name)
    };
    let ecs_connection = match obj.spec.ecs_connection() {
        None => None,
        Some(r) if same(&r.name) => connection.clone(),
        Some(r) => match connection_gate(
            &ctx.rt,
            ns,
            Some(r),
            ConnectionKind::Aws,
            &obj.spec.ecs_scoped_resources(),
        )
        .await?
        {
            Gate::Refused(conds) => return Ok(Err(conds)),
            Gate::Proceed(conn, _) => conn,
        },
    };
    // The target's own connection (RDS), when it is not the one above. Its scopes are
    // checked against the instance's ARN once RDS has named it, before any change.
    let target_connection = match obj.spec.target.connection() {
        None => None,
        Some(r) if same(&r.name) => connection.clone(),
        Some(r) => {
            match connection_gate(&ctx.rt, ns, Some(r), obj.spec.target.connection_kind(), &[])
                .await?
            {
                Gate::Refused(conds) => return Ok(Err(conds)),
                Gate::Proceed(conn, _) => conn,
            }
        }
    };
    Ok(Ok(Gated {
        connection,
        ecs_connection,
        target_connection,
        conditions,
    }))
}

/// The spec is invalid: `Ready=False` with `InvalidSpec` (and a Warning Event when
/// Ready turns false); wait for a change.
async fn invalid(
    ctx: &Context,
    w: &mut Writer,
    status: &SecretRotationStatus,
    mut view: View<'_>,
    msg: String,
) -> Result<Action, Error> {
    let warning = capstan_core::events::ready_turned_false(
        &status.conditions,
        &[Desired::new(
            ct::READY,
            false,
            reasons::INVALID_SPEC,
            msg.clone(),
        )],
    );
    view.ready_override = Some((reasons::INVALID_SPEC, msg));
    let mut st = status.clone();
    set_conditions(&mut st, w.obj.meta().generation, view);
    if st != *status {
        w.write(&st).await?;
    }
    if let Some((reason, note)) = warning {
        ctx.events
            .publish(&w.obj, EventType::Warning, &reason, "Validate", note)
            .await;
    }
    Ok(Action::await_change())
}

/// Waits, starts a rotation, or continues the one in progress, as [`rotation::plan`]
/// says.
async fn decide(
    pass: &Pass<'_>,
    w: &mut Writer,
    status: SecretRotationStatus,
    now: DateTime<Utc>,
    connections: Connections<'_>,
) -> Result<Action, Error> {
    let token = pass
        .obj
        .annotations()
        .get(ROTATE_NOW_ANNOTATION)
        .map(String::as_str);
    let plan = rotation::plan(&pass.policy, &status, token, pass.created, now);
    if let Plan::Wait { reason, until } = plan {
        let mut st = status.clone();
        let mut until = until;
        if let Some(ret) = status.retiring.clone() {
            // Nothing is called while the replaced credentials wait out their grace.
            if (!ret.deactivated || now >= ret.delete_after)
                && let Some(action) = retire(pass, w, &mut st, &ret, now, connections).await?
            {
                return Ok(action);
            }
            if let Some(r) = &st.retiring {
                until = Some(until.map_or(r.delete_after, |u| u.min(r.delete_after)));
            }
        }
        if let Some(every) = drift_interval(pass, reason) {
            let due = pass
                .ctx
                .drift_checked_at(&pass.key)
                .is_none_or(|t| now >= t + every);
            if due {
                match check_drift(pass, w, &mut st, now, connections).await? {
                    Drift::Checked => {}
                    Drift::Stop(action) => return Ok(action),
                    Drift::RotatedOutside(clients) => {
                        let trigger = (RotationTrigger::TargetRotated, None);
                        return start(pass, w, st, &clients, now, trigger).await;
                    }
                }
            }
            let next = pass
                .ctx
                .drift_checked_at(&pass.key)
                .map_or(now + every, |t| t + every);
            until = Some(until.map_or(next, |u| u.min(next)));
        }
        if reason != reasons::SUSPENDED
            && let Some(lease) = st.lease.clone()
            && let Some(deadline) = rotation::lease_deadline(&lease, &pass.obj.spec, &pass.key)
        {
            if now >= deadline {
                match renew_lease(pass, w, &mut st, &lease, connections).await? {
                    LeaseStep::Renewed => {}
                    LeaseStep::Stop(action) => return Ok(action),
                    LeaseStep::Replace(clients, trigger) => {
                        return start(pass, w, st, &clients, now, (trigger, None)).await;
                    }
                }
            }
            if let Some(next) = st.lease.as_ref().and_then(|l| l.next_renewal_time) {
                until = Some(until.map_or(next, |u| u.min(next)));
            }
        }
        pass.finish_status(&mut st, reason, None);
        if st != status {
            w.write(&st).await?;
        }
        return Ok(requeue_at(until, now));
    }
    let clients = match clients_or_report(pass, w, connections).await? {
        Ok(c) => c,
        Err(action) => return Ok(action),
    };
    match plan {
        Plan::Start { trigger, token } => {
            start(pass, w, status, &clients, now, (trigger, token)).await
        }
        _ => run_steps(pass, w, &clients, false).await,
    }
}

/// How often the target's configuration is checked for drift between rotations, if it
/// is (a Vault static role; never while suspended).
fn drift_interval(pass: &Pass<'_>, reason: &str) -> Option<chrono::Duration> {
    if reason == reasons::SUSPENDED {
        return None;
    }
    match &pass.obj.spec.target {
        Target::VaultDatabaseStaticRole(r) => r
            .drift_check()
            .ok()
            .and_then(|d| chrono::Duration::from_std(d).ok()),
        _ => None,
    }
}

/// What a drift check found.
enum Drift {
    /// The configuration was read back (and corrected where it drifted).
    Checked,
    /// The target's credential is no longer the stored one: deliver what it holds.
    RotatedOutside(Clients),
    /// The pass ends here (an unresolved reference).
    Stop(Action),
}

/// Reads the target's declared configuration back, writes what drifted, and says so
/// in `TargetInSync` and a `DriftCorrected` Event; then asks whether the credential
/// was rotated outside Capstan (Vault's own `rotation_period`).
async fn check_drift(
    pass: &Pass<'_>,
    w: &mut Writer,
    st: &mut SecretRotationStatus,
    now: DateTime<Utc>,
    connections: Connections<'_>,
) -> Result<Drift, Error> {
    let clients = match clients_or_report(pass, w, connections).await? {
        Ok(c) => c,
        Err(action) => return Ok(Drift::Stop(action)),
    };
    pass.ctx.set_drift_checked(&pass.key, now);
    let generation = pass.obj.meta().generation;
    let was = conditions::find(&st.conditions, ct::TARGET_IN_SYNC).map(|c| c.status.clone());
    let corrections = match clients.target.correct_drift().await {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(kind = "SecretRotation", object = %pass.key, reason = e.reason(), "drift check failed: {e}");
            conditions::set(
                &mut st.conditions,
                Desired::new(ct::TARGET_IN_SYNC, false, e.reason(), e.to_string()),
                generation,
                now,
            );
            if was.as_deref() != Some("False") {
                pass.event(
                    EventType::Warning,
                    events::DRIFT_CHECK_FAILED,
                    e.to_string(),
                )
                .await;
            }
            return Ok(Drift::Checked);
        }
    };
    if corrections.is_empty() {
        conditions::set(
            &mut st.conditions,
            Desired::new(
                ct::TARGET_IN_SYNC,
                true,
                reasons::IN_SYNC,
                "the target's configuration matches the declared state".to_owned(),
            ),
            generation,
            now,
        );
    } else {
        let what: Vec<String> = corrections
            .iter()
            .map(|c| {
                if c.created {
                    format!("{} (recreated)", c.what)
                } else {
                    c.what.clone()
                }
            })
            .collect();
        let message = format!(
            "drifted from the declared state and written back: {}",
            what.join(", ")
        );
        tracing::warn!(kind = "SecretRotation", object = %pass.key, corrected = %what.join(","), "target configuration drifted; declared state written back");
        conditions::set(
            &mut st.conditions,
            Desired::new(
                ct::TARGET_IN_SYNC,
                true,
                reasons::DRIFT_CORRECTED,
                message.clone(),
            ),
            generation,
            now,
        );
        pass.event(EventType::Warning, events::DRIFT_CORRECTED, message)
            .await;
    }
    let stored = match clients.backend.current().await {
        Ok(v) => v,
        Err(e) => {
            tracing::info!(kind = "SecretRotation", object = %pass.key, "reading the stored value for the drift check failed: {e}");
            return Ok(Drift::Checked);
        }
    };
    let Some(stored) = stored else {
        return Ok(Drift::Checked);
    };
    match clients
        .target
        .rotated_outside(&stored.credential.value)
        .await
    {
        Ok(true) => {
            tracing::info!(kind = "SecretRotation", object = %pass.key, "the target's credential was rotated outside Capstan; delivering it");
            Ok(Drift::RotatedOutside(clients))
        }
        Ok(false) => Ok(Drift::Checked),
        Err(e) => {
            tracing::info!(kind = "SecretRotation", object = %pass.key, reason = e.reason(), "reading the target's credential failed: {e}");
            Ok(Drift::Checked)
        }
    }
}

/// What a lease deadline led to.
enum LeaseStep {
    /// Vault extended the lease (recorded in the status).
    Renewed,
    /// New credentials are needed: the lease reached its maximum, or Vault no longer
    /// knows it.
    Replace(Clients, RotationTrigger),
    /// The pass ends here (a failure retried later, an unresolved reference).
    Stop(Action),
}

/// At a lease's deadline: renews it while Vault can extend it, else asks for new
/// credentials; a lease Vault no longer knows (revoked behind Capstan's back) is
/// replaced at once.
async fn renew_lease(
    pass: &Pass<'_>,
    w: &mut Writer,
    st: &mut SecretRotationStatus,
    lease: &crate::crd::Lease,
    connections: Connections<'_>,
) -> Result<LeaseStep, Error> {
    let clients = match clients_or_report(pass, w, connections).await? {
        Ok(c) => c,
        Err(action) => return Ok(LeaseStep::Stop(action)),
    };
    if pass.ctx.rt.clock.now() >= lease.expire_time {
        tracing::warn!(kind = "SecretRotation", object = %pass.key, lease = %lease.id_hash, expired = %lease.expire_time, "lease deadline reached only after the lease expired");
        pass.ctx.metrics.lease_deadline_missed();
    }
    if !rotation::lease_extendable(lease) {
        tracing::info!(kind = "SecretRotation", object = %pass.key, lease = %lease.id_hash, "the lease reaches its maximum TTL; obtaining new credentials");
        return Ok(LeaseStep::Replace(clients, RotationTrigger::Schedule));
    }
    match clients.target.renew(lease).await {
        Ok(Some(mut renewed)) => {
            pass.ctx.succeeded(&pass.key);
            renewed.next_renewal_time =
                rotation::lease_deadline(&renewed, &pass.obj.spec, &pass.key);
            tracing::info!(kind = "SecretRotation", object = %pass.key, lease = %renewed.id_hash, expires = %renewed.expire_time, "lease renewed");
            pass.ctx.metrics.lease_renewed();
            st.lease = Some(renewed);
            Ok(LeaseStep::Renewed)
        }
        Ok(None) => {
            let note = format!(
                "Vault no longer knows lease {} (revoked behind Capstan's back, or expired): obtaining new credentials",
                lease.id_hash
            );
            tracing::warn!(kind = "SecretRotation", object = %pass.key, lease = %lease.id_hash, "{note}");
            pass.event(EventType::Warning, events::LEASE_LOST, note)
                .await;
            Ok(LeaseStep::Replace(clients, RotationTrigger::TargetRotated))
        }
        Err(e) => {
            tracing::info!(kind = "SecretRotation", object = %pass.key, reason = e.reason(), "renewing the lease failed, will retry: {e}");
            pass.event(
                EventType::Warning,
                events::LEASE_RENEWAL_FAILED,
                e.to_string(),
            )
            .await;
            Ok(LeaseStep::Stop(Action::requeue(rotation::retry_after(
                pass.ctx.failed(&pass.key),
                &pass.key,
            ))))
        }
    }
}

/// Retires the credentials the last rotation replaced: deactivates them, or deletes
/// them once `deleteAfter` has passed, and records that in `st`. `Some` is the action
/// of a pass that ends here (an unresolved reference, a failure retried later).
async fn retire(
    pass: &Pass<'_>,
    w: &mut Writer,
    st: &mut SecretRotationStatus,
    ret: &Retiring,
    now: DateTime<Utc>,
    connections: Connections<'_>,
) -> Result<Option<Action>, Error> {
    let clients = match clients_or_report(pass, w, connections).await? {
        Ok(c) => c,
        Err(action) => return Ok(Some(action)),
    };
    let delete = now >= ret.delete_after;
    match clients.target.retire(&ret.keep, delete).await {
        Ok(changed) => {
            pass.ctx.succeeded(&pass.key);
            if delete {
                st.retiring = None;
            } else if let Some(r) = st.retiring.as_mut() {
                r.deactivated = true;
            }
            if !changed.is_empty() {
                let dynamic = matches!(pass.obj.spec.target, Target::VaultDatabaseDynamicRole(_));
                let (reason, what) = if dynamic {
                    (
                        events::PREVIOUS_DELETED,
                        "revoked now that the new credentials are delivered",
                    )
                } else if delete {
                    (events::PREVIOUS_DELETED, "deleted after the grace period")
                } else {
                    (
                        events::PREVIOUS_DEACTIVATED,
                        "deactivated; deleted at the end of the grace period",
                    )
                };
                tracing::info!(kind = "SecretRotation", object = %pass.key, keep = %ret.keep, changed = %changed.join(","), "replaced credentials {what}");
                pass.event(
                    EventType::Normal,
                    reason,
                    format!("{} {what} ({} stays)", changed.join(", "), ret.keep),
                )
                .await;
            }
            Ok(None)
        }
        Err(e) => {
            tracing::info!(kind = "SecretRotation", object = %pass.key, reason = e.reason(), "retiring the replaced credentials failed, will retry: {e}");
            pass.event(EventType::Warning, events::RETIRE_FAILED, e.to_string())
                .await;
            Ok(Some(Action::requeue(rotation::retry_after(
                pass.ctx.failed(&pass.key),
                &pass.key,
            ))))
        }
    }
}

/// Starts a rotation: checks that everything it needs answers, claims it in status,
/// then runs its steps.
async fn start(
    pass: &Pass<'_>,
    w: &mut Writer,
    mut st: SecretRotationStatus,
    clients: &Clients,
    now: DateTime<Utc>,
    (trigger, token): (RotationTrigger, Option<String>),
) -> Result<Action, Error> {
    // Everything the rotation needs must answer before anything changes.
    let current = match precheck(clients).await {
        Ok(current) => current,
        Err(e) => return report_unresolved(pass, w, e).await,
    };
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
    pass.ctx.succeeded(&pass.key);
    pass.event(
        EventType::Normal,
        events::ROTATION_STARTED,
        format!("rotation {} started ({:?})", r.id, r.trigger),
    )
    .await;
    run_steps(pass, w, clients, true).await
}

/// The connection gate refused the object: its conditions, and a Warning Event when
/// that is new (once per transition, not per reconcile); then wait for a change.
async fn refuse(
    ctx: &Context,
    w: &mut Writer,
    status: &SecretRotationStatus,
    conds: Vec<Desired<'static>>,
) -> Result<Action, Error> {
    let now = ctx.rt.clock.now();
    let generation = w.obj.meta().generation;
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
    connections: Connections<'_>,
) -> Result<Result<Clients, Action>, Error> {
    let ns = pass.obj.namespace().unwrap_or_default();
    let name = pass.obj.name_any();
    match build_clients(pass.ctx, (&ns, &name), &pass.obj.spec, connections).await {
        Ok(c) => Ok(Ok(c)),
        Err(e) => report_unresolved(pass, w, e).await.map(Err),
    }
}

async fn precheck(clients: &Clients) -> Result<Option<Version>, RefError> {
    clients
        .target
        .check()
        .await
        .map_err(|e| RefError::new(e.reason(), e.to_string()))?;
    clients
        .backend
        .current()
        .await
        .map_err(|e| RefError::from_backend(&e))
}

/// `Ready=False` naming the reference; nothing else changes. Retried with backoff.
async fn report_unresolved(pass: &Pass<'_>, w: &mut Writer, e: RefError) -> Result<Action, Error> {
    pass.forget_login_if_denied(e.access_denied);
    let before = w.status();
    let mut st = before.clone();
    let was = conditions::find(&before.conditions, ct::READY).map(|c| c.reason.clone());
    pass.finish_status(&mut st, reasons::IDLE, Some((e.reason, e.message.clone())));
    if st != before {
        w.write(&st).await?;
    }
    if was.as_deref() != Some(e.reason) {
        tracing::info!(kind = "SecretRotation", object = %pass.key, reason = e.reason, "reference unresolved: {}", e.message);
        pass.event(EventType::Warning, events::REFERENCE_UNRESOLVED, e.message)
            .await;
    }
    Ok(Action::requeue(rotation::retry_after(
        pass.ctx.failed(&pass.key),
        &pass.key,
    )))
}
