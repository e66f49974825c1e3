//! `helm upgrade` from the chart as of 05d9e7f (CRDs in its crds/ folder, which Helm
//! installs once and never upgrades) to this one (CRDs as templates, `crds.install`,
//! `crds.keep`), on the real API server with the real helm. Its own test binary: it
//! owns the API server's CRDs, which no other test may see change.
//!
//! - without the documented step (`--take-ownership`), the upgrade is refused by Helm's
//!   ownership check, naming a CRD;
//! - with it, the CRDs are adopted: labelled and annotated as the release's, kept on
//!   uninstall;
//! - no custom resource is lost on the way, and uninstalling leaves the CRDs and the
//!   objects in place;
//! - a fresh install with `crds.install` on a cluster without the CRDs creates them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use capstan_pipeline::crd::Pipeline;
use capstan_testenv::{TempNamespace, TestEnv};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;

/// The chart before CRDs became templates.
const OLD_CHART_COMMIT: &str = "05d9e7f";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs helm against the test API server; its combined output, or the failure's.
fn helm(kubeconfig: &Path, args: &[&str]) -> Result<String, String> {
    let helm = capstan_testenv::install::helm_binary().expect("helm");
    let out = Command::new(helm)
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .output()
        .expect("running helm");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// The chart as of `commit`, extracted from git into `dir`.
fn chart_at(commit: &str, dir: &Path) -> PathBuf {
    let archive = Command::new("git")
        .arg("-C")
        .arg(repo_root())
        .args(["archive", "--format=tar", commit, "charts/capstan"])
        .output()
        .expect("git archive");
    assert!(
        archive.status.success(),
        "git archive {commit}: {}",
        String::from_utf8_lossy(&archive.stderr)
    );
    let tar = dir.join("chart.tar");
    std::fs::write(&tar, &archive.stdout).expect("write");
    let status = Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(dir)
        .status()
        .expect("tar");
    assert!(status.success());
    dir.join("charts/capstan")
}

/// The value of annotation `key` on `crd`.
fn annotation(crd: &CustomResourceDefinition, key: &str) -> Option<String> {
    crd.metadata.annotations.as_ref()?.get(key).cloned()
}

/// The value of label `key` on `crd`.
fn label(crd: &CustomResourceDefinition, key: &str) -> Option<String> {
    crd.metadata.labels.as_ref()?.get(key).cloned()
}

const RELEASE_NAME: &str = "meta.helm.sh/release-name";

const CAPSTAN_CRDS: [&str; 5] = [
    "approvals.capstan.dev",
    "clusterconnections.capstan.dev",
    "pipelines.capstan.dev",
    "secretrotations.capstan.dev",
    "servicescalings.capstan.dev",
];

/// The old chart's crds/ folder had no Approval CRD yet.
const CAPSTAN_CRDS_OF_THE_OLD_CHART: [&str; 4] = [
    "clusterconnections.capstan.dev",
    "pipelines.capstan.dev",
    "secretrotations.capstan.dev",
    "servicescalings.capstan.dev",
];

/// Deletes every Capstan CRD there is and waits until they are gone.
async fn delete_crds(crds: &Api<CustomResourceDefinition>) {
    for name in CAPSTAN_CRDS {
        match crds.delete(name, &DeleteParams::default()).await {
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(e) => panic!("deleting {name}: {e}"),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for name in CAPSTAN_CRDS {
        while crds.get_opt(name).await.expect("get").is_some() {
            assert!(Instant::now() < deadline, "{name} not gone");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test]
async fn upgrading_from_the_crds_folder_chart_adopts_and_keeps_the_crds() {
    let kube = TestEnv::get().kube().await.expect("kube");
    let ns = TempNamespace::create(kube).await.expect("namespace");
    let client = kube.client().await;
    let kubeconfig = kube.kubeconfig_path().to_owned();
    let tmp = tempfile::tempdir().expect("tempdir");
    let old_chart = chart_at(OLD_CHART_COMMIT, tmp.path());
    assert!(
        old_chart.join("crds/pipelines.yaml").exists(),
        "the old chart has a crds/ folder"
    );
    let new_chart = repo_root().join("charts/capstan");
    let release = "capstan";

    // The old chart installs its own (older) CRDs from its crds/ folder, with no
    // release metadata: the cluster as its users have it.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    delete_crds(&crds).await;
    helm(
        &kubeconfig,
        &[
            "install",
            release,
            old_chart.to_str().expect("utf-8"),
            "-n",
            ns.name(),
        ],
    )
    .unwrap_or_else(|e| panic!("installing the old chart: {e}"));
    for name in CAPSTAN_CRDS_OF_THE_OLD_CHART {
        let crd = crds.get(name).await.expect("the old chart installed it");
        assert_eq!(
            annotation(&crd, RELEASE_NAME),
            None,
            "{name} is not yet the release's"
        );
    }
    // A custom resource that must survive everything below.
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), ns.name());
    let pipeline: Pipeline = serde_json::from_value(json!({
        "apiVersion": "capstan.dev/v1alpha1", "kind": "Pipeline",
        "metadata": { "name": "survivor" },
        "spec": { "revision": "1.0", "stages": [
            { "name": "test", "type": "Test", "job": { "image": "busybox" } } ] }
    }))
    .expect("pipeline");
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = pipelines.create(&PostParams::default(), &pipeline).await {
        assert!(Instant::now() < deadline, "creating under the old CRD: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Without the documented step Helm refuses to take CRDs it did not create.
    let new = new_chart.to_str().expect("utf-8");
    // `helm upgrade` of this chart with crds.install, and `extra` flags.
    let upgrade = |extra: &[&str]| {
        let mut args = vec![
            "upgrade",
            release,
            new,
            "-n",
            ns.name(),
            "--set",
            "crds.install=true",
        ];
        args.extend_from_slice(extra);
        helm(&kubeconfig, &args)
    };
    let refused = upgrade(&[]).expect_err("the upgrade must not take the CRDs silently");
    assert!(
        refused.contains("invalid ownership metadata") && refused.contains(".capstan.dev"),
        "{refused}"
    );
    // The documented step: adopt them, once.
    upgrade(&["--take-ownership"])
        .unwrap_or_else(|e| panic!("upgrading with --take-ownership: {e}"));
    for name in CAPSTAN_CRDS {
        let crd = crds.get(name).await.expect("CRD");
        assert_eq!(
            annotation(&crd, RELEASE_NAME).as_deref(),
            Some(release),
            "{name}"
        );
        assert_eq!(
            annotation(&crd, "helm.sh/resource-policy").as_deref(),
            Some("keep"),
            "{name}"
        );
        assert_eq!(
            label(&crd, "app.kubernetes.io/managed-by").as_deref(),
            Some("Helm"),
            "{name}"
        );
    }
    // A later upgrade needs no step.
    upgrade(&[]).unwrap_or_else(|e| panic!("a second upgrade: {e}"));
    assert!(
        pipelines.get_opt("survivor").await.expect("get").is_some(),
        "lost on upgrade"
    );

    // Uninstalling keeps the CRDs and every object.
    let out = helm(&kubeconfig, &["uninstall", release, "-n", ns.name()])
        .unwrap_or_else(|e| panic!("uninstall: {e}"));
    for name in CAPSTAN_CRDS {
        assert!(
            crds.get_opt(name).await.expect("get").is_some(),
            "{name} deleted on uninstall: {out}"
        );
    }
    assert!(
        pipelines.get_opt("survivor").await.expect("get").is_some(),
        "lost on uninstall"
    );

    // A fresh install on a cluster without the CRDs: the chart creates them.
    for name in CAPSTAN_CRDS {
        crds.delete(name, &DeleteParams::default())
            .await
            .expect("delete CRD");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for name in CAPSTAN_CRDS {
        while crds.get_opt(name).await.expect("get").is_some() {
            assert!(Instant::now() < deadline, "{name} not gone");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    helm(
        &kubeconfig,
        &[
            "install",
            "fresh",
            new,
            "-n",
            ns.name(),
            "--set",
            "crds.install=true",
        ],
    )
    .unwrap_or_else(|e| panic!("a fresh install: {e}"));
    for name in CAPSTAN_CRDS {
        let crd = crds.get(name).await.expect("created by the chart");
        assert_eq!(
            annotation(&crd, RELEASE_NAME).as_deref(),
            Some("fresh"),
            "{name}"
        );
    }
}
