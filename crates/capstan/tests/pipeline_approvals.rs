//! Approvals on the real API server, with the ValidatingAdmissionPolicy and binding the
//! chart installs, and people played by impersonation (each bound to the chart's
//! approver ClusterRole in the test namespace):
//!
//! - alice (group release-managers) approves in her own name: the run goes on, and the
//!   approval is recorded in the stage's status, an Event and an audit line;
//! - bob approving in alice's name is refused at admission, and so is carol claiming a
//!   group she is not in, and any change to an Approval's spec;
//! - dave, whom the stage does not list, approves: void, the run keeps waiting;
//! - an Approval of another run is void;
//! - a rejection fails the stage;
//! - with the policy binding deleted, alice's Approval is not honoured and the run
//!   reports `ApprovalPolicyMissing`;
//! - the chart's policy holds the rules Capstan checks for.

mod common;

use common::pipeline::{Setup, args, condition, job_stage, pipeline, status_until};

use std::sync::Arc;
use std::time::{Duration, Instant};

use capstan_pipeline::approval::{Approval, ApprovalPhase, POLICY_VALIDATIONS};
use capstan_pipeline::crd::{Decision, PipelinePhase, StagePhase};
use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicyBinding;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(60);

/// A client acting as `user` in `groups` (impersonated by the admin).
fn as_user(kube: &capstan_testenv::Kube, user: &str, groups: &[&str]) -> kube::Client {
    let mut config = kube.config();
    config.auth_info.impersonate = Some(user.to_owned());
    config.auth_info.impersonate_groups = Some(groups.iter().map(|g| (*g).to_owned()).collect());
    kube::Client::try_from(config).expect("impersonating client")
}

fn approval(
    name: &str,
    pipeline: &str,
    run: &str,
    decision: &str,
    user: &str,
    groups: &[&str],
) -> Approval {
    serde_json::from_value(json!({
        "apiVersion": "capstan.dev/v1alpha1", "kind": "Approval",
        "metadata": { "name": name },
        "spec": {
            "pipeline": pipeline, "runId": run, "stage": "approve",
            "decision": decision,
            "approver": { "username": user, "groups": groups },
            "comment": "checked the staging dashboards"
        }
    }))
    .expect("approval")
}

/// test, approve (release-managers or alice), ship.
fn approved_pipeline(name: &str) -> Value {
    pipeline(
        name,
        "1.0",
        vec![
            job_stage("test", "Test", json!({ "image": "busybox" })),
            json!({
                "name": "approve", "type": "Approval",
                "approval": {
                    "approvers": { "users": ["alice"], "groups": ["release-managers"] },
                    "timeout": "10m"
                }
            }),
            job_stage("ship", "Build", json!({ "image": "busybox" })),
        ],
    )
}

async fn phase_of(api: &Api<Approval>, name: &str) -> Option<ApprovalPhase> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = api.get(name).await.expect("approval");
        if let Some(p) = a.status.as_ref().and_then(|s| s.phase) {
            return Some(p);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates [`approved_pipeline`] `name` and waits until its run waits at the Approval
/// stage; returns the run id.
async fn start_and_await_approval(
    api: &Api<capstan_pipeline::crd::Pipeline>,
    name: &str,
    m: &common::Manager,
) -> String {
    common::rotation::create(api, approved_pipeline(name)).await;
    let st = status_until(api, name, m, "waiting for approval", |s| {
        s.stages
            .iter()
            .any(|x| x.name == "approve" && x.phase == StagePhase::Running)
    })
    .await;
    st.run_id.expect("run")
}

fn refusal(r: Result<Approval, kube::Error>) -> String {
    match r {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 422, "{e:?}");
            e.message
        }
        other => panic!("expected a refusal at admission, got {other:?}"),
    }
}

