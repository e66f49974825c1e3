//! The Kubernetes Jobs of Job stages: how one is built from its stage (the run's
//! revision and the earlier stages' results substituted), and what Capstan observes of
//! the current run's Jobs ([`crate::scheduler::JobState`], with the results a completed
//! Job's Pod wrote to its termination message).

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::crd::{JobStage, Pipeline, PipelineStatus};
use crate::scheduler::JobState;
use crate::template::{self, TemplateError};

/// Label on every Job (and its Pods) of a Pipeline: the Pipeline's uid (a name may be
/// longer than a label value).
pub const PIPELINE_UID_LABEL: &str = "capstan.dev/pipeline-uid";
/// Label: the run number.
pub const RUN_LABEL: &str = "capstan.dev/run";
/// Label: the stage name.
pub const STAGE_LABEL: &str = "capstan.dev/stage";
/// The one container of a stage's Pod.
pub const CONTAINER: &str = "stage";

/// `text` with the run's revision and the results its stages reported substituted.
pub fn render(status: &PipelineStatus, text: &str) -> Result<String, TemplateError> {
    let revision = status.current_revision.as_deref().unwrap_or_default();
    template::render_with(text, revision, |stage, key| {
        status
            .stages
            .iter()
            .find(|s| s.name == stage)
            .and_then(|s| s.results.get(key))
            .map(String::as_str)
    })
}

/// The Job of attempt `attempt` of a Job stage, named `name`, for the current run in
/// `status`: owned by the Pipeline (the garbage collector removes it with the
/// Pipeline), labelled with the Pipeline's uid, the run and the stage.
pub fn build(
    pipeline: &Pipeline,
    status: &PipelineStatus,
    stage: &str,
    job: &JobStage,
    name: &str,
) -> Result<Job, TemplateError> {
    let render = |text: &str| render(status, text);
    let image = render(&job.image)?;
    let command = job
        .command
        .iter()
        .map(|c| render(c))
        .collect::<Result<Vec<_>, _>>()?;
    let args = job
        .args
        .iter()
        .map(|a| render(a))
        .collect::<Result<Vec<_>, _>>()?;
    let mut env = job.env.clone();
    for e in &mut env {
        if let Some(v) = e.value.as_mut() {
            *v = render(v)?;
        }
    }
    let labels = json!({
        PIPELINE_UID_LABEL: pipeline.uid().unwrap_or_default(),
        RUN_LABEL: status.run_number.to_string(),
        STAGE_LABEL: stage,
    });
    let owner = pipeline.controller_owner_ref(&());
    let timeout = job.timeout.duration().map_or(1800, |d| d.as_secs().max(1));
    let mut pod_spec = json!({
        "restartPolicy": "Never",
        "containers": [{
            "name": CONTAINER,
            "image": image,
            "command": command,
            "args": args,
            "env": env,
            "terminationMessagePolicy": "File",
        }],
    });
    if let Some(sa) = &job.service_account_name {
        pod_spec["serviceAccountName"] = json!(sa);
    }
    let value = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": pipeline.namespace(),
            "labels": labels,
            "ownerReferences": owner.into_iter().collect::<Vec<_>>(),
        },
        "spec": {
            "backoffLimit": job.backoff_limit,
            "activeDeadlineSeconds": timeout,
            "template": {
                "metadata": { "labels": labels },
                "spec": pod_spec,
            },
        },
    });
    // Every field above is one the Job schema has; this cannot fail.
    Ok(serde_json::from_value(value).unwrap_or_default())
}

/// What creating a stage's Job came to.
#[derive(Debug)]
pub enum Created {
    /// Created now, or found again (a crash between the claim and the create, another
    /// Capstan): a Job of that name with this Pipeline's uid.
    Ours,
    /// A Job of that name exists and is not this Pipeline's (its uid label differs).
    Foreign,
}

/// Creates `job`; one already there with its name is the same Job when it carries the
/// same Pipeline uid label, found again, never created twice.
pub async fn create(api: &Api<Job>, job: &Job) -> Result<Created, kube::Error> {
    match api.create(&PostParams::default(), job).await {
        Ok(_) => Ok(Created::Ours),
        Err(kube::Error::Api(e)) if e.code == 409 && e.reason == "AlreadyExists" => {
            let name = job.name_any();
            let found = api
                .list(&ListParams::default().fields(&format!("metadata.name={name}")))
                .await?;
            let ours = |j: &Job| {
                j.labels().get(PIPELINE_UID_LABEL) == job.labels().get(PIPELINE_UID_LABEL)
            };
            Ok(if found.items.iter().any(ours) {
                Created::Ours
            } else {
                Created::Foreign
            })
        }
        Err(e) => Err(e),
    }
}

