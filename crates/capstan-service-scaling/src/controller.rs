//! The ServiceScaling controller.
//!
//! Two parts, because AWS must be called in batches across objects:
//!
//! 1. **Reconcile** (kube-runtime, per object, on every change to the object, its
//!    ClusterConnection or its namespace): resolve the connection and refuse a namespace
//!    it does not allow, or a service its scopes do not grant ([`capstan_core::gate`]);
//!    validate what the schema cannot ([`Inputs::from_spec`]); then record the object in the [`Registry`] and wait for the
//!    next change. A refused or invalid object is taken out of the registry and its
//!    `Ready=False` written there. Reconcile calls AWS only for the ApplicationAutoScaling
//!    finalizer ([`crate::cleanup`]): on deletion, or when the spec stops declaring on
//!    the service Capstan declared on.
//! 2. **The evaluation loop** ([`crate::evaluation`]): wakes at the earliest evaluation
//!    deadline of any registered object; takes every object due; per ClusterConnection
//!    and namespace (each batch a task of its own),
//!    reads their ECS services with one DescribeServices per 10 services and their
//!    metrics with one GetMetricData per 500 queries; runs [`crate::algorithm`] for each;
//!    writes the desired counts that change (UpdateService) or, in ApplicationAutoScaling
//!    mode, repairs the declared AWS objects; writes each status only when it changed.
//!    Every AWS call takes a token of the request budget of the connection's account
//!    and region, queued under the object's namespace ([`capstan_aws::budget`]); a
//!    missing cluster or service is looked for again with exponential backoff
//!    ([`crate::evaluation::missing_backoff`]). Deadlines sit on a grid of each
//!    object's evaluation interval (Unix time multiples), so objects with the same
//!    interval fall due together and share calls; a schedule window opening or closing,
//!    or `pausedUntil` ending, brings the deadline forward.
//!
//! The recommendation history and scale events live in the registry, in memory. After a
//! restart the first evaluation seeds the history with the current count (the HPA's way:
//! no jump) and the failure count comes back from status. A deleted object leaves the
//! registry on every path: its watch event (Delete), a status write answered 404, and
//! the loop's sweep of objects the controller's caches no longer hold (a deletion seen
//! only as a relist after a watch gap).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capstan_aws::ClientOptions;
use capstan_core::conditions::{Desired, READY};
use capstan_core::connection::ConnectionKind;
use capstan_core::events::Publisher;
use capstan_core::gate::{Gate, INVALID_SPEC, connection_gate, watch_connections};
use capstan_core::runtime::{Runtime, key_of, run_controller_cached};
use capstan_core::scope::ScopedResource;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;

use crate::cleanup;
use crate::crd::ServiceScaling;

pub use crate::context::Metrics;
use crate::context::{CONTROLLER, Ctx, Error, FIELD_MANAGER, Inputs, Registry, Settings};

/// Reconciles one object; the AWS calls its finalizer makes are queued under its
/// namespace's share of the request budget.
async fn reconcile(obj: Arc<ServiceScaling>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = obj.namespace().unwrap_or_default();
    capstan_core::budget::in_namespace(ns, reconcile_object(obj, ctx)).await
}

