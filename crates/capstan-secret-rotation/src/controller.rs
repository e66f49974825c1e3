//! The SecretRotation controller.
//!
//! Reconcile pipeline: (1) resolve the connection the object names and refuse a
//! namespace it does not allow ([`capstan_core::gate`]); (2) validate what the schema
//! cannot ([`crate::validation::validate`]), reporting `Ready=False, InvalidSpec`;
//! (3) rotate. Step 3, the four-step rotation protocol with delivery, is not in this
//! build: objects that pass steps 1 and 2 say so with `Ready=Unknown, NotImplemented`,
//! never a false `Ready=True`.

use std::sync::Arc;
use std::time::Duration;

use capstan_core::conditions::{Desired, READY, Status};
use capstan_core::connection::ConnectionKind;
use capstan_core::error::Categorized;
use capstan_core::gate::{Gate, connection_gate, watch_connections};
use capstan_core::metrics::ControllerMetrics;
use capstan_core::runtime::{Runtime, run_controller};
use capstan_core::ssa::update_status;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::crd::{BackendKind, SecretRotation, reasons};
use crate::validation::validate;

/// The field manager of every write this controller makes.
pub const FIELD_MANAGER: &str = "capstan-secret-rotation";
/// The reason given while the rotation step is not part of the build.
pub const NOT_IMPLEMENTED: &str = "NotImplemented";

/// The controller's metrics.
#[derive(Clone, Debug)]
pub struct Metrics {
    controller: ControllerMetrics,
}

impl Metrics {
    /// Registers the metrics under `capstan_secret_rotation_`.
    pub fn register(registry: &mut Registry) -> Self {
        Self {
            controller: ControllerMetrics::register(registry, "secret_rotation"),
        }
    }
}

/// Errors of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl Categorized for Error {
    fn category(&self) -> &'static str {
        match self {
            Error::Kube(e) => e.category(),
        }
    }
}

struct Ctx {
    rt: Runtime,
    metrics: Metrics,
}

/// Runs the controller until `shutdown`.
pub async fn run(rt: Runtime, metrics: Metrics, shutdown: CancellationToken) {
    let ctx = Arc::new(Ctx {
        rt: rt.clone(),
        metrics,
    });
    let connection_of: fn(&SecretRotation) -> Option<&str> =
        |o| o.spec.connection_ref.as_ref().map(|r| r.name.as_str());
    run_controller(
        &rt,
        "secret-rotation",
        ctx,
        reconcile,
        error_policy,
        |c, _| watch_connections(&rt, c, connection_of),
        shutdown,
    )
    .await;
}

/// Which kind of system the object's connection must point at.
fn connection_kind(obj: &SecretRotation) -> ConnectionKind {
    match obj.spec.backend.kind() {
        BackendKind::Vault => ConnectionKind::Vault,
        _ => ConnectionKind::Aws,
    }
}

#[tracing::instrument(skip(obj, ctx), fields(namespace = obj.namespace(), name = %obj.name_any()))]
async fn reconcile(obj: Arc<SecretRotation>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let _timer = ctx.metrics.controller.start();
    let rt = &ctx.rt;
    let ns = obj.namespace().unwrap_or_default();
    let gate = connection_gate(
        rt,
        &ns,
        obj.spec.connection_ref.as_ref(),
        connection_kind(&obj),
    )
    .await?;
    let (conditions, action) = match gate {
        Gate::Refused(conditions) => (conditions, Action::await_change()),
        Gate::Proceed(_connection, mut conditions) => {
            conditions.push(match validate(&obj.spec) {
                // FieldError paths already start at `spec.`.
                Err(errors) => Desired::new(
                    READY,
                    Status::False,
                    reasons::INVALID_SPEC,
                    crate::validation::summarize(&errors),
                ),
                Ok(()) => Desired::new(
                    READY,
                    Status::Unknown,
                    NOT_IMPLEMENTED,
                    "the spec is valid and its connection allowed; rotation is not part of this Capstan build yet",
                ),
            });
            (conditions, Action::await_change())
        }
    };
    let api: Api<SecretRotation> = Api::namespaced(rt.client.clone(), &ns);
    let now = rt.clock.now();
    update_status(
        &api,
        obj.as_ref(),
        obj.status.as_ref(),
        FIELD_MANAGER,
        now,
        conditions,
        |_| {},
    )
    .await?;
    Ok(action)
}

fn error_policy(_obj: Arc<SecretRotation>, err: &Error, ctx: Arc<Ctx>) -> Action {
    ctx.metrics.controller.failure(err);
    Action::requeue(Duration::from_secs(15))
}
