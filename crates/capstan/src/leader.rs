//! Leader election on a `coordination.k8s.io` Lease, with `kube-lease-manager`.
//!
//! Only the leader runs controllers. When leadership is lost the controllers are
//! stopped (in-flight reconciles finish) and the process goes back to standby. A lease
//! does not fence: a leader frozen past its lease may still finish a step after
//! another has taken over, so irreversible steps carry their own claims (conditional
//! status updates, AWSPENDING labels, KV check-and-set) in the controllers.

use std::future::Future;
use std::time::Duration;

use capstan_core::runtime::ReadyFlag;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use tokio_util::sync::CancellationToken;

/// Lease parameters.
#[derive(Debug, Clone)]
pub struct Params {
    pub lease_name: String,
    pub namespace: String,
    pub identity: String,
    pub duration: u64,
    pub grace: u64,
}

/// `capstan_leader`: 1 while this replica leads (or runs without leader election), 0
/// otherwise. Alerts join per-object series on it.
/// Setting it also starts or stops (and clears) the per-object series, which only the
/// leader exports.
#[derive(Clone, Debug)]
pub struct LeaderGauge(
    prometheus_client::metrics::gauge::Gauge,
    std::sync::Arc<capstan_core::object_metrics::ObjectMetrics>,
);

impl LeaderGauge {
    /// Registers the gauge, at 0.
    pub fn register(
        registry: &mut prometheus_client::registry::Registry,
        objects: std::sync::Arc<capstan_core::object_metrics::ObjectMetrics>,
    ) -> Self {
        let gauge = Self(Default::default(), objects);
        registry.register(
            "leader",
            "Whether this replica leads (1) and runs the controllers",
            gauge.0.clone(),
        );
        gauge
    }

    /// Sets it.
    pub fn set(&self, leading: bool) {
        self.0.set(i64::from(leading));
        self.1.set_leading(leading);
    }

    /// Its value.
    pub fn get(&self) -> bool {
        self.0.get() == 1
    }
}

/// Takes part in the election until `shutdown`, running `lead` while leading.
pub async fn run<F, Fut>(
    client: Client,
    params: Params,
    known: ReadyFlag,
    gauge: LeaderGauge,
    shutdown: CancellationToken,
    lead: F,
) -> anyhow::Result<()>
where
    F: Fn(CancellationToken) -> Fut,
    Fut: Future<Output = ()>,
{
    let manager = LeaseManagerBuilder::new(client.clone(), &params.lease_name)
        .with_namespace(&params.namespace)
        .with_identity(&params.identity)
        .with_duration(params.duration)
        .with_grace(params.grace)
        .with_field_manager("capstan-leader-election")
        .build()
        .await
        .map_err(|e| anyhow::anyhow!("setting up leader election: {e}"))?;
    let (mut leading, task) = manager.watch().await;
    let leases: Api<Lease> = Api::namespaced(client, &params.namespace);

    let mut standby_reported = false;
    loop {
        // Standby: wait for the lease, reporting readiness once we know who holds it.
        while !*leading.borrow_and_update() {
            if !standby_reported && held_by_other(&leases, &params).await {
                standby_reported = true;
                known.set(true);
                tracing::info!(lease = %params.lease_name, "standby: another instance leads");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return release(leading, task, false).await,
                changed = leading.changed() => if changed.is_err() {
                    anyhow::bail!("leader election stopped unexpectedly");
                },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        known.set(true);
        standby_reported = false;
        gauge.set(true);
        tracing::info!(lease = %params.lease_name, identity = %params.identity, "became leader");
        let token = shutdown.child_token();
        let lost = {
            let run = lead(token.clone());
            tokio::pin!(run);
            tokio::select! {
                _ = &mut run => false,
                () = async {
                    loop {
                        if leading.changed().await.is_err() || !*leading.borrow_and_update() {
                            break;
                        }
                    }
                } => {
                    token.cancel();
                    run.await;
                    true
                },
            }
        };
        gauge.set(false);
        if lost && !shutdown.is_cancelled() {
            tracing::warn!(lease = %params.lease_name, "lost leadership; controllers stopped");
            continue;
        }
        return release(leading, task, !lost).await;
    }
}

/// Whether another identity holds an unexpired lease.
async fn held_by_other(leases: &Api<Lease>, params: &Params) -> bool {
    let Ok(Some(lease)) = leases.get_opt(&params.lease_name).await else {
        return false;
    };
    let Some(spec) = lease.spec else { return false };
    spec.holder_identity
        .as_deref()
        .is_some_and(|h| !h.is_empty() && h != params.identity)
}

/// Gives the lease up, if held, so that a successor need not wait for it to expire;
/// `held` says whether this replica led when it stopped (a standby has nothing to
/// release, and says nothing of it).
async fn release(
    leading: tokio::sync::watch::Receiver<bool>,
    task: tokio::task::JoinHandle<
        Result<kube_lease_manager::LeaseManager, kube_lease_manager::LeaseManagerError>,
    >,
    held: bool,
) -> anyhow::Result<()> {
    drop(leading);
    match task.await {
        Ok(Ok(_)) if held => tracing::info!("lease released"),
        Ok(Ok(_)) => tracing::debug!("left the election"),
        Ok(Err(e)) => tracing::warn!(error = %e, "releasing the lease"),
        Err(e) => tracing::warn!(error = %e, "lease task ended abnormally"),
    }
    Ok(())
}
