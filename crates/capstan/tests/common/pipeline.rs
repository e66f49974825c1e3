//! What the Pipeline tests share: a namespace with its APIs ([`Setup`]), a played
//! kubelet (no kubelet runs here) that moves a stage's Pod to Succeeded or Failed with
//! its termination message, the manager's arguments, Pipeline and stage JSON, and waits
//! on status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use capstan_core::conditions::find;
use capstan_pipeline::crd::Pipeline;
use capstan_pipeline::jobs::{CONTAINER, STAGE_LABEL};
use capstan_testenv::{TempNamespace, TestEnv, await_condition};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(60);

/// A test namespace, its Pipeline and Job APIs, and the kubelet the test plays there
/// ([`Setup::play`]), stopped when this is dropped.
pub struct Setup {
    pub kube: &'static capstan_testenv::Kube,
    pub ns: TempNamespace,
    pub client: kube::Client,
    pub api: Api<Pipeline>,
    pub jobs: Api<Job>,
    stop: CancellationToken,
    _stop: tokio_util::sync::DropGuard,
}

impl Setup {
    pub async fn new() -> Self {
        let kube = TestEnv::get().kube().await.expect("kube");
        let ns = TempNamespace::create(kube).await.expect("ns");
        let client = kube.client().await;
        let stop = CancellationToken::new();
        Self {
            kube,
            api: ns.api(client.clone()),
            jobs: ns.api(client.clone()),
            ns,
            client,
            _stop: stop.clone().drop_guard(),
            stop,
        }
    }

    /// The reasons of the Events about object `name`, oldest first.
    pub async fn event_reasons(&self, name: &str) -> Vec<String> {
        self.ns
            .api::<k8s_openapi::api::events::v1::Event>(self.client.clone())
            .list(&ListParams::default())
            .await
            .expect("events")
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .map(|e| e.reason.unwrap_or_default())
            .collect()
    }

    /// Plays the kubelet in the namespace with `outcome` until this is dropped.
    pub fn play(&self, outcome: Outcome) {
        play_kubelet(
            self.client.clone(),
            self.ns.name(),
            outcome,
            self.stop.clone(),
        );
    }
}

/// What the played kubelet does with a stage's Pod: exit code and termination message,
/// from the stage and the Pod's environment; `None` keeps it running.
pub type Outcome =
    Arc<dyn Fn(&str, &BTreeMap<String, String>) -> Option<(i32, String)> + Send + Sync>;

/// Plays the kubelet in `ns` until `stop`: every Pod of a stage that has not finished
/// is moved to Succeeded (exit 0) or Failed, with its termination message.
pub fn play_kubelet(client: kube::Client, ns: &str, outcome: Outcome, stop: CancellationToken) {
    let pods: Api<Pod> = Api::namespaced(client, ns);
    tokio::spawn(async move {
        while !stop.is_cancelled() {
            let list = pods
                .list(&ListParams::default().labels(STAGE_LABEL))
                .await
                .map(|l| l.items)
                .unwrap_or_default();
            for pod in list {
                let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
                if matches!(phase.as_deref(), Some("Succeeded" | "Failed")) {
                    continue;
                }
                let name = pod.metadata.name.clone().unwrap_or_default();
                let stage = pod
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(STAGE_LABEL).cloned())
                    .unwrap_or_default();
                let c = &pod.spec.as_ref().expect("spec").containers[0];
                let env: BTreeMap<String, String> = c
                    .env
                    .iter()
                    .flatten()
                    .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
                    .collect();
                let Some((code, message)) = outcome(&stage, &env) else {
                    continue;
                };
                let now = chrono::Utc::now().to_rfc3339();
                let status = json!({ "status": {
                    "phase": if code == 0 { "Succeeded" } else { "Failed" },
                    "containerStatuses": [{
                        "name": CONTAINER, "ready": false, "restartCount": 0,
                        "image": c.image, "imageID": "",
                        "state": { "terminated": {
                            "exitCode": code,
                            "reason": if code == 0 { "Completed" } else { "Error" },
                            "message": message, "startedAt": now, "finishedAt": now
                        } }
                    }]
                }});
                let _ = pods
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

pub fn args(ns: &str) -> [&str; 7] {
    [
        "--leader-elect=false",
        "--namespaces",
        ns,
        "--own-namespace",
        ns,
        "--controllers",
        "pipeline",
    ]
}

pub fn job_stage(name: &str, type_: &str, job: Value) -> Value {
    json!({ "name": name, "type": type_, "job": job })
}

pub fn pipeline(name: &str, revision: &str, stages: Vec<Value>) -> Value {
    json!({
        "apiVersion": "capstan.dev/v1alpha1", "kind": "Pipeline",
        "metadata": { "name": name },
        "spec": { "revision": revision, "stages": stages }
    })
}

pub async fn set_revision(api: &Api<Pipeline>, name: &str, revision: &str) {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "revision": revision } })),
    )
    .await
    .expect("new revision");
}

