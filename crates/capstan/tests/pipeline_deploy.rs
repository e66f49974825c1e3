//! Pipeline Deploy stages on the real API server, the real Job controller and the AWS
//! emulator, whose ECS model (tests/env/moto_ext/ecs_service_tasks.py) makes a new
//! PRIMARY deployment on a task-definition change that completes after the service's
//! task start-up time, or, for an image carrying a failure marker, keeps stopping
//! tasks (exit 1 or failed health check). The test plays the kubelet for Job stages.
//!
//! - the shop's path: test, build (its result names the image tag), staging deploy,
//!   smoke test, production deploy; production runs the digest staging tested even
//!   though the tag moved in between; every task definition copy keeps everything but
//!   the image; then a failing smoke test rolls staging back and leaves production
//!   untouched;
//! - a rollout whose tasks exit 1 fails at `maxFailedTasks` (ECS's circuit breaker
//!   would never trip on them) and is rolled back;
//! - a deploy while the desired count changes keeps the new count, and a forced
//!   redeploy of the same task definition in the middle counts as the same rollout;
//! - a deploy while a real ServiceScaling scales the service (both controllers in one
//!   manager) leaves the scaler's count;
//! - `capstan.dev/rollback` puts the service back on the last good run's task
//!   definition;
//! - someone else's deployment in the middle fails the stage, and the rollback leaves
//!   their task definition in place (`RollbackFailed`);
//! - a service whose deployment controller is not ECS's is refused with the reason;
//! - a Deploy stage's own connection that does not allow the namespace refuses the
//!   Pipeline before anything runs;
//! - a second Pipeline deploying a service the first deploys is `ServiceClaimed`.
//!
//! A production account of its own: tests/pipeline_accounts.rs.

mod common;

use common::pipeline::{
    Aws, Setup, app_image, args, condition, job_stage, set_revision, status_until,
};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use capstan_aws::ecs::sdk::types::{
    ContainerDefinition, DeploymentController, DeploymentControllerType, TaskDefinition,
};
use capstan_pipeline::crd::{PipelinePhase, RollbackPhase, StagePhase};
use serde_json::json;

/// The container definitions of `td` with `app`'s image blanked: what a copy keeps.
fn without_app_image(td: &TaskDefinition) -> Vec<ContainerDefinition> {
    td.container_definitions()
        .iter()
        .map(|c| {
            let mut c = c.clone();
            if c.name() == Some("app") {
                c.image = None;
            }
            c
        })
        .collect()
}

