//! ECS deployments of a new image, for the Pipeline's Deploy stages, on [`SdkEcs`]:
//!
//! - [`SdkEcs::describe_service`]: the service, its task definition, deployment
//!   controller and deployments (each with its own task definition and rollout state).
//! - [`SdkEcs::find_tagged_revision`] and [`SdkEcs::register_copy`]: a new revision of
//!   the service's task definition, copied field for field, with only the named
//!   containers' images replaced and tags that name the run and stage, so that a
//!   Capstan restarted between registering and recording finds it again instead of
//!   registering a second one.
//! - [`SdkEcs::deploy_task_definition`]: `UpdateService` with only `taskDefinition`,
//!   never `desiredCount` (ServiceScaling owns the count).
//! - [`SdkEcs::stopped_tasks`]: the tasks of one deployment that stopped (ECS starts a
//!   service's tasks with `startedBy` = the deployment id), with exit codes, health and
//!   reasons, so the caller can fail a rollout before ECS's own circuit breaker does.

use std::collections::BTreeMap;

use aws_sdk_ecs::types::{
    DesiredStatus, HealthStatus, SortOrder, Tag, TaskDefinition, TaskDefinitionField,
};

use crate::ecs::{EcsError, EcsService, SdkEcs, convert_service};

/// Tag on a task definition revision Capstan registered: the run that registered it.
pub const RUN_TAG: &str = "capstan.dev/run";
/// Tag on a task definition revision Capstan registered: the stage.
pub const STAGE_TAG: &str = "capstan.dev/stage";
/// How many of a family's newest revisions [`SdkEcs::find_tagged_revision`] looks at.
pub const FIND_REVISIONS: usize = 10;
/// ECS's limit of tags on a resource.
const MAX_TAGS: usize = 50;
/// The most stopped tasks of one deployment read ([`SdkEcs::stopped_tasks`]).
pub const MAX_STOPPED_TASKS: usize = 100;

/// A task of a deployment that stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoppedTask {
    /// The task's id (the last part of its ARN).
    pub id: String,
    /// Why ECS stopped it (`stoppedReason`).
    pub reason: String,
    /// `stopCode`, e.g. `EssentialContainerExited`, `TaskFailedToStart`.
    pub stop_code: Option<String>,
    /// The first non-zero exit code of its containers, if any.
    pub exit_code: Option<i32>,
    /// Whether a container (or the task) was reported UNHEALTHY.
    pub unhealthy: bool,
}

impl StoppedTask {
    /// Whether the task failed: a container exited non-zero, it failed a health check,
    /// or it never started. A task stopped by a scale-in or a completed deployment
    /// (exit code 0, healthy) did not.
    pub fn failed(&self) -> bool {
        self.exit_code.is_some_and(|c| c != 0)
            || self.unhealthy
            || self.stop_code.as_deref() == Some("TaskFailedToStart")
    }

    /// One line for a person: id, exit code or health, reason.
    pub fn describe(&self) -> String {
        let what = match (self.exit_code, self.unhealthy) {
            (_, true) => "failed its health check".to_owned(),
            (Some(c), false) => format!("exited {c}"),
            (None, false) => "did not start".to_owned(),
        };
        format!("task {} {what} ({})", self.id, self.reason)
    }
}

/// A registered task definition revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// Its ARN.
    pub arn: String,
    /// The containers whose image changed, with the image they had before.
    pub replaced: BTreeMap<String, String>,
}

fn tags_match(tags: &[Tag], wanted: &[(String, String)]) -> bool {
    wanted.iter().all(|(k, v)| {
        tags.iter()
            .any(|t| t.key() == Some(k.as_str()) && t.value() == Some(v.as_str()))
    })
}

