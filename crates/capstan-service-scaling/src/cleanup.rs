//! The finalizer of the ApplicationAutoScaling mode: what Capstan declared in AWS goes
//! when its ServiceScaling is deleted, switched to Direct, or pointed at another
//! service.
//!
//! - Before an object is first registered for evaluation in ApplicationAutoScaling mode
//!   (so before anything is declared), reconcile adds the finalizer [`FINALIZER`] and
//!   records the scalable target's resource ID in the annotation [`RESOURCE_ANNOTATION`]
//!   (`ensure_finalizer`). A Direct-mode object never carries it, so deleting one
//!   never waits on AWS.
//! - When the object is deleted (`finalize`), or its spec no longer declares on the
//!   recorded resource (`leave_old_resource`: mode Direct, or another service),
//!   reconcile takes the object out of the evaluation registry (waiting for an
//!   evaluation in flight, which could otherwise declare again behind the removal),
//!   removes Capstan's objects from the recorded resource through the object's
//!   connection, once the connection gate allows the namespace ([`aas::remove`]: only
//!   `capstan-` names; the scalable target only when nothing of someone else's uses
//!   it), then drops the finalizer or records the new resource.
//! - A deletion that cannot clean up (the connection no longer allows the namespace,
//!   is gone, or AWS fails) is retried until [`Settings::cleanup_timeout`] after the
//!   deletion timestamp. Then the finalizer is dropped anyway with a Warning Event
//!   `AutoScalingCleanupAbandoned` naming what may be left in AWS, as External Secrets
//!   Operator does, so a revoked connection never blocks a deletion forever. A switch
//!   to Direct that cannot clean up reports `Ready=False`, reason
//!   `AutoScalingCleanupFailed`, and retries; the object is not evaluated in Direct mode
//!   meanwhile, since AWS's policies would still move the same count.

use std::time::Duration;

use capstan_aws::autoscaling::{ECS_DESIRED_COUNT, ecs_resource_id};
use capstan_core::clock::from_k8s_time;
use capstan_core::conditions::{self, Desired, READY};
use capstan_core::connection::{ClusterConnection, ConnectionKind};
use capstan_core::events::EventType;
use capstan_core::gate::{Gate, connection_gate};
use capstan_core::scope::ScopedResource;
use chrono::{DateTime, TimeDelta, Utc};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use serde_json::json;

use crate::aas::{self, Removal};
use crate::algorithm::{ResolvedBehavior, windows_from_spec};
use crate::context::{Ctx, Error, FIELD_MANAGER, Key};
pub use crate::context::{DEFAULT_CLEANUP_TIMEOUT, Settings};
use crate::crd::{ScalingMode, ServiceScaling, ServiceScalingSpec};
pub use crate::reasons::events::{
    AUTOSCALING_CLEANUP_ABANDONED as ABANDONED, AUTOSCALING_CLEANUP_FAILED as CLEANUP_FAILED,
    AUTOSCALING_REMOVED as REMOVED,
};

/// The finalizer on ServiceScalings that may have objects declared in Application Auto
/// Scaling.
pub const FINALIZER: &str = "capstan.dev/autoscaling-cleanup";
/// The resource ID (`service/<cluster>/<service>`) Capstan declares on, recorded with
/// the finalizer so that a later spec change still knows where to clean up.
pub const RESOURCE_ANNOTATION: &str = "capstan.dev/autoscaling-resource";

/// How soon to look again while an evaluation of the object is in flight.
const IN_FLIGHT_RETRY: Duration = Duration::from_millis(200);
/// How soon to retry a metadata patch that lost a race with another write.
const CONFLICT_RETRY: Duration = Duration::from_millis(500);

/// The spacing of cleanup retries: a tenth of the timeout, between 1 and 30 seconds.
fn retry_delay(timeout: Duration) -> Duration {
    (timeout / 10).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// The scalable target's resource ID of a spec.
pub fn resource_of(spec: &ServiceScalingSpec) -> String {
    ecs_resource_id(&spec.service.cluster, &spec.service.service)
}

fn has_finalizer(obj: &ServiceScaling) -> bool {
    obj.finalizers().iter().any(|f| f == FINALIZER)
}

/// Where Capstan may have declared objects: the recorded resource while the finalizer is
/// on (the spec's service if the annotation was removed by hand), else nowhere.
pub fn recorded(obj: &ServiceScaling) -> Option<String> {
    has_finalizer(obj).then(|| {
        obj.annotations()
            .get(RESOURCE_ANNOTATION)
            .cloned()
            .unwrap_or_else(|| resource_of(&obj.spec))
    })
}

/// The ECS service a recorded resource ID (`service/<cluster>/<service>`) names, for the
/// connection's scope check: the annotation that records it is writable by the tenant,
/// so cleanup touches it only where the tenant's scope reaches.
pub fn scoped(resource: &str) -> Option<ScopedResource> {
    let mut parts = resource.splitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("service"), Some(cluster), Some(service)) => Some(ScopedResource::EcsService {
            cluster: cluster.to_owned(),
            service: service.to_owned(),
        }),
        _ => None,
    }
}