#[tokio::test]
async fn the_shops_path_deploys_by_digest_and_rolls_back_a_failed_smoke_test() {
    let t = Setup::new().await;
    let aws = Aws::new(&t).await;
    let (kube, ns, api) = (t.kube, &t.ns, t.api.clone());
    let staging_initial = aws.create_service("staging", 2, 1.0).await;
    let production_initial = aws.create_service("production", 3, 1.0).await;
    let digest_1 = aws.push("1.0", None).await;
    // The smoke test waits until the test has moved the tag; revision 2.0's fails.
    let moved = Arc::new(AtomicBool::new(false));
    let moved_seen = moved.clone();
    t.play(Arc::new(
        move |stage: &str, env: &BTreeMap<String, String>| {
            let revision = env.get("REVISION").cloned().unwrap_or_default();
            match stage {
                "build" => Some((0, json!({ "imageTag": revision }).to_string())),
                "smoke" if revision == "2.0" => Some((1, String::new())),
                "smoke" => moved_seen
                    .load(Ordering::SeqCst)
                    .then(|| (0, String::new())),
                _ => Some((0, String::new())),
            }
        },
    ));
    let env = json!([{ "name": "REVISION", "value": "{{ revision }}" }]);
    let image = format!(
        "{}/{}:{{{{ stages.build.results.imageTag }}}}",
        aws.registry, aws.repository
    );
    let stages = vec![
        job_stage("test", "Test", json!({ "image": "busybox", "env": env })),
        job_stage(
            "build",
            "Build",
            json!({ "image": "kaniko", "env": env, "results": ["imageTag"] }),
        ),
        aws.deploy_stage("staging", "staging", &image),
        job_stage(
            "smoke",
            "SmokeTest",
            json!({ "image": "busybox", "env": env }),
        ),
        aws.deploy_stage("production", "production", &image),
    ];
    common::rotation::create(&api, aws.pipeline("shop", "1.0", stages)).await;
    let m = common::start(kube, "pipeline-deploy", &args(ns.name())).await;

    let st = status_until(&api, "shop", &m, "staging deployed", |s| {
        s.stages
            .iter()
            .any(|x| x.name == "staging" && x.phase == StagePhase::Succeeded)
    })
    .await;
    let pinned = format!("{}/{}@{digest_1}", aws.registry, aws.repository);
    assert_eq!(
        st.images.get(&aws.image("1.0")),
        Some(&pinned),
        "the tag is pinned to its digest: {:?}",
        st.images
    );
    // The tag moves to another image before production deploys.
    let digest_moved = aws.push("1.0", None).await;
    assert_ne!(digest_moved, digest_1);
    moved.store(true, Ordering::SeqCst);
    let st = status_until(&api, "shop", &m, "run 1 succeeds", |s| {
        s.phase == Some(PipelinePhase::Succeeded)
    })
    .await;
    let o = api.get("shop").await.expect("pipeline");
    assert_eq!(
        condition(&o, "Ready").map(|c| c.1),
        Some("Succeeded".into())
    );
    for (stage, service, initial, desired) in [
        ("staging", "staging", &staging_initial, 2),
        ("production", "production", &production_initial, 3),
    ] {
        let s = st.stages.iter().find(|x| x.name == stage).expect("stage");
        let ours = s.task_definition.clone().expect("registered");
        assert_eq!(s.previous_task_definition.as_ref(), Some(initial));
        let svc = aws.service(service).await;
        assert_eq!(svc.task_definition(), Some(ours.as_str()), "{stage}");
        assert_eq!(
            svc.desired_count(),
            desired,
            "{stage}: the count is not Capstan's"
        );
        let (td, tags) = aws.task_definition(&ours).await;
        let (before, before_tags) = aws.task_definition(initial).await;
        assert_eq!(
            app_image(&td),
            pinned,
            "{stage} runs the digest staging tested"
        );
        assert_eq!(
            without_app_image(&td),
            without_app_image(&before),
            "{stage}: the copy keeps environment, secrets, ports, health check, logging and the sidecar"
        );
        assert_eq!(td.cpu(), before.cpu());
        assert!(
            before_tags.iter().all(|t| tags.contains(t)),
            "{stage}: tags kept"
        );
        assert!(
            tags.iter()
                .any(|t| t.key() == Some("capstan.dev/run") && t.value() == Some("shop-1")),
            "{stage}: tagged with the run: {tags:?}"
        );
    }
    assert_eq!(st.history[0].images.get(&aws.image("1.0")), Some(&pinned));
    let run_1 = |stage: &str| {
        st.stages
            .iter()
            .find(|x| x.name == stage)
            .and_then(|x| x.task_definition.clone())
            .expect("run 1's task definition")
    };
    let (staging_1, production_1) = (run_1("staging"), run_1("production"));
    let production_revisions = aws.revisions("production").await.len();

    // Revision 2.0: its smoke test fails after staging deployed it.
    aws.push("2.0", None).await;
    set_revision(&api, "shop", "2.0").await;
    let started = Instant::now();
    let st = status_until(&api, "shop", &m, "run 2 rolled back", |s| {
        s.run_number == 2 && s.phase == Some(PipelinePhase::RolledBack)
    })
    .await;
    let staging = st
        .stages
        .iter()
        .find(|x| x.name == "staging")
        .expect("staging");
    assert_eq!(staging.phase, StagePhase::RolledBack);
    let rb = staging.rollback.as_ref().expect("rollback");
    assert_eq!(rb.phase, RollbackPhase::Succeeded, "{rb:?}");
    assert_eq!(
        aws.service("staging").await.task_definition(),
        Some(staging_1.as_str()),
        "staging runs run 1's task definition again"
    );
    let production = st
        .stages
        .iter()
        .find(|x| x.name == "production")
        .expect("production");
    assert_eq!(production.phase, StagePhase::Skipped);
    assert_eq!(
        aws.service("production").await.task_definition(),
        Some(production_1.as_str()),
        "production untouched"
    );
    assert_eq!(
        aws.revisions("production").await.len(),
        production_revisions,
        "no task definition registered for production"
    );
    let o = api.get("shop").await.expect("pipeline");
    assert_eq!(
        condition(&o, "RolledBack").map(|c| (c.0, c.1)),
        Some(("True".into(), "RollbackSucceeded".into()))
    );
    assert_eq!(
        condition(&o, "Ready").map(|c| c.1),
        Some("StageFailed".into())
    );
    assert_eq!(st.history[0].outcome, PipelinePhase::RolledBack);
    assert_eq!(st.history[0].failed_stage.as_deref(), Some("smoke"));
    assert_eq!(st.history[1].outcome, PipelinePhase::Succeeded);
    let events = t.event_reasons("shop").await;
    for reason in [
        "DeployStarted",
        "DeploySucceeded",
        "RollbackStarted",
        "RunRolledBack",
    ] {
        assert!(events.iter().any(|r| r == reason), "{reason} in {events:?}");
    }
    eprintln!(
        "revision 2.0: smoke failure to staging rolled back in {:?} (task start-up 1 s)",
        started.elapsed()
    );
    m.assert_no_forbidden();
}

