//! The Pipeline controller.
//!
//! Reconcile pipeline: (1) resolve the connection the object names and refuse a
//! namespace it does not allow ([`capstan_core::gate`]); (2) validate what the schema
//! cannot ([`crate::validation::validate`]); (3) run the stages. Step 3 is not in this
//! build: objects that pass steps 1 and 2 say so with an honest
//! `Ready=Unknown, NotImplemented` naming what is missing, in one status write, never a
//! false `Ready=True`. This placeholder reconcile leaves with the real controller.

use std::sync::Arc;

use capstan_core::conditions::{Desired, READY, Status};
use capstan_core::connection::ConnectionKind;
use capstan_core::events::{EventType, Publisher, ready_turned_false};
use capstan_core::gate::{Gate, INVALID_SPEC, NOT_IMPLEMENTED, connection_gate, watch_connections};
use capstan_core::metrics::ControllerMetrics;
use capstan_core::runtime::{Runtime, run_controller};
use capstan_core::ssa::update_status;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::crd::Pipeline;

/// The field manager of every write this controller makes.
pub const FIELD_MANAGER: &str = "capstan-pipeline";

/// The controller's name (logs, readiness).
const NAME: &str = "pipeline";

/// What `Ready`'s message says is missing.
const MISSING: &str = "running stages is not part of this Capstan build yet";

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

/// The conditions a Pipeline gets once its connection is allowed: `InvalidSpec` with
/// the validation's message, else `NotImplemented`.
fn readiness(obj: &Pipeline) -> Desired<'static> {
    // FieldError paths already start at `spec.`.
    match crate::validation::validate(&obj.spec) {
        Err(errors) => Desired::new(
            READY,
            false,
            INVALID_SPEC,
            crate::validation::summarize(&errors),
        ),
        Ok(()) => Desired::new(
            READY,
            Status::Unknown,
            NOT_IMPLEMENTED,
            format!("the spec is valid and its connection allowed; {MISSING}"),
        ),
    }
}

async fn reconcile(obj: Arc<Pipeline>, ctx: Arc<Ctx>) -> Result<Action, kube::Error> {
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
    let conditions = match gate {
        Gate::Refused(conditions) => conditions,
        Gate::Proceed(_, mut conditions) => {
            conditions.push(readiness(&obj));
            conditions
        }
    };
    // A refusal or an invalid spec is also a Warning Event, once per transition.
    let before = obj
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let warning = ready_turned_false(&before, &conditions);
    let api: Api<Pipeline> = Api::namespaced(ctx.rt.client.clone(), &ns);
    let now = ctx.rt.clock.now();
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
    if let Some((reason, message)) = warning {
        ctx.events
            .publish(
                obj.as_ref(),
                EventType::Warning,
                &reason,
                "Reconcile",
                message,
            )
            .await;
    }
    Ok(Action::await_change())
}

/// Runs the controller until `shutdown`.
pub async fn run(rt: Runtime, metrics: Metrics, shutdown: CancellationToken) {
    let ctx = Arc::new(Ctx {
        events: Publisher::new(rt.client.clone(), FIELD_MANAGER, &rt.instance),
        rt: rt.clone(),
        metrics: metrics.controller,
    });
    let error_policy = |_obj: Arc<Pipeline>, err: &kube::Error, ctx: Arc<Ctx>| {
        ctx.metrics.failure(err);
        Action::requeue(std::time::Duration::from_secs(15))
    };
    run_controller(
        &rt,
        NAME,
        ctx,
        reconcile,
        error_policy,
        |c, _| watch_connections(&rt, c, |o: &Pipeline| o.spec.connection_ref.as_ref()),
        shutdown,
    )
    .await;
}
