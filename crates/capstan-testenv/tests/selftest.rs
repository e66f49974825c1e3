//! The harness tests itself: every service starts (once, however many tests ask) and
//! answers like the real thing. The teardown side is in `teardown.rs`.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::api::rbac::v1::{AggregationRule, ClusterRole, PolicyRule};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionNames, CustomResourceDefinitionSpec,
    CustomResourceDefinitionVersion, CustomResourceValidation, JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};

use capstan_testenv::{
    Error, TempNamespace, TestEnv, await_condition, await_deleted, with_temp_ns,
};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

const WAIT: Duration = Duration::from_secs(60);

fn config_map(name: &str, ns: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(ns.to_owned()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([("k".to_owned(), "v".to_owned())])),
        ..ConfigMap::default()
    }
}

#[tokio::test]
async fn api_server_reports_the_built_version() -> TestResult {
    let kube = TestEnv::get().kube().await?;
    let version = kube.client().await.apiserver_version().await?;
    assert_eq!(version.git_version, capstan_testenv::paths::K8S_VERSION);
    assert!(kube.api_server_url().starts_with("https://127.0.0.1:"));
    assert!(kube.kubeconfig_path().is_file());
    Ok(())
}

#[tokio::test]
async fn namespace_controller_finishes_namespace_deletion() -> TestResult {
    let kube = TestEnv::get().kube().await?;
    let client = kube.client().await;
    let ns = TempNamespace::create(kube).await?;
    let name = ns.name().to_owned();
    // Content makes the namespace controller do real work before it removes the
    // `kubernetes` finalizer.
    ns.api::<ConfigMap>(client.clone())
        .create(&PostParams::default(), &config_map("content", &name))
        .await?;
    ns.delete_and_wait(WAIT).await?;
    let gone = Api::<Namespace>::all(client).get_opt(&name).await?;
    assert!(gone.is_none(), "namespace {name} still exists: {gone:?}");
    Ok(())
}

#[tokio::test]
async fn garbage_collector_deletes_owned_objects() -> TestResult {
    let kube = TestEnv::get().kube().await?;
    let client = kube.client().await;
    with_temp_ns(kube, |ns| async move {
        let api: Api<ConfigMap> = Api::namespaced(client, &ns);
        let owner = api
            .create(&PostParams::default(), &config_map("owner", &ns))
            .await?;
        let mut owned = config_map("owned", &ns);
        owned.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "v1".to_owned(),
            kind: "ConfigMap".to_owned(),
            name: "owner".to_owned(),
            uid: owner.metadata.uid.clone().unwrap_or_default(),
            ..OwnerReference::default()
        }]);
        api.create(&PostParams::default(), &owned).await?;
        api.delete("owner", &DeleteParams::background()).await?;
        await_deleted(&api, "owned", WAIT).await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    })
    .await??;
    Ok(())
}

