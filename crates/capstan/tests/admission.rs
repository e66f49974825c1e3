//! The CRDs against a real kube-apiserver: bad input is refused at admission with the
//! offending field path in the message; good input is accepted.

use capstan_core::connection::ClusterConnection;
use capstan_pipeline::crd::Pipeline;
use capstan_secret_rotation::crd::SecretRotation;
use capstan_service_scaling::crd::ServiceScaling;
use capstan_testenv::{TempNamespace, TestEnv};
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use kube::{Client, Resource};
use serde_json::{Value, json};

async fn create<K: Resource<DynamicType = ()>>(
    client: &Client,
    ns: Option<&str>,
    obj: Value,
) -> Result<(), String> {
    let ar = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    let mut obj = obj;
    obj["apiVersion"] = json!(K::api_version(&()));
    obj["kind"] = json!(K::kind(&()));
    let dynamic: DynamicObject = serde_json::from_value(obj).expect("object");
    match api.create(&PostParams::default(), &dynamic).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 422 => Err(s.message),
        Err(e) => panic!("unexpected error (not a validation refusal): {e}"),
    }
}

fn rotation(name: &str) -> Value {
    json!({
        "metadata": { "name": name },
        "spec": {
            "connectionRef": { "name": "aws-payments" },
            "backend": { "awsSecretsManager": { "secretId": "payments/api-key" } },
            "target": { "none": {} },
            "schedule": { "interval": "720h" }
        }
    })
}

