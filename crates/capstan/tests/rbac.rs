//! The chart's RBAC, as installed from `helm template` into the real API server: what
//! Capstan's ServiceAccount may and may not do, asked of the API server's own authorizer
//! (SubjectAccessReview, what `kubectl auth can-i --as` asks). Every other integration
//! test runs its manager under the same rules and fails on any 403 (tests/common).

use capstan_testenv::{InstallOptions, TempNamespace, TestEnv};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Api;
use kube::api::PostParams;

/// Whether `user` may `verb` `resource` (`group/resource[/subresource]`) in `namespace`.
async fn can(client: &kube::Client, user: &str, verb: &str, resource: &str, ns: &str) -> bool {
    let (group, rest) = resource.split_once('/').unwrap_or(("", resource));
    let (resource, subresource) = match rest.split_once('/') {
        Some((r, s)) => (r, Some(s.to_owned())),
        None => (rest, None),
    };
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.to_owned()),
            groups: Some(vec![
                "system:serviceaccounts".to_owned(),
                "system:authenticated".to_owned(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                group: Some(group.to_owned()),
                resource: Some(resource.to_owned()),
                subresource,
                verb: Some(verb.to_owned()),
                namespace: (!ns.is_empty()).then(|| ns.to_owned()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("SubjectAccessReview")
        .status
        .is_some_and(|s| s.allowed)
}

/// Asserts each (verb, resource, namespace, expected) against the authorizer.
async fn expect(client: &kube::Client, user: &str, cases: &[(&str, &str, &str, bool)]) {
    let mut wrong = Vec::new();
    for &(verb, resource, ns, allowed) in cases {
        if can(client, user, verb, resource, ns).await != allowed {
            wrong.push(format!(
                "{verb} {resource} in {ns:?}: expected {}",
                if allowed { "allowed" } else { "denied" }
            ));
        }
    }
    assert!(wrong.is_empty(), "{user}:\n  {}", wrong.join("\n  "));
}

/// The default install (every namespace, every controller) grants what the code calls
/// and nothing more: no Secret list/watch/delete anywhere (`kubectl auth can-i list
/// secrets -n kube-system --as` Capstan's account says no), Jobs created, watched and
/// deleted (a superseded run's) but never changed, Pods listed but never read otherwise, status updates for
/// SecretRotation's step claims and Pipeline's run claims.
#[tokio::test]
async fn default_install_grants_what_the_code_calls_and_no_more() {
    let kube = TestEnv::get().kube().await.expect("kube");
    let own = TempNamespace::create(kube).await.expect("namespace");
    let client = kube.client().await;
    let installed = kube
        .install_capstan(&InstallOptions {
            namespace: own.name().to_owned(),
            leader_elect: true,
            ..InstallOptions::default()
        })
        .await
        .expect("install");
    let user = installed.username.as_str();
    let o = own.name();
    expect(
        &client,
        user,
        &[
            // SecretRotation's step claims: a PUT of the status subresource.
            (
                "update",
                "capstan.dev/secretrotations/status",
                "tenant",
                true,
            ),
            (
                "patch",
                "capstan.dev/secretrotations/status",
                "tenant",
                true,
            ),
            ("patch", "capstan.dev/secretrotations", "tenant", true),
            ("watch", "capstan.dev/secretrotations", "tenant", true),
            (
                "patch",
                "capstan.dev/servicescalings/status",
                "tenant",
                true,
            ),
            ("patch", "capstan.dev/pipelines/status", "tenant", true),
            ("patch", "capstan.dev/pipelines", "tenant", false),
            ("update", "capstan.dev/secretrotations", "tenant", false),
            ("delete", "capstan.dev/secretrotations", "tenant", false),
            // Secrets: read by name, written; never listed, watched or deleted.
            ("get", "secrets", "tenant", true),
            ("create", "secrets", "tenant", true),
            ("update", "secrets", "tenant", true),
            ("list", "secrets", "kube-system", false),
            ("watch", "secrets", "tenant", false),
            ("list", "secrets", "tenant", false),
            ("delete", "secrets", "tenant", false),
            ("get", "secrets", o, true),
            ("list", "secrets", o, false),
            ("watch", "secrets", o, false),
            // Workloads: restarted by SecretRotation, never watched or deleted.
            ("patch", "apps/deployments", "tenant", true),
            ("list", "apps/statefulsets", "tenant", true),
            ("watch", "apps/deployments", "tenant", false),
            ("delete", "apps/deployments", "tenant", false),
            // Pipeline Job stages: Jobs created and followed, deleted when their run is
            // superseded, never changed; a completed Job's Pod listed for its
            // termination message, never changed.
            ("create", "batch/jobs", "tenant", true),
            ("watch", "batch/jobs", "tenant", true),
            ("delete", "batch/jobs", "tenant", true),
            ("update", "batch/jobs", "tenant", false),
            ("list", "pods", "tenant", true),
            ("get", "pods", "tenant", false),
            ("delete", "pods", "tenant", false),
            ("create", "pods", "tenant", false),
            ("update", "capstan.dev/pipelines/status", "tenant", true),
            ("create", "events.k8s.io/events", "tenant", true),
            ("patch", "events.k8s.io/events", "tenant", false),
            ("watch", "namespaces", "", true),
            ("create", "coordination.k8s.io/leases", o, true),
            ("update", "coordination.k8s.io/leases", "tenant", false),
        ],
    )
    .await;
}

/// A namespace-scoped install (`watchNamespaces`) reaches Secrets only in the listed
/// namespaces; ServiceScaling and Pipeline alone get no Secrets and no workloads.
#[tokio::test]
async fn scoped_installs_reach_only_their_namespaces_and_controllers() {
    let kube = TestEnv::get().kube().await.expect("kube");
    let own = TempNamespace::create(kube).await.expect("namespace");
    let watched = TempNamespace::create(kube).await.expect("namespace");
    let client = kube.client().await;
    let scoped = kube
        .install_capstan(&InstallOptions {
            namespace: own.name().to_owned(),
            watch_namespaces: vec![watched.name().to_owned()],
            ..InstallOptions::default()
        })
        .await
        .expect("install");
    let w = watched.name();
    expect(
        &client,
        &scoped.username,
        &[
            ("get", "secrets", w, true),
            ("get", "secrets", "elsewhere", false),
            ("list", "capstan.dev/secretrotations", w, true),
            ("list", "capstan.dev/secretrotations", "elsewhere", false),
            ("update", "capstan.dev/secretrotations/status", w, true),
        ],
    )
    .await;

    let scaling_only = kube
        .install_capstan(&InstallOptions {
            namespace: own.name().to_owned(),
            controllers: vec!["service-scaling".to_owned(), "pipeline".to_owned()],
            ..InstallOptions::default()
        })
        .await
        .expect("install");
    expect(
        &client,
        &scaling_only.username,
        &[
            ("get", "secrets", "tenant", false),
            ("patch", "apps/deployments", "tenant", false),
            ("list", "apps/deployments", "tenant", false),
            ("patch", "capstan.dev/servicescalings", "tenant", true),
            ("patch", "capstan.dev/secretrotations", "tenant", false),
            ("list", "capstan.dev/secretrotations", "tenant", false),
            ("get", "secrets", own.name(), true),
            ("create", "batch/jobs", "tenant", true),
        ],
    )
    .await;

    // Without the Pipeline controller: no Jobs, no Pods.
    let rotation_only = kube
        .install_capstan(&InstallOptions {
            namespace: own.name().to_owned(),
            controllers: vec!["secret-rotation".to_owned()],
            ..InstallOptions::default()
        })
        .await
        .expect("install");
    expect(
        &client,
        &rotation_only.username,
        &[
            ("create", "batch/jobs", "tenant", false),
            ("list", "pods", "tenant", false),
            ("update", "capstan.dev/pipelines/status", "tenant", false),
        ],
    )
    .await;
}

/// The harness sees a 403: a manager whose RBAC lacks a rule it needs is caught by the
/// audit-log check every test runs on drop (here a SecretRotation-only manager that
/// also needs ServiceScalings, which the render for `--controllers secret-rotation`
/// does not grant).
#[tokio::test]
async fn a_forbidden_request_is_found_in_the_audit_log() {
    let kube = TestEnv::get().kube().await.expect("kube");
    let ns = TempNamespace::create(kube).await.expect("namespace");
    let installed = kube
        .install_capstan(&InstallOptions {
            namespace: ns.name().to_owned(),
            watch_namespaces: vec![ns.name().to_owned()],
            controllers: vec!["secret-rotation".to_owned()],
            ..InstallOptions::default()
        })
        .await
        .expect("install");
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&installed.kubeconfig_path).expect("kubeconfig"),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("config");
    let as_capstan = kube::Client::try_from(config).expect("client");
    let scalings: Api<capstan_service_scaling::crd::ServiceScaling> =
        Api::namespaced(as_capstan.clone(), ns.name());
    let err = scalings
        .list(&Default::default())
        .await
        .expect_err("service-scaling is not installed, so its kind is not granted");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 403),
        "{err}"
    );
    // What is granted works with the same token.
    Api::<capstan_secret_rotation::crd::SecretRotation>::namespaced(as_capstan, ns.name())
        .list(&Default::default())
        .await
        .expect("secret-rotation's kind is granted");
    let refused = kube.forbidden(&installed.username).expect("audit log");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].verb, "list");
    assert!(
        refused[0].uri.contains("/servicescalings"),
        "{}",
        refused[0]
    );
}

