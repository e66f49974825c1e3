//! The SecretRotation controller.
//!
//! Reconcile pipeline, one object at a time:
//!
//! 1. **gate**: resolve the ClusterConnection the object names and refuse a namespace it
//!    does not allow, or a secret, path or ECS service its scopes do not grant the
//!    namespace ([`capstan_core::gate::connection_gate`]), before any other call;
//! 2. **validate** what the schema cannot ([`crate::validation::validate`]) and read the
//!    policy ([`rotation::Policy::from_spec`]); an invalid spec waits for a change;
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
//! and checks under a lock, so a stale `SetTarget` is refused ([`crate::targets::TargetError::Fenced`])
//! and its Capstan treats it as a lost claim. Rotation numbers only grow per object.
//!
//! A crash anywhere resumes from what the backend shows ([`rotation::resume`]); a step
//! found done there (or, for SetTarget, a target that already accepts the pending value)
//! is not done again. Every step and delivery writes one audit line ([`crate::audit`]),
//! a step found done after a crash a recovered one; Events mark rotations started,
//! finished and failed. A rotation in progress far longer than usual is reported stuck
//! (`Rotating` reason `RotationStuck`, and a gauge).
//!
//! Each reconcile starts from the newest object this process knows: its own last write
//! when the watch has not caught up with it yet ([`capstan_core::runtime::Fresh`]), so it
//! never redoes a step it recorded. A status claim lost to another writer is not a
//! failure: it is counted (`claims_lost_total`), logged at debug level, and the newer
//! view is taken next.
//!
//! The rooms of this folder:
//! - `reconcile`: one pass, gate → validate → decide, and the client build;
//! - `steps`: what each step does ([`rotation`] decides which step is next), and the
//!   end of a rotation (finished, given up);
//! - `trail`: the audit lines of one pass, each written right before the status write
//!   that records its step;
//! - `conditions`: the conditions as a pure function of the status record;
//! - `pass`: what the rooms share about one pass (the object, its policy, the error,
//!   Event reasons), importing only `conditions`, never this module;
//! - `status`: the status writer (writes conditioned on the resourceVersion read) and
//!   the status fields derived on every write.
//!
//! Delivery itself (the Secret, rollouts, ECS) lives in [`crate::delivery`].

use std::sync::Arc;
use std::time::Duration;

use capstan_core::gate::{ConnectionIndex, watch_connections_indexed};
use capstan_core::runtime::{Runtime, metadata_cache, run_controller_cached};
use kube::runtime::controller::Action;
use tokio_util::sync::CancellationToken;

use crate::context::Context;
pub use crate::context::{FIELD_MANAGER, Metrics, OutcomeLabels, Settings};
use crate::crd::SecretRotation;
pub use crate::delivery::ecs::ECS_DEPLOYMENTS_ANNOTATION;
use crate::rotation;

mod conditions;
mod pass;
mod reconcile;
mod status;
mod steps;
mod trail;

use pass::{Cached, failpoints_from_env, key_of};
pub use pass::{Error, events};
use reconcile::reconcile;

/// Runs the controller until `shutdown`, with default [`Settings`].
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
    failpoints_from_env();
    let ctx = Arc::new(Context::with_settings(rt.clone(), metrics, settings));
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

/// The ClusterConnections an object names: its backend's, its ECS delivery's and its
/// target's.
fn connections_of(o: &SecretRotation) -> Vec<String> {
    let mut names: Vec<String> = o
        .spec
        .connection_ref
        .iter()
        .chain(o.spec.ecs_connection())
        .chain(o.spec.target.connection())
        .map(|r| r.name.clone())
        .collect();
    names.sort();
    names.dedup();
    names
}

fn error_policy(obj: Arc<Cached>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.controller.failure(err);
    match err {
        // Not reached: `reconcile` takes a lost claim as the end of a pass.
        Error::ClaimLost(_) => Action::requeue(Duration::from_millis(500)),
        _ => {
            let key = key_of(&*obj);
            Action::requeue(rotation::retry_after(ctx.failed(&key), &key))
        }
    }
}
