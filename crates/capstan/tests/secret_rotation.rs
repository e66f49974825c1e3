//! SecretRotation end to end: the manager as a real process against the real API server,
//! PostgreSQL and OpenBao of the test environment. Intervals are seconds; no test waits
//! minutes. Pods never run here, so tests play the Deployment controller by writing
//! Deployment status.

mod common;

use common::postgres::{logs_in, pg_setup, pg_spec};
use common::rotation::{
    await_rotations, complete_rollout, count, create, create_deployment, ready_reason, rotate_now,
    start,
};
use common::secret_data;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use capstan_core::conditions::find;
use capstan_secret_rotation::crd::SecretRotation;
use capstan_testenv::{TempNamespace, TestEnv, await_condition, await_deleted};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);

/// Kubernetes Secret backend, no target: the first rotation runs at creation, the value
/// reaches the delivered Secret, each new rotate-now token rotates exactly once, the
/// previous version is kept, and deleting the SecretRotation leaves the delivered Secret
/// (deletionPolicy Retain: no ownerReference).
#[tokio::test]
async fn kubernetes_backend_without_target_rotates_delivers_and_retains() {
    let kube = TestEnv::get().kube().await.expect("kube");
    let ns = TempNamespace::create(kube).await.expect("ns");
    let client = kube.client().await;
    let api: Api<SecretRotation> = ns.api(client.clone());
    let secrets: Api<Secret> = ns.api(client.clone());
    create(
        &api,
        json!({
            "apiVersion": "capstan.dev/v1alpha1", "kind": "SecretRotation",
            "metadata": { "name": "api-key" },
            "spec": {
                "backend": { "kubernetes": { "secretName": "api-key-store" } },
                "target": { "none": {} },
                "schedule": { "interval": "720h" },
                "delivery": { "secret": { "name": "api-key", "template": { "API_KEY": "{{ value }}" } } }
            }
        }),
    )
    .await;
    let m = start(kube, ns.name(), "sr-k8s").await;
    let first = await_rotations(&api, "api-key", 1, &m).await;
    let st = first.status.clone().expect("status");
    let v1 = st.current_version.clone().expect("current version");
    assert!(st.rotation.is_none());
    assert!(st.next_rotation_time.is_some());
    let stored = secret_data(&secrets, "api-key-store").await;
    let delivered = secret_data(&secrets, "api-key").await;
    assert_eq!(delivered["API_KEY"], stored["password"]);
    assert_eq!(delivered["API_KEY"].len(), 32);
    let delivered_obj = secrets.get("api-key").await.expect("delivered");
    assert!(
        delivered_obj
            .metadata
            .owner_references
            .unwrap_or_default()
            .is_empty(),
        "Retain: no ownerReference"
    );
    for c in ["Ready", "Delivered"] {
        let cond = find(&st.conditions, c).expect(c);
        assert_eq!(cond.status, "True", "{c}: {cond:?}");
    }
    let overdue = find(&st.conditions, "Overdue").expect("Overdue");
    assert_eq!(overdue.status, "False");

    rotate_now(&api, "api-key", "t1").await;
    let second = await_rotations(&api, "api-key", 2, &m).await;
    let st2 = second.status.clone().expect("status");
    assert_ne!(st2.current_version.as_deref(), Some(v1.as_str()));
    assert_eq!(st2.previous_version.as_deref(), Some(v1.as_str()));
    assert_eq!(st2.observed_rotate_now_token.as_deref(), Some("t1"));
    let delivered2 = secret_data(&secrets, "api-key").await;
    assert_ne!(delivered2["API_KEY"], delivered["API_KEY"]);
    assert_eq!(
        delivered2["API_KEY"],
        secret_data(&secrets, "api-key-store").await["password"]
    );

    // The same token again (a touch of the object) rotates nothing.
    api.patch(
        "api-key",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
    )
    .await
    .expect("touch");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(count(&api.get("api-key").await.expect("get")), 2);

    // Deleting the SecretRotation leaves the delivered Secret in place.
    api.delete("api-key", &DeleteParams::default())
        .await
        .expect("delete");
    await_deleted(&api, "api-key", TIMEOUT)
        .await
        .expect("deleted");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        secret_data(&secrets, "api-key").await["API_KEY"],
        delivered2["API_KEY"]
    );
}