/// Tasks that run and then exit 1: ECS's circuit breaker ignores them and would keep the
/// rollout IN_PROGRESS; Capstan fails the stage at `maxFailedTasks` and rolls back.
/// Tasks that fail their health check: Capstan fails at 2, before the breaker's 3.
#[tokio::test]
async fn failing_tasks_fail_the_rollout_at_max_failed_tasks() {
    let t = Setup::new().await;
    let aws = Aws::new(&t).await;
    let (kube, ns, api) = (t.kube, &t.ns, t.api.clone());
    let m = common::start(kube, "pipeline-failing-tasks", &args(ns.name())).await;
    for (name, marker) in [("exits", "exit-1"), ("unhealthy", "unhealthy")] {
        let initial = aws.create_service(name, 2, 0.5).await;
        aws.push(name, Some(marker)).await;
        common::rotation::create(
            &api,
            aws.pipeline(
                name,
                "1.0",
                vec![aws.deploy_stage("deploy", name, &aws.image(name))],
            ),
        )
        .await;
        let started = Instant::now();
        let st = status_until(&api, name, &m, "rolled back", |s| {
            s.phase == Some(PipelinePhase::RolledBack)
        })
        .await;
        let stage = &st.stages[0];
        assert_eq!(stage.phase, StagePhase::Failed, "{stage:?}");
        assert_eq!(
            stage.rollback.as_ref().map(|r| r.phase),
            Some(RollbackPhase::Succeeded),
            "{stage:?}"
        );
        assert_eq!(st.history[0].failed_stage.as_deref(), Some("deploy"));
        let message = stage.message.clone().unwrap_or_default();
        assert!(
            message.contains("2 of its tasks failed (maxFailedTasks 2)"),
            "{name}: {message}"
        );
        assert_eq!(stage.failed_tasks.len(), 2, "{:?}", stage.failed_tasks);
        let why = if marker == "exit-1" {
            "exited 1"
        } else {
            "failed its health check"
        };
        assert!(
            stage.failed_tasks.iter().all(|f| f.contains(why)),
            "{:?}",
            stage.failed_tasks
        );
        assert_eq!(
            aws.service(name).await.task_definition(),
            Some(initial.as_str()),
            "{name}: back on the task definition it replaced"
        );
        // The emulator stops the first task 1 s after the deployment starts, then one
        // per second: ECS's breaker would need 3 (and never counts exits).
        let secs = |a: Option<chrono::DateTime<chrono::Utc>>| {
            a.zip(stage.started)
                .map(|(a, s)| (a - s).num_milliseconds() as f64 / 1000.0)
                .unwrap_or(f64::NAN)
        };
        let rb = stage.rollback.as_ref();
        eprintln!(
            "FIGURE {name} ({marker}): stage start -> failure detected {:.1} s, -> rollback started {:.1} s, -> rolled back {:.1} s (first failed task at 1 s, the breaker's 3rd at 3 s); test wall {:?}",
            secs(stage.finished),
            secs(rb.and_then(|r| r.started)),
            secs(rb.and_then(|r| r.finished)),
            started.elapsed()
        );
    }
    m.assert_no_forbidden();
}

