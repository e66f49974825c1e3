//! A Pipeline whose production Deploy stage reaches another AWS account, through a
//! connection that assumes a role there (the emulator serves each account from its own
//! backends): production runs the digest staging tested, and a revision whose digest
//! its registry lacks is refused before anything is registered. On the real API server
//! and the AWS emulator; the test plays the kubelet for Job stages (none here).

mod common;

use common::pipeline::{Aws, Setup, app_image, args, set_revision, status_until};

use std::collections::BTreeMap;
use std::sync::Arc;

use capstan_pipeline::crd::{PipelinePhase, StagePhase};
use serde_json::json;

/// A production account of its own, reached through a connection that assumes a role
/// there: the production Deploy names the same repository and tag in that account's
/// registry, and runs the digest staging tested, once that registry holds it. When the
/// production registry's tag is another build (the digest is not there), the stage
/// fails before anything is registered, and staging is rolled back.
#[tokio::test]
async fn a_production_account_runs_the_digest_staging_tested_or_nothing() {
    let t = Setup::new().await;
    let staging = Aws::new(&t).await;
    let prod = Aws::in_account(&t, Some("222222222222")).await;
    assert!(
        prod.registry.starts_with("222222222222.dkr.ecr."),
        "{}",
        prod.registry
    );
    let (kube, ns, api) = (t.kube, &t.ns, t.api.clone());
    let staging_initial = staging.create_service("web", 2, 1.0).await;
    let prod_initial = prod.create_service("web", 3, 1.0).await;
    assert!(prod_initial.contains(":222222222222:"), "{prod_initial}");
    // The release process copies 1.0 to production's registry: the same layers, so
    // the same digest. 2.0 there is another build under the same tag.
    let layer = format!("sha256:{:064x}", common::pipeline::rand_u128());
    let digest = staging.push_layer("1.0", &layer, None).await;
    assert_eq!(prod.push_layer("1.0", &layer, None).await, digest);
    let digest_2 = staging.push("2.0", None).await;
    assert_ne!(prod.push("2.0", None).await, digest_2);
    t.play(Arc::new(|_: &str, _: &BTreeMap<String, String>| {
        Some((0, String::new()))
    }));
    let mut production = prod.deploy_stage("production", "web", &prod.image("{{ revision }}"));
    production["deploy"]["connectionRef"] = json!({ "name": prod.connection });
    let stages = vec![
        staging.deploy_stage("staging", "web", &staging.image("{{ revision }}")),
        production,
    ];
    common::rotation::create(&api, staging.pipeline("shop", "1.0", stages)).await;
    let m = common::start(kube, "pipeline-accounts", &args(ns.name())).await;

    let st = status_until(&api, "shop", &m, "run 1 succeeds", |s| {
        s.phase == Some(PipelinePhase::Succeeded)
    })
    .await;
    let pinned = format!("{}/{}@{digest}", prod.registry, prod.repository);
    assert_eq!(st.images.get(&prod.image("1.0")), Some(&pinned), "{st:?}");
    let prod_1 = prod
        .service("web")
        .await
        .task_definition()
        .expect("task definition")
        .to_owned();
    assert_ne!(prod_1, prod_initial);
    assert_eq!(app_image(&prod.task_definition(&prod_1).await.0), pinned);
    let staging_1 = staging
        .service("web")
        .await
        .task_definition()
        .expect("task definition")
        .to_owned();
    assert_ne!(staging_1, staging_initial);
    let prod_revisions = prod.revisions("web").await;

    set_revision(&api, "shop", "2.0").await;
    let st = status_until(&api, "shop", &m, "run 2 rolled back", |s| {
        s.run_number == 2 && s.phase == Some(PipelinePhase::RolledBack)
    })
    .await;
    let stage = |name: &str| {
        st.stages
            .iter()
            .find(|x| x.name == name)
            .cloned()
            .expect("stage")
    };
    let message = stage("production").message.unwrap_or_default();
    assert!(
        message.contains(&format!(
            "{digest_2}, which an earlier stage of the run deployed, is not in registry 222222222222"
        )),
        "{message}"
    );
    assert_eq!(
        prod.revisions("web").await,
        prod_revisions,
        "nothing registered"
    );
    assert_eq!(
        prod.service("web").await.task_definition(),
        Some(prod_1.as_str()),
        "production untouched"
    );
    assert_eq!(stage("staging").phase, StagePhase::RolledBack);
    assert_eq!(
        staging.service("web").await.task_definition(),
        Some(staging_1.as_str()),
        "staging back on run 1's task definition"
    );
    m.assert_no_forbidden();
}