/// A short interval rotates again by itself; suspend stops it (Rotating=False,
/// Suspended, no next time); a window that is closed holds a due rotation
/// (OutsideWindow) until it opens.
#[tokio::test]
async fn schedule_suspend_and_window() {
    let kube = TestEnv::get().kube().await.expect("kube");
    let ns = TempNamespace::create(kube).await.expect("ns");
    let client = kube.client().await;
    let api: Api<SecretRotation> = ns.api(client.clone());
    create(
        &api,
        json!({
            "apiVersion": "capstan.dev/v1alpha1", "kind": "SecretRotation",
            "metadata": { "name": "tick" },
            "spec": {
                "backend": { "kubernetes": { "secretName": "tick" } },
                "target": { "none": {} },
                "schedule": { "interval": "2s" }
            }
        }),
    )
    .await;
    let m = start(kube, ns.name(), "sr-schedule").await;
    await_rotations(&api, "tick", 3, &m).await;

    api.patch(
        "tick",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": true}})),
    )
    .await
    .expect("suspend");
    let suspended = await_condition(
        &api,
        "tick",
        |o: &SecretRotation| {
            o.status.as_ref().is_some_and(|s| {
                s.rotation.is_none()
                    && find(&s.conditions, "Rotating").is_some_and(|c| c.reason == "Suspended")
            })
        },
        TIMEOUT,
    )
    .await
    .expect("suspended");
    assert!(
        suspended
            .status
            .as_ref()
            .expect("s")
            .next_rotation_time
            .is_none()
    );
    let n = count(&suspended);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        count(&api.get("tick").await.expect("get")),
        n,
        "no rotation while suspended"
    );

    // A window that opens in two hours: the due rotation waits for it.
    // k8s-openapi's jiff: the test crate has no chrono of its own.
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let hhmm = |secs: i64| {
        k8s_openapi::jiff::Timestamp::from_second(secs)
            .expect("time")
            .strftime("%H:%M")
            .to_string()
    };
    let (ws, we) = (hhmm(now + 2 * 3600), hhmm(now + 3 * 3600));
    api.patch(
        "tick",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"spec": {"suspend": false, "schedule": {"window": {"start": ws, "end": we}}}}),
        ),
    )
    .await
    .expect("window");
    let waiting = await_condition(
        &api,
        "tick",
        |o: &SecretRotation| {
            o.status.as_ref().is_some_and(|s| {
                find(&s.conditions, "Rotating").is_some_and(|c| c.reason == "OutsideWindow")
            })
        },
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("not OutsideWindow: {e}\n{}", m.all_logs()));
    let st = waiting.status.expect("status");
    let next = st.next_rotation_time.expect("next time");
    assert!(next.timestamp() > now + 110 * 60, "{next}");
    assert_eq!(st.rotation_count, n);
    let overdue = find(&st.conditions, "Overdue").expect("Overdue");
    assert_eq!(overdue.status, "True", "due but held by the window");

    // Opening the window now lets it rotate.
    let (ws, we) = (hhmm(now - 3600), hhmm(now + 3600));
    api.patch(
        "tick",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"schedule": {"window": {"start": ws, "end": we}}}})),
    )
    .await
    .expect("open window");
    await_rotations(&api, "tick", n + 1, &m).await;
}

/// PostgreSQL, single user: after every rotation the current value logs in and the
/// previous one no longer does; the delivered Secret has every variable.
#[tokio::test]
async fn postgres_single_user_current_logs_in_previous_does_not() {
    let env = TestEnv::get();
    let kube = env.kube().await.expect("kube");
    let pg = env.postgres().await.expect("postgres");
    let ns = TempNamespace::create(kube).await.expect("ns");
    let client = kube.client().await;
    let api: Api<SecretRotation> = ns.api(client.clone());
    let secrets: Api<Secret> = ns.api(client.clone());
    let (db, user) = pg_setup(pg, &secrets, ns.name()).await;
    let mut obj = json!({
        "apiVersion": "capstan.dev/v1alpha1", "kind": "SecretRotation",
        "metadata": { "name": "db" },
        "spec": pg_spec(pg, &db, &user, json!({"singleUser": {}}))
    });
    obj["spec"]["maxAttemptsPerRotation"] = json!(3);
    create(&api, obj).await;
    let m = start(kube, ns.name(), "sr-pg-single").await;
    let mut previous: Option<String> = None;
    for n in 1..=3 {
        if n > 1 {
            rotate_now(&api, "db", &format!("t{n}")).await;
        }
        await_rotations(&api, "db", n, &m).await;
        let delivered = secret_data(&secrets, "db-app").await;
        let current = delivered["password"].clone();
        assert_eq!(delivered["username"], user);
        assert_eq!(delivered["database"], db);
        assert_eq!(delivered["port"], pg.port().to_string());
        assert!(
            logs_in(pg, &db, &user, &current),
            "rotation {n}: current logs in"
        );
        if let Some(p) = &previous {
            assert!(
                !logs_in(pg, &db, &user, p),
                "rotation {n}: previous no longer logs in"
            );
        }
        assert!(!logs_in(
            pg,
            &db,
            &user,
            &format!("initial-{}", ns.name().replace('-', "_"))
        ));
        previous = Some(current);
    }
}