/// Where the spec declares: its service in ApplicationAutoScaling mode, else nowhere.
pub fn wanted(spec: &ServiceScalingSpec) -> Option<String> {
    (spec.mode == ScalingMode::ApplicationAutoScaling).then(|| resource_of(spec))
}

/// The cleanup a live object needs: `Some((from, to))` when objects declared on `from`
/// must go because the spec now declares on `to` (None: nowhere). Pure.
pub fn move_needed(
    recorded: Option<String>,
    wanted: Option<String>,
) -> Option<(String, Option<String>)> {
    match recorded {
        Some(from) if wanted.as_deref() != Some(from.as_str()) => Some((from, wanted)),
        _ => None,
    }
}

fn key_of(obj: &ServiceScaling) -> Key {
    (obj.namespace().unwrap_or_default(), obj.name_any())
}

fn api(ctx: &Ctx, obj: &ServiceScaling) -> Api<ServiceScaling> {
    Api::namespaced(ctx.rt.client.clone(), &obj.namespace().unwrap_or_default())
}

/// Patches the finalizer and annotation: `record` Some adds the finalizer (if missing)
/// and records the resource, None drops both. Conditioned on the resourceVersion read,
/// so a concurrent change to the finalizer list is never overwritten; `Ok(false)` on
/// such a conflict (retry shortly).
async fn patch_finalizer(
    ctx: &Ctx,
    obj: &ServiceScaling,
    record: Option<&str>,
) -> Result<bool, Error> {
    let mut finalizers: Vec<String> = obj
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if record.is_some() {
        finalizers.push(FINALIZER.to_owned());
    }
    let patch = json!({
        "metadata": {
            "resourceVersion": obj.resource_version(),
            "finalizers": finalizers,
            "annotations": { RESOURCE_ANNOTATION: record },
        }
    });
    match api(ctx, obj)
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Adds the finalizer before an ApplicationAutoScaling object is registered (so before
/// anything is declared for it). `Some` is the action to return instead of registering.
pub(crate) async fn ensure_finalizer(
    ctx: &Ctx,
    obj: &ServiceScaling,
) -> Result<Option<Action>, Error> {
    let Some(resource) = wanted(&obj.spec) else {
        return Ok(None);
    };
    if has_finalizer(obj) {
        return Ok(None);
    }
    if patch_finalizer(ctx, obj, Some(&resource)).await? {
        Ok(None)
    } else {
        Ok(Some(Action::requeue(CONFLICT_RETRY)))
    }
}

/// Removes Capstan's objects from `resource` through `conn`; `Err` says why not.
async fn clean(ctx: &Ctx, conn: &ClusterConnection, resource: &str) -> Result<Removal, String> {
    let clients = ctx.clients.get(conn).await.map_err(|e| e.to_string())?;
    aas::remove(&clients.autoscaling, resource)
        .await
        .map_err(|e| {
            ctx.metrics.controller.failure(&e);
            e.to_string()
        })
}

async fn publish_removed(ctx: &Ctx, obj: &ServiceScaling, resource: &str, removal: &Removal) {
    let note = removal.describe(resource);
    tracing::info!(kind = "ServiceScaling", object = %format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any()), %note, "application auto scaling objects removed");
    ctx.events
        .publish(obj, EventType::Normal, REMOVED, "Cleanup", note)
        .await;
}

/// Writes `Ready=False`, reason [`CLEANUP_FAILED`] (with `gate`'s conditions), and
/// publishes a Warning Event when Ready was not already saying so.
async fn report_failure(
    ctx: &Ctx,
    obj: &ServiceScaling,
    gate: Vec<Desired<'static>>,
    message: String,
) -> Result<(), Error> {
    let before = obj
        .status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, READY))
        .map(|c| c.reason.clone());
    let mut conds = gate;
    conds.push(Desired::new(READY, false, CLEANUP_FAILED, message.clone()));
    capstan_core::ssa::update_status(
        &api(ctx, obj),
        obj,
        obj.status.as_ref(),
        FIELD_MANAGER,
        ctx.rt.clock.now(),
        conds,
        |_| {},
    )
    .await?;
    if before.as_deref() != Some(CLEANUP_FAILED) {
        ctx.events
            .publish(obj, EventType::Warning, CLEANUP_FAILED, "Cleanup", message)
            .await;
    }
    Ok(())
}

