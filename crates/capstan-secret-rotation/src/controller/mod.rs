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
//! and checks under a lock, so a stale `SetTarget` is refused ([`crate::targets::TargetError::Fenced`])
//! and its Capstan treats it as a lost claim. Rotation numbers only grow per object.
//!
//! A crash anywhere resumes from what the backend shows ([`rotation::resume`]). Every
//! step and delivery writes one audit line ([`crate::audit`]); Events mark rotations
//! started, finished and failed.
//!
//! The rooms of this folder:
//! - `reconcile`: one pass, gate → validate → decide, and the client build;
//! - `steps`: what each step does ([`rotation`] decides which step is next), and the
//!   end of a rotation (finished, given up);
//! - `conditions`: the conditions as a pure function of the status record;
//! - `status`: the status writer (writes conditioned on the resourceVersion read) and
//!   the status fields derived on every write.
//!
//! Delivery itself (the Secret, rollouts, ECS) lives in [`crate::delivery`].

use std::sync::Arc;
use std::time::Duration;

use capstan_core::conditions::Desired;
use capstan_core::error::Categorized;
use capstan_core::gate::{ConnectionIndex, watch_connections_indexed};
use capstan_core::runtime::{Runtime, metadata_cache, run_controller_cached};
use chrono::{DateTime, Utc};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::audit::Subject;
use crate::backend::RotationId;
use crate::context::Context;
pub use crate::context::{FIELD_MANAGER, Metrics, OutcomeLabels};
use crate::crd::{RotationInProgress, SecretRotation};
pub use crate::delivery::ecs::ECS_DEPLOYMENTS_ANNOTATION;
use crate::rotation::{self, Policy};
use crate::targets::Fence;

mod conditions;
mod reconcile;
mod status;
mod steps;

use conditions::View;
use reconcile::reconcile;

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

/// When to look again after a pass that ends with no rotation in progress: at the next
/// rotation time (at least 200 ms from now), or on a change when none is scheduled.
fn requeue_at(next: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Action {
    match next {
        Some(t) => Action::requeue(rotation::until(t, now).max(Duration::from_millis(200))),
        None => Action::await_change(),
    }
}

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
    fn forget_login_if_denied(&self, access_denied: bool) {
        if access_denied
            && matches!(self.obj.spec.backend, crate::crd::Backend::Vault(_))
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
}
