//! Deploy stages and rollbacks: reading the deployments a run follows from ECS, the
//! deploy steps, and putting a service back.

use super::*;

/// The Deploy section of the stage named `name` in the spec, if it is a Deploy stage.
pub(super) fn deploy_of<'a>(spec: &'a PipelineSpec, name: &str) -> Option<&'a DeployStage> {
    spec.stages
        .iter()
        .find(|s| s.name == name)
        .and_then(|s| match s.action() {
            Some(StageAction::Deploy(d)) => Some(d),
            _ => None,
        })
}

/// The clients of the connection Deploy stage `d` acts through.
pub(super) async fn clients_for(
    ctx: &Ctx,
    connections: &BTreeMap<String, ClusterConnection>,
    spec: &PipelineSpec,
    d: &DeployStage,
) -> Result<Clients, Error> {
    let conn = stage_connection(spec, d)
        .and_then(|n| connections.get(n))
        .ok_or_else(|| {
            DeployError::Refused("the stage's ClusterConnection did not pass the gate".into())
        })?;
    Ok(ctx.clients.get(conn).await?)
}

/// Reads every deployment the run follows from ECS; records the failed tasks of the
/// stages' own deployments in `st`.
pub(super) async fn observe_deployments(
    ctx: &Ctx,
    connections: &BTreeMap<String, ClusterConnection>,
    spec: &PipelineSpec,
    st: &mut PipelineStatus,
) -> Result<BTreeMap<String, scheduler::DeployState>, Error> {
    let mut deploys = BTreeMap::new();
    for (index, id, rollback) in scheduler::followed_deployments(st) {
        let stage = &st.stages[index];
        let Some(d) = deploy_of(spec, &stage.name) else {
            continue;
        };
        let ours = if rollback {
            stage.previous_task_definition.clone()
        } else {
            stage.task_definition.clone()
        }
        .unwrap_or_default();
        let clients = clients_for(ctx, connections, spec, d).await?;
        let (state, failed) = deploy::observe(
            &clients.ecs,
            &d.cluster,
            &d.service,
            &id,
            &ours,
            d.max_failed_tasks,
        )
        .await?;
        if !rollback && !failed.is_empty() {
            st.stages[index].failed_tasks = failed;
        }
        deploys.insert(id, state);
    }
    Ok(deploys)
}

/// The claimed Deploy stage `index`: pins its images (recorded), finds or registers its
/// task definition (recorded with the one it replaces), updates the service unless it
/// runs it already, and records the deployment to follow. A step that cannot succeed
/// (an image not in ECR, a container the task definition lacks, a service that is not
/// ECS-deployed) fails the stage with the reason; AWS errors are retried.
pub(super) async fn deploy_stage(
    ctx: &Ctx,
    w: &mut Writer,
    connections: &BTreeMap<String, ClusterConnection>,
    job_api: &Api<Job>,
    index: usize,
) -> Result<(), Error> {
    let spec = w.obj.spec.clone();
    let mut st = w.status();
    let Some(name) = st.stages.get(index).map(|s| s.name.clone()) else {
        return Ok(());
    };
    let Some(d) = deploy_of(&spec, &name) else {
        let why = "the stage is no longer a Deploy stage of the spec";
        return fail_run(ctx, w, job_api, st, index, why, &[]).await;
    };
    let clients = clients_for(ctx, connections, &spec, d).await?;
    let run_id = st.run_id.clone().unwrap_or_default();
    let refused = |e: DeployError| match e {
        DeployError::Refused(why) => Ok(why),
        other => Err(Error::Aws(other)),
    };

    // 1. The images, pinned by digest (the run's pins first).
    let mut pins = st.images.clone();
    let mut images = BTreeMap::new();
    for c in &d.containers {
        let rendered = match jobs::render(&st, &c.image) {
            Ok(r) => r,
            Err(e) => {
                let why = format!("the image of container {} cannot be rendered: {e}", c.name);
                return fail_run(ctx, w, job_api, st, index, &why, &[]).await;
            }
        };
        match deploy::pin_image(&clients.ecr, &rendered, &mut pins).await {
            Ok(pinned) => {
                images.insert(c.name.clone(), pinned);
            }
            Err(e) => {
                let why = refused(e)?;
                return fail_run(ctx, w, job_api, st, index, &why, &[]).await;
            }
        }
    }
    if pins != st.images {
        st.images = pins;
        w.write(&st).await?;
    }

    // 2. The task definition, registered once per run and stage.
    if st.stages[index].task_definition.is_none() {
        let previous = st.stages[index].previous_task_definition.clone();
        match deploy::register(
            &clients.ecs,
            &d.cluster,
            &d.service,
            &run_id,
            &name,
            &images,
            previous.as_deref(),
        )
        .await
        {
            Ok(done) => {
                if done.registered {
                    crash_point("pipeline::after-register");
                }
                let stage = &mut st.stages[index];
                stage.task_definition = Some(done.task_definition.clone());
                stage.previous_task_definition = Some(done.previous.clone());
                stage.set_message(&format!(
                    "registered {} (replacing {}); updating the service",
                    done.task_definition, done.previous
                ));
                w.write(&st).await?;
            }
            Err(e) => {
                let why = refused(e)?;
                return fail_run(ctx, w, job_api, st, index, &why, &[]).await;
            }
        }
    }

    // 3. The service, unless it runs the task definition already.
    let ours = st.stages[index].task_definition.clone().unwrap_or_default();
    match deploy::update(&clients.ecs, &d.cluster, &d.service, &ours).await {
        Ok((id, updated)) => {
            if updated {
                crash_point("pipeline::after-update-service");
            }
            let stage = &mut st.stages[index];
            stage.deployment_id = Some(id.clone());
            stage.set_message(&format!("deployment {id} of {ours} in progress"));
            let now = ctx.rt.clock.now();
            w.set_conditions(&mut st, now);
            w.write(&st).await?;
            let images: Vec<String> = images
                .into_iter()
                .map(|(c, i)| format!("{c}={i}"))
                .collect();
            let note = format!(
                "stage {name}: service {} of cluster {} updated to {ours} ({}), deployment {id}",
                d.service,
                d.cluster,
                images.join(", ")
            );
            ctx.events
                .publish(
                    &w.obj,
                    EventType::Normal,
                    events::DEPLOY_STARTED,
                    "Deploy",
                    note,
                )
                .await;
            Ok(())
        }
        Err(e) => {
            let why = refused(e)?;
            fail_run(ctx, w, job_api, st, index, &why, &[]).await
        }
    }
}