/// The desired count changes during the deploy (what ServiceScaling's UpdateService
/// does) and a forced redeploy of the same task definition (SecretRotation's ECS
/// delivery) replaces the deployment Capstan follows: the deploy completes, keeping the
/// count.
#[tokio::test]
async fn a_deploy_keeps_the_count_and_follows_a_forced_redeploy() {
    let t = Setup::new().await;
    let aws = Aws::new(&t).await;
    let (kube, ns, api) = (t.kube, &t.ns, t.api.clone());
    aws.create_service("web", 2, 4.0).await;
    aws.push("1.0", None).await;
    common::rotation::create(
        &api,
        aws.pipeline(
            "web",
            "1.0",
            vec![aws.deploy_stage("deploy", "web", &aws.image("1.0"))],
        ),
    )
    .await;
    let m = common::start(kube, "pipeline-count", &args(ns.name())).await;
    let st = status_until(&api, "web", &m, "deploying", |s| {
        s.stages[0].deployment_id.is_some()
    })
    .await;
    let first = st.stages[0].deployment_id.clone().expect("deployment");
    aws.ecs
        .update_service()
        .cluster(&aws.cluster)
        .service("web")
        .desired_count(5)
        .send()
        .await
        .expect("scale");
    aws.ecs
        .update_service()
        .cluster(&aws.cluster)
        .service("web")
        .force_new_deployment(true)
        .send()
        .await
        .expect("forced redeploy");
    let st = status_until(&api, "web", &m, "deployed", |s| {
        s.phase == Some(PipelinePhase::Succeeded)
    })
    .await;
    assert_ne!(st.stages[0].deployment_id.as_deref(), Some(first.as_str()));
    let svc = aws.service("web").await;
    assert_eq!(svc.desired_count(), 5, "the scaler's count stays");
    assert_eq!(
        svc.task_definition(),
        st.stages[0].task_definition.as_deref()
    );
}

