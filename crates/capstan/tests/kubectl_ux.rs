//! What a kubectl user sees, against the real API server and the manager as a process:
//! the README's rotate-now-then-wait command waits for the rotation it asked for; the
//! printer columns
//! as the API server's table shows them; a bad rollout selector is refused at admission
//! with its field path; a deleted SecretRotation leaves the overdue gauge; a rotation
//! far past its usual time shows as stuck. The Warning Events are in
//! `kubectl_warnings.rs`.

mod common;

use common::rotation::{complete_rollout, create, create_deployment};
use common::ux::{ready, start};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use capstan_core::conditions::find;
use capstan_secret_rotation::crd::SecretRotation;
use capstan_service_scaling::crd::ServiceScaling;
use capstan_testenv::{TempNamespace, TestEnv, await_condition};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(60);

fn kubectl() -> Option<std::path::PathBuf> {
    let out = std::process::Command::new("which")
        .arg("kubectl")
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().into())
        .filter(|p: &std::path::PathBuf| !p.as_os_str().is_empty())
}

/// The README's command: annotate with a new token, then
/// `kubectl wait --for=jsonpath='{.status.completedRotateNowToken}'=<token>`. It must
/// not return before that rotation has finished: a new credential, current and
/// delivered (here: the Deployment's rollout, which the test holds back for a while).
/// The old advice, `kubectl wait --for=condition=Ready`, returns at once. Runs the real
/// kubectl when there is one, and always the same wait through the API (a watch until
/// the field holds the token).
#[tokio::test]
async fn rotate_now_then_wait_returns_only_once_that_rotation_is_delivered() {
    let kube = TestEnv::get().kube().await.expect("kube");
    let ns = TempNamespace::create(kube).await.expect("ns");
    let client = kube.client().await;
    let api: Api<SecretRotation> = ns.api(client.clone());
    let deployments: Api<Deployment> = ns.api(client.clone());
    let secrets: Api<Secret> = ns.api(client.clone());
    create_deployment(&deployments, "web", json!({})).await;
    // The test plays the Deployment controller, only while `roll` is set.
    let roll = Arc::new(AtomicBool::new(true));
    let player = {
        let roll = roll.clone();
        let deployments = deployments.clone();
        tokio::spawn(async move {
            loop {
                if roll.load(Ordering::SeqCst) {
                    let _ = complete_rollout(&deployments, "web").await;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    create(
        &api,
        json!({
            "apiVersion": "capstan.dev/v1alpha1", "kind": "SecretRotation",
            "metadata": { "name": "key" },
            "spec": {
                "backend": { "kubernetes": { "secretName": "key-store" } },
                "target": { "none": {} },
                "strategy": { "singleUser": { "acceptLoginFailuresUntilRestart": true } },
                "schedule": { "interval": "720h" },
                "delivery": {
                    "secret": { "name": "key", "template": { "API_KEY": "{{ value }}" } },
                    "rollouts": [{ "kind": "Deployment", "name": "web" }]
                }
            }
        }),
    )
    .await;
    let m = start(kube, ns.name(), "ux-wait", "secret-rotation").await;
    let rotated = |n: i64| {
        move |o: &SecretRotation| {
            o.status.as_ref().is_some_and(|s| {
                s.rotation_count >= n
                    && find(&s.conditions, "Ready").is_some_and(|c| c.status == "True")
            })
        }
    };
    let first = await_condition(&api, "key", rotated(1), TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("no first rotation: {e}\n{}", m.all_logs()));
    let v1 = first
        .status
        .and_then(|s| s.current_version)
        .expect("version");

    // Hold the rollout back, then ask for a rotation and wait for it.
    roll.store(false, Ordering::SeqCst);
    let token = format!("t{}", std::process::id());
    api.patch(
        "key",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"capstan.dev/rotate-now": token}}})),
    )
    .await
    .expect("annotate");
    let started = Instant::now();
    let by_api = {
        let api = api.clone();
        let token = token.clone();
        tokio::spawn(async move {
            await_condition(
                &api,
                "key",
                move |o: &SecretRotation| {
                    o.status
                        .as_ref()
                        .and_then(|s| s.completed_rotate_now_token.as_deref())
                        == Some(token.as_str())
                },
                Duration::from_secs(120),
            )
            .await
            .map(|o| (o, Instant::now()))
        })
    };
    let kubeconfig = kube.kubeconfig_path().to_owned();
    let nsn = ns.name().to_owned();
    let kubectl_wait = |bin: std::path::PathBuf, for_: String, timeout: &str| {
        let mut cmd = tokio::process::Command::new(bin);
        cmd.env("KUBECONFIG", &kubeconfig)
            .args(["-n", &nsn, "wait", "srot/key", &format!("--for={for_}")])
            .arg(format!("--timeout={timeout}"))
            .kill_on_drop(true);
        tokio::spawn(async move {
            let out = cmd.output().await.expect("kubectl");
            (out, Instant::now())
        })
    };
    let by_kubectl = kubectl().map(|bin| {
        // The documented command, as the shell passes it.
        let documented = kubectl_wait(
            bin.clone(),
            format!("jsonpath={{.status.completedRotateNowToken}}={token}"),
            "120s",
        );
        // The old advice returns at once: Ready stays True during the rotation.
        let old = kubectl_wait(bin, "condition=Ready".into(), "30s");
        (documented, old)
    });

    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        !by_api.is_finished(),
        "the wait returned before the rollout finished"
    );
    let during = api.get("key").await.expect("get");
    let st = during.status.as_ref().expect("status");
    assert!(
        st.rotation.is_some(),
        "the rotation is still in progress: {st:?}\n{}",
        m.all_logs()
    );
    assert_eq!(
        find(&st.conditions, "Delivered").map(|c| c.reason.as_str()),
        Some("DeliveryInProgress")
    );
    if let Some((documented, old)) = &by_kubectl {
        assert!(!documented.is_finished(), "kubectl wait returned early");
        assert!(
            old.is_finished(),
            "the old advice is expected to return at once"
        );
    }

    roll.store(true, Ordering::SeqCst);
    let (done, returned) = by_api.await.expect("join").expect("the API wait returned");
    let finished = returned.duration_since(started);
    let st = done.status.clone().expect("status");
    let current = st.current_version.clone().expect("current");
    assert_ne!(current, v1, "a new credential");
    assert!(st.rotation.is_none(), "the rotation is over: {st:?}");
    for c in ["Ready", "Delivered"] {
        assert_eq!(
            find(&st.conditions, c).map(|c| c.status.as_str()),
            Some("True"),
            "{c}"
        );
    }
    let stored = common::secret_data(&secrets, "key-store").await;
    let delivered = common::secret_data(&secrets, "key").await;
    assert_eq!(delivered["API_KEY"], stored["password"], "delivered");
    let d = deployments.get("web").await.expect("web");
    let stamp = d
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.annotations)
        .and_then(|a| a.get("capstan.dev/restarted-for").cloned());
    assert_eq!(stamp.as_deref(), Some(current.as_str()));

    if let Some((documented, old)) = by_kubectl {
        let (out, at) = documented.await.expect("join");
        assert!(
            out.status.success(),
            "kubectl wait failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            at.duration_since(started) >= Duration::from_secs(5),
            "kubectl wait returned after {:?}, before the rollout was released",
            at.duration_since(started)
        );
        let (out, at) = old.await.expect("join");
        assert!(out.status.success());
        assert!(at.duration_since(started) < Duration::from_secs(5));
    }
    assert!(finished >= Duration::from_secs(5));
    player.abort();
}