/// PostgreSQL, alternating users: rotations switch between the role and its `_b` twin
/// (created by Capstan); after each, the current credential logs in and the previous
/// one still does (it is the other role, untouched until the next rotation).
#[tokio::test]
async fn postgres_alternating_users_previous_keeps_working() {
    let env = TestEnv::get();
    let kube = env.kube().await.expect("kube");
    let pg = env.postgres().await.expect("postgres");
    let ns = TempNamespace::create(kube).await.expect("ns");
    let client = kube.client().await;
    let api: Api<SecretRotation> = ns.api(client.clone());
    let secrets: Api<Secret> = ns.api(client.clone());
    let (db, user) = pg_setup(pg, &secrets, ns.name()).await;
    create(
        &api,
        json!({
            "apiVersion": "capstan.dev/v1alpha1", "kind": "SecretRotation",
            "metadata": { "name": "db" },
            "spec": pg_spec(pg, &db, &user, json!({"alternatingUsers": {}}))
        }),
    )
    .await;
    let m = start(kube, ns.name(), "sr-pg-alt").await;
    let mut previous: Option<(String, String)> = None;
    let mut users = Vec::new();
    for n in 1..=3 {
        if n > 1 {
            rotate_now(&api, "db", &format!("t{n}")).await;
        }
        let o = await_rotations(&api, "db", n, &m).await;
        let d = secret_data(&secrets, "db-app").await;
        let (u, p) = (d["username"].clone(), d["password"].clone());
        assert_eq!(
            o.status
                .as_ref()
                .and_then(|s| s.active_username.clone())
                .as_deref(),
            Some(u.as_str())
        );
        assert!(
            logs_in(pg, &db, &u, &p),
            "rotation {n}: current {u} logs in"
        );
        if let Some((pu, pp)) = &previous {
            assert_ne!(pu, &u, "users alternate");
            assert!(
                logs_in(pg, &db, pu, pp),
                "rotation {n}: previous {pu} still logs in"
            );
        }
        users.push(u.clone());
        previous = Some((u, p));
    }
    assert_eq!(users, [user.clone(), format!("{user}_b"), user.clone()]);
}

/// A reference that cannot be resolved (the admin Secret is missing) gives Ready=False
/// with a reason naming it, and nothing is stored anywhere; creating the Secret lets the
/// rotation run.
#[tokio::test]
async fn a_missing_admin_secret_is_reported_and_changes_nothing() {
    let env = TestEnv::get();
    let kube = env.kube().await.expect("kube");
    let pg = env.postgres().await.expect("postgres");
    let ns = TempNamespace::create(kube).await.expect("ns");
    let client = kube.client().await;
    let api: Api<SecretRotation> = ns.api(client.clone());
    let secrets: Api<Secret> = ns.api(client.clone());
    create(
        &api,
        json!({
            "apiVersion": "capstan.dev/v1alpha1", "kind": "SecretRotation",
            "metadata": { "name": "db" },
            "spec": pg_spec(pg, "postgres", "nobody", json!({"singleUser": {}}))
        }),
    )
    .await;
    let m = start(kube, ns.name(), "sr-missing-admin").await;
    let o = await_condition(
        &api,
        "db",
        |o: &SecretRotation| {
            ready_reason(o).is_some_and(|(s, r)| s == "False" && r == "AdminSecretUnavailable")
        },
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("not reported: {e}\n{}", m.all_logs()));
    let msg = find(&o.status.as_ref().expect("status").conditions, "Ready")
        .expect("Ready")
        .message
        .clone();
    assert!(msg.contains("pg-admin"), "{msg}");
    assert!(o.status.as_ref().expect("s").rotation.is_none());
    assert!(secrets.get_opt("db-store").await.expect("get").is_none());
    assert!(
        secrets
            .get_opt("db-store-pending")
            .await
            .expect("get")
            .is_none()
    );
}