#[tokio::test]
async fn clusterrole_aggregation_runs() -> TestResult {
    let kube = TestEnv::get().kube().await?;
    let api: Api<ClusterRole> = Api::all(kube.client().await);
    let label = format!("capstan-testenv-selftest-{}", std::process::id());
    let selector = BTreeMap::from([(label.clone(), "true".to_owned())]);
    let aggregate = ClusterRole {
        metadata: ObjectMeta {
            name: Some(format!("{label}-aggregate")),
            ..ObjectMeta::default()
        },
        aggregation_rule: Some(AggregationRule {
            cluster_role_selectors: Some(vec![LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            }]),
        }),
        ..ClusterRole::default()
    };
    let part = ClusterRole {
        metadata: ObjectMeta {
            name: Some(format!("{label}-part")),
            labels: Some(selector),
            ..ObjectMeta::default()
        },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["capstan.dev".to_owned()]),
            resources: Some(vec!["secretrotations".to_owned()]),
            verbs: vec!["get".to_owned()],
            ..PolicyRule::default()
        }]),
        ..ClusterRole::default()
    };
    api.create(&PostParams::default(), &aggregate).await?;
    api.create(&PostParams::default(), &part).await?;
    await_condition(
        &api,
        &format!("{label}-aggregate"),
        |role| role.rules.as_ref().is_some_and(|r| !r.is_empty()),
        WAIT,
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn crds_are_installed_and_apply_crd_waits_for_established() -> TestResult {
    let kube = TestEnv::get().kube().await?;
    let api: Api<CustomResourceDefinition> = Api::all(kube.client().await);
    for name in kube.installed_crds() {
        let crd = api.get(name).await?;
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        assert!(established, "CRD {name} from crds/ is not Established");
    }
    let crd = CustomResourceDefinition {
        metadata: ObjectMeta {
            name: Some("widgets.selftest.capstan.dev".to_owned()),
            ..ObjectMeta::default()
        },
        spec: CustomResourceDefinitionSpec {
            group: "selftest.capstan.dev".to_owned(),
            names: CustomResourceDefinitionNames {
                kind: "Widget".to_owned(),
                plural: "widgets".to_owned(),
                ..CustomResourceDefinitionNames::default()
            },
            scope: "Namespaced".to_owned(),
            versions: vec![CustomResourceDefinitionVersion {
                name: "v1alpha1".to_owned(),
                served: true,
                storage: true,
                schema: Some(CustomResourceValidation {
                    open_api_v3_schema: Some(JSONSchemaProps {
                        type_: Some("object".to_owned()),
                        x_kubernetes_preserve_unknown_fields: Some(true),
                        ..JSONSchemaProps::default()
                    }),
                }),
                ..CustomResourceDefinitionVersion::default()
            }],
            ..CustomResourceDefinitionSpec::default()
        },
        status: None,
    };
    kube.apply_crd(&crd).await?;
    // Applying the same CRD again is a no-op that still returns once Established.
    kube.apply_crd(&crd).await?;
    Ok(())
}

#[tokio::test]
async fn temp_namespace_is_deleted_on_drop() -> TestResult {
    let kube = TestEnv::get().kube().await?;
    let labels = BTreeMap::from([("team".to_owned(), "selftest".to_owned())]);
    let ns = TempNamespace::create_with(kube, "drop", labels).await?;
    let name = ns.name().to_owned();
    assert!(name.starts_with("drop-"));
    let api: Api<Namespace> = Api::all(kube.client().await);
    let created = api.get(&name).await?;
    let labels = created.metadata.labels.unwrap_or_default();
    assert_eq!(labels.get("team").map(String::as_str), Some("selftest"));
    assert_eq!(
        labels
            .get(capstan_testenv::TEMP_NAMESPACE_LABEL)
            .map(String::as_str),
        Some("true")
    );
    drop(ns);
    await_deleted(&api, &name, WAIT).await?;
    Ok(())
}

#[tokio::test]
async fn await_condition_timeout_shows_the_last_seen_state() -> TestResult {
    let kube = TestEnv::get().kube().await?;
    let ns = TempNamespace::create(kube).await?;
    let api: Api<ConfigMap> = ns.api(kube.client().await);
    api.create(&PostParams::default(), &config_map("watched", ns.name()))
        .await?;
    let err = await_condition(&api, "watched", |_| false, Duration::from_millis(500))
        .await
        .expect_err("the predicate never holds");
    let text = err.to_string();
    assert!(matches!(err, Error::Timeout { .. }), "{text}");
    assert!(
        text.contains("ConfigMap") && text.contains("watched"),
        "{text}"
    );
    assert!(
        text.contains("\"k\":\"v\""),
        "the last seen object is shown: {text}"
    );

    let err = await_condition(&api, "absent", |_| true, Duration::from_millis(500))
        .await
        .expect_err("the object does not exist");
    assert!(err.to_string().contains("does not exist"), "{err}");
    ns.delete().await?;
    Ok(())
}

#[tokio::test]
async fn concurrent_first_use_from_many_runtimes_starts_one_control_plane() -> TestResult {
    let threads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    let kube = TestEnv::get().kube().await.map_err(|e| e.to_string())?;
                    // Each runtime gets a working client of its own.
                    kube.client()
                        .await
                        .apiserver_version()
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok::<_, String>(kube.api_server_url().to_owned())
                })
            })
        })
        .collect();
    let mut urls = Vec::new();
    for t in threads {
        urls.push(t.join().expect("thread")?);
    }
    urls.dedup();
    assert_eq!(urls.len(), 1, "{urls:?}");
    let apiservers = TestEnv::get()
        .processes()
        .into_iter()
        .filter(|p| p.service == "kube-apiserver")
        .count();
    assert_eq!(apiservers, 1);
    Ok(())
}