/// The revision number at the end of a task definition ARN (`...:family:12`).
fn revision_of(arn: &str) -> i64 {
    arn.rsplit(':')
        .next()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// The family of a task definition ARN or `family:revision`.
pub fn family_of(task_definition: &str) -> &str {
    let tail = task_definition
        .rsplit('/')
        .next()
        .unwrap_or(task_definition);
    tail.split(':').next().unwrap_or(tail)
}

/// A copy of `td`'s registration input with the images of `images` (container name →
/// image) replaced, and its tags plus `tags`. Every field that RegisterTaskDefinition
/// accepts and DescribeTaskDefinition returns is carried over; the read-only ones
/// (ARN, revision, status, compatibilities, requiresAttributes, registeredAt/By) are
/// not inputs. A named container missing from `td` is an error naming it.
pub fn copy_input(
    td: &TaskDefinition,
    images: &BTreeMap<String, String>,
    old_tags: &[Tag],
    tags: &[(String, String)],
) -> Result<(CopyInput, BTreeMap<String, String>), String> {
    let mut containers = td.container_definitions.clone().unwrap_or_default();
    let mut replaced = BTreeMap::new();
    for (name, image) in images {
        let Some(c) = containers
            .iter_mut()
            .find(|c| c.name.as_deref() == Some(name.as_str()))
        else {
            let names: Vec<&str> = containers
                .iter()
                .filter_map(|c| c.name.as_deref())
                .collect();
            return Err(format!(
                "task definition {} has no container {name:?} (it has: {})",
                td.task_definition_arn.as_deref().unwrap_or_default(),
                names.join(", ")
            ));
        };
        replaced.insert(name.clone(), c.image.clone().unwrap_or_default());
        c.image = Some(image.clone());
    }
    let mut all_tags: Vec<Tag> = old_tags
        .iter()
        .filter(|t| !tags.iter().any(|(k, _)| t.key() == Some(k.as_str())))
        .cloned()
        .collect();
    for (k, v) in tags {
        all_tags.push(Tag::builder().key(k).value(v).build());
    }
    if all_tags.len() > MAX_TAGS {
        return Err(format!(
            "task definition {} has {} tags; with Capstan's {} it would exceed ECS's {MAX_TAGS}",
            td.task_definition_arn.as_deref().unwrap_or_default(),
            old_tags.len(),
            tags.len()
        ));
    }
    let mut copy = td.clone();
    copy.container_definitions = Some(containers);
    Ok((
        CopyInput {
            td: copy,
            tags: all_tags,
        },
        replaced,
    ))
}

/// What [`SdkEcs::register_copy`] registers.
#[derive(Debug, Clone)]
pub struct CopyInput {
    /// The task definition, images replaced.
    pub td: TaskDefinition,
    /// Its tags.
    pub tags: Vec<Tag>,
}

impl SdkEcs {
    /// The service, or [`EcsError::ServiceNotFound`].
    pub async fn describe_service(
        &self,
        cluster: &str,
        service: &str,
    ) -> Result<EcsService, EcsError> {
        use crate::ecs::EcsApi;
        let mut found = self
            .describe_services(cluster, &[service.to_owned()])
            .await?;
        found.pop().unwrap_or_else(|| {
            Err(EcsError::ServiceNotFound {
                cluster: cluster.to_owned(),
                service: service.to_owned(),
                reason: "was not returned by DescribeServices".into(),
            })
        })
    }

    /// A task definition with its tags.
    pub async fn describe_task_definition(
        &self,
        task_definition: &str,
    ) -> Result<(TaskDefinition, Vec<Tag>), EcsError> {
        self.budget.acquire(crate::budget::ECS_READ).await;
        let out = self
            .client
            .describe_task_definition()
            .task_definition(task_definition)
            .include(TaskDefinitionField::Tags)
            .send()
            .await
            .map_err(|e| EcsError::from_sdk("DescribeTaskDefinition", "", None, e))?;
        let td = out.task_definition.ok_or_else(|| EcsError::Call {
            operation: "DescribeTaskDefinition",
            code: None,
            message: format!("no task definition returned for {task_definition}"),
        })?;
        Ok((td, out.tags.unwrap_or_default()))
    }

    /// The newest revision of `family` (among its [`FIND_REVISIONS`] newest ACTIVE
    /// ones) that carries every tag of `tags`, if any.
    pub async fn find_tagged_revision(
        &self,
        family: &str,
        tags: &[(String, String)],
    ) -> Result<Option<String>, EcsError> {
        let mut arns = Vec::new();
        let mut token = None;
        // A family has at most a few thousand revisions; ten pages of 100 is plenty to
        // find the newest (ECS sorts DESC; the list is sorted here too).
        for _ in 0..10 {
            self.budget.acquire(crate::budget::ECS_READ).await;
            let out = self
                .client
                .list_task_definitions()
                .family_prefix(family)
                .sort(SortOrder::Desc)
                .max_results(100)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| EcsError::from_sdk("ListTaskDefinitions", "", None, e))?;
            arns.extend(
                out.task_definition_arns()
                    .iter()
                    .filter(|a| family_of(a) == family)
                    .cloned(),
            );
            token = out.next_token;
            if token.is_none() {
                break;
            }
        }
        arns.sort_by_key(|a| std::cmp::Reverse(revision_of(a)));
        for arn in arns.into_iter().take(FIND_REVISIONS) {
            let (_, found) = self.describe_task_definition(&arn).await?;
            if tags_match(&found, tags) {
                return Ok(Some(arn));
            }
        }
        Ok(None)
    }

    /// Registers `input` (see [`copy_input`]); returns the new revision's ARN.
    pub async fn register_copy(&self, input: CopyInput) -> Result<String, EcsError> {
        let td = input.td;
        self.budget.acquire(crate::budget::ECS_WRITE).await;
        let out = self
            .client
            .register_task_definition()
            .set_family(td.family)
            .set_task_role_arn(td.task_role_arn)
            .set_execution_role_arn(td.execution_role_arn)
            .set_network_mode(td.network_mode)
            .set_container_definitions(td.container_definitions)
            .set_volumes(td.volumes)
            .set_placement_constraints(td.placement_constraints)
            .set_requires_compatibilities(td.requires_compatibilities)
            .set_cpu(td.cpu)
            .set_memory(td.memory)
            .set_pid_mode(td.pid_mode)
            .set_ipc_mode(td.ipc_mode)
            .set_proxy_configuration(td.proxy_configuration)
            .set_inference_accelerators(td.inference_accelerators)
            .set_ephemeral_storage(td.ephemeral_storage)
            .set_runtime_platform(td.runtime_platform)
            .set_enable_fault_injection(td.enable_fault_injection)
            .set_tags(Some(input.tags))
            .send()
            .await
            .map_err(|e| EcsError::from_sdk("RegisterTaskDefinition", "", None, e))?;
        out.task_definition
            .and_then(|t| t.task_definition_arn)
            .ok_or_else(|| EcsError::Call {
                operation: "RegisterTaskDefinition",
                code: None,
                message: "no ARN returned".into(),
            })
    }

    /// Points the service at `task_definition` (UpdateService with nothing else: the
    /// desired count stays whatever ServiceScaling set). Returns the service as ECS
    /// answered, with the new PRIMARY deployment.
    pub async fn deploy_task_definition(
        &self,
        cluster: &str,
        service: &str,
        task_definition: &str,
    ) -> Result<EcsService, EcsError> {
        self.budget.acquire(crate::budget::ECS_WRITE).await;
        let out = self
            .client
            .update_service()
            .cluster(cluster)
            .service(service)
            .task_definition(task_definition)
            .send()
            .await
            .map_err(|e| EcsError::from_sdk("UpdateService", cluster, Some(service), e))?;
        out.service()
            .map(convert_service)
            .ok_or_else(|| EcsError::Call {
                operation: "UpdateService",
                code: None,
                message: "no service returned".into(),
            })
    }

    /// The tasks that deployment `deployment_id` started and that stopped (at most
    /// [`MAX_STOPPED_TASKS`]).
    pub async fn stopped_tasks(
        &self,
        cluster: &str,
        deployment_id: &str,
    ) -> Result<Vec<StoppedTask>, EcsError> {
        self.budget.acquire(crate::budget::ECS_READ).await;
        let out = self
            .client
            .list_tasks()
            .cluster(cluster)
            .started_by(deployment_id)
            .desired_status(DesiredStatus::Stopped)
            .max_results(100)
            .send()
            .await
            .map_err(|e| EcsError::from_sdk("ListTasks", cluster, None, e))?;
        let arns: Vec<String> = out
            .task_arns()
            .iter()
            .take(MAX_STOPPED_TASKS)
            .cloned()
            .collect();
        let mut stopped = Vec::new();
        // DescribeTasks takes at most 100 tasks per call.
        for chunk in arns.chunks(100) {
            self.budget.acquire(crate::budget::ECS_READ).await;
            let out = self
                .client
                .describe_tasks()
                .cluster(cluster)
                .set_tasks(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| EcsError::from_sdk("DescribeTasks", cluster, None, e))?;
            for t in out.tasks() {
                let containers = t.containers();
                stopped.push(StoppedTask {
                    id: t
                        .task_arn()
                        .and_then(|a| a.rsplit('/').next())
                        .unwrap_or_default()
                        .to_owned(),
                    reason: t.stopped_reason().unwrap_or_default().to_owned(),
                    stop_code: t.stop_code().map(|c| c.as_str().to_owned()),
                    exit_code: containers
                        .iter()
                        .filter_map(|c| c.exit_code())
                        .find(|c| *c != 0)
                        .or_else(|| containers.iter().find_map(|c| c.exit_code())),
                    unhealthy: t.health_status() == Some(&HealthStatus::Unhealthy)
                        || containers
                            .iter()
                            .any(|c| c.health_status() == Some(&HealthStatus::Unhealthy)),
                });
            }
        }
        stopped.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ecs::types::{
        ContainerDefinition, HealthCheck, KeyValuePair, LogConfiguration, LogDriver, PortMapping,
        Secret,
    };

    fn td() -> TaskDefinition {
        let app = ContainerDefinition::builder()
            .name("app")
            .image("shop:1.0")
            .memory(512)
            .environment(KeyValuePair::builder().name("MODE").value("live").build())
            .secrets(
                Secret::builder()
                    .name("DB")
                    .value_from("arn:aws:secretsmanager:eu-west-1:1:secret:db")
                    .build()
                    .expect("secret"),
            )
            .port_mappings(PortMapping::builder().container_port(8080).build())
            .health_check(
                HealthCheck::builder()
                    .command("CMD-SHELL")
                    .command("curl -f localhost:8080/health")
                    .build()
                    .expect("health check"),
            )
            .log_configuration(
                LogConfiguration::builder()
                    .log_driver(LogDriver::Awslogs)
                    .options("awslogs-group", "shop")
                    .build()
                    .expect("log configuration"),
            )
            .build();
        let sidecar = ContainerDefinition::builder()
            .name("envoy")
            .image("envoy:1.30")
            .build();
        TaskDefinition::builder()
            .task_definition_arn("arn:aws:ecs:eu-west-1:1:task-definition/shop:7")
            .family("shop")
            .revision(7)
            .cpu("256")
            .memory("512")
            .task_role_arn("arn:aws:iam::1:role/shop")
            .container_definitions(app)
            .container_definitions(sidecar)
            .build()
    }

    #[test]
    fn a_copy_replaces_only_the_named_images() {
        let images = BTreeMap::from([("app".to_owned(), "shop@sha256:abc".to_owned())]);
        let old_tags = vec![Tag::builder().key("team").value("shop").build()];
        let (input, replaced) = copy_input(
            &td(),
            &images,
            &old_tags,
            &[(RUN_TAG.into(), "shop-3".into())],
        )
        .expect("copy");
        assert_eq!(replaced["app"], "shop:1.0");
        let original = td();
        let before = original.container_definitions();
        let after = input.td.container_definitions();
        assert_eq!(after[0].image(), Some("shop@sha256:abc"));
        // Everything else in the container and the task definition is unchanged.
        let mut app = after[0].clone();
        app.image = before[0].image.clone();
        assert_eq!(app, before[0]);
        assert_eq!(after[1], before[1]);
        let mut restored = input.td.clone();
        restored.container_definitions = original.container_definitions.clone();
        assert_eq!(restored, original);
        assert_eq!(input.tags.len(), 2);
    }

    #[test]
    fn a_missing_container_is_named() {
        let images = BTreeMap::from([("web".to_owned(), "x".to_owned())]);
        let err = copy_input(&td(), &images, &[], &[]).expect_err("missing");
        assert!(
            err.contains("\"web\"") && err.contains("app, envoy"),
            "{err}"
        );
    }

    #[test]
    fn failed_tasks_are_told_apart_from_scale_ins() {
        let t = |exit: Option<i32>, unhealthy, code: Option<&str>| StoppedTask {
            id: "t".into(),
            reason: "r".into(),
            stop_code: code.map(str::to_owned),
            exit_code: exit,
            unhealthy,
        };
        assert!(t(Some(1), false, None).failed());
        assert!(t(Some(137), true, None).failed());
        assert!(t(None, false, Some("TaskFailedToStart")).failed());
        assert!(!t(Some(0), false, Some("ServiceSchedulerInitiated")).failed());
        assert_eq!(
            t(Some(1), false, None).describe(),
            "task t exited 1 (r)".to_owned()
        );
    }

    #[test]
    fn families_and_revisions_come_from_arns() {
        let arn = "arn:aws:ecs:eu-west-1:1:task-definition/shop:12";
        assert_eq!(family_of(arn), "shop");
        assert_eq!(family_of("shop:3"), "shop");
        assert_eq!(revision_of(arn), 12);
    }
}