/// Deletes Job `name` with its Pods (background propagation: a plain delete of a
/// batch/v1 Job orphans its Pods, which keep running). Gone already is fine.
pub async fn delete(api: &Api<Job>, name: &str) -> Result<(), kube::Error> {
    let params = kube::api::DeleteParams::background();
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// The Jobs of run `run` of the Pipeline with uid `uid`, by name. A completed Job's
/// state carries the termination message of its succeeded Pod when `wants_results`
/// says its stage declares results.
pub async fn observe(
    jobs: &Api<Job>,
    pods: &Api<Pod>,
    uid: &str,
    run: i64,
    wants_results: impl Fn(&str) -> bool,
) -> Result<BTreeMap<String, JobState>, kube::Error> {
    let selector = format!("{PIPELINE_UID_LABEL}={uid},{RUN_LABEL}={run}");
    let list = jobs.list(&ListParams::default().labels(&selector)).await?;
    let mut out = BTreeMap::new();
    for job in list.items {
        let name = job.name_any();
        let mut state = state_of(&job);
        if let JobState::Succeeded { message } = &mut state {
            let stage = job.labels().get(STAGE_LABEL).cloned().unwrap_or_default();
            if wants_results(&stage) {
                *message = termination_message(pods, &name).await?;
            }
        }
        out.insert(name, state);
    }
    Ok(out)
}

/// What a Job's conditions say.
pub fn state_of(job: &Job) -> JobState {
    let conditions = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let is = |t: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == t && c.status == "True")
    };
    if is("Complete").is_some() {
        return JobState::Succeeded { message: None };
    }
    if let Some(c) = is("Failed") {
        let reason = c.reason.clone().unwrap_or_else(|| "Failed".into());
        let reason = match c.message.as_deref().filter(|m| !m.is_empty()) {
            Some(m) => format!("{reason}: {m}"),
            None => reason,
        };
        return JobState::Failed { reason };
    }
    JobState::Active
}

/// The termination message of the stage container of Job `job`'s succeeded Pod.
async fn termination_message(pods: &Api<Pod>, job: &str) -> Result<Option<String>, kube::Error> {
    let list = pods
        .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
        .await?;
    Ok(list
        .items
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded"))
        .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
        .flatten()
        .filter(|c| c.name == CONTAINER)
        .find_map(|c| c.state.as_ref()?.terminated.as_ref()?.message.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{PipelineSpec, Stage, StageType};
    use capstan_core::schedule::DurationString;
    use k8s_openapi::api::core::v1::EnvVar;

    fn stage_job() -> JobStage {
        JobStage {
            image: "repo/deploy-check@{{ stages.build.results.imageDigest }}".into(),
            command: vec!["check".into()],
            args: vec!["--revision={{ revision }}".into()],
            env: vec![EnvVar {
                name: "DIGEST".into(),
                value: Some("{{ stages.build.results.imageDigest }}".into()),
                value_from: None,
            }],
            service_account_name: Some("ci".into()),
            timeout: DurationString::new("2m").expect("duration"),
            backoff_limit: 1,
            results: vec![],
        }
    }

    fn pipeline() -> Pipeline {
        let mut p = Pipeline::new(
            "shop",
            PipelineSpec {
                connection_ref: None,
                revision: "2.0".into(),
                stages: vec![Stage {
                    name: "check".into(),
                    type_: StageType::Test,
                    job: Some(stage_job()),
                    deploy: None,
                    approval: None,
                    http: None,
                    depends_on: None,
                }],
                suspend: false,
                concurrency_policy: crate::crd::ConcurrencyPolicy::Queue,
            },
        );
        p.metadata.namespace = Some("shop".into());
        p.metadata.uid = Some("u-1".into());
        p
    }

    /// The run's revision (not the spec's, which may have moved on) and the earlier
    /// stages' results are substituted; the Job is owned by the Pipeline and labelled.
    #[test]
    fn a_job_carries_the_runs_revision_and_results() {
        let p = pipeline();
        let mut status = PipelineStatus::default();
        status.start_run(&p.spec);
        status.current_revision = Some("1.9".into());
        status.run_number = 4;
        let mut build = crate::crd::StageStatus::pending("build");
        build
            .results
            .insert("imageDigest".into(), "sha256:00ff".into());
        status.stages.insert(0, build);
        let job = build_job(&p, &status);
        let v = serde_json::to_value(&job).expect("json");
        let c = &v["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], "repo/deploy-check@sha256:00ff");
        assert_eq!(c["args"][0], "--revision=1.9");
        assert_eq!(c["env"][0]["value"], "sha256:00ff");
        assert_eq!(c["terminationMessagePolicy"], "File");
        assert_eq!(v["spec"]["template"]["spec"]["restartPolicy"], "Never");
        assert_eq!(v["spec"]["template"]["spec"]["serviceAccountName"], "ci");
        assert_eq!(v["spec"]["activeDeadlineSeconds"], 120);
        assert_eq!(v["spec"]["backoffLimit"], 1);
        assert_eq!(v["metadata"]["labels"][RUN_LABEL], "4");
        assert_eq!(
            v["spec"]["template"]["metadata"]["labels"][PIPELINE_UID_LABEL],
            "u-1"
        );
        assert_eq!(v["metadata"]["ownerReferences"][0]["kind"], "Pipeline");
        assert_eq!(v["metadata"]["ownerReferences"][0]["controller"], true);
    }

    fn build_job(p: &Pipeline, status: &PipelineStatus) -> Job {
        build(p, status, "check", &stage_job(), "shop-4-check-1").expect("renders")
    }

    #[test]
    fn job_conditions_give_its_state() {
        let job = |conds: serde_json::Value| -> Job {
            serde_json::from_value(json!({ "metadata": {}, "status": { "conditions": conds } }))
                .expect("job")
        };
        assert_eq!(state_of(&job(json!([]))), JobState::Active);
        assert_eq!(
            state_of(&job(json!([{ "type": "Complete", "status": "True" }]))),
            JobState::Succeeded { message: None }
        );
        assert_eq!(
            state_of(&job(json!([{ "type": "Failed", "status": "True",
                "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit" }]))),
            JobState::Failed {
                reason: "BackoffLimitExceeded: Job has reached the specified backoff limit".into()
            }
        );
        assert_eq!(
            state_of(&job(json!([{ "type": "Failed", "status": "False" }]))),
            JobState::Active
        );
    }
}