async fn reconcile_object(obj: Arc<ServiceScaling>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let _timer = ctx.metrics.controller.start();
    if obj.metadata.deletion_timestamp.is_some() {
        return cleanup::finalize(&ctx, &obj).await;
    }
    let ns = obj.namespace().unwrap_or_default();
    let key = (ns.clone(), obj.name_any());
    let service = ScopedResource::EcsService {
        cluster: obj.spec.service.cluster.clone(),
        service: obj.spec.service.service.clone(),
    };
    // Where Capstan declared before (a recorded annotation the tenant can write) must be
    // in scope too, or cleaning it up could reach another team's service.
    let mut resources = vec![service];
    if let Some(before) = cleanup::recorded(&obj).and_then(|r| cleanup::scoped(&r))
        && !resources.contains(&before)
    {
        resources.push(before);
    }
    let gate = connection_gate(
        &ctx.rt,
        &ns,
        Some(&obj.spec.connection_ref),
        ConnectionKind::Aws,
        &resources,
    )
    .await?;
    // Objects declared in AWS on a service the spec no longer declares on go first,
    // whether or not the rest of the spec is valid.
    if let Gate::Proceed(Some(conn), conditions) = &gate
        && let Some(action) = cleanup::leave_old_resource(&ctx, &obj, conn, conditions).await?
    {
        return Ok(action);
    }
    let refusal = match gate {
        Gate::Refused(conditions) => conditions,
        Gate::Proceed(conn, mut conditions) => match (conn, Inputs::from_spec(&obj)) {
            (Some(conn), Ok(inputs)) => {
                if let Some(action) = cleanup::ensure_finalizer(&ctx, &obj).await? {
                    return Ok(action);
                }
                let now = ctx.rt.clock.now();
                ctx.registry
                    .upsert(obj.clone(), Arc::from(conn), conditions, inputs, now);
                return Ok(Action::await_change());
            }
            (_, Err(msg)) => {
                conditions.push(Desired::new(READY, false, INVALID_SPEC, msg));
                conditions
            }
            (None, Ok(_)) => {
                conditions.push(Desired::new(
                    READY,
                    false,
                    INVALID_SPEC,
                    "connectionRef names no connection",
                ));
                conditions
            }
        },
    };
    // Refused or invalid: no evaluation until the object or its connection changes.
    let previous = {
        let mut entries = ctx.registry.lock();
        entries.remove(&key).and_then(|e| e.status)
    };
    let current = previous.or_else(|| obj.status.clone());
    // Refused or invalid is also a Warning Event, once per transition.
    let warning = capstan_core::events::ready_turned_false(
        current.as_ref().map_or(&[][..], |s| &s.conditions),
        &refusal,
    );
    let api = kube::Api::<ServiceScaling>::namespaced(ctx.rt.client.clone(), &ns);
    capstan_core::ssa::update_status(
        &api,
        obj.as_ref(),
        current.as_ref(),
        FIELD_MANAGER,
        ctx.rt.clock.now(),
        refusal,
        |_| {},
    )
    .await?;
    if let Some((reason, note)) = warning {
        ctx.events
            .publish(
                obj.as_ref(),
                kube::runtime::events::EventType::Warning,
                &reason,
                "Reconcile",
                note,
            )
            .await;
    }
    Ok(Action::await_change())
}

fn error_policy(obj: Arc<ServiceScaling>, err: &Error, ctx: Arc<Ctx>) -> Action {
    ctx.metrics.controller.failure(err);
    Action::requeue(capstan_core::schedule::jittered(
        Duration::from_secs(15),
        &key_of(obj.as_ref()),
    ))
}

/// Runs the controller with the default [`Settings`] until `shutdown`.
pub async fn run(rt: Runtime, metrics: Metrics, shutdown: CancellationToken) {
    run_with(rt, metrics, Settings::default(), shutdown).await;
}

/// Runs the controller until `shutdown`: the reconcile loop that maintains the registry
/// and the evaluation loop that evaluates it.
pub async fn run_with(
    rt: Runtime,
    metrics: Metrics,
    settings: Settings,
    shutdown: CancellationToken,
) {
    let options = ClientOptions::from_settings(&rt.aws, &rt.instance);
    let ctx = Arc::new(Ctx {
        clients: crate::clients::client_cache(
            rt.client.clone(),
            rt.own_namespace.clone(),
            options,
            metrics.aws_requests.clone(),
            rt.aws.budgets.clone(),
        ),
        events: Publisher::new(rt.client.clone(), CONTROLLER, &rt.instance),
        rt: rt.clone(),
        metrics,
        settings,
        registry: Arc::new(Registry::default()),
        stores: Mutex::new(Vec::new()),
    });
    let evaluation = crate::evaluation::run_loop(ctx.clone(), shutdown.clone());
    // A deletion takes the object out of the registry as its watch event passes, before
    // the cache drops it: nothing else would (a deleted object is never reconciled, and
    // a missing service's status never changes, so no status write meets a 404).
    let registry = ctx.registry.clone();
    let forget_deleted = move |ev: watcher::Event<ServiceScaling>| {
        if let watcher::Event::Delete(o) = &ev {
            registry.remove(&key_of(o));
        }
        ev
    };
    let controllers = run_controller_cached(
        &rt,
        CONTROLLER,
        ctx.clone(),
        reconcile,
        error_policy,
        |c, _| {
            // The loop prunes deleted objects only once every cache has synced.
            let store = c.store();
            let synced = Arc::new(AtomicBool::new(false));
            ctx.stores
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((store.clone(), synced.clone()));
            tokio::spawn(async move {
                if store.wait_until_ready().await.is_ok() {
                    synced.store(true, Ordering::Release);
                }
            });
            watch_connections(&rt, c, |o: &ServiceScaling| Some(&o.spec.connection_ref))
        },
        forget_deleted,
        shutdown,
    );
    tokio::join!(controllers, evaluation);
}