#[tokio::test]
async fn approvals_are_verified_at_admission_and_honoured_only_under_the_policy() {
    let t = Setup::new().await;
    let (kube, ns, api) = (t.kube, &t.ns, t.api.clone());
    t.play(Arc::new(|_: &str, _: &_| Some((0, String::new()))));
    let m = common::start(kube, "pipeline-approvals", &args(ns.name())).await;
    let fullname = m.installation.fullname.clone();
    // The people: bound to the chart's approver ClusterRole in this namespace.
    let subjects: Vec<Value> = ["alice", "bob", "carol", "dave"]
        .iter()
        .map(|u| json!({ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": u }))
        .collect();
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": "approvers" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("{fullname}-approver") },
        "subjects": subjects
    }))
    .expect("binding");
    ns.api::<k8s_openapi::api::rbac::v1::RoleBinding>(t.client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .expect("approver binding");
    let approvals_as = |user: &str, groups: &[&str]| -> Api<Approval> {
        Api::namespaced(as_user(kube, user, groups), ns.name())
    };
    let alice = approvals_as("alice", &["release-managers"]);
    let bob = approvals_as("bob", &[]);
    let carol = approvals_as("carol", &["developers"]);
    let dave = approvals_as("dave", &["developers"]);
    let admin: Api<Approval> = ns.api(t.client.clone());
    // The admission policy takes effect a moment after it is created.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let run = start_and_await_approval(&api, "shop", &m).await;
    let o = api.get("shop").await.expect("pipeline");
    assert_eq!(
        condition(&o, "AwaitingApproval").map(|c| (c.0, c.1)),
        Some(("True".into(), "WaitingForApproval".into()))
    );

    // Refused at admission: another's name, a group one is not in.
    let why = refusal(
        bob.create(
            &PostParams::default(),
            &approval("forged", "shop", &run, "Approve", "alice", &[]),
        )
        .await,
    );
    assert!(why.contains("must be your own username"), "{why}");
    let why = refusal(
        carol
            .create(
                &PostParams::default(),
                &approval(
                    "claimed",
                    "shop",
                    &run,
                    "Approve",
                    "carol",
                    &["release-managers"],
                ),
            )
            .await,
    );
    assert!(why.contains("only groups you are in"), "{why}");

    // Not a listed approver: void, the run keeps waiting.
    dave.create(
        &PostParams::default(),
        &approval("by-dave", "shop", &run, "Approve", "dave", &["developers"]),
    )
    .await
    .expect("dave may create one");
    assert_eq!(phase_of(&admin, "by-dave").await, Some(ApprovalPhase::Void));
    // Another run: void.
    alice
        .create(
            &PostParams::default(),
            &approval("old-run", "shop", "shop-0", "Approve", "alice", &[]),
        )
        .await
        .expect("alice");
    assert_eq!(phase_of(&admin, "old-run").await, Some(ApprovalPhase::Void));
    let st = api
        .get("shop")
        .await
        .expect("pipeline")
        .status
        .expect("status");
    assert!(
        st.stages
            .iter()
            .any(|x| x.name == "approve" && x.phase == StagePhase::Running)
    );

    // alice approves in her own name: the run goes on.
    alice
        .create(
            &PostParams::default(),
            &approval(
                "by-alice",
                "shop",
                &run,
                "Approve",
                "alice",
                &["release-managers"],
            ),
        )
        .await
        .expect("alice approves");
    let st = status_until(&api, "shop", &m, "run succeeds after approval", |s| {
        s.phase == Some(PipelinePhase::Succeeded)
    })
    .await;
    assert_eq!(
        phase_of(&admin, "by-alice").await,
        Some(ApprovalPhase::Honoured)
    );
    let record = st
        .stages
        .iter()
        .find(|x| x.name == "approve")
        .and_then(|x| x.approval.clone())
        .expect("recorded");
    assert_eq!(record.username, "alice");
    assert_eq!(record.groups, ["release-managers"]);
    assert_eq!(record.decision, Decision::Approve);
    assert!(
        t.event_reasons("shop")
            .await
            .iter()
            .any(|r| r == "Approved")
    );
    assert!(
        m.logged("\"target\":\"capstan::audit\"") && m.logged("\"approver\":\"alice\""),
        "an audit line for the approval:\n{}",
        m.all_logs()
    );
    // An Approval's spec never changes, even for a cluster admin.
    let why = match admin
        .patch(
            "by-alice",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "decision": "Reject" } })),
        )
        .await
    {
        Err(kube::Error::Api(e)) => e.message,
        other => panic!("a change to an Approval was accepted: {other:?}"),
    };
    assert!(why.contains("cannot change"), "{why}");

    // A rejection fails the stage; the next stage never runs.
    let run = start_and_await_approval(&api, "rejected", &m).await;
    alice
        .create(
            &PostParams::default(),
            &approval("no", "rejected", &run, "Reject", "alice", &[]),
        )
        .await
        .expect("alice rejects");
    let st = status_until(&api, "rejected", &m, "rejected", |s| {
        s.phase == Some(PipelinePhase::Failed)
    })
    .await;
    let approve = st
        .stages
        .iter()
        .find(|x| x.name == "approve")
        .expect("stage");
    assert!(
        approve
            .message
            .as_deref()
            .is_some_and(|m| m.contains("rejected by alice")),
        "{approve:?}"
    );
    assert_eq!(st.stages[2].phase, StagePhase::Skipped);

    // Without the policy's binding, no Approval is honoured.
    Api::<ValidatingAdmissionPolicyBinding>::all(t.client.clone())
        .delete(&format!("{fullname}-approvals"), &DeleteParams::default())
        .await
        .expect("delete binding");
    let run = start_and_await_approval(&api, "unguarded", &m).await;
    // The API server may enforce the deleted binding for a moment longer.
    tokio::time::sleep(Duration::from_secs(2)).await;
    alice
        .create(
            &PostParams::default(),
            &approval("unverified", "unguarded", &run, "Approve", "alice", &[]),
        )
        .await
        .expect("accepted: no policy checks it now");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let o = api.get("unguarded").await.expect("pipeline");
        if condition(&o, "AwaitingApproval").is_some_and(|c| c.1 == "ApprovalPolicyMissing") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no ApprovalPolicyMissing:\n{}",
            m.all_logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let st = api
        .get("unguarded")
        .await
        .expect("pipeline")
        .status
        .expect("status");
    assert!(
        st.stages
            .iter()
            .any(|x| x.name == "approve" && x.phase == StagePhase::Running && x.approval.is_none()),
        "an Approval was honoured without the policy: {st:?}"
    );
    let unverified = admin.get("unverified").await.expect("approval");
    assert!(
        unverified.status.as_ref().and_then(|s| s.phase) != Some(ApprovalPhase::Honoured),
        "{unverified:?}"
    );
    m.assert_no_forbidden();
}