/// Puts the service of Deploy stage `index` back on the task definition it replaced,
/// while it still runs the run's; records the deployment to follow, or the refusal.
pub(super) async fn start_rollback(
    ctx: &Ctx,
    w: &mut Writer,
    connections: &BTreeMap<String, ClusterConnection>,
    mut st: PipelineStatus,
    index: usize,
) -> Result<(), Error> {
    let spec = w.obj.spec.clone();
    let now = ctx.rt.clock.now();
    let Some(stage) = st.stages.get(index) else {
        return Ok(());
    };
    let name = stage.name.clone();
    let ours = stage.task_definition.clone().unwrap_or_default();
    let previous = stage.previous_task_definition.clone().unwrap_or_default();
    let outcome = match deploy_of(&spec, &name) {
        None => Err(format!(
            "stage {name} is no longer a Deploy stage of the spec; put its service back by hand on {previous}"
        )),
        Some(d) => {
            let clients = clients_for(ctx, connections, &spec, d).await?;
            // A rollback by hand (capstan.dev/rollback) has no task definition of its
            // own run to compare: it puts back whatever runs now.
            let put_back = if ours.is_empty() {
                deploy::update(&clients.ecs, &d.cluster, &d.service, &previous).await
            } else {
                deploy::roll_back(&clients.ecs, &d.cluster, &d.service, &ours, &previous).await
            };
            match put_back {
                Ok((id, updated)) => {
                    if updated {
                        crash_point("pipeline::after-rollback-update");
                    }
                    Ok((id, d.service.clone()))
                }
                Err(DeployError::Refused(why)) => Err(why),
                Err(e) => return Err(e.into()),
            }
        }
    };
    let stage = &mut st.stages[index];
    let rb = stage.rollback.get_or_insert_with(RollbackStatus::pending);
    let (kind, reason, note) = match outcome {
        Ok((id, service)) => {
            rb.phase = RollbackPhase::Running;
            rb.started = Some(now);
            rb.deployment_id = Some(id.clone());
            rb.message = Some(format!("deployment {id} of {previous} in progress"));
            (
                EventType::Normal,
                events::ROLLBACK_STARTED,
                format!(
                    "stage {name}: putting service {service} back on {previous} (deployment {id})"
                ),
            )
        }
        Err(why) => {
            rb.phase = RollbackPhase::Failed;
            rb.started = Some(now);
            rb.finished = Some(now);
            rb.message = Some(cut(&why));
            (
                EventType::Warning,
                events::ROLLBACK_FAILED,
                format!("stage {name}: {why}"),
            )
        }
    };
    st.current_stage = Some(name);
    w.set_conditions(&mut st, now);
    w.write(&st).await?;
    ctx.events
        .publish(&w.obj, kind, reason, "Rollback", note)
        .await;
    Ok(())
}
