//! Tests of the generated CRD: names and columns, CEL rules in place and evaluated with
//! kube-cel, list-map markers, descriptions on every field, serde round trips.

use k8s_openapi::api::core::v1::EnvVar;
use kube::CustomResourceExt;
use serde_json::{Value, json};

use capstan_core::schema_testing::{self, from_yaml};

use super::*;

const EXAMPLE_YAML: &str = include_str!("../../examples/pipeline-shop.yaml");

fn dur(s: &str) -> DurationString {
    DurationString::new(s).expect("valid duration")
}

fn job(image: &str, command: &[&str], args: &[&str], timeout: &str) -> Option<JobStage> {
    Some(JobStage {
        image: image.into(),
        command: command.iter().map(|s| (*s).to_owned()).collect(),
        args: args.iter().map(|s| (*s).to_owned()).collect(),
        env: vec![],
        service_account_name: None,
        timeout: dur(timeout),
        backoff_limit: 0,
        results: vec![],
    })
}

pub(crate) fn deploy(cluster: &str, timeout: &str) -> Option<DeployStage> {
    Some(DeployStage {
        connection_ref: None,
        cluster: cluster.into(),
        service: "shop".into(),
        containers: vec![crate::crd::ContainerImage {
            name: "app".into(),
            image: "123456789012.dkr.ecr.eu-west-1.amazonaws.com/shop:{{ revision }}".into(),
        }],
        rollback_on_failure: true,
        timeout: dur(timeout),
        max_failed_tasks: 2,
    })
}

fn stage(
    name: &str,
    type_: StageType,
    job: Option<JobStage>,
    deploy: Option<DeployStage>,
) -> Stage {
    Stage {
        name: name.into(),
        type_,
        job,
        deploy,
        approval: None,
        http: None,
        depends_on: None,
    }
}

/// A Job stage running busybox for at most 5 minutes, declaring `results` (the
/// scheduler's and validation's tests).
pub(crate) fn job_stage(name: &str, type_: StageType, results: &[&str]) -> Stage {
    let mut job_stage = job("busybox", &[], &[], "5m");
    if let Some(j) = job_stage.as_mut() {
        j.results = results.iter().map(|r| (*r).to_owned()).collect();
    }
    stage(name, type_, job_stage, None)
}

/// The spec of `examples/pipeline-shop.yaml`, built in Rust.
pub(crate) fn example_spec() -> PipelineSpec {
    let mut build = job(
        "gcr.io/kaniko-project/executor:v1.23.0",
        &[],
        &["--destination=123456789012.dkr.ecr.eu-west-1.amazonaws.com/shop:{{ revision }}"],
        "30m",
    );
    if let Some(b) = build.as_mut() {
        b.env = vec![EnvVar {
            name: "REVISION".into(),
            value: Some("{{ revision }}".into()),
            value_from: None,
        }];
        b.service_account_name = Some("image-builder".into());
        b.backoff_limit = 1;
        b.results = vec!["imageDigest".into()];
    }
    PipelineSpec {
        connection_ref: Some(ConnectionRef {
            name: "aws-prod".into(),
        }),
        revision: "1.4.2".into(),
        stages: vec![
            stage(
                "unit-tests",
                StageType::Test,
                job(
                    "registry.example.com/shop-test:{{ revision }}",
                    &["make", "test"],
                    &[],
                    "20m",
                ),
                None,
            ),
            stage("build", StageType::Build, build, None),
            stage("staging", StageType::Deploy, None, deploy("staging", "15m")),
            stage(
                "smoke-staging",
                StageType::SmokeTest,
                job(
                    "registry.example.com/shop-smoke:latest",
                    &[],
                    &[
                        "--base-url=https://staging.shop.example.com",
                        "--expect-version={{ revision }}",
                    ],
                    "5m",
                ),
                None,
            ),
            Stage {
                approval: Some(crate::approval::ApprovalStage {
                    approvers: crate::approval::Approvers {
                        users: vec![],
                        groups: vec!["release-managers".into()],
                    },
                    timeout: dur("24h"),
                }),
                ..stage("approve-production", StageType::Approval, None, None)
            },
            stage(
                "production",
                StageType::Deploy,
                None,
                deploy("production", "20m"),
            ),
            stage(
                "smoke-production",
                StageType::SmokeTest,
                job(
                    "registry.example.com/shop-smoke:latest",
                    &[],
                    &[
                        "--base-url=https://shop.example.com",
                        "--expect-version={{ revision }}",
                    ],
                    "5m",
                ),
                None,
            ),
        ],
        suspend: false,
        concurrency_policy: crate::crd::ConcurrencyPolicy::Queue,
    }
}