/// Someone else deploys another task definition while Capstan's deployment runs: the
/// stage fails, and the rollback overwrites nothing (`RollbackFailed`, for a person).
#[tokio::test]
async fn someone_elses_deployment_is_never_overwritten() {
    let t = Setup::new().await;
    let aws = Aws::new(&t).await;
    let (kube, ns, api) = (t.kube, &t.ns, t.api.clone());
    let initial = aws.create_service("api", 2, 30.0).await;
    // Someone's hotfix: another revision of the family.
    let (td, _) = aws.task_definition(&initial).await;
    let hotfix = aws
        .ecs
        .register_task_definition()
        .family("api")
        .set_container_definitions(td.container_definitions)
        .send()
        .await
        .expect("hotfix")
        .task_definition
        .and_then(|t| t.task_definition_arn)
        .expect("arn");
    aws.push("1.0", None).await;
    common::rotation::create(
        &api,
        aws.pipeline(
            "api",
            "1.0",
            vec![aws.deploy_stage("deploy", "api", &aws.image("1.0"))],
        ),
    )
    .await;
    let m = common::start(kube, "pipeline-overtaken", &args(ns.name())).await;
    status_until(&api, "api", &m, "deploying", |s| {
        s.stages[0].deployment_id.is_some()
    })
    .await;
    aws.ecs
        .update_service()
        .cluster(&aws.cluster)
        .service("api")
        .task_definition(&hotfix)
        .send()
        .await
        .expect("someone else's deploy");
    let st = status_until(&api, "api", &m, "rollback failed", |s| {
        s.phase == Some(PipelinePhase::RollbackFailed)
    })
    .await;
    let stage = &st.stages[0];
    assert!(
        stage
            .message
            .as_deref()
            .is_some_and(|m| m.contains("someone else deployed")),
        "{stage:?}"
    );
    let rb = stage.rollback.as_ref().expect("rollback");
    assert_eq!(rb.phase, RollbackPhase::Failed);
    assert!(
        rb.message
            .as_deref()
            .is_some_and(|m| m.contains("overwrites nothing")),
        "{rb:?}"
    );
    assert_eq!(
        aws.service("api").await.task_definition(),
        Some(hotfix.as_str()),
        "the hotfix stays"
    );
    let o = api.get("api").await.expect("pipeline");
    assert_eq!(
        condition(&o, "Ready").map(|c| c.1),
        Some("RollbackFailed".into())
    );
    assert_eq!(
        condition(&o, "RolledBack").map(|c| (c.0, c.1)),
        Some(("False".into(), "RollbackFailed".into()))
    );
}

