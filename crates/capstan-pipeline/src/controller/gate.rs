//! Before a run: the spec is valid, every connection the Pipeline names allows it and
//! its services, and no Pipeline created earlier deploys the same ECS service.

use super::*;

/// `Ready=False, InvalidSpec` with the validation's message when the spec cannot run.
pub(super) fn cannot_run(obj: &Pipeline) -> Option<Desired<'static>> {
    // FieldError paths already start at `spec.`.
    crate::validation::validate(&obj.spec).err().map(|errors| {
        Desired::new(
            READY,
            false,
            INVALID_SPEC,
            crate::validation::summarize(&errors),
        )
    })
}

/// The ECS services a Pipeline deploys: (connection, cluster, service), each a name
/// (the last part of an ARN).
pub(super) fn services_of(obj: &Pipeline) -> Vec<(String, String, String)> {
    let last = |s: &str| s.rsplit('/').next().unwrap_or(s).to_owned();
    obj.spec
        .stages
        .iter()
        .filter_map(|s| match s.action() {
            Some(StageAction::Deploy(d)) => Some((
                stage_connection(&obj.spec, d)
                    .unwrap_or_default()
                    .to_owned(),
                last(&d.cluster),
                last(&d.service),
            )),
            _ => None,
        })
        .collect()
}

/// `Ready=False, ServiceClaimed` when another Pipeline, created first, deploys one of
/// the same ECS services: two Pipelines rolling one service back and forth would undo
/// each other. Among Pipelines Capstan watches; the older one keeps the service.
pub(super) fn claimed_elsewhere(ctx: &Ctx, obj: &Pipeline) -> Option<Desired<'static>> {
    let mine = services_of(obj);
    if mine.is_empty() {
        return None;
    }
    let key = |o: &Pipeline| {
        (
            o.metadata.creation_timestamp.clone().map(|t| t.0),
            o.namespace().unwrap_or_default(),
            o.name_any(),
        )
    };
    let me = key(obj);
    let stores = ctx.stores.lock().unwrap_or_else(|e| e.into_inner());
    for other in stores.iter().flat_map(|s| s.state()) {
        let them = key(&other);
        if (them.1.as_str(), them.2.as_str()) == (me.1.as_str(), me.2.as_str()) || them >= me {
            continue;
        }
        if let Some((conn, cluster, service)) =
            services_of(&other).into_iter().find(|s| mine.contains(s))
        {
            return Some(Desired::new(
                READY,
                false,
                reasons::SERVICE_CLAIMED,
                format!(
                    "ECS service {service} of cluster {cluster} (connection {conn}) is deployed by Pipeline {}/{}, created first; one service is deployed by one Pipeline",
                    them.1, them.2
                ),
            ));
        }
    }
    None
}

/// Every connection the Pipeline names: its own and its Deploy stages'.
pub(super) fn connections_of(obj: &Pipeline) -> Vec<&ConnectionRef> {
    let mut refs: Vec<&ConnectionRef> = obj.spec.connection_ref.iter().collect();
    for s in &obj.spec.stages {
        if let Some(r) = s.deploy.as_ref().and_then(|d| d.connection_ref.as_ref())
            && !refs.iter().any(|x| x.name == r.name)
        {
            refs.push(r);
        }
    }
    refs
}

/// The connection a Deploy stage acts through: its own, or the Pipeline's.
pub(super) fn stage_connection<'a>(
    spec: &'a PipelineSpec,
    deploy: &'a DeployStage,
) -> Option<&'a str> {
    deploy
        .connection_ref
        .as_ref()
        .or(spec.connection_ref.as_ref())
        .map(|c| c.name.as_str())
}

/// Passes every connection the Pipeline names through the gate, each with the ECS
/// services its Deploy stages deploy through it. `Err`: the refusal's conditions.
pub(super) async fn gate_all(
    ctx: &Ctx,
    obj: &Pipeline,
    ns: &str,
) -> Result<
    Result<(BTreeMap<String, ClusterConnection>, Vec<Desired<'static>>), Vec<Desired<'static>>>,
    kube::Error,
> {
    let mut allowed = BTreeMap::new();
    for r in connections_of(obj) {
        let resources: Vec<ScopedResource> = obj
            .spec
            .stages
            .iter()
            .filter_map(|s| match s.action() {
                Some(StageAction::Deploy(d))
                    if stage_connection(&obj.spec, d) == Some(r.name.as_str()) =>
                {
                    Some(ScopedResource::EcsService {
                        cluster: d.cluster.clone(),
                        service: d.service.clone(),
                    })
                }
                _ => None,
            })
            .collect();
        match connection_gate(&ctx.rt, ns, Some(r), ConnectionKind::Aws, &resources).await? {
            Gate::Refused(conditions) => return Ok(Err(conditions)),
            Gate::Proceed(Some(conn), _) => {
                allowed.insert(r.name.clone(), *conn);
            }
            Gate::Proceed(None, _) => {}
        }
    }
    let mut conditions = Vec::new();
    if !allowed.is_empty() {
        let names: Vec<&str> = allowed.keys().map(String::as_str).collect();
        conditions.push(Desired::new(
            CONNECTION_READY,
            true,
            CONNECTION_ALLOWED,
            format!(
                "ClusterConnection{} {} allow{} namespace {ns:?} and the services its Deploy stages name",
                if names.len() > 1 { "s" } else { "" },
                names.join(", "),
                if names.len() > 1 { "" } else { "s" }
            ),
        ));
    }
    Ok(Ok((allowed, conditions)))
}

/// The gate refused the object, its spec is invalid, or it cannot run here: its
/// conditions (server-side apply), and a Warning Event when Ready turns false.
pub(super) async fn refuse(
    ctx: &Ctx,
    obj: &Pipeline,
    conditions: Vec<Desired<'static>>,
) -> Result<Action, kube::Error> {
    let before = obj
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let warning = ready_turned_false(&before, &conditions);
    let api: Api<Pipeline> =
        Api::namespaced(ctx.rt.client.clone(), &obj.namespace().unwrap_or_default());
    update_status(
        &api,
        obj,
        obj.status.as_ref(),
        FIELD_MANAGER,
        ctx.rt.clock.now(),
        conditions,
        |_| {},
    )
    .await?;
    if let Some((reason, message)) = warning {
        ctx.events
            .publish(obj, EventType::Warning, &reason, "Reconcile", message)
            .await;
    }
    Ok(Action::await_change())
}