pub async fn status_until(
    api: &Api<Pipeline>,
    name: &str,
    m: &super::Manager,
    what: &str,
    done: impl Fn(&capstan_pipeline::PipelineStatus) -> bool,
) -> capstan_pipeline::PipelineStatus {
    await_condition(
        api,
        name,
        |o: &Pipeline| o.status.as_ref().is_some_and(&done),
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("{what}: {e}\n{}", m.all_logs()))
    .status
    .expect("status")
}

pub fn condition(o: &Pipeline, type_: &str) -> Option<(String, String, String)> {
    let c = find(&o.status.as_ref()?.conditions, type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

pub async fn jobs_of(api: &Api<Job>) -> BTreeMap<String, Job> {
    api.list(&ListParams::default())
        .await
        .expect("jobs")
        .items
        .into_iter()
        .map(|j| (j.metadata.name.clone().unwrap_or_default(), j))
        .collect()
}

/// What Deploy stage tests add to a [`Setup`]: a ClusterConnection allowing the
/// namespace (credentials in the namespace itself, which the manager takes as its own),
/// an ECS cluster and an ECR repository in the emulator, named after the namespace.
pub struct Aws {
    pub connection: String,
    pub cluster: String,
    pub repository: String,
    pub registry: String,
    pub ecs: capstan_aws::ecs::sdk::Client,
    pub ecr: aws_sdk_ecr::Client,
}

/// The emulator's tags that model a service's tasks (tests/env/moto_ext).
pub const START_TAG: &str = "capstan.dev/moto-task-start-seconds";
pub const FAIL_TAG: &str = "capstan.dev/moto-task-fail-seconds";
pub const BREAKER_TAG: &str = "capstan.dev/moto-circuit-breaker";

impl Aws {
    pub async fn new(t: &Setup) -> Self {
        Self::in_account(t, None).await
    }

    /// The emulator's `account` (moto's default without one), reached through a
    /// connection of its own that assumes a role there, as a production account is.
    pub async fn in_account(t: &Setup, account: Option<&str>) -> Self {
        let aws = TestEnv::get().aws().await.expect("aws");
        let ns = t.ns.name();
        let connection = match account {
            None => format!("aws-{ns}"),
            Some(a) => format!("aws-{ns}-{a}"),
        };
        super::aws_connection_in(&t.client, aws, ns, &connection, &[ns], account).await;
        let config = match account {
            None => aws.sdk_config().await,
            Some(a) => aws.sdk_config_in_account(a).await,
        };
        let ecs = capstan_aws::ecs::sdk::Client::new(&config);
        let ecr = aws_sdk_ecr::Client::new(&config);
        ecs.create_cluster()
            .cluster_name(ns)
            .send()
            .await
            .expect("cluster");
        let uri = ecr
            .create_repository()
            .repository_name(ns)
            .send()
            .await
            .expect("repository")
            .repository
            .and_then(|r| r.repository_uri)
            .expect("uri");
        let registry = uri.split('/').next().unwrap_or_default().to_owned();
        Self {
            connection,
            cluster: ns.to_owned(),
            repository: ns.to_owned(),
            registry,
            ecs,
            ecr,
        }
    }

    /// The image reference of `tag` in the repository.
    pub fn image(&self, tag: &str) -> String {
        format!("{}/{}:{tag}", self.registry, self.repository)
    }

    /// Pushes an image tagged `tag` (moving the tag if it exists); `behaviour` is the
    /// emulator's failure marker (`exit-1`, `unhealthy`). Returns its digest.
    pub async fn push(&self, tag: &str, behaviour: Option<&str>) -> String {
        let layer = format!("sha256:{:064x}", rand_u128());
        self.push_layer(tag, &layer, behaviour).await
    }

    /// [`Aws::push`] of an image with one given layer: the same layer in two registries
    /// is the same image, with the same digest (the emulator's digest is of the layers).
    pub async fn push_layer(&self, tag: &str, layer: &str, behaviour: Option<&str>) -> String {
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "layers": [{ "digest": layer }],
        });
        if let Some(b) = behaviour {
            manifest["annotations"] = json!({ "capstan.dev/moto-behaviour": b });
        }
        self.ecr
            .put_image()
            .repository_name(&self.repository)
            .image_tag(tag)
            .image_manifest(manifest.to_string())
            .send()
            .await
            .expect("push")
            .image
            .and_then(|i| i.image_id)
            .and_then(|i| i.image_digest)
            .expect("digest")
    }

    /// Registers task definition family `name` (container `app` with environment,
    /// secrets, ports, health check and logging, and an `envoy` sidecar) and creates
    /// service `name` running it with `desired` tasks, whose tasks start in
    /// `start_seconds` and (for a failing image) fail one per second.
    pub async fn create_service(&self, name: &str, desired: i32, start_seconds: f64) -> String {
        use capstan_aws::ecs::sdk::types::{
            ContainerDefinition, HealthCheck, KeyValuePair, LogConfiguration, LogDriver,
            PortMapping, Secret, Tag,
        };
        let app = ContainerDefinition::builder()
            .name("app")
            .image(format!("{}/{}:initial", self.registry, self.repository))
            .memory(256)
            .environment(KeyValuePair::builder().name("MODE").value("live").build())
            .secrets(
                Secret::builder()
                    .name("DATABASE_URL")
                    .value_from("arn:aws:secretsmanager:us-east-1:123456789012:secret:db")
                    .build()
                    .expect("secret"),
            )
            .port_mappings(PortMapping::builder().container_port(8080).build())
            .health_check(
                HealthCheck::builder()
                    .command("CMD-SHELL")
                    .command("curl -f http://localhost:8080/health")
                    .interval(10)
                    .build()
                    .expect("health check"),
            )
            .log_configuration(
                LogConfiguration::builder()
                    .log_driver(LogDriver::Awslogs)
                    .options("awslogs-group", name)
                    .build()
                    .expect("log configuration"),
            )
            .build();
        let envoy = ContainerDefinition::builder()
            .name("envoy")
            .image("envoyproxy/envoy:v1.30")
            .memory(64)
            .build();
        let arn = self
            .ecs
            .register_task_definition()
            .family(name)
            .container_definitions(app)
            .container_definitions(envoy)
            .tags(Tag::builder().key("team").value("shop").build())
            .send()
            .await
            .expect("task definition")
            .task_definition
            .and_then(|t| t.task_definition_arn)
            .expect("arn");
        self.ecs
            .create_service()
            .cluster(&self.cluster)
            .service_name(name)
            .task_definition(&arn)
            .desired_count(desired)
            .tags(
                Tag::builder()
                    .key(START_TAG)
                    .value(start_seconds.to_string())
                    .build(),
            )
            .tags(Tag::builder().key(FAIL_TAG).value("1").build())
            .tags(Tag::builder().key(BREAKER_TAG).value("true").build())
            .send()
            .await
            .expect("service");
        arn
    }

    pub async fn service(&self, name: &str) -> capstan_aws::ecs::sdk::types::Service {
        self.ecs
            .describe_services()
            .cluster(&self.cluster)
            .services(name)
            .send()
            .await
            .expect("describe")
            .services()
            .first()
            .cloned()
            .expect("service")
    }

    pub async fn task_definition(
        &self,
        arn: &str,
    ) -> (
        capstan_aws::ecs::sdk::types::TaskDefinition,
        Vec<capstan_aws::ecs::sdk::types::Tag>,
    ) {
        let out = self
            .ecs
            .describe_task_definition()
            .task_definition(arn)
            .include(capstan_aws::ecs::sdk::types::TaskDefinitionField::Tags)
            .send()
            .await
            .expect("task definition");
        (
            out.task_definition.expect("td"),
            out.tags.unwrap_or_default(),
        )
    }

    /// Every revision of family `name`.
    pub async fn revisions(&self, name: &str) -> Vec<String> {
        self.ecs
            .list_task_definitions()
            .family_prefix(name)
            .send()
            .await
            .expect("list")
            .task_definition_arns()
            .to_vec()
    }

    /// A Deploy stage of `service`'s container `app` to `image`.
    pub fn deploy_stage(&self, name: &str, service: &str, image: &str) -> Value {
        json!({
            "name": name, "type": "Deploy",
            "deploy": {
                "cluster": self.cluster, "service": service,
                "containers": [{ "name": "app", "image": image }],
                "timeout": "60s"
            }
        })
    }

    /// A Pipeline through this connection.
    pub fn pipeline(&self, name: &str, revision: &str, stages: Vec<Value>) -> Value {
        let mut p = pipeline(name, revision, stages);
        p["spec"]["connectionRef"] = json!({ "name": self.connection });
        p
    }
}

/// The image of container `app` in `td` (the one Deploy stages change).
pub fn app_image(td: &capstan_aws::ecs::sdk::types::TaskDefinition) -> String {
    td.container_definitions()
        .iter()
        .find(|c| c.name() == Some("app"))
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

pub fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    (u128::from(h.finish()) << 64) | u128::from(h.finish().rotate_left(17))
}
