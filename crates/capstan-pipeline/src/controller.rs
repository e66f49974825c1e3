//! The Pipeline controller.
//!
//! Reconcile pipeline: (1) resolve the connection the object names and refuse a
//! namespace it does not allow ([`capstan_core::gate`]); (2) validate what the schema
//! cannot ([`crate::validation::validate`]); (3) run the stages. Step 3 is not in this
//! build: objects that pass steps 1 and 2 say so with `Ready=Unknown, NotImplemented`.

use capstan_core::connection::ConnectionKind;
use capstan_core::gate::{Unimplemented, run_unimplemented};
use capstan_core::metrics::ControllerMetrics;
use capstan_core::runtime::Runtime;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::crd::Pipeline;

/// The field manager of every write this controller makes.
pub const FIELD_MANAGER: &str = "capstan-pipeline";

/// The controller's metrics, under `capstan_pipeline_`.
#[derive(Clone, Debug)]
pub struct Metrics {
    controller: ControllerMetrics,
}

impl Metrics {
    /// Registers the metrics.
    pub fn register(registry: &mut Registry) -> Self {
        Self {
            controller: ControllerMetrics::register(registry, "pipeline"),
        }
    }
}

/// Runs the controller until `shutdown`.
pub async fn run(rt: Runtime, metrics: Metrics, shutdown: CancellationToken) {
    let spec = Unimplemented {
        name: "pipeline",
        field_manager: FIELD_MANAGER,
        connection_of: |o: &Pipeline| o.spec.connection_ref.as_ref(),
        kind_of: |_: &Pipeline| ConnectionKind::Aws,
        validate: |o: &Pipeline| {
            // FieldError paths already start at `spec.`.
            crate::validation::validate(&o.spec)
                .map_err(|errors| crate::validation::summarize(&errors))
        },
        missing: "running stages is not part of this Capstan build yet",
    };
    run_unimplemented(
        rt,
        metrics.controller,
        spec,
        |o: &Pipeline| o.status.as_ref(),
        shutdown,
    )
    .await;
}