/// YAML parsed the way the API server sees it (via JSON values).
fn schema() -> Value {
    schema_testing::openapi_schema::<Pipeline>()
}

fn node(path: &str) -> Value {
    schema_testing::node(&schema(), path)
}

fn all_rules() -> Vec<(String, Value)> {
    schema_testing::all_rules(&schema())
}

/// The CEL failures kube-cel finds. It lacks two-variable comprehensions, so
/// [`RULE_DEPENDS_ON_EARLIER`] is left out here and tested on the real API server
/// (`crates/capstan/tests/admission.rs`).
fn cel_failures(object: &Value) -> Vec<String> {
    let mut schema = schema();
    let rules = schema["properties"]["spec"]["properties"]["stages"]["x-kubernetes-validations"]
        .as_array_mut()
        .expect("the stages list has rules");
    let before = rules.len();
    rules.retain(|r| r["rule"] != RULE_DEPENDS_ON_EARLIER);
    assert_eq!(rules.len(), before - 1, "the dependsOn rule is in place");
    schema_testing::cel_failures(&schema, object)
}

fn example_value() -> Value {
    from_yaml(EXAMPLE_YAML)
}

#[test]
fn crd_names_scope_and_subresources() {
    let crd = Pipeline::crd();
    assert_eq!(crd.metadata.name.as_deref(), Some("pipelines.capstan.dev"));
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.short_names, Some(vec!["pl".to_owned()]));
    assert_eq!(crd.spec.versions[0].name, "v1alpha1");
    assert!(
        crd.spec.versions[0]
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
    let columns: Vec<String> = crd.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| format!("{}={}", c.name, c.json_path))
        .collect();
    assert_eq!(
        columns,
        [
            "Revision=.spec.revision",
            "Run=.status.runId",
            "Phase=.status.phase",
            "Stage=.status.currentStage",
            "Ready=.status.conditions[?(@.type==\"Ready\")].status",
            "Reason=.status.conditions[?(@.type==\"Ready\")].reason",
            "Last success=.status.lastSuccessfulRevision",
            "Age=.metadata.creationTimestamp",
        ]
    );
}

#[test]
fn every_cel_rule_sits_where_it_applies() {
    let rules: Vec<(String, String)> = all_rules()
        .into_iter()
        .map(|(p, r)| (p, r["rule"].as_str().unwrap_or_default().to_owned()))
        .collect();
    // Every timeout carries the shared 1 s floor of tenant durations.
    let floor = capstan_core::schedule::rule_min_duration();
    let want = [
        (".spec", RULE_DEPLOY_NEEDS_CONNECTION),
        (".spec.stages", RULE_UNIQUE_STAGE_NAMES),
        (".spec.stages", RULE_DEPENDS_ON_EARLIER),
        (".spec.stages.[]", RULE_STAGE_SHAPE),
        (".spec.stages.[].job.timeout", floor.as_str()),
        (".spec.stages.[].deploy.timeout", floor.as_str()),
        (".spec.stages.[].approval.timeout", floor.as_str()),
        (".spec.stages.[].http.[].interval", floor.as_str()),
        (".spec.stages.[].http.[].timeout", floor.as_str()),
    ];
    for (path, rule) in want {
        assert!(
            rules.contains(&(path.to_owned(), rule.to_owned())),
            "{path} lacks {rule}: {rules:?}"
        );
    }
    assert_eq!(rules.len(), want.len());
    for (path, rule) in all_rules() {
        let message = rule["message"]
            .as_str()
            .or_else(|| rule["messageExpression"].as_str());
        assert!(message.is_some_and(|m| !m.is_empty()), "{path}: {rule}");
    }
}

#[test]
fn stage_list_is_bounded_for_the_uniqueness_rule() {
    let stages = node("spec.stages");
    assert_eq!(stages["minItems"], 1);
    assert_eq!(stages["maxItems"], 16);
    assert_eq!(node("spec.stages.[].name")["maxLength"], 40);
    assert_eq!(
        node("spec.stages.[].type")["enum"],
        json!(["Test", "Build", "Deploy", "SmokeTest", "Approval"])
    );
}