#[tokio::test]
async fn moto_answers_sts_get_caller_identity_without_retries() -> TestResult {
    let aws = TestEnv::get().aws().await?;
    let config = aws.sdk_config().await;
    assert_eq!(
        config.retry_config().map(|r| r.max_attempts()),
        Some(1),
        "retries must be off"
    );
    assert_eq!(config.region().map(|r| r.as_ref()), Some("us-east-1"));
    let sts = aws_sdk_sts::Client::new(&config);
    let identity = sts.get_caller_identity().send().await?;
    assert_eq!(identity.account(), Some(capstan_testenv::TEST_ACCOUNT_ID));
    let log = std::fs::read_to_string(aws.log_path())?;
    let loaded = log
        .lines()
        .find_map(|l| {
            l.split_once("extensions loaded: ")
                .map(|(_, names)| names.to_owned())
        })
        .unwrap_or_default();
    assert!(
        loaded.split(", ").any(|name| name == "example_noop"),
        "moto_ext/ was not loaded:\n{log}"
    );
    Ok(())
}

/// The moto that enforces IAM authentication refuses an unknown key, a key made
/// inactive (the harness's model: moto alone accepts it) and a deleted key, and accepts
/// the key again once reactivated.
#[tokio::test]
async fn moto_with_iam_enforced_refuses_unknown_inactive_and_deleted_keys() -> TestResult {
    let aws = TestEnv::get().aws_iam_enforced().await?;
    let config = aws.sdk_config().await;
    let iam = aws_sdk_iam::Client::new(&config);
    let user = "selftest-keys";
    iam.create_user().user_name(user).send().await?;
    let key = iam.create_access_key().user_name(user).send().await?;
    let key = key.access_key().expect("key").clone();
    let sts_as = |id: &str, secret: &str| {
        let creds = aws_credential_types::Credentials::new(id, secret, None, None, "selftest");
        aws_sdk_sts::Client::new(
            &config
                .clone()
                .into_builder()
                .credentials_provider(
                    aws_credential_types::provider::SharedCredentialsProvider::new(creds),
                )
                .build(),
        )
    };
    let works = |id: String, secret: String| {
        let sts = sts_as(&id, &secret);
        async move { sts.get_caller_identity().send().await.is_ok() }
    };
    let (id, secret) = (
        key.access_key_id().to_owned(),
        key.secret_access_key().to_owned(),
    );
    assert!(works(id.clone(), secret.clone()).await, "a fresh key works");
    assert!(
        !works("AKIAUNKNOWN0000000000".into(), secret.clone()).await,
        "unknown key"
    );
    assert!(
        !works(id.clone(), "wrong-secret".into()).await,
        "bad signature"
    );
    let set = |status: aws_sdk_iam::types::StatusType| {
        iam.update_access_key()
            .user_name(user)
            .access_key_id(&id)
            .status(status)
            .send()
    };
    set(aws_sdk_iam::types::StatusType::Inactive).await?;
    assert!(
        !works(id.clone(), secret.clone()).await,
        "inactive key refused"
    );
    set(aws_sdk_iam::types::StatusType::Active).await?;
    assert!(
        works(id.clone(), secret.clone()).await,
        "reactivated key works"
    );
    iam.delete_access_key()
        .user_name(user)
        .access_key_id(&id)
        .send()
        .await?;
    assert!(
        !works(id.clone(), secret.clone()).await,
        "deleted key refused"
    );
    Ok(())
}

