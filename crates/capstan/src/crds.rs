//! The CRDs Capstan serves: printed by `capstan crd` (and so by `make generate`), and
//! awaited at start-up so that a missing CRD is one clear error naming it rather than
//! a crash loop of failed watches.

use std::time::Duration;

use capstan_core::connection::ClusterConnection;
use capstan_pipeline::crd::Pipeline;
use capstan_secret_rotation::crd::SecretRotation;
use capstan_service_scaling::crd::ServiceScaling;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, Client, CustomResourceExt};

use crate::cli::ControllerName;

/// Every CRD, in a stable order: (file stem, definition).
pub fn all() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("clusterconnections", ClusterConnection::crd()),
        ("secretrotations", SecretRotation::crd()),
        ("servicescalings", ServiceScaling::crd()),
        ("pipelines", Pipeline::crd()),
    ]
}

/// Prints all CRDs as one YAML stream, or writes `<plural>.yaml` files into `dir`.
pub fn write(dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    for (stem, crd) in all() {
        let yaml = format!("---\n{}", serde_yaml::to_string(&crd)?);
        match dir {
            Some(dir) => {
                let path = dir.join(format!("{stem}.yaml"));
                std::fs::write(&path, yaml)
                    .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
            }
            None => print!("{yaml}"),
        }
    }
    Ok(())
}

/// The CRD names a set of controllers needs. Every controller that resolves
/// connections needs the ClusterConnection CRD too.
pub fn needed(controllers: &[ControllerName]) -> Vec<String> {
    let mut names = vec![ClusterConnection::crd_name().to_owned()];
    for c in controllers {
        let name = match c {
            ControllerName::Connection => continue,
            ControllerName::SecretRotation => SecretRotation::crd_name(),
            ControllerName::ServiceScaling => ServiceScaling::crd_name(),
            ControllerName::Pipeline => Pipeline::crd_name(),
        };
        names.push(name.to_owned());
    }
    names
}

/// Waits until every named CRD exists and is Established.
pub async fn wait_established(
    client: &Client,
    names: &[String],
    timeout: Duration,
) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + timeout;
    for name in names {
        loop {
            let state = match api.get_opt(name).await {
                Ok(Some(crd)) if is_established(&crd) => break,
                Ok(Some(_)) => "exists but is not Established yet".to_owned(),
                Ok(None) => "is not installed (kubectl apply -f crds/, or helm install)".to_owned(),
                Err(e) => format!("cannot be read: {e}"),
            };
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("CRD {name} {state}; gave up after {}s", timeout.as_secs());
            }
            tracing::info!(crd = %name, "waiting: CRD {state}");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    Ok(())
}

fn is_established(crd: &CustomResourceDefinition) -> bool {
    crd.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        })
}