/// The chart's ClusterRoles for people are aggregated, by the real controller-manager's
/// clusterrole-aggregation controller, into Kubernetes' `view` and `edit`: a viewer reads
/// Capstan's objects and changes none; an editor changes SecretRotations, ServiceScalings
/// and Pipelines, but approves no run (the approver role is never aggregated), writes no
/// status and changes no ClusterConnection.
#[tokio::test]
async fn people_roles_are_aggregated_into_view_and_edit() {
    use k8s_openapi::api::rbac::v1::{ClusterRole, RoleBinding};
    let kube = TestEnv::get().kube().await.expect("kube");
    let ns = TempNamespace::create(kube).await.expect("namespace");
    let client = kube.client().await;
    let installed = kube
        .install_capstan(&InstallOptions {
            namespace: ns.name().to_owned(),
            leader_elect: true,
            ..InstallOptions::default()
        })
        .await
        .expect("install");
    let fullname = installed.fullname.clone();
    // The aggregation controller copies the chart's rules into view and edit.
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for (role, ours) in [("view", "view"), ("edit", "edit"), ("admin", "edit")] {
        loop {
            let aggregated = roles.get(role).await.expect("built-in role");
            let mine = roles
                .get(&format!("{fullname}-{ours}"))
                .await
                .expect("the chart's role");
            let has_all = mine
                .rules
                .iter()
                .flatten()
                .all(|r| aggregated.rules.iter().flatten().any(|a| a == r));
            if has_all {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{role} never aggregated {fullname}-{ours}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    let bind = |user: &str, role: &str| -> RoleBinding {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": format!("{user}-{role}") },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role },
            "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user }]
        }))
        .expect("binding")
    };
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), ns.name());
    for (user, role) in [("vera-viewer", "view"), ("ed-editor", "edit")] {
        bindings
            .create(&PostParams::default(), &bind(user, role))
            .await
            .expect("binding");
    }
    let n = ns.name();
    expect(
        &client,
        "vera-viewer",
        &[
            ("get", "capstan.dev/secretrotations", n, true),
            ("list", "capstan.dev/pipelines", n, true),
            ("watch", "capstan.dev/servicescalings", n, true),
            ("get", "capstan.dev/approvals", n, true),
            ("create", "capstan.dev/pipelines", n, false),
            ("patch", "capstan.dev/secretrotations", n, false),
            ("create", "capstan.dev/approvals", n, false),
        ],
    )
    .await;
    expect(
        &client,
        "ed-editor",
        &[
            ("get", "capstan.dev/pipelines", n, true),
            ("create", "capstan.dev/pipelines", n, true),
            ("patch", "capstan.dev/secretrotations", n, true),
            ("delete", "capstan.dev/servicescalings", n, true),
            ("create", "capstan.dev/approvals", n, false),
            ("update", "capstan.dev/pipelines/status", n, false),
            ("patch", "capstan.dev/secretrotations/status", n, false),
            ("create", "capstan.dev/clusterconnections", "", false),
            ("get", "capstan.dev/pipelines", "kube-system", false),
        ],
    )
    .await;
}