/// A service deployed by CodeDeploy or an external controller has no rolloutState to
/// follow: refused with the reason, nothing registered. A Deploy stage naming its own
/// connection that does not allow the namespace refuses the whole Pipeline first.
#[tokio::test]
async fn unsupported_services_and_disallowed_connections_are_refused() {
    let t = Setup::new().await;
    let aws = Aws::new(&t).await;
    let (kube, ns, api) = (t.kube, &t.ns, t.api.clone());
    let arn = aws.create_service("template", 1, 0.0).await;
    aws.ecs
        .create_service()
        .cluster(&aws.cluster)
        .service_name("external")
        .task_definition(&arn)
        .desired_count(1)
        .deployment_controller(
            DeploymentController::builder()
                .r#type(DeploymentControllerType::External)
                .build()
                .expect("controller"),
        )
        .send()
        .await
        .expect("service");
    aws.push("1.0", None).await;
    common::rotation::create(
        &api,
        aws.pipeline(
            "external",
            "1.0",
            vec![aws.deploy_stage("deploy", "external", &aws.image("1.0"))],
        ),
    )
    .await;
    // Production through a connection that allows another namespace only.
    let env = capstan_testenv::TestEnv::get().aws().await.expect("aws");
    let other = format!("other-{}", ns.name());
    common::aws_connection(&t.client, env, ns.name(), &other, &["someone-else"]).await;
    let mut production = aws.deploy_stage("production", "template", &aws.image("1.0"));
    production["deploy"]["connectionRef"] = json!({ "name": other });
    common::rotation::create(
        &api,
        aws.pipeline(
            "two-accounts",
            "1.0",
            vec![
                job_stage("test", "Test", json!({ "image": "busybox" })),
                production,
            ],
        ),
    )
    .await;
    // A second Pipeline deploying the service another deploys: ServiceClaimed.
    common::rotation::create(
        &api,
        aws.pipeline(
            "claims-first",
            "1.0",
            vec![
                job_stage("hold", "Test", json!({ "image": "busybox" })),
                aws.deploy_stage("deploy", "template", &aws.image("1.0")),
            ],
        ),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    common::rotation::create(
        &api,
        aws.pipeline(
            "claims-second",
            "1.0",
            vec![aws.deploy_stage("deploy", "template", &aws.image("1.0"))],
        ),
    )
    .await;
    let m = common::start(kube, "pipeline-refusals", &args(ns.name())).await;
    let st = status_until(&api, "external", &m, "refused", |s| {
        s.phase == Some(PipelinePhase::Failed)
    })
    .await;
    let message = st.stages[0].message.clone().unwrap_or_default();
    assert!(
        message.contains("EXTERNAL deployment controller"),
        "{message}"
    );
    assert_eq!(
        aws.revisions("template").await.len(),
        1,
        "nothing registered"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = api.get("two-accounts").await.expect("pipeline");
        if let Some((status, reason, message)) = condition(&o, "Ready")
            && status == "False"
        {
            assert!(message.contains(&other), "{reason}: {message}");
            assert!(
                o.status.as_ref().is_some_and(|s| s.run_number == 0),
                "no run started"
            );
            break;
        }
        assert!(Instant::now() < deadline, "not refused:\n{}", m.all_logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = api.get("claims-second").await.expect("pipeline");
        if let Some((_, reason, message)) = condition(&o, "Ready")
            && reason == "ServiceClaimed"
        {
            assert!(message.contains("claims-first"), "{message}");
            assert!(
                o.status.as_ref().is_some_and(|s| s.run_number == 0),
                "no run started"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no ServiceClaimed:\n{}",
            m.all_logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !common::pipeline::jobs_of(&t.jobs)
            .await
            .keys()
            .any(|n| n.starts_with("two-accounts")),
        "no Job created for a refused Pipeline"
    );
}

/// `capstan.dev/rollback`: after runs of 1.0 and 2.0 succeeded, the service goes back
/// to what 1.0's run deployed, as a run of its own; a second annotation with the same
/// value does nothing.
#[tokio::test]
async fn a_service_is_rolled_back_by_hand_to_the_last_good_run() {
    let t = Setup::new().await;
    let aws = Aws::new(&t).await;
    let (kube, ns, api) = (t.kube, &t.ns, t.api.clone());
    aws.create_service("web", 2, 0.5).await;
    aws.push("1.0", None).await;
    aws.push("2.0", None).await;
    let image = format!("{}/{}:{{{{ revision }}}}", aws.registry, aws.repository);
    common::rotation::create(
        &api,
        aws.pipeline(
            "web",
            "1.0",
            vec![aws.deploy_stage("deploy", "web", &image)],
        ),
    )
    .await;
    let m = common::start(kube, "pipeline-rollback-now", &args(ns.name())).await;
    let st = status_until(&api, "web", &m, "1.0 deployed", |s| {
        s.phase == Some(PipelinePhase::Succeeded)
    })
    .await;
    let good = st.stages[0]
        .task_definition
        .clone()
        .expect("1.0's task definition");
    set_revision(&api, "web", "2.0").await;
    let st = status_until(&api, "web", &m, "2.0 deployed", |s| {
        s.run_number == 2 && s.phase == Some(PipelinePhase::Succeeded)
    })
    .await;
    assert_ne!(st.stages[0].task_definition.as_deref(), Some(good.as_str()));
    api.patch(
        "web",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(
            json!({ "metadata": { "annotations": { "capstan.dev/rollback": "incident-42" } } }),
        ),
    )
    .await
    .expect("annotate");
    let st = status_until(&api, "web", &m, "rolled back by hand", |s| {
        s.run_number == 3 && s.phase == Some(PipelinePhase::RolledBack)
    })
    .await;
    assert_eq!(
        aws.service("web").await.task_definition(),
        Some(good.as_str()),
        "back on what the 1.0 run deployed"
    );
    assert_eq!(st.history[0].outcome, PipelinePhase::RolledBack);
    let o = api.get("web").await.expect("pipeline");
    assert_eq!(
        condition(&o, "Ready").map(|c| c.1),
        Some("RolledBack".into())
    );
    assert!(
        t.event_reasons("web")
            .await
            .iter()
            .any(|r| r == "RollbackStarted")
    );
    // The same revision does not run again by itself.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let st = api
        .get("web")
        .await
        .expect("pipeline")
        .status
        .expect("status");
    assert_eq!(st.run_number, 3);
}

/// A deploy while a ServiceScaling scales the same service (both controllers in one
/// manager, the service's CPU load played into CloudWatch): the deploy never sets the
/// count, so the scaler's count stands after the rollout.
#[tokio::test]
async fn a_deploy_while_a_service_scaling_scales_keeps_the_count() {
    let t = Setup::new().await;
    let aws = Aws::new(&t).await;
    let (kube, ns, api) = (t.kube, &t.ns, t.api.clone());
    aws.create_service("shop", 2, 3.0).await;
    aws.push("1.0", None).await;
    let env = capstan_testenv::TestEnv::get().aws().await.expect("aws");
    let cloudwatch = capstan_aws::cloudwatch::sdk::Client::new(&env.sdk_config().await);
    // Load of 4 tasks' worth of CPU: 100 × 4 / running tasks, every 300 ms.
    let feeder = {
        let (ecs, cluster) = (aws.ecs.clone(), aws.cluster.clone());
        tokio::spawn(async move {
            loop {
                let running = ecs
                    .describe_services()
                    .cluster(&cluster)
                    .services("shop")
                    .send()
                    .await
                    .ok()
                    .and_then(|o| o.services().first().map(|s| s.running_count()))
                    .unwrap_or(1)
                    .max(1);
                common::scaling::Fixture::put_cpu(
                    &cloudwatch,
                    &cluster,
                    "shop",
                    400.0 / f64::from(running),
                )
                .await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let scaling: capstan_service_scaling::crd::ServiceScaling = serde_json::from_value(json!({
        "apiVersion": "capstan.dev/v1alpha1", "kind": "ServiceScaling",
        "metadata": { "name": "shop" },
        "spec": {
            "connectionRef": { "name": aws.connection },
            "service": { "cluster": aws.cluster, "service": "shop" },
            "minReplicas": 1, "maxReplicas": 6,
            "metrics": [{ "cpuUtilization": { "targetPercent": 50 } }],
            "evaluationInterval": "1s", "metricPeriodSeconds": 1, "metricLookbackSeconds": 3
        }
    }))
    .expect("scaling");
    ns.api::<capstan_service_scaling::crd::ServiceScaling>(t.client.clone())
        .create(&kube::api::PostParams::default(), &scaling)
        .await
        .expect("create ServiceScaling");
    common::rotation::create(
        &api,
        aws.pipeline(
            "shop",
            "1.0",
            vec![aws.deploy_stage("deploy", "shop", &aws.image("1.0"))],
        ),
    )
    .await;
    let mut manager_args = args(ns.name()).to_vec();
    manager_args.retain(|a| *a != "pipeline");
    manager_args.push("pipeline,service-scaling");
    let m = common::start(kube, "pipeline-with-scaling", &manager_args).await;
    let st = status_until(&api, "shop", &m, "deployed while scaling", |s| {
        s.phase == Some(PipelinePhase::Succeeded)
    })
    .await;
    feeder.abort();
    let svc = aws.service("shop").await;
    assert_eq!(
        svc.task_definition(),
        st.stages[0].task_definition.as_deref()
    );
    assert!(
        svc.desired_count() > 2,
        "the scaler's count stands after the deploy: {}",
        svc.desired_count()
    );
    let updates =
        common::scaling::emulator_counts(&format!("ecs:UpdateService:{}/shop", aws.cluster)).await;
    eprintln!("UpdateService calls on the service (scaler and deploy): {updates:?}");
}