#[test]
fn conditions_and_stage_statuses_are_list_maps() {
    let conditions = node("status.conditions");
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
    let stages = node("status.stages");
    assert_eq!(stages["x-kubernetes-list-type"], "map");
    assert_eq!(stages["x-kubernetes-list-map-keys"], json!(["name"]));
    assert!(
        stages["items"]["required"]
            .as_array()
            .is_some_and(|r| r.contains(&json!("name")))
    );
}

#[test]
fn defaults_are_in_the_schema() {
    assert_eq!(node("spec.stages.[].deploy.maxFailedTasks")["default"], 2);
    assert_eq!(
        node("spec.stages.[].deploy.rollbackOnFailure")["default"],
        true
    );
    assert_eq!(node("spec.stages.[].deploy.timeout")["default"], "15m");
    assert_eq!(node("spec.stages.[].job.timeout")["default"], "30m");
    assert_eq!(
        node("spec.stages.[].job.timeout")["pattern"],
        capstan_core::schedule::DURATION_PATTERN
    );
}

/// Every property in the schema has a description: it is what `kubectl explain` shows.
#[test]
fn every_field_is_documented() {
    fn walk(path: &str, n: &Value, missing: &mut Vec<String>) {
        if !n.is_object() {
            return;
        }
        for (name, p) in n["properties"].as_object().into_iter().flatten() {
            let here = format!("{path}.{name}");
            let inherited =
                path.is_empty() && ["metadata", "apiVersion", "kind"].contains(&name.as_str());
            // EnvVar's own fields are documented by Kubernetes.
            let foreign = path.ends_with(".env.[]") || path.contains(".valueFrom");
            if !inherited && !foreign && p["description"].as_str().is_none_or(str::is_empty) {
                missing.push(here.clone());
            }
            walk(&here, p, missing);
        }
        walk(&format!("{path}.[]"), &n["items"], missing);
    }
    let mut missing = Vec::new();
    walk("", &schema(), &mut missing);
    assert!(missing.is_empty(), "undocumented: {missing:?}");
}

#[test]
fn example_round_trips_through_serde() {
    let parsed: Pipeline = from_yaml(EXAMPLE_YAML);
    assert_eq!(parsed.spec, example_spec());
    let json = serde_json::to_value(&parsed).expect("serializes");
    assert_eq!(json["spec"]["stages"][2]["type"], "Deploy");
    assert!(json["spec"]["stages"][2].get("job").is_none());
    let back: Pipeline = serde_json::from_value(json).expect("deserializes");
    assert_eq!(back, parsed);
}

#[test]
fn a_minimal_pipeline_gets_defaults() {
    let spec: PipelineSpec = from_yaml(
        r#"
revision: abc123
stages:
  - name: test
    type: Test
    job: { image: "busybox" }
"#,
    );
    assert_eq!(
        spec.concurrency_policy,
        crate::crd::ConcurrencyPolicy::Queue
    );
    assert!(!spec.suspend);
    let Some(StageAction::Job(job)) = spec.stages[0].action() else {
        panic!("a job stage")
    };
    assert_eq!(job.timeout.as_str(), "30m");
    assert_eq!(job.backoff_limit, 0);
    assert_eq!(crate::validation::validate(&spec), Ok(()));
}

#[test]
fn the_example_passes_every_cel_rule() {
    assert_eq!(cel_failures(&example_value()), Vec::<String>::new());
}

/// Each case breaks the example in one way; the CEL rules must refuse it.
#[test]
fn cel_rules_refuse_bad_specs() {
    type Case = (&'static str, fn(&mut Value), &'static str);
    let cases: Vec<Case> = vec![
        (
            "duplicate stage names",
            |v| v["spec"]["stages"][1]["name"] = json!("unit-tests"),
            "stage names must be unique",
        ),
        (
            "deploy without connection",
            |v| {
                v["spec"]
                    .as_object_mut()
                    .expect("spec")
                    .remove("connectionRef");
            },
            "connectionRef is required when a Deploy stage names no connectionRef of its own",
        ),
        (
            "deploy stage without deploy",
            |v| {
                v["spec"]["stages"][2]
                    .as_object_mut()
                    .expect("stage")
                    .remove("deploy");
            },
            "a Deploy stage needs deploy",
        ),
        (
            "test stage with deploy too",
            |v| v["spec"]["stages"][0]["deploy"] = v["spec"]["stages"][2]["deploy"].clone(),
            "a Deploy stage needs deploy",
        ),
        (
            "test stage typed Deploy",
            |v| v["spec"]["stages"][0]["type"] = json!("Deploy"),
            "a Deploy stage needs deploy",
        ),
    ];
    for (name, break_it, want) in cases {
        let mut v = example_value();
        break_it(&mut v);
        let failures = cel_failures(&v);
        assert!(
            failures.iter().any(|f| f.contains(want)),
            "{name}: want a failure containing {want:?}, got {failures:?}"
        );
    }
}