/// A live object whose spec no longer declares on the recorded resource (switched to
/// Direct, or another service): removes what Capstan declared there, then drops the
/// finalizer or records the new resource. `Some` is the action to return instead of
/// registering the object (a cleanup in progress or failed).
pub(crate) async fn leave_old_resource(
    ctx: &Ctx,
    obj: &ServiceScaling,
    conn: &ClusterConnection,
    gate: &[Desired<'static>],
) -> Result<Option<Action>, Error> {
    let Some((from, to)) = move_needed(recorded(obj), wanted(&obj.spec)) else {
        return Ok(None);
    };
    if !ctx.registry.retire(&key_of(obj)) {
        return Ok(Some(Action::requeue(IN_FLIGHT_RETRY)));
    }
    match clean(ctx, conn, &from).await {
        Ok(removal) => {
            publish_removed(ctx, obj, &from, &removal).await;
            if patch_finalizer(ctx, obj, to.as_deref()).await? {
                Ok(None)
            } else {
                Ok(Some(Action::requeue(CONFLICT_RETRY)))
            }
        }
        Err(why) => {
            let message = format!(
                "removing Capstan's Application Auto Scaling objects from {from} failed: {why}; not evaluating until they are removed (retrying)"
            );
            report_failure(ctx, obj, gate.to_vec(), message).await?;
            Ok(Some(Action::requeue(retry_delay(
                ctx.settings.cleanup_timeout,
            ))))
        }
    }
}

/// What may be left on `resource` when the cleanup is abandoned, by name.
pub fn left_behind(spec: &ServiceScalingSpec, resource: &str, now: DateTime<Utc>) -> String {
    let declared = ResolvedBehavior::from_spec(spec)
        .ok()
        .zip(windows_from_spec(spec).ok())
        .and_then(|(behavior, windows)| aas::declare(spec, &behavior, &windows, now).ok());
    let mut names = Vec::new();
    if let Some(d) = declared {
        names.extend(d.policies.into_iter().map(|p| p.name));
        names.extend(d.actions.into_iter().map(|a| a.name));
    }
    let named = if names.is_empty() {
        String::new()
    } else {
        format!(" ({})", names.join(", "))
    };
    format!(
        "the scalable target {resource} ({ECS_DESIRED_COUNT}) and its policies and scheduled actions named {}*{named}, as far as they exist",
        aas::PREFIX
    )
}

/// The deletion of an object: removes what Capstan declared, then drops the finalizer;
/// gives up after the timeout (see the module docs).
pub(crate) async fn finalize(ctx: &Ctx, obj: &ServiceScaling) -> Result<Action, Error> {
    let Some(resource) = recorded(obj) else {
        ctx.registry.retire(&key_of(obj));
        return Ok(Action::await_change());
    };
    if !ctx.registry.retire(&key_of(obj)) {
        return Ok(Action::requeue(IN_FLIGHT_RETRY));
    }
    let ns = obj.namespace().unwrap_or_default();
    let connection = obj.spec.connection_ref.name.clone();
    let scope: Vec<ScopedResource> = scoped(&resource).into_iter().collect();
    let (gate, result) = match connection_gate(
        &ctx.rt,
        &ns,
        Some(&obj.spec.connection_ref),
        ConnectionKind::Aws,
        &scope,
    )
    .await?
    {
        Gate::Refused(conds) => {
            let why = conds
                .iter()
                .find(|d| d.type_ == READY)
                .map(|d| d.message.clone())
                .unwrap_or_else(|| format!("ClusterConnection {connection:?} refused"));
            (conds, Err(why))
        }
        Gate::Proceed(None, conds) => (conds, Err("the object names no connection".to_owned())),
        Gate::Proceed(Some(conn), conds) => (conds, clean(ctx, &conn, &resource).await),
    };
    let now = ctx.rt.clock.now();
    let timeout = ctx.settings.cleanup_timeout;
    let deleted_at = obj
        .metadata
        .deletion_timestamp
        .as_ref()
        .map(from_k8s_time)
        .unwrap_or(now);
    let deadline = deleted_at + TimeDelta::from_std(timeout).unwrap_or(TimeDelta::MAX);
    match result {
        Ok(removal) => {
            publish_removed(ctx, obj, &resource, &removal).await;
        }
        Err(why) if now >= deadline => {
            let note = format!(
                "gave up removing Capstan's Application Auto Scaling objects {}s after the deletion: {why}. Left in AWS through ClusterConnection {connection:?}: {}; remove them by hand",
                timeout.as_secs(),
                left_behind(&obj.spec, &resource, now)
            );
            tracing::warn!(kind = "ServiceScaling", object = %format!("{ns}/{}", obj.name_any()), %note, "application auto scaling cleanup abandoned");
            ctx.events
                .publish(obj, EventType::Warning, ABANDONED, "Cleanup", note)
                .await;
        }
        Err(why) => {
            let message = format!(
                "removing Capstan's Application Auto Scaling objects from {resource} failed: {why}; retrying until {}, then the object is deleted and they are left in AWS",
                deadline.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
            report_failure(ctx, obj, gate, message).await?;
            let left = (deadline - now).to_std().unwrap_or(Duration::ZERO);
            return Ok(Action::requeue(
                retry_delay(timeout).min(left + Duration::from_millis(100)),
            ));
        }
    }
    if patch_finalizer(ctx, obj, None).await? {
        Ok(Action::await_change())
    } else {
        Ok(Action::requeue(CONFLICT_RETRY))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_resource_is_scope_checked_as_its_service() {
        assert_eq!(
            scoped("service/main/web"),
            Some(ScopedResource::EcsService {
                cluster: "main".into(),
                service: "web".into()
            })
        );
        assert_eq!(
            scoped(&ecs_resource_id("main", "web")),
            scoped("service/main/web")
        );
        assert_eq!(scoped("table/orders"), None);
        assert_eq!(scoped("service/main"), None);
    }

    fn object(mode: &str, service: &str, meta: serde_json::Value) -> ServiceScaling {
        serde_json::from_value(json!({
            "apiVersion": "capstan.dev/v1alpha1", "kind": "ServiceScaling",
            "metadata": meta,
            "spec": {
                "connectionRef": {"name": "c"},
                "service": {"cluster": "main", "service": service},
                "maxReplicas": 10,
                "mode": mode,
                "metrics": [{"cpuUtilization": {"targetPercent": 60}}],
                "schedules": [{"name": "sale", "start": "2026-11-27T12:00:00Z",
                    "end": "2026-11-27T18:00:00Z", "minReplicas": 8}]
            }
        }))
        .expect("object")
    }

    /// The finalizer records where Capstan declares; a switch to Direct or to another
    /// service moves away from the recorded resource, and nothing else does.
    #[test]
    fn a_mode_or_service_change_leaves_the_recorded_resource() {
        let with = |r: &str| {
            json!({"name": "web", "namespace": "shop", "finalizers": [FINALIZER],
                   "annotations": {RESOURCE_ANNOTATION: r}})
        };
        let plain = json!({"name": "web", "namespace": "shop"});
        let aas = "ApplicationAutoScaling";
        // (object, the move needed)
        let cases = [
            (object("Direct", "web", plain.clone()), None),
            (object(aas, "web", plain.clone()), None),
            (object(aas, "web", with("service/main/web")), None),
            (
                object("Direct", "web", with("service/main/web")),
                Some(("service/main/web".to_owned(), None)),
            ),
            (
                object(aas, "api", with("service/main/web")),
                Some((
                    "service/main/web".to_owned(),
                    Some("service/main/api".to_owned()),
                )),
            ),
            // The annotation removed by hand: the spec's service stands in.
            (
                object(
                    "Direct",
                    "web",
                    json!({"name": "web", "finalizers": ["other", FINALIZER]}),
                ),
                Some(("service/main/web".to_owned(), None)),
            ),
        ];
        for (i, (o, want)) in cases.into_iter().enumerate() {
            assert_eq!(move_needed(recorded(&o), wanted(&o.spec)), want, "case {i}");
        }
        assert_eq!(recorded(&object(aas, "web", plain)), None);
    }

    /// Retries are a tenth of the timeout, never under a second or over 30.
    #[test]
    fn retries_are_spaced_within_the_timeout() {
        assert_eq!(
            retry_delay(Duration::from_secs(600)),
            Duration::from_secs(30)
        );
        assert_eq!(retry_delay(Duration::from_secs(60)), Duration::from_secs(6));
        assert_eq!(retry_delay(Duration::from_secs(3)), Duration::from_secs(1));
    }

    /// The abandonment Event names the target and each policy and action by name.
    #[test]
    fn what_is_left_behind_is_named() {
        let o = object("ApplicationAutoScaling", "web", json!({"name": "web"}));
        let now = DateTime::parse_from_rfc3339("2026-11-27T10:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default();
        let text = left_behind(&o.spec, "service/main/web", now);
        assert!(
            text.starts_with("the scalable target service/main/web (ecs:service:DesiredCount)"),
            "{text}"
        );
        assert!(
            text.contains("(capstan-0-cpu, capstan-schedule-1, capstan-schedule-2)"),
            "{text}"
        );
    }
}