/// Delivery restarts each named Deployment exactly once per rotation (stamped with the
/// version), waits for its rollout before the rotation is finished, the next rotation
/// waits for an unfinished rollout, and a Capstan restart restarts nothing again.
#[tokio::test]
async fn rollouts_restart_once_per_rotation_and_gate_the_next() {
    let kube = TestEnv::get().kube().await.expect("kube");
    let ns = TempNamespace::create(kube).await.expect("ns");
    let client = kube.client().await;
    let api: Api<SecretRotation> = ns.api(client.clone());
    let deployments: Api<Deployment> = ns.api(client.clone());
    for name in ["web", "worker"] {
        create_deployment(&deployments, name, json!({ "uses": "api-key" })).await;
    }
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
                    "rollouts": [
                        { "kind": "Deployment", "name": "web" },
                        { "kind": "Deployment", "selector": { "matchLabels": { "uses": "api-key" } } }
                    ],
                    "maxConcurrentRollouts": 2
                }
            }
        }),
    )
    .await;
    let mut m = start(kube, ns.name(), "sr-rollouts").await;

    let stamped = |d: &Deployment| {
        d.spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get("capstan.dev/restarted-for").cloned())
    };
    // The rotation reaches Deliver and restarts both; it is not finished yet.
    let deliver = await_condition(
        &api,
        "key",
        |o: &SecretRotation| {
            o.status.as_ref().is_some_and(|s| {
                find(&s.conditions, "Delivered").is_some_and(|c| c.reason == "DeliveryInProgress")
            })
        },
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("no delivery: {e}\n{}", m.all_logs()));
    let version = deliver
        .status
        .as_ref()
        .and_then(|s| s.current_version.clone())
        .expect("version");
    let deadline = Instant::now() + TIMEOUT;
    let mut gens = BTreeMap::new();
    for name in ["web", "worker"] {
        loop {
            let d = deployments.get(name).await.expect("get");
            if stamped(&d).as_deref() == Some(version.as_str()) {
                gens.insert(name, d.metadata.generation.unwrap_or(0));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} not restarted\n{}",
                m.all_logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // A rotate-now while the rollout is unfinished waits.
    rotate_now(&api, "key", "during-rollout").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let o = api.get("key").await.expect("get");
    let st = o.status.as_ref().expect("status");
    assert_eq!(
        st.rotation_count, 0,
        "first rotation not finished before its rollout"
    );
    assert_eq!(
        st.rotation.as_ref().map(|r| r.step),
        Some(capstan_secret_rotation::crd::RotationStep::Deliver)
    );

    // Capstan restarts while the rollout is unfinished: nothing is restarted again.
    m.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = m.child.wait().await;
    m = start(kube, ns.name(), "sr-rollouts-2").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for name in ["web", "worker"] {
        let d = deployments.get(name).await.expect("get");
        assert_eq!(
            d.metadata.generation.unwrap_or(0),
            gens[name],
            "{name} restarted twice"
        );
    }

    // Play the Deployment controller: the rollouts complete.
    for name in ["web", "worker"] {
        complete_rollout(&deployments, name).await.expect("status");
    }
    // The first rotation finishes, then the waiting rotate-now runs and restarts both once
    // more, for the new version.
    let o = await_condition(
        &api,
        "key",
        |o: &SecretRotation| {
            o.status.as_ref().is_some_and(|s| {
                s.rotation_count >= 1
                    && s.observed_rotate_now_token.as_deref() == Some("during-rollout")
                    && s.rotation.as_ref().is_some_and(|r| {
                        r.step == capstan_secret_rotation::crd::RotationStep::Deliver
                    })
            })
        },
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "second rotation did not reach delivery: {e}\n{}",
            m.all_logs()
        )
    });
    let v2 = o
        .status
        .as_ref()
        .and_then(|s| s.current_version.clone())
        .expect("v2");
    assert_ne!(v2, version);
    tokio::time::sleep(Duration::from_secs(2)).await;
    for name in ["web", "worker"] {
        let d = deployments.get(name).await.expect("get");
        assert_eq!(stamped(&d).as_deref(), Some(v2.as_str()));
        assert_eq!(
            d.metadata.generation.unwrap_or(0),
            gens[name] + 1,
            "{name}: exactly one restart for the second rotation"
        );
    }
}
