//! ServiceScaling in ApplicationAutoScaling mode end to end: `capstan run` as a real
//! process against the real API server and the moto AWS emulator. Capstan declares a
//! scalable target, target-tracking policies and scheduled actions and repairs them;
//! deleting the object, or switching it to Direct mode, removes what Capstan declared
//! (and only that), and a revoked connection does not hold a deletion forever. The
//! fixture is the one of `service_scaling.rs` (tests/common/scaling.rs).

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capstan_aws::autoscaling::sdk as aas;
use capstan_core::conditions::find;
use capstan_core::connection::ClusterConnection;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

use common::scaling::*;

/// ApplicationAutoScaling mode declares the scalable target, a target-tracking policy
/// and scheduled actions, repairs them after they are changed behind its back, and
/// never writes the desired count.
#[tokio::test]
async fn application_autoscaling_mode_declares_and_repairs() {
    let f = Fixture::new("aas").await;
    f.create_service("orders", 2).await;
    let start = Timestamp::now().as_second() + 3600;
    let end = start + 7200;
    f.apply(
        "orders",
        json!({
            "mode": "ApplicationAutoScaling",
            "minReplicas": 2,
            "maxReplicas": 8,
            "schedules": [{
                "name": "sale",
                "start": rfc3339(start),
                "end": rfc3339(end),
                "minReplicas": 6
            }]
        }),
    )
    .await;
    f.await_condition("orders", "Ready", "AutoScalingDeclared")
        .await;
    let resource = format!("service/{}/orders", f.cluster);
    let ns = aas::types::ServiceNamespace::Ecs;
    let dim = aas::types::ScalableDimension::EcsServiceDesiredCount;
    let target = || async {
        f.autoscaling
            .describe_scalable_targets()
            .service_namespace(ns.clone())
            .resource_ids(&resource)
            .send()
            .await
            .expect("targets")
            .scalable_targets()
            .first()
            .map(|t| (t.min_capacity(), t.max_capacity()))
    };
    let policies = || async {
        f.autoscaling
            .describe_scaling_policies()
            .service_namespace(ns.clone())
            .resource_id(&resource)
            .send()
            .await
            .expect("policies")
            .scaling_policies()
            .iter()
            .map(|p| {
                let c = p.target_tracking_scaling_policy_configuration();
                (
                    p.policy_name().to_owned(),
                    c.map(|c| c.target_value()).unwrap_or_default(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(target().await, Some((2, 8)));
    assert_eq!(policies().await, vec![("capstan-0-cpu".to_owned(), 50.0)]);
    let actions = f
        .autoscaling
        .describe_scheduled_actions()
        .service_namespace(ns.clone())
        .resource_id(&resource)
        .send()
        .await
        .expect("actions");
    let mut got: Vec<(String, Option<i32>)> = actions
        .scheduled_actions()
        .iter()
        .map(|a| {
            (
                a.schedule().to_owned(),
                a.scalable_target_action().and_then(|t| t.min_capacity()),
            )
        })
        .collect();
    got.sort();
    let at = |t: i64| {
        let ts = Timestamp::from_second(t).expect("time");
        format!("at({})", ts.strftime("%Y-%m-%dT%H:%M:%S"))
    };
    let mut want = vec![(at(start), Some(6)), (at(end), Some(2))];
    want.sort();
    assert_eq!(got, want);

    // Behind Capstan's back: the bounds change and the policy goes.
    f.autoscaling
        .register_scalable_target()
        .service_namespace(ns.clone())
        .resource_id(&resource)
        .scalable_dimension(dim.clone())
        .min_capacity(1)
        .max_capacity(50)
        .send()
        .await
        .expect("change target");
    f.autoscaling
        .delete_scaling_policy()
        .service_namespace(ns.clone())
        .resource_id(&resource)
        .scalable_dimension(dim)
        .policy_name("capstan-0-cpu")
        .send()
        .await
        .expect("delete policy");
    let deadline = Instant::now() + TIMEOUT;
    while target().await != Some((2, 8)) || policies().await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "not repaired: {:?} {:?}\n{}",
            target().await,
            policies().await,
            f.manager.all_logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The Event follows the repair.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let events = f.events("orders").await;
        if events
            .iter()
            .any(|(r, n)| r == "AutoScalingRepaired" && n.contains("(found 1..50)"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "no repair Event: {events:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(f.aws_requests("ECS:UpdateService").await, 0);
    assert_eq!(f.service("orders").await.desired_count(), 2);
    f.cleanup().await;
}

/// Deleting a ServiceScaling in ApplicationAutoScaling mode removes the scalable target,
/// Capstan's policies and its scheduled actions; on a service where someone else also
/// has a policy and a scheduled action, those are kept, and so is the target they need
/// (AWS would delete them with it).
#[tokio::test]
async fn deleting_in_autoscaling_mode_removes_only_capstans_objects() {
    let f = Fixture::new("aas-delete").await;
    f.create_service("orders", 2).await;
    f.create_service("billing", 2).await;
    f.declare_autoscaling("orders").await;
    f.declare_autoscaling("billing").await;
    f.add_foreign_objects("billing").await;
    let declared = f.declared("orders").await;
    assert_eq!(
        declared,
        Declared {
            target: Some((2, 8)),
            policies: vec!["capstan-0-cpu".into()],
            actions: vec!["capstan-schedule-1".into(), "capstan-schedule-2".into()],
        }
    );
    let o = f.api().get("orders").await.expect("get");
    assert_eq!(
        finalizers(&o),
        vec!["capstan.dev/autoscaling-cleanup".to_owned()]
    );
    assert_eq!(
        o.metadata
            .annotations
            .unwrap_or_default()
            .get("capstan.dev/autoscaling-resource"),
        Some(&f.resource("orders"))
    );

    for name in ["orders", "billing"] {
        f.api()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }
    for name in ["orders", "billing"] {
        capstan_testenv::await_deleted(&f.api(), name, TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{name} not deleted: {e}\n{}", f.manager.all_logs()));
    }
    assert_eq!(
        f.declared("orders").await,
        Declared {
            target: None,
            policies: vec![],
            actions: vec![],
        }
    );
    assert_eq!(
        f.declared("billing").await,
        Declared {
            target: Some((2, 8)),
            policies: vec!["team-memory".into()],
            actions: vec!["team-nightly".into()],
        },
        "someone else's policy and action, and the target they use, are kept"
    );
    let note = f
        .await_event("orders", "AutoScalingRemoved", |_| true)
        .await;
    assert!(
        note.contains("deleted policies capstan-0-cpu")
            && note.contains("deregistered the scalable target"),
        "{note}"
    );
    let note = f
        .await_event("billing", "AutoScalingRemoved", |_| true)
        .await;
    assert!(
        note.contains("kept the scalable target") && note.contains("policy team-memory"),
        "{note}"
    );
    f.cleanup().await;
}

/// Switching a ServiceScaling from ApplicationAutoScaling to Direct mode removes what it
/// declared (target, policy, scheduled actions) and drops the finalizer before Direct
/// mode evaluates it.
#[tokio::test]
async fn switching_to_direct_mode_removes_the_declared_objects() {
    let mut f = Fixture::new("aas-to-direct").await;
    f.create_service("orders", 2).await;
    let load = Arc::new(Mutex::new(Some(1.0)));
    f.feed("orders", &load);
    f.declare_autoscaling("orders").await;
    f.add_foreign_objects("orders").await;
    assert_eq!(f.declared("orders").await.policies.len(), 2);
    f.apply("orders", json!({ "mode": "Direct" })).await;
    let o = f.await_condition("orders", "Ready", "Evaluated").await;
    assert!(finalizers(&o).is_empty(), "{:?}", finalizers(&o));
    assert!(
        !o.metadata
            .annotations
            .unwrap_or_default()
            .contains_key("capstan.dev/autoscaling-resource")
    );
    assert_eq!(
        f.declared("orders").await,
        Declared {
            target: Some((2, 8)),
            policies: vec!["team-memory".into()],
            actions: vec!["team-nightly".into()],
        },
        "Capstan's objects gone, someone else's kept"
    );
    f.await_event("orders", "AutoScalingRemoved", |n| {
        n.contains("deleted policies capstan-0-cpu")
    })
    .await;

    // Without anyone else's objects the target goes too.
    f.create_service("api", 2).await;
    f.declare_autoscaling("api").await;
    f.apply("api", json!({ "mode": "Direct" })).await;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = f.declared("api").await;
        if left.target.is_none() && left.policies.is_empty() && left.actions.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left after the switch: {left:?}\n{}",
            f.manager.all_logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    f.cleanup().await;
}

/// A connection that no longer allows the namespace cannot be used to clean up, and
/// does not block the deletion forever: after the cleanup timeout the object is deleted
/// with a Warning Event naming what was left in AWS, which Capstan did not touch.
#[tokio::test]
async fn a_revoked_connection_does_not_block_deletion_forever() {
    let f = Fixture::new("aas-revoked").await;
    f.create_service("orders", 2).await;
    f.declare_autoscaling("orders").await;
    let before = f.declared("orders").await;
    assert_eq!(before.policies, vec!["capstan-0-cpu".to_owned()]);
    // The administrator takes the namespace off the connection.
    Api::<ClusterConnection>::all(f.client.clone())
        .patch(
            &f.connection,
            &PatchParams::default(),
            &Patch::Merge(
                json!({ "spec": { "allowedNamespaces": { "names": ["someone-else"] } } }),
            ),
        )
        .await
        .expect("revoke the namespace");
    f.await_condition("orders", "Ready", "ConnectionNotAllowed")
        .await;
    let asked = Instant::now();
    f.api()
        .delete("orders", &DeleteParams::default())
        .await
        .expect("delete");
    let o = f
        .await_condition("orders", "Ready", "AutoScalingCleanupFailed")
        .await;
    let msg = find(&o.status.expect("status").conditions, "Ready")
        .expect("Ready")
        .message
        .clone();
    assert!(msg.contains(&f.resource("orders")), "{msg}");
    capstan_testenv::await_deleted(&f.api(), "orders", TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("not deleted: {e}\n{}", f.manager.all_logs()));
    let took = asked.elapsed();
    eprintln!("deleted {took:?} after the request (cleanup timeout {CLEANUP_TIMEOUT_SECS} s)");
    // The deadline counts from the deletion timestamp, which has whole seconds.
    assert!(
        took >= Duration::from_secs(CLEANUP_TIMEOUT_SECS - 1),
        "deleted after {took:?}, before the {CLEANUP_TIMEOUT_SECS} s cleanup timeout"
    );
    let note = f
        .await_event("orders", "AutoScalingCleanupAbandoned", |_| true)
        .await;
    for part in [
        f.resource("orders"),
        "capstan-0-cpu".to_owned(),
        "capstan-schedule-1".to_owned(),
        format!("{:?}", f.connection),
    ] {
        assert!(note.contains(&part), "{part} not in: {note}");
    }
    f.await_event("orders", "AutoScalingCleanupFailed", |n| {
        n.contains(&f.connection)
    })
    .await;
    assert_eq!(
        f.declared("orders").await,
        before,
        "nothing is removed through a connection that refuses the namespace"
    );
    f.cleanup().await;
}