/// The chart's policy holds exactly the rules the controller checks for.
#[test]
fn the_charts_policy_holds_the_rules_capstan_checks() {
    let docs = capstan_testenv::install::render(
        &capstan_testenv::InstallOptions {
            namespace: "capstan-system".into(),
            leader_elect: true,
            controllers: vec!["pipeline".into()],
            ..Default::default()
        },
        "capstan",
    )
    .expect("helm template");
    let policy = docs
        .iter()
        .find(|d| {
            d["kind"] == "ValidatingAdmissionPolicy" && d["metadata"]["name"] == "capstan-approvals"
        })
        .expect("the chart ships the policy");
    let rendered: Vec<(String, String)> = policy["spec"]["validations"]
        .as_array()
        .expect("validations")
        .iter()
        .map(|v| {
            (
                v["expression"].as_str().unwrap_or_default().to_owned(),
                v["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = POLICY_VALIDATIONS
        .iter()
        .map(|(e, m)| ((*e).to_owned(), (*m).to_owned()))
        .collect();
    assert_eq!(rendered, expected);
    assert!(
        docs.iter()
            .any(|d| d["kind"] == "ValidatingAdmissionPolicyBinding"
                && d["spec"]["validationActions"] == json!(["Deny"]))
    );
    let approver = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "capstan-approver")
        .expect("approver role");
    assert!(
        approver["metadata"]["labels"]
            .as_object()
            .is_some_and(|l| !l
                .keys()
                .any(|k| k.starts_with("rbac.authorization.k8s.io/aggregate-to"))),
        "the approver role is never aggregated into edit or admin"
    );
}
