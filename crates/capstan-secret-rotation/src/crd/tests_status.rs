//! Tests of the status types and the spec's helpers: failures scrubbed of secrets by
//! construction, the bounded rotation history, step order, a status round trip that
//! holds no values, and which connection reaches which resource.

use super::tests::example_spec;
use super::*;

#[test]
fn failures_are_scrubbed_by_construction() {
    let secret = SecretValue::new("p@ss/word-canary");
    let admin = SecretValue::new("admin-canary");
    let message = format!(
        "ERROR: syntax error at or near \"p@ss/word-canary\"; url postgres://a:p%40ss%2Fword-canary@h; admin admin-canary; {}",
        "x".repeat(2000)
    );
    let f = RotationFailure::new(
        Utc::now(),
        RotationStep::SetTarget,
        "TargetUpdateFailed",
        &message,
        &[&secret, &admin],
    );
    assert!(!f.message().contains("canary"), "{}", f.message());
    assert!(f.message().contains("[redacted]"));
    assert!(f.message().len() <= FAILURE_MESSAGE_MAX_LEN);
    assert_eq!(f.reason(), "TargetUpdateFailed");
    assert_eq!(f.step(), RotationStep::SetTarget);
    let json = serde_json::to_string(&f).expect("serializes");
    assert!(!json.contains("canary"));
}

#[test]
fn scrub_cuts_on_a_character_boundary() {
    let long = "é".repeat(FAILURE_MESSAGE_MAX_LEN);
    let cut = scrub(&long, &[]);
    assert!(cut.len() <= FAILURE_MESSAGE_MAX_LEN && cut.len() >= FAILURE_MESSAGE_MAX_LEN - 1);
}

fn summary(id: usize) -> RotationSummary {
    RotationSummary {
        id: format!("r{id}"),
        trigger: RotationTrigger::Schedule,
        started: Utc::now(),
        finished: Utc::now(),
        outcome: RotationOutcome::Succeeded,
        attempts: 1,
        version: Some(format!("v{id}")),
        username: None,
        failure_reason: None,
    }
}

#[test]
fn recent_rotations_keep_the_newest_ten() {
    let mut status = SecretRotationStatus::default();
    for i in 0..15 {
        status.record_rotation(summary(i));
    }
    assert_eq!(status.recent_rotations.len(), RECENT_ROTATIONS_LIMIT);
    assert_eq!(status.recent_rotations[0].id, "r14");
    assert_eq!(status.recent_rotations[9].id, "r5");
}

#[test]
fn steps_run_in_aws_order() {
    let mut step = Some(RotationStep::CreatePending);
    let mut seen = Vec::new();
    while let Some(s) = step {
        seen.push(s.as_str());
        step = s.next();
    }
    assert_eq!(
        seen,
        [
            "CreatePending",
            "SetTarget",
            "TestTarget",
            "Finish",
            "Deliver"
        ]
    );
}

#[test]
fn status_round_trips_and_holds_no_values() {
    let mut status = SecretRotationStatus {
        observed_generation: Some(4),
        backend: Some(BackendKind::Vault),
        target: Some(TargetKind::Postgres),
        rotation: Some(RotationInProgress {
            id: "rot-1".into(),
            trigger: RotationTrigger::RotateNow,
            rotate_now_token: Some("t1".into()),
            started: Utc::now(),
            attempt: 2,
            step: RotationStep::TestTarget,
            pending_version: Some("7".into()),
            username: Some("app_b".into()),
            preexisting: None,
            lease: None,
        }),
        current_version: Some("6".into()),
        previous_version: Some("5".into()),
        active_username: Some("app".into()),
        rotation_count: 6,
        observed_rotate_now_token: Some("t0".into()),
        ..SecretRotationStatus::default()
    };
    status.record_rotation(summary(1));
    let json = serde_json::to_value(&status).expect("serializes");
    assert_eq!(json["backend"], "vault");
    assert_eq!(json["target"], "postgres");
    assert_eq!(json["rotation"]["step"], "TestTarget");
    let back: SecretRotationStatus = serde_json::from_value(json).expect("deserializes");
    assert_eq!(back, status);
    assert_eq!(back.current_step(), Some(RotationStep::TestTarget));
}

#[test]
fn spec_helpers() {
    let spec = example_spec();
    assert_eq!(
        spec.alternating_usernames(),
        Some(("app".into(), "app_b".into()))
    );
    assert_eq!(
        spec.ecs_connection().map(|c| c.name.as_str()),
        Some("aws-prod")
    );
    assert_eq!(spec.backend.kind().as_str(), "awsSecretsManager");
    assert_eq!(spec.target.kind().as_str(), "postgres");
    let k8s = KubernetesBackend {
        secret_name: "db".into(),
        key: "password".into(),
        pending_secret_name: None,
    };
    assert_eq!(k8s.effective_pending_secret_name(), "db-pending");
}

/// What a spec reaches through each connection, for the connections' scopes: the
/// backend through `connectionRef`, ECS services through the connection that serves them
/// (listed with the backend's when it is the same one), nothing for the Kubernetes
/// backend.
#[test]
fn scoped_resources_follow_the_connection_that_reaches_them() {
    use capstan_core::scope::ScopedResource as R;
    let ecs = |c: &str, s: &str| R::EcsService {
        cluster: c.into(),
        service: s.into(),
    };
    let mut spec = example_spec();
    spec.delivery = None;
    assert_eq!(
        spec.scoped_resources(),
        vec![R::SecretsManagerSecret("shop/orders-db".into())]
    );
    // ECS through connectionRef: checked together with the backend.
    spec.delivery = Some(Delivery {
        ecs_services: vec![EcsService {
            cluster: "shop".into(),
            service: "web".into(),
        }],
        ..Delivery::default()
    });
    assert_eq!(
        spec.scoped_resources(),
        vec![
            R::SecretsManagerSecret("shop/orders-db".into()),
            ecs("shop", "web")
        ]
    );
    assert_eq!(spec.ecs_scoped_resources(), vec![ecs("shop", "web")]);
    // Through another connection: only there.
    if let Some(d) = spec.delivery.as_mut() {
        d.ecs_connection_ref = Some(ConnectionRef {
            name: "ecs-prod".into(),
        });
    }
    assert_eq!(
        spec.scoped_resources(),
        vec![R::SecretsManagerSecret("shop/orders-db".into())]
    );
    assert_eq!(spec.ecs_scoped_resources(), vec![ecs("shop", "web")]);
    // Vault: path, and an explicit pending path.
    spec.backend = Backend::Vault(VaultBackend {
        mount: "secret".into(),
        path: "shop/db".into(),
        pending_path: Some("staging/shop/db".into()),
    });
    let kv = |p: &str| R::VaultKv {
        mount: "secret".into(),
        path: p.into(),
    };
    assert_eq!(
        spec.scoped_resources(),
        vec![kv("shop/db"), kv("staging/shop/db")]
    );
    spec.backend = Backend::Kubernetes(KubernetesBackend {
        secret_name: "db".into(),
        key: "password".into(),
        pending_secret_name: None,
    });
    spec.connection_ref = None;
    assert!(spec.scoped_resources().is_empty());
}