/// What `kubectl get` prints is the API server's table: SecretRotation shows Ready's
/// reason and message and a next rotation in whole seconds; ServiceScaling shows Ready.
#[tokio::test]
async fn the_api_servers_table_shows_reason_message_and_a_readable_next_rotation() {
    let kube = TestEnv::get().kube().await.expect("kube");
    let ns = TempNamespace::create(kube).await.expect("ns");
    let client = kube.client().await;
    let api: Api<SecretRotation> = ns.api(client.clone());
    create(
        &api,
        json!({
            "apiVersion": "capstan.dev/v1alpha1", "kind": "SecretRotation",
            "metadata": { "name": "key" },
            "spec": {
                "backend": { "kubernetes": { "secretName": "store" } },
                "target": { "none": {} },
                "schedule": { "interval": "720h" }
            }
        }),
    )
    .await;
    let m = start(
        kube,
        ns.name(),
        "ux-table",
        "secret-rotation,service-scaling",
    )
    .await;
    await_condition(
        &api,
        "key",
        |o: &SecretRotation| {
            ready(o.status.as_ref().map(|s| &s.conditions)).is_some_and(|(s, _, _)| s == "True")
        },
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("not rotated: {e}\n{}", m.all_logs()));
    let scalings: Api<ServiceScaling> = ns.api(client.clone());
    create(
        &scalings,
        json!({
            "apiVersion": "capstan.dev/v1alpha1", "kind": "ServiceScaling",
            "metadata": { "name": "web" },
            "spec": {
                "connectionRef": { "name": "no-such-connection" },
                "service": { "cluster": "c", "service": "s" },
                "maxReplicas": 2,
                "metrics": [{ "cpuUtilization": { "targetPercent": 50 } }]
            }
        }),
    )
    .await;
    await_condition(
        &scalings,
        "web",
        |o: &ServiceScaling| ready(o.status.as_ref().map(|s| &s.conditions)).is_some(),
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("no status: {e}\n{}", m.all_logs()));

    let row = table_row(&client, ns.name(), "secretrotations").await;
    assert_eq!(row["Ready"], "True", "{row:?}");
    assert_eq!(row["Reason"], "CredentialCurrent", "{row:?}");
    assert_eq!(row["Rotating"], "Idle", "{row:?}");
    assert!(
        row["Message"]
            .as_str()
            .is_some_and(|m| m.contains("is current")),
        "{row:?}"
    );
    let next = row["Next rotation"]
        .as_str()
        .expect("next rotation")
        .to_owned();
    assert_eq!(
        next.len(),
        "2026-12-03T09:40:13Z".len(),
        "whole seconds: {next}"
    );
    assert!(
        chrono::DateTime::parse_from_rfc3339(&next).is_ok_and(|t| t > chrono::Utc::now()),
        "{next}"
    );
    let row = table_row(&client, ns.name(), "servicescalings").await;
    assert_eq!(row["Ready"], "False", "{row:?}");
    assert_eq!(row["Reason"], "ConnectionNotFound", "{row:?}");
}