/// Each case breaks a valid SecretRotation in one way; the API server must refuse it
/// and name the field.
#[tokio::test]
async fn invalid_secret_rotations_are_refused_with_the_field_path() {
    let kube = TestEnv::get().kube().await.expect("kube");
    let ns = TempNamespace::create(kube).await.expect("namespace");
    let client = kube.client().await;
    create::<SecretRotation>(&client, Some(ns.name()), rotation("valid"))
        .await
        .expect("the valid SecretRotation is accepted");

    type Case = (&'static str, fn(&mut Value), &'static str);
    let cases: Vec<Case> = vec![
        (
            "two backends",
            |v| v["spec"]["backend"]["kubernetes"] = json!({"secretName": "x"}),
            "spec.backend",
        ),
        (
            "no backend",
            |v| v["spec"]["backend"] = json!({}),
            "spec.backend",
        ),
        (
            "two targets",
            |v| {
                v["spec"]["target"]["mysql"] =
                    json!({"host": "db", "username": "u", "adminSecretRef": {"name": "a"}})
            },
            "spec.target",
        ),
        (
            "malformed interval",
            |v| v["spec"]["schedule"]["interval"] = json!("every day"),
            "spec.schedule.interval",
        ),
        (
            "interval and cron",
            |v| v["spec"]["schedule"]["cron"] = json!("0 3 * * *"),
            "spec.schedule",
        ),
        (
            "generator too short for its classes",
            |v| v["spec"]["generator"] = json!({"length": 2}),
            "spec.generator",
        ),
        (
            "alternating users without a database",
            |v| v["spec"]["strategy"] = json!({"alternatingUsers": {}}),
            "spec.strategy",
        ),
        (
            "single user with rollouts, unacknowledged",
            |v| {
                v["spec"]["target"] = json!({"postgres": {"host": "db", "database": "app", "username": "app", "adminSecretRef": {"name": "admin"}}});
                v["spec"]["strategy"] = json!({"singleUser": {}});
                v["spec"]["delivery"] =
                    json!({"rollouts": [{"kind": "Deployment", "name": "api"}]});
            },
            "spec.strategy",
        ),
        (
            "an RDS target naming neither instance nor cluster",
            |v| {
                v["spec"]["target"] = json!({"rdsMasterPassword": {"connectionRef": {"name": "aws"}, "masterUsername": "master"}});
            },
            "spec.target.rdsMasterPassword",
        ),
        (
            "an RDS identifier that is no identifier",
            |v| {
                v["spec"]["target"] = json!({"rdsMasterPassword": {"connectionRef": {"name": "aws"}, "masterUsername": "master", "dbInstanceIdentifier": "1-bad_id"}});
            },
            "spec.target.rdsMasterPassword.dbInstanceIdentifier",
        ),
        (
            "alternating users of an RDS master",
            |v| {
                v["spec"]["target"] = json!({"rdsMasterPassword": {"connectionRef": {"name": "aws"}, "masterUsername": "master", "dbInstanceIdentifier": "shop"}});
                v["spec"]["strategy"] = json!({"alternatingUsers": {}});
            },
            "spec.strategy",
        ),
        (
            "an IAM key's grace period longer than the interval",
            |v| {
                v["spec"]["target"] = json!({"iamAccessKey": {"connectionRef": {"name": "aws"}, "userName": "reporting", "gracePeriod": "2d"}});
                v["spec"]["schedule"] = json!({"interval": "1d23h59m59s"});
            },
            "spec.target.iamAccessKey.gracePeriod",
        ),
        (
            "an IAM key's grace period of nothing",
            |v| {
                v["spec"]["target"] = json!({"iamAccessKey": {"connectionRef": {"name": "aws"}, "userName": "reporting", "gracePeriod": "0s"}});
            },
            "spec.target.iamAccessKey.gracePeriod",
        ),
        (
            "a Vault static role rotated by Vault before Capstan's schedule",
            |v| {
                v["spec"]["target"] = json!({"vaultDatabaseStaticRole": {"connectionRef": {"name": "vault"}, "host": "db", "database": "app", "adminSecretRef": {"name": "admin"}, "username": "app", "rotationPeriod": "47h"}});
                v["spec"]["schedule"] = json!({"interval": "24h"});
            },
            "spec.target.vaultDatabaseStaticRole.rotationPeriod",
        ),
        (
            "a Vault static role whose drift is checked more often than the floor",
            |v| {
                v["spec"]["target"] = json!({"vaultDatabaseStaticRole": {"connectionRef": {"name": "vault"}, "host": "db", "database": "app", "adminSecretRef": {"name": "admin"}, "username": "app", "rotationPeriod": "60d", "driftCheckInterval": "4s"}});
            },
            "spec.target.vaultDatabaseStaticRole.driftCheckInterval",
        ),
        (
            "a Vault static role without its admin Secret",
            |v| {
                v["spec"]["target"] = json!({"vaultDatabaseStaticRole": {"connectionRef": {"name": "vault"}, "host": "db", "database": "app", "username": "app", "rotationPeriod": "60d"}});
            },
            "spec.target.vaultDatabaseStaticRole.adminSecretRef",
        ),
        (
            "dynamic credentials copied into Secrets Manager",
            |v| {
                v["spec"]["target"] = json!({"vaultDatabaseDynamicRole": {"connectionRef": {"name": "vault"}, "host": "db", "database": "app", "adminSecretRef": {"name": "admin"}, "creationStatements": ["CREATE ROLE \"{{name}}\""]}});
            },
            "spec.backend",
        ),
        (
            "a dynamic lease shorter than the floor",
            |v| {
                v["spec"]["backend"] = json!({"kubernetes": {"secretName": "x"}});
                v["spec"]
                    .as_object_mut()
                    .expect("spec")
                    .remove("connectionRef");
                v["spec"]["target"] = json!({"vaultDatabaseDynamicRole": {"connectionRef": {"name": "vault"}, "host": "db", "database": "app", "adminSecretRef": {"name": "admin"}, "creationStatements": ["CREATE ROLE \"{{name}}\""], "defaultTtl": "5s"}});
            },
            "spec.target.vaultDatabaseDynamicRole.defaultTtl",
        ),
        (
            "a dynamic maximum TTL below the lease",
            |v| {
                v["spec"]["backend"] = json!({"kubernetes": {"secretName": "x"}});
                v["spec"]
                    .as_object_mut()
                    .expect("spec")
                    .remove("connectionRef");
                v["spec"]["target"] = json!({"vaultDatabaseDynamicRole": {"connectionRef": {"name": "vault"}, "host": "db", "database": "app", "adminSecretRef": {"name": "admin"}, "creationStatements": ["CREATE ROLE \"{{name}}\""], "defaultTtl": "2h", "maxTtl": "1h"}});
            },
            "spec.target.vaultDatabaseDynamicRole.maxTtl",
        ),
        (
            "a dynamic maximum TTL beyond 30 days",
            |v| {
                v["spec"]["backend"] = json!({"kubernetes": {"secretName": "x"}});
                v["spec"]
                    .as_object_mut()
                    .expect("spec")
                    .remove("connectionRef");
                v["spec"]["target"] = json!({"vaultDatabaseDynamicRole": {"connectionRef": {"name": "vault"}, "host": "db", "database": "app", "adminSecretRef": {"name": "admin"}, "creationStatements": ["CREATE ROLE \"{{name}}\""], "maxTtl": "31d"}});
            },
            "spec.target.vaultDatabaseDynamicRole.maxTtl",
        ),
        (
            "dynamic credentials without creation statements",
            |v| {
                v["spec"]["backend"] = json!({"kubernetes": {"secretName": "x"}});
                v["spec"]
                    .as_object_mut()
                    .expect("spec")
                    .remove("connectionRef");
                v["spec"]["target"] = json!({"vaultDatabaseDynamicRole": {"connectionRef": {"name": "vault"}, "host": "db", "database": "app", "adminSecretRef": {"name": "admin"}, "creationStatements": []}});
            },
            "spec.target.vaultDatabaseDynamicRole.creationStatements",
        ),
        (
            "an IAM user name IAM would refuse",
            |v| {
                v["spec"]["target"] = json!({"iamAccessKey": {"connectionRef": {"name": "aws"}, "userName": "a/b", "gracePeriod": "1h"}});
            },
            "spec.target.iamAccessKey.userName",
        ),
        (
            "aws backend without a connection",
            |v| {
                v["spec"]
                    .as_object_mut()
                    .expect("spec")
                    .remove("connectionRef");
            },
            "spec",
        ),
    ];
    let mut failures = Vec::new();
    for (i, (what, mutate, path)) in cases.into_iter().enumerate() {
        let mut obj = rotation(&format!("bad-{i}"));
        mutate(&mut obj);
        match create::<SecretRotation>(&client, Some(ns.name()), obj).await {
            Ok(()) => failures.push(format!("{what}: accepted")),
            Err(msg) if msg.contains(&format!("{path}:")) || msg.contains(&format!("{path}.")) => {}
            Err(msg) => failures.push(format!("{what}: refused without field path {path}: {msg}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// ServiceScaling: min above max and a zero target are refused with their paths.
#[tokio::test]
async fn invalid_service_scalings_are_refused_with_the_field_path() {
    let kube = TestEnv::get().kube().await.expect("kube");
    let ns = TempNamespace::create(kube).await.expect("namespace");
    let client = kube.client().await;
    let base = |name: &str| {
        json!({
            "metadata": { "name": name },
            "spec": {
                "connectionRef": { "name": "aws-shop" },
                "service": { "cluster": "shop", "service": "web" },
                "minReplicas": 2,
                "maxReplicas": 10,
                "metrics": [ { "cpuUtilization": { "targetPercent": 60 } } ]
            }
        })
    };
    create::<ServiceScaling>(&client, Some(ns.name()), base("ok"))
        .await
        .expect("valid accepted");
    let mut min_above_max = base("min-above-max");
    min_above_max["spec"]["minReplicas"] = json!(20);
    let msg = create::<ServiceScaling>(&client, Some(ns.name()), min_above_max)
        .await
        .expect_err("refused");
    assert!(msg.contains("spec.minReplicas"), "{msg}");
    let mut zero = base("zero-target");
    zero["spec"]["metrics"][0]["cpuUtilization"]["targetPercent"] = json!(0);
    let msg = create::<ServiceScaling>(&client, Some(ns.name()), zero)
        .await
        .expect_err("refused");
    assert!(
        msg.contains("spec.metrics[0].cpuUtilization.targetPercent"),
        "{msg}"
    );
}

/// ClusterConnection: neither aws nor vault, or both, is refused; a Pipeline without
/// stages is refused.
#[tokio::test]
async fn invalid_connections_and_pipelines_are_refused() {
    let kube = TestEnv::get().kube().await.expect("kube");
    let ns = TempNamespace::create(kube).await.expect("namespace");
    let client = kube.client().await;
    let name = format!("neither-{}", ns.name());
    let msg = create::<ClusterConnection>(
        &client,
        None,
        json!({"metadata": {"name": name}, "spec": {}}),
    )
    .await
    .expect_err("refused");
    assert!(msg.contains("exactly one of aws or vault"), "{msg}");
    let msg = create::<Pipeline>(
        &client,
        Some(ns.name()),
        json!({"metadata": {"name": "empty"}, "spec": {"revision": "abc123", "stages": []}}),
    )
    .await
    .expect_err("refused");
    assert!(msg.contains("spec.stages"), "{msg}");
}

/// Every example under manifests/examples is accepted by the API server (server-side
/// dry run), so the documentation cannot drift from the schema.
#[tokio::test]
async fn every_example_is_accepted() {
    let kube = TestEnv::get().kube().await.expect("kube");
    let ns = TempNamespace::create(kube).await.expect("namespace");
    let client = kube.client().await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests/examples");
    let mut seen = 0;
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples")
        .flatten()
        .map(|e| e.path())
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).expect("read");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let mut obj: Value = serde::Deserialize::deserialize(doc).expect("yaml");
            let kind = obj["kind"].as_str().unwrap_or_default().to_owned();
            let ar = match kind.as_str() {
                "ClusterConnection" => ApiResource::erase::<ClusterConnection>(&()),
                "SecretRotation" => ApiResource::erase::<SecretRotation>(&()),
                "ServiceScaling" => ApiResource::erase::<ServiceScaling>(&()),
                "Pipeline" => ApiResource::erase::<Pipeline>(&()),
                other => panic!("{}: unexpected kind {other}", path.display()),
            };
            let api: Api<DynamicObject> = if kind == "ClusterConnection" {
                Api::all_with(client.clone(), &ar)
            } else {
                obj["metadata"]["namespace"] = json!(ns.name());
                Api::namespaced_with(client.clone(), ns.name(), &ar)
            };
            let dynamic: DynamicObject = serde_json::from_value(obj).expect("object");
            api.create(
                &PostParams {
                    dry_run: true,
                    ..PostParams::default()
                },
                &dynamic,
            )
            .await
            .unwrap_or_else(|e| panic!("{} ({kind}) refused: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(seen >= 6, "only {seen} examples found in {}", dir.display());
}

/// Every duration a tenant sets has a floor of 1 s at admission, whatever its units:
/// `0`, `0d` (which once slipped past a rule that skipped strings with `d`), `1ns` and
/// `999ms` are refused with the field's path; `1s`, `500ms500ms` and `1d` pass.
#[tokio::test]
async fn tenant_durations_below_one_second_are_refused_with_the_field_path() {
    let kube = TestEnv::get().kube().await.expect("kube");
    let ns = TempNamespace::create(kube).await.expect("namespace");
    let client = kube.client().await;
    let too_short = ["0", "0s", "0d", "1ns", "999ms", "0.5s", "0d0h0m0s"];
    let long_enough = ["1s", "500ms500ms", "1d", "0.001d"];
    let mut failures = Vec::new();
    let mut n = 0;
    let mut check = async |kind: &str, path: &str, obj: Value, value: &str, ok: bool| {
        let result = match kind {
            "SecretRotation" => create::<SecretRotation>(&client, Some(ns.name()), obj).await,
            "ServiceScaling" => create::<ServiceScaling>(&client, Some(ns.name()), obj).await,
            _ => create::<Pipeline>(&client, Some(ns.name()), obj).await,
        };
        match (ok, result) {
            (true, Ok(())) => {}
            (true, Err(msg)) => failures.push(format!("{kind} {path}={value:?} refused: {msg}")),
            (false, Ok(())) => failures.push(format!("{kind} {path}={value:?} accepted")),
            (false, Err(msg))
                if msg.contains(&format!("{path}:")) && msg.contains("at least 1s") => {}
            (false, Err(msg)) => failures.push(format!(
                "{kind} {path}={value:?} refused without its path and floor: {msg}"
            )),
        }
    };
    let cases = too_short
        .iter()
        .map(|v| (*v, false))
        .chain(long_enough.iter().map(|v| (*v, true)));
    for (value, ok) in cases {
        n += 1;
        let mut r = rotation(&format!("interval-{n}"));
        r["spec"]["schedule"]["interval"] = json!(value);
        check("SecretRotation", "spec.schedule.interval", r, value, ok).await;

        let scaling = |name: String| {
            json!({
                "metadata": { "name": name },
                "spec": {
                    "connectionRef": { "name": "aws-shop" },
                    "service": { "cluster": "shop", "service": "web" },
                    "maxReplicas": 10,
                    "metrics": [ { "cpuUtilization": { "targetPercent": 60 } } ],
                    "evaluationInterval": "15s",
                    "schedules": [ { "name": "sale", "cron": "0 8 * * *", "duration": "1h", "minReplicas": 4 } ]
                }
            })
        };
        let mut s = scaling(format!("eval-{n}"));
        s["spec"]["evaluationInterval"] = json!(value);
        check("ServiceScaling", "spec.evaluationInterval", s, value, ok).await;
        let mut s = scaling(format!("window-{n}"));
        s["spec"]["schedules"][0]["duration"] = json!(value);
        check("ServiceScaling", "spec.schedules[0].duration", s, value, ok).await;

        let pipeline = json!({
            "metadata": { "name": format!("timeout-{n}") },
            "spec": {
                "revision": "abc123",
                "stages": [ { "name": "migrate", "type": "Test", "job": {
                    "image": "migrate:{{ revision }}",
                    "timeout": value
                } } ]
            }
        });
        check(
            "Pipeline",
            "spec.stages[0].job.timeout",
            pipeline,
            value,
            ok,
        )
        .await;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Creates `obj` as a server-side dry run: admission runs (the CRD's rules and the
/// admission policies), nothing is stored.
async fn dry_run_pipeline(client: &Client, ns: &str, obj: &Value) -> Result<(), String> {
    let ar = ApiResource::erase::<Pipeline>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let mut obj = obj.clone();
    obj["apiVersion"] = json!("capstan.dev/v1alpha1");
    obj["kind"] = json!("Pipeline");
    let dynamic: DynamicObject = serde_json::from_value(obj).expect("object");
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    match api.create(&params, &dynamic).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 422 => Err(s.message),
        Err(e) => panic!("unexpected error (not a validation refusal): {e}"),
    }
}

/// A build that declares `imageDigest`, a test after it, a deploy and an HTTP check.
fn referencing_pipeline() -> Value {
    json!({
        "metadata": { "name": "refs" },
        "spec": {
            "revision": "abc123",
            "connectionRef": { "name": "aws-shop" },
            "stages": [
                { "name": "build", "type": "Build", "job": {
                    "image": "kaniko:1", "args": ["--tag={{ revision }}"], "results": ["imageDigest", "imageRef"] } },
                { "name": "scan", "type": "Test", "job": {
                    "image": "scanner:1",
                    "args": ["{{stages.build.results.imageRef}}@{{ stages.build.results.imageDigest }}"],
                    "env": [ { "name": "DIGEST", "value": "{{ stages.build.results.imageDigest }}" } ] } },
                { "name": "staging", "type": "Deploy", "deploy": {
                    "cluster": "staging", "service": "shop",
                    "containers": [ { "name": "app", "image": "shop@{{ stages.build.results.imageDigest }}" } ] } },
                { "name": "smoke", "type": "SmokeTest", "http": [ {
                    "url": "https://staging.shop.example/version",
                    "headers": [ { "name": "X-Digest", "value": "{{ stages.build.results.imageDigest }}" } ] } ] }
            ]
        }
    })
}

/// `dependsOn` that names an unknown or later stage (any cycle does) is refused by the
/// CRD; a result reference that no Job stage listed before declares is refused by the
/// chart's admission policy. Both name the stage's path and the offending entries.
#[tokio::test]
async fn pipeline_dependencies_and_result_references_are_checked_at_admission() {
    let kube = TestEnv::get().kube().await.expect("kube");
    let ns = TempNamespace::create(kube).await.expect("namespace");
    let client = kube.client().await;
    // The chart's objects, its admission policies among them.
    kube.install_capstan(&capstan_testenv::InstallOptions {
        namespace: ns.name().to_owned(),
        controllers: vec!["pipeline".into()],
        leader_elect: true,
        ..Default::default()
    })
    .await
    .expect("install");

    let mut undeclared = referencing_pipeline();
    undeclared["spec"]["stages"][1]["job"]["args"][0] = json!("{{ stages.build.results.digest }}");
    // A policy takes effect a moment after it is created.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let msg = loop {
        match dry_run_pipeline(&client, ns.name(), &undeclared).await {
            Err(msg) => break msg,
            Ok(()) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            Ok(()) => panic!("a reference to an undeclared result was accepted"),
        }
    };
    assert!(
        msg.contains("spec.stages[1] (scan): {{ stages.build.results.digest }}")
            && msg.contains("declares (job.results)"),
        "{msg}"
    );
    dry_run_pipeline(&client, ns.name(), &referencing_pipeline())
        .await
        .expect("references to declared results are accepted");

    type Case = (&'static str, fn(&mut Value), &'static str);
    let cases: Vec<Case> = vec![
        (
            "a result of a later stage",
            |v| v["spec"]["stages"][0]["job"]["args"][0] = json!("{{ stages.scan.results.x }}"),
            "spec.stages[0] (build): {{ stages.scan.results.x }}",
        ),
        (
            "an unknown stage in a deploy image",
            |v| {
                v["spec"]["stages"][2]["deploy"]["containers"][0]["image"] =
                    json!("shop@{{ stages.bild.results.imageDigest }}")
            },
            "spec.stages[2] (staging): {{ stages.bild.results.imageDigest }}",
        ),
        (
            "an undeclared key in an HTTP check header",
            |v| {
                v["spec"]["stages"][3]["http"][0]["headers"][0]["value"] =
                    json!("{{ stages.build.results.tag }}")
            },
            "spec.stages[3] (smoke): {{ stages.build.results.tag }}",
        ),
        (
            "an undeclared key in an environment value",
            |v| {
                v["spec"]["stages"][1]["job"]["env"][0]["value"] =
                    json!("{{  stages.build.results.sha  }}")
            },
            "spec.stages[1] (scan): {{  stages.build.results.sha  }}",
        ),
        (
            "dependsOn an unknown stage",
            |v| v["spec"]["stages"][2]["dependsOn"] = json!(["build", "lint"]),
            "spec.stages[2].dependsOn: lint is not a stage listed before staging",
        ),
        (
            "dependsOn a later stage",
            |v| v["spec"]["stages"][1]["dependsOn"] = json!(["smoke"]),
            "spec.stages[1].dependsOn: smoke is not a stage listed before scan",
        ),
        (
            "dependsOn one stage twice",
            |v| v["spec"]["stages"][2]["dependsOn"] = json!(["build", "build"]),
            "spec.stages[2].dependsOn[1]: Duplicate value",
        ),
        (
            "a cycle",
            |v| {
                v["spec"]["stages"][0]["dependsOn"] = json!(["scan"]);
                v["spec"]["stages"][1]["dependsOn"] = json!(["build"]);
            },
            "spec.stages[0].dependsOn: scan is not a stage listed before build",
        ),
    ];
    let mut failures = Vec::new();
    for (name, break_it, want) in cases {
        let mut v = referencing_pipeline();
        break_it(&mut v);
        match dry_run_pipeline(&client, ns.name(), &v).await {
            Ok(()) => failures.push(format!("{name}: accepted")),
            Err(msg) if msg.contains(want) => {}
            Err(msg) => failures.push(format!("{name}: want {want:?} in {msg}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let mut v = referencing_pipeline();
    v["spec"]["stages"][3]["dependsOn"] = json!(["build", "staging"]);
    dry_run_pipeline(&client, ns.name(), &v)
        .await
        .expect("dependsOn earlier stages is accepted");
}
