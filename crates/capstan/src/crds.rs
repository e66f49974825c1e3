//! The CRDs Capstan serves: printed by `capstan crd` (and so by `make generate`), and
//! awaited at start-up so that a missing CRD is one clear error naming it rather than
//! a crash loop of failed watches.

use std::time::Duration;

use capstan_core::connection::ClusterConnection;
use capstan_pipeline::approval::Approval;
use capstan_pipeline::crd::Pipeline;
use capstan_secret_rotation::crd::SecretRotation;
use capstan_service_scaling::crd::ServiceScaling;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, Client, CustomResourceExt};

use crate::cli::ControllerName;

/// Every CRD, in a stable order: (file stem, definition).
pub fn all() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("clusterconnections", tidy(ClusterConnection::crd())),
        ("secretrotations", tidy(SecretRotation::crd())),
        ("servicescalings", tidy(ServiceScaling::crd())),
        ("pipelines", tidy(Pipeline::crd())),
        ("approvals", tidy(Approval::crd())),
    ]
}

/// Joins the wrapped lines of each doc-comment description into paragraphs, so that
/// `kubectl explain` wraps them to the terminal instead of at the source's 100 columns.
fn tidy(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, child) in map.iter_mut() {
                    match child {
                        serde_json::Value::String(s) if k == "description" => *s = reflow(s),
                        _ => walk(child),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let Ok(mut value) = serde_json::to_value(&crd) else {
        return crd;
    };
    walk(&mut value);
    serde_json::from_value(value).unwrap_or(crd)
}

/// One line per paragraph; list items (`- `) and blank-line breaks are kept.
fn reflow(text: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut joining = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            out.push(String::new());
            joining = false;
        } else if joining && !line.starts_with("- ") {
            if let Some(last) = out.last_mut() {
                last.push(' ');
                last.push_str(line);
            }
        } else {
            out.push(line.to_owned());
            joining = true;
        }
    }
    out.join("\n")
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
            ControllerName::Pipeline => {
                names.push(Approval::crd_name().to_owned());
                Pipeline::crd_name()
            }
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

#[cfg(test)]
mod tests {
    use super::reflow;

    #[test]
    fn reflow_joins_wrapped_lines_and_keeps_paragraphs_and_lists() {
        let text =
            "The namespaces allowed.\nA second line.\n\nNew paragraph:\n- one\n- two\n  continued";
        assert_eq!(
            reflow(text),
            "The namespaces allowed. A second line.\n\nNew paragraph:\n- one\n- two continued"
        );
    }
}