/// A rollout selector that does not say exactly what it means is refused at admission,
/// with the field path (the controller's own refusal, for objects stored before these
/// rules, is unit-tested in delivery.rs and validation.rs).
#[tokio::test]
async fn a_bad_rollout_selector_is_refused_at_admission() {
    let kube = TestEnv::get().kube().await.expect("kube");
    let ns = TempNamespace::create(kube).await.expect("ns");
    let client = kube.client().await;
    let api: Api<SecretRotation> = ns.api(client.clone());
    let with_selector = |name: &str, selector: Value| -> SecretRotation {
        serde_json::from_value(json!({
            "apiVersion": "capstan.dev/v1alpha1", "kind": "SecretRotation",
            "metadata": { "name": name },
            "spec": {
                "backend": { "kubernetes": { "secretName": "store" } },
                "target": { "none": {} },
                "strategy": { "singleUser": { "acceptLoginFailuresUntilRestart": true } },
                "schedule": { "interval": "720h" },
                "delivery": { "rollouts": [{ "kind": "Deployment", "selector": selector }] }
            }
        }))
        .expect("object")
    };
    let path = "spec.delivery.rollouts[0].selector";
    let cases = [
        (
            json!({ "matchLabels": { "app": "web" },
                    "matchExpressions": [{ "key": "tier", "operator": "Equals", "values": ["db"] }] }),
            format!("{path}.matchExpressions[0].operator"),
            "Unsupported value",
        ),
        (
            json!({ "matchExpressions": [{ "key": "tier", "operator": "In" }] }),
            format!("{path}.matchExpressions[0].values"),
            "In and NotIn need at least one value",
        ),
        (
            json!({ "matchExpressions": [{ "key": "tier", "operator": "Exists", "values": ["x"] }] }),
            format!("{path}.matchExpressions[0].values"),
            "Exists and DoesNotExist take no values",
        ),
        (
            json!({ "matchLabels": {} }),
            path.to_owned(),
            "an empty selector",
        ),
    ];
    for (i, (selector, field, want)) in cases.into_iter().enumerate() {
        match api
            .create(
                &PostParams::default(),
                &with_selector(&format!("bad-{i}"), selector),
            )
            .await
        {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 422, "{s:?}");
                assert!(s.message.contains(&field), "{field} not in {}", s.message);
                assert!(s.message.contains(want), "{want} not in {}", s.message);
            }
            other => panic!("case {i} accepted or failed otherwise: {other:?}"),
        }
    }
    api.create(
        &PostParams::default(),
        &with_selector(
            "good",
            json!({ "matchLabels": { "app": "web" },
                    "matchExpressions": [{ "key": "tier", "operator": "NotIn", "values": ["db"] },
                                         { "key": "canary", "operator": "DoesNotExist" }] }),
        ),
    )
    .await
    .expect("a valid selector is accepted");
}

/// An overdue SecretRotation counts in `capstan_secret_rotation_objects_overdue`; once
/// deleted, it no longer does (before, it stayed until Capstan restarted).
#[tokio::test]
async fn a_deleted_rotation_leaves_the_overdue_gauge() {
    let kube = TestEnv::get().kube().await.expect("kube");
    let ns = TempNamespace::create(kube).await.expect("ns");
    let client = kube.client().await;
    let api: Api<SecretRotation> = ns.api(client.clone());
    create(
        &api,
        json!({
            "apiVersion": "capstan.dev/v1alpha1", "kind": "SecretRotation",
            "metadata": { "name": "db" },
            "spec": {
                "backend": { "kubernetes": { "secretName": "db-store" } },
                // The admin Secret is missing: the first rotation, due at creation,
                // cannot start, so the object is overdue at once.
                "target": { "postgres": {
                    "host": "127.0.0.1", "port": 5432, "database": "app", "sslMode": "disable",
                    "username": "app", "adminSecretRef": { "name": "pg-admin" } } },
                "strategy": { "singleUser": {} },
                "schedule": { "interval": "720h" }
            }
        }),
    )
    .await;
    let m = start(kube, ns.name(), "ux-overdue", "secret-rotation").await;
    await_gauge(&m, "capstan_secret_rotation_objects_overdue 1").await;
    api.delete("db", &DeleteParams::default())
        .await
        .expect("delete");
    await_gauge(&m, "capstan_secret_rotation_objects_overdue 0").await;
}

