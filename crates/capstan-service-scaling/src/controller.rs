//! The ServiceScaling controller.
//!
//! Reconcile pipeline: (1) resolve the connection the object names and refuse a
//! namespace it does not allow ([`capstan_core::gate`]); (2) read the ECS service and
//! its metrics, run [`crate::algorithm`], write `desiredCount`. Step 2 is not in this
//! build: objects that pass step 1 say so with `Ready=Unknown, NotImplemented`.

use capstan_core::connection::ConnectionKind;
use capstan_core::gate::{Unimplemented, run_unimplemented};
use capstan_core::metrics::ControllerMetrics;
use capstan_core::runtime::Runtime;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::crd::ServiceScaling;

/// The field manager of every write this controller makes.
pub const FIELD_MANAGER: &str = "capstan-service-scaling";

/// The controller's metrics, under `capstan_service_scaling_`.
#[derive(Clone, Debug)]
pub struct Metrics {
    controller: ControllerMetrics,
}

impl Metrics {
    /// Registers the metrics.
    pub fn register(registry: &mut Registry) -> Self {
        Self {
            controller: ControllerMetrics::register(registry, "service_scaling"),
        }
    }
}

/// Runs the controller until `shutdown`.
pub async fn run(rt: Runtime, metrics: Metrics, shutdown: CancellationToken) {
    let spec = Unimplemented {
        name: "service-scaling",
        field_manager: FIELD_MANAGER,
        connection_of: |o: &ServiceScaling| Some(&o.spec.connection_ref),
        kind_of: |_: &ServiceScaling| ConnectionKind::Aws,
        validate: |_: &ServiceScaling| Ok(()),
        missing: "scaling ECS is not part of this Capstan build yet",
    };
    run_unimplemented(
        rt,
        metrics.controller,
        spec,
        |o: &ServiceScaling| o.status.as_ref(),
        shutdown,
    )
    .await;
}
