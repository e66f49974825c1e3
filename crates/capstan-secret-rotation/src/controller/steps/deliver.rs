//! The Deliver step: the templated Secret, workload restarts and ECS deployments.

use kube::ResourceExt;

use super::super::pass::{Error, Pass};
use super::super::status::Writer;
use super::{StepResult, delivery_failed, from_backend, transient};
use crate::audit::{self, DeliveryAction, Subject};
use crate::backend::Version;
use crate::context::Clients;
use crate::crd::{Delivery, EcsService, RotationInProgress, SecretDelivery, reasons};
use crate::delivery::{self, ecs};

/// The Deliver step: the Secret, then the rollouts and ECS deployments; done once every
/// rollout and ECS deployment completed.
pub(super) async fn deliver(
    pass: &Pass<'_>,
    w: &mut Writer,
    r: &RotationInProgress,
    clients: &Clients,
) -> StepResult {
    let Some(d) = pass.obj.spec.delivery.as_ref().filter(|d| !d.is_empty()) else {
        return StepResult::Done(None);
    };
    let current = match clients.backend.current().await {
        Ok(Some(v)) => v,
        Ok(None) => {
            return transient(reasons::BACKEND_EMPTY, "the backend holds no current value");
        }
        Err(e) => return from_backend(e),
    };
    let version = current.id.clone();
    let subject = pass.subject(r);
    if let Some(secret) = &d.secret
        && let Err(res) = deliver_secret(pass, &subject, secret, &current).await
    {
        return res;
    }
    let mut delivered = true;
    if !d.rollouts.is_empty() {
        match deliver_rollouts(pass, &subject, d, &version).await {
            Ok(done) => delivered &= done,
            Err(res) => return res,
        }
    }
    if !d.ecs_services.is_empty() {
        let Some(client) = clients.ecs.as_ref() else {
            return delivery_failed("delivery.ecsServices is set but no AWS connection was built");
        };
        match deliver_ecs(w, &subject, client, &d.ecs_services, &version).await {
            Ok(done) => delivered &= done,
            Err(res) => return res,
        }
    }
    if delivered {
        StepResult::Done(Some(version))
    } else {
        StepResult::Waiting
    }
}

/// The templated Secret, written unless it already holds `current`.
async fn deliver_secret(
    pass: &Pass<'_>,
    subject: &Subject<'_>,
    secret: &SecretDelivery,
    current: &Version,
) -> Result<(), StepResult> {
    let client = &pass.ctx.rt.client;
    let ns = pass.obj.namespace().unwrap_or_default();
    let version = current.id.as_str();
    let have = delivery::delivered_version(client, &ns, &secret.name)
        .await
        .map_err(delivery_failed)?;
    if have.as_deref() == Some(version) {
        return Ok(());
    }
    let values = delivery::template_values(
        &pass.obj.spec.target,
        current.credential.username.as_deref(),
        &current.credential.value,
    );
    let data = delivery::render(secret, &pass.obj.spec.target, &values).map_err(delivery_failed)?;
    delivery::write_secret(client, pass.obj, secret, data, version)
        .await
        .map_err(delivery_failed)?;
    audit::delivery(
        subject,
        &format!("Secret/{}", secret.name),
        version,
        DeliveryAction::Written,
    );
    Ok(())
}

/// Rollout restarts for `version`, at most `maxConcurrentRollouts` unfinished at a
/// time; whether every rollout finished.
async fn deliver_rollouts(
    pass: &Pass<'_>,
    subject: &Subject<'_>,
    d: &Delivery,
    version: &str,
) -> Result<bool, StepResult> {
    let client = &pass.ctx.rt.client;
    let ns = pass.obj.namespace().unwrap_or_default();
    let workloads = delivery::workloads(client, &ns, d)
        .await
        .map_err(delivery_failed)?;
    let max = usize::try_from(d.max_concurrent_rollouts).unwrap_or(1);
    let now = pass.ctx.rt.clock.now();
    for wl in delivery::to_restart(&workloads, version, max) {
        delivery::restart(client, &ns, wl, version, now)
            .await
            .map_err(delivery_failed)?;
        audit::delivery(subject, &wl.label(), version, DeliveryAction::Restarted);
    }
    Ok(delivery::workloads_delivered(&workloads, version))
}

/// ECS delivery of `version` ([`crate::delivery::ecs`]): forces the deployments not yet
/// forced, records them on the object with a conditioned write, then reports whether
/// all completed.
async fn deliver_ecs(
    w: &mut Writer,
    subject: &Subject<'_>,
    client: &capstan_aws::ecs::SdkEcs,
    services: &[EcsService],
    version: &str,
) -> Result<bool, StepResult> {
    let recorded = w.obj.annotations().get(ecs::ECS_DEPLOYMENTS_ANNOTATION);
    let mut record = ecs::EcsRecord::for_version(recorded.map(String::as_str), version);
    let forced = ecs::force_deployments(client, subject, services, &mut record).await;
    if forced.forced {
        match w
            .annotate(ecs::ECS_DEPLOYMENTS_ANNOTATION, record.to_annotation())
            .await
        {
            Ok(()) => {}
            Err(Error::ClaimLost(m)) => return Err(StepResult::ClaimLost(m)),
            Err(e) => return Err(delivery_failed(e)),
        }
    }
    if let Some(f) = forced.failure {
        return Err(delivery_failed(f));
    }
    ecs::deployments_done(client, services, &record)
        .await
        .map_err(delivery_failed)
}