/// The dependsOn rule's message lists a literal for every possible stage index.
#[test]
fn the_depends_on_message_covers_every_stage_index() {
    let message = message_depends_on_earlier();
    assert!(message.contains("['0','1',"), "{message}");
    assert!(
        message.contains(&format!(",'{}'][i]", MAX_STAGES - 1)),
        "{message}"
    );
    assert_eq!(node("spec.stages")["maxItems"], MAX_STAGES);
}

#[test]
fn job_only_pipelines_need_no_connection() {
    let mut v = example_value();
    v["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("connectionRef");
    let stages = v["spec"]["stages"].as_array_mut().expect("stages");
    stages.retain(|s| s["type"] == "Test" || s["type"] == "Build");
    assert_eq!(cel_failures(&v), Vec::<String>::new());
}

#[test]
fn cel_rules_stay_within_the_cost_budget() {
    let compiled = kube::core::cel::compile_schema(&schema());
    assert!(
        !compiled.has_errors(),
        "{:?}",
        compiled.compilation_errors()
    );
    for (path, rule) in all_rules() {
        let rule = rule["rule"].as_str().unwrap_or_default().to_owned();
        if rule == RULE_UNIQUE_STAGE_NAMES || rule == RULE_DEPENDS_ON_EARLIER {
            // kube-cel's heuristic assumes 1000 items for `self` whatever its maxItems;
            // kube-apiserver 1.36 accepts the rule. What keeps it cheap is the bound:
            // 16 x 16 comparisons of names of at most 40 bytes (dependsOn: 16 stages x
            // 16 names x 3 lookups in a list of 16 names).
            assert_eq!(node("spec.stages")["maxItems"], 16);
            assert_eq!(node("spec.stages.[].dependsOn")["maxItems"], 16);
            assert_eq!(node("spec.stages.[].name")["maxLength"], 40);
            continue;
        }
        let warnings = kube::core::cel::estimate_rule_cost(&rule, &compiled);
        assert!(warnings.is_empty(), "{path}: {rule}: {warnings:?}");
    }
}

#[test]
fn a_new_run_resets_stage_statuses() {
    let spec = example_spec();
    let mut status = PipelineStatus {
        last_successful_revision: Some("1.4.1".into()),
        rollbacks: 2,
        ..PipelineStatus::default()
    };
    status.start_run(&spec);
    assert_eq!(status.phase, Some(PipelinePhase::Pending));
    assert_eq!(status.current_revision.as_deref(), Some("1.4.2"));
    assert_eq!(status.stages.len(), 7);
    assert!(status.stages.iter().all(|s| s.phase == StagePhase::Pending));
    assert_eq!(status.last_successful_revision.as_deref(), Some("1.4.1"));
    assert_eq!(status.rollbacks, 2);
    let staging = status.stage_mut("staging").expect("exists");
    staging.phase = StagePhase::RolledBack;
    staging.set_message(&"é".repeat(STAGE_MESSAGE_MAX_LEN));
    let message = staging.message.clone().unwrap_or_default();
    assert!(message.len() <= STAGE_MESSAGE_MAX_LEN && message.len() >= STAGE_MESSAGE_MAX_LEN - 1);
    let json = serde_json::to_value(&status).expect("serializes");
    assert_eq!(json["stages"][2]["phase"], "RolledBack");
    let back: PipelineStatus = serde_json::from_value(json).expect("deserializes");
    assert_eq!(back, status);
}

#[test]
fn stage_actions_follow_the_type() {
    let spec = example_spec();
    assert!(matches!(spec.stages[0].action(), Some(StageAction::Job(_))));
    assert!(
        matches!(spec.stages[2].action(), Some(StageAction::Deploy(d)) if d.cluster == "staging")
    );
    assert!(
        matches!(spec.stages[5].action(), Some(StageAction::Deploy(d)) if d.cluster == "production" && d.max_failed_tasks == 2)
    );
    let mut broken = spec.stages[0].clone();
    broken.type_ = StageType::Deploy;
    assert_eq!(broken.action(), None);
}