/// The first row of `kubectl get <plural>` in `ns`, as the API server's Table gives
/// it, by column name.
async fn table_row(
    client: &kube::Client,
    ns: &str,
    plural: &str,
) -> std::collections::BTreeMap<String, Value> {
    let url = format!("/apis/capstan.dev/v1alpha1/namespaces/{ns}/{plural}");
    let req = http::Request::get(url)
        .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
        .body(Vec::new())
        .expect("request");
    let text = client.request_text(req).await.expect("table");
    let v: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["kind"], "Table", "{v}");
    let names: Vec<String> = v["columnDefinitions"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| c["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    let cells = v["rows"][0]["cells"].as_array().expect("row").clone();
    names.into_iter().zip(cells).collect()
}

/// Polls `/metrics` until the gauge `want` names has the line `want`.
async fn await_gauge(m: &common::Manager, want: &str) {
    let name = want.split(' ').next().unwrap_or_default();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (_, body) = m.get("/metrics").await;
        let got = body
            .lines()
            .find(|l| l.split(' ').next() == Some(name))
            .map(str::to_owned);
        if got.as_deref() == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "gauge {got:?}, want {want:?}\n{}",
            m.all_logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A rotation in progress far longer than usual (here: its rollout never completes,
/// with `--rotation-stuck-after=2`) shows in `kubectl get` (the Rotating column says
/// RotationStuck, with the step in the message) and in
/// `capstan_secret_rotation_objects_stuck`; Ready stays what the current credential
/// is. Once the rollout completes (the test plays the Deployment controller), both
/// clear.
#[tokio::test]
async fn a_rotation_far_past_its_usual_time_shows_as_stuck() {
    let kube = TestEnv::get().kube().await.expect("kube");
    let ns = TempNamespace::create(kube).await.expect("ns");
    let client = kube.client().await;
    let api: Api<SecretRotation> = ns.api(client.clone());
    let deployments: Api<Deployment> = ns.api(client.clone());
    create_deployment(&deployments, "web", json!({})).await;
    create(
        &api,
        json!({
            "apiVersion": "capstan.dev/v1alpha1", "kind": "SecretRotation",
            "metadata": { "name": "key" },
            "spec": {
                "backend": { "kubernetes": { "secretName": "key-store" } },
                "target": { "none": {} },
                "strategy": { "singleUser": { "acceptLoginFailuresUntilRestart": true } },
                "schedule": { "interval": "720h" },
                "delivery": {
                    "secret": { "name": "key" },
                    "rollouts": [{ "kind": "Deployment", "name": "web" }]
                }
            }
        }),
    )
    .await;
    let args = [
        "--leader-elect=false",
        "--namespaces",
        ns.name(),
        "--own-namespace",
        ns.name(),
        "--controllers",
        "secret-rotation",
        "--rotation-stuck-after",
        "2",
    ];
    let m = common::start(kube, "ux-stuck", &args).await;
    let rotating = |o: &SecretRotation| {
        o.status
            .as_ref()
            .and_then(|s| find(&s.conditions, "Rotating"))
            .map(|c| (c.reason.clone(), c.message.clone()))
    };
    let o = await_condition(
        &api,
        "key",
        |o: &SecretRotation| rotating(o).is_some_and(|(r, _)| r == "RotationStuck"),
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("never stuck: {e}\n{}", m.all_logs()));
    let (_, message) = rotating(&o).expect("Rotating");
    assert!(message.contains("step Deliver"), "{message}");
    await_gauge(&m, "capstan_secret_rotation_objects_stuck 1").await;
    // `kubectl get`'s table, from the API server.
    let row = table_row(&client, ns.name(), "secretrotations").await;
    assert_eq!(row["Rotating"], "RotationStuck", "{row:?}");
    assert_eq!(row["Step"], "Deliver", "{row:?}");

    // Play the Deployment controller: the rollout completes, the rotation finishes.
    complete_rollout(&deployments, "web").await.expect("status");
    await_condition(
        &api,
        "key",
        |o: &SecretRotation| rotating(o).is_some_and(|(r, _)| r == "Idle"),
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("still stuck: {e}\n{}", m.all_logs()));
    await_gauge(&m, "capstan_secret_rotation_objects_stuck 0").await;
}