#[tokio::test]
async fn openbao_answers_health_and_kv_v2() -> TestResult {
    let vault = TestEnv::get().vault().await?;
    let http = reqwest::Client::builder().no_proxy().build()?;
    let health: serde_json::Value = http
        .get(format!("{}/v1/sys/health", vault.addr()))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(health["initialized"], true);
    assert_eq!(health["sealed"], false);

    let url = format!("{}/v1/secret/data/capstan-testenv-selftest", vault.addr());
    http.post(&url)
        .header("X-Vault-Token", vault.root_token())
        .json(&serde_json::json!({"data": {"password": "hunter2"}}))
        .send()
        .await?
        .error_for_status()?;
    let read: serde_json::Value = http
        .get(&url)
        .header("X-Vault-Token", vault.root_token())
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(read["data"]["data"]["password"], "hunter2");

    let denied = http
        .get(&url)
        .header("X-Vault-Token", "not-the-root-token")
        .send()
        .await?;
    assert_eq!(denied.status(), reqwest::StatusCode::FORBIDDEN);
    Ok(())
}

async fn psql(
    bin_dir: &std::path::Path,
    url: &str,
    sql: &str,
) -> std::io::Result<std::process::Output> {
    tokio::process::Command::new(bin_dir.join("psql"))
        .arg(url)
        .args(["-X", "-tA", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env_remove("PGPASSWORD")
        .output()
        .await
}

#[tokio::test]
async fn postgres_accepts_the_admin_login_and_logs_statements() -> TestResult {
    let pg = TestEnv::get().postgres().await?;
    let out = psql(pg.bin_dir(), &pg.admin_url(), "select current_user").await?;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "postgres");

    let wrong = pg
        .admin_url()
        .replace(pg.admin_password(), "wrong-password");
    let out = psql(pg.bin_dir(), &wrong, "select 1").await?;
    assert!(!out.status.success(), "a wrong password must be refused");

    pg.enable_statement_logging().await?;
    assert!(pg.logs_statements());
    let marker = format!("capstan_marker_{}", std::process::id());
    let out = psql(pg.bin_dir(), &pg.admin_url(), &format!("select '{marker}'")).await?;
    assert!(out.status.success(), "{out:?}");
    let log = std::fs::read_to_string(pg.log_path())?;
    assert!(
        log.contains(&marker),
        "statement not in {}",
        pg.log_path().display()
    );
    Ok(())
}

async fn mariadb(port: u16, password: &str, sql: &str) -> std::io::Result<std::process::Output> {
    tokio::process::Command::new("mariadb")
        .args([
            "--no-defaults",
            "-h",
            "127.0.0.1",
            "-P",
            &port.to_string(),
            "-u",
            "root",
        ])
        .args(["-N", "-B", "-e", sql])
        .env("MYSQL_PWD", password)
        .output()
        .await
}

#[tokio::test]
async fn mariadb_accepts_the_admin_login() -> TestResult {
    let db = TestEnv::get().mariadb().await?;
    assert!(db.admin_url().starts_with("mysql://root:"));
    let out = mariadb(db.port(), db.admin_password(), "select current_user()").await?;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "root@%");
    let out = mariadb(db.port(), "wrong-password", "select 1").await?;
    assert!(!out.status.success(), "a wrong password must be refused");
    let out = mariadb(db.port(), "", "select 1").await?;
    assert!(!out.status.success(), "no password must be refused");
    Ok(())
}

/// Starts everything (most of it is already up from the other tests) and prints the
/// start-to-ready times: `cargo test -p capstan-testenv --test selftest -- --nocapture`.
#[tokio::test]
async fn every_service_starts_and_reports_its_start_time() -> TestResult {
    let env = TestEnv::get();
    let (k, a, v, p, m) = tokio::join!(
        env.kube(),
        env.aws(),
        env.vault(),
        env.postgres(),
        env.mariadb()
    );
    k?;
    a?;
    v?;
    p?;
    m?;
    let timings = env.timings();
    for service in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "crds",
        "moto",
        "openbao",
        "postgres",
        "mariadb",
    ] {
        assert!(
            timings.iter().any(|t| t.service == service),
            "no timing for {service}: {timings:?}"
        );
    }
    for t in &timings {
        eprintln!(
            "capstan-testenv: {:<24} ready after {:>6.2} s",
            t.service,
            t.ready_after.as_secs_f64()
        );
    }
    eprintln!(
        "capstan-testenv: every service up {:.2} s after the first test asked",
        env.age().as_secs_f64()
    );
    Ok(())
}
