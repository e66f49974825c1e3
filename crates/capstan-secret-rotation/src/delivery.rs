//! Delivery: after a value is promoted, it reaches the workloads, in this order:
//!
//! 1. the templated Secret ([`render`], then [`write_secret`] unless
//!    [`delivered_version`] already shows the version), written by server-side apply and
//!    stamped with the version id (annotation [`VERSION_ANNOTATION`]). With
//!    `deletionPolicy: Retain` (the default) it has no ownerReference, so deleting the
//!    SecretRotation or uninstalling Capstan never deletes it; with `Delete` it is owned
//!    by the SecretRotation and garbage-collected with it;
//! 2. rollout restarts of the named or selected Deployments, StatefulSets and DaemonSets
//!    ([`workloads`] lists them, [`to_restart`] picks, [`restart`] restarts), at most
//!    `maxConcurrentRollouts` unfinished at a time, each stamped in its pod template with
//!    [`RESTARTED_FOR_ANNOTATION`]` = <version id>`: a workload already stamped for the
//!    version is never restarted again, so a Capstan restart (or a repeated reconcile)
//!    restarts nothing twice;
//! 3. forced deployments of the ECS services of `delivery.ecsServices` ([`ecs`]).
//!
//! "Delivered" means every restarted workload finished its rollout: its controller saw
//! the new template (`observedGeneration >= generation`) and every replica is updated
//! and available ([`workloads_delivered`]), and every ECS deployment completed.

pub mod ecs;

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::{Expression, Selector};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::crd::{
    DeletionPolicy, Delivery, RolloutSelector, RolloutTarget, SecretDelivery, SecretRotation,
    Target, WorkloadKind,
};
use crate::template::{Template, TemplateValues};

/// Pod template annotation: the version a workload was last restarted for.
pub const RESTARTED_FOR_ANNOTATION: &str = "capstan.dev/restarted-for";
/// Annotation of the delivered Secret: the version it holds.
pub const VERSION_ANNOTATION: &str = "capstan.dev/version";
/// Label of the delivered Secret: the SecretRotation that writes it.
pub const ROTATION_LABEL: &str = "capstan.dev/secret-rotation";
/// Field manager of delivery writes.
pub const FIELD_MANAGER: &str = "capstan-secret-rotation-delivery";

/// Why delivery failed; names the object, never a value.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// A template could not be rendered.
    #[error("rendering key {key:?} of Secret {name:?}: {message}")]
    Template {
        /// The Secret.
        name: String,
        /// The data key.
        key: String,
        /// What failed.
        message: String,
    },
    /// A rollout selector does not say exactly which workloads it means; nothing is
    /// restarted (admission refuses such a selector; this guards objects stored before).
    #[error("{path}: {message}; nothing was restarted")]
    InvalidSelector {
        /// Where in the spec.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// A Kubernetes call failed.
    #[error("{what}: {}", capstan_core::error::KubeMessage(source))]
    Kube {
        /// What was being done.
        what: String,
        /// The API error.
        source: kube::Error,
    },
}

/// The values a Secret template is rendered with, from the target's spec.
pub fn template_values<'a>(
    target: &'a Target,
    username: Option<&'a str>,
    password: &'a capstan_core::redact::SecretValue,
) -> TemplateValues<'a> {
    let (host, port, database) = match target {
        Target::Postgres(p) => (
            Some(p.host.as_str()),
            u16::try_from(p.port).ok(),
            Some(p.database.as_str()),
        ),
        Target::Mysql(m) => (
            Some(m.host.as_str()),
            u16::try_from(m.port).ok(),
            m.database.as_deref(),
        ),
        Target::RdsMasterPassword(r) => (
            r.endpoint.as_ref().map(|e| e.host.as_str()),
            r.endpoint.as_ref().and_then(|e| u16::try_from(e.port).ok()),
            r.effective_database(),
        ),
        Target::VaultDatabaseStaticRole(v) => (
            Some(v.host.as_str()),
            u16::try_from(v.port).ok(),
            Some(v.database.as_str()),
        ),
        Target::VaultDatabaseDynamicRole(v) => (
            Some(v.host.as_str()),
            u16::try_from(v.port).ok(),
            Some(v.database.as_str()),
        ),
        Target::IamAccessKey(_) | Target::VaultTransitKey(_) | Target::ValueOnly(_) => {
            (None, None, None)
        }
    };
    TemplateValues {
        password,
        username,
        host,
        port,
        database,
    }
}

/// The rendered data of the delivered Secret: every template, or one key per available
/// variable when there is none.
pub fn render(
    secret: &SecretDelivery,
    target: &Target,
    values: &TemplateValues<'_>,
) -> Result<BTreeMap<String, ByteString>, DeliveryError> {
    let err = |key: &str, message: String| DeliveryError::Template {
        name: secret.name.clone(),
        key: key.to_owned(),
        message,
    };
    let mut data = BTreeMap::new();
    if secret.template.is_empty() {
        for v in target.available_variables() {
            let t = Template::parse(&format!("{{{{ {} }}}}", v.name()))
                .map_err(|e| err(v.name(), e.to_string()))?;
            let out = t.render(values).map_err(|e| err(v.name(), e.to_string()))?;
            data.insert(
                v.name().to_owned(),
                ByteString(out.expose().as_bytes().to_vec()),
            );
        }
    } else {
        for (key, text) in &secret.template {
            let t = Template::parse(text).map_err(|e| err(key, e.to_string()))?;
            let out = t.render(values).map_err(|e| err(key, e.to_string()))?;
            data.insert(key.clone(), ByteString(out.expose().as_bytes().to_vec()));
        }
    }
    Ok(data)
}

/// The version the delivered Secret holds now (its annotation), if it exists.
pub async fn delivered_version(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<String>, DeliveryError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = api
        .get_opt(name)
        .await
        .map_err(|source| DeliveryError::Kube {
            what: format!("reading Secret {namespace}/{name}"),
            source,
        })?;
    Ok(secret.and_then(|s| s.annotations().get(VERSION_ANNOTATION).cloned()))
}

/// Writes the delivered Secret for `version` (server-side apply, idempotent).
pub async fn write_secret(
    client: &Client,
    obj: &SecretRotation,
    secret: &SecretDelivery,
    data: BTreeMap<String, ByteString>,
    version: &str,
) -> Result<(), DeliveryError> {
    let namespace = obj.namespace().unwrap_or_default();
    let owner = match secret.deletion_policy {
        DeletionPolicy::Retain => None,
        DeletionPolicy::Delete => obj.controller_owner_ref(&()).map(|o| vec![o]),
    };
    let desired = Secret {
        metadata: ObjectMeta {
            name: Some(secret.name.clone()),
            namespace: Some(namespace.clone()),
            labels: Some(BTreeMap::from([(
                ROTATION_LABEL.to_owned(),
                obj.name_any(),
            )])),
            annotations: Some(BTreeMap::from([(
                VERSION_ANNOTATION.to_owned(),
                version.to_owned(),
            )])),
            owner_references: owner,
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(data),
        ..Secret::default()
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    api.patch(
        &secret.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&desired),
    )
    .await
    .map_err(|source| DeliveryError::Kube {
        what: format!("writing Secret {namespace}/{}", secret.name),
        source,
    })?;
    Ok(())
}

/// A workload delivery restarts, with what the restart needs to know about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Its kind.
    pub kind: WorkloadKind,
    /// Its name.
    pub name: String,
    /// The version its pod template was last restarted for.
    pub restarted_for: Option<String>,
    /// Whether its last rollout is complete.
    pub complete: bool,
}

impl Workload {
    /// `Kind/name`, as audit lines and messages name it.
    pub fn label(&self) -> String {
        format!("{:?}/{}", self.kind, self.name)
    }
}

/// Whether a Deployment's rollout is complete.
pub fn deployment_complete(d: &Deployment) -> bool {
    let Some(s) = &d.status else { return false };
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let generation = d.metadata.generation.unwrap_or(0);
    s.observed_generation.unwrap_or(0) >= generation
        && s.updated_replicas.unwrap_or(0) == want
        && s.replicas.unwrap_or(0) == want
        && s.available_replicas.unwrap_or(0) == want
}

/// Whether a StatefulSet's rollout is complete.
pub fn statefulset_complete(d: &StatefulSet) -> bool {
    let Some(s) = &d.status else { return false };
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let generation = d.metadata.generation.unwrap_or(0);
    s.observed_generation.unwrap_or(0) >= generation
        && s.updated_replicas.unwrap_or(0) == want
        && s.replicas == want
        && s.available_replicas.unwrap_or(0) == want
}

/// Whether a DaemonSet's rollout is complete.
pub fn daemonset_complete(d: &DaemonSet) -> bool {
    let Some(s) = &d.status else { return false };
    let generation = d.metadata.generation.unwrap_or(0);
    s.observed_generation.unwrap_or(0) >= generation
        && s.updated_number_scheduled.unwrap_or(0) == s.desired_number_scheduled
        && s.number_available.unwrap_or(0) == s.desired_number_scheduled
}

fn restarted_for(template_annotations: Option<&BTreeMap<String, String>>) -> Option<String> {
    template_annotations.and_then(|a| a.get(RESTARTED_FOR_ANNOTATION).cloned())
}

async fn list_kind<K>(
    client: &Client,
    namespace: &str,
    target: &RolloutTarget,
) -> Result<Vec<K>, DeliveryError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let kube_err = |what: String| move |source| DeliveryError::Kube { what, source };
    match (&target.name, &target.selector) {
        (Some(name), _) => Ok(api
            .get_opt(name)
            .await
            .map_err(kube_err(format!(
                "reading {:?} {namespace}/{name}",
                target.kind
            )))?
            .into_iter()
            .collect()),
        (None, Some(selector)) => {
            let selector =
                rollout_selector(selector).map_err(|message| DeliveryError::InvalidSelector {
                    path: format!("{:?} selector", target.kind),
                    message,
                })?;
            Ok(api
                .list(&ListParams::default().labels_from(&selector))
                .await
                .map_err(kube_err(format!(
                    "listing {:?} in {namespace}",
                    target.kind
                )))?
                .items)
        }
        (None, None) => Ok(Vec::new()),
    }
}

/// The selector `s` means, or why it means nothing exact. Never wider than written: an
/// unknown operator, `In`/`NotIn` without values, `Exists`/`DoesNotExist` with values,
/// or an empty selector (which would match every workload) are errors, not the empty
/// selector.
pub fn rollout_selector(s: &RolloutSelector) -> Result<Selector, String> {
    let mut out: Selector = s
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (i, e) in s.match_expressions.iter().flatten().enumerate() {
        let values = e.values.clone().unwrap_or_default();
        let key = e.key.clone();
        let expression = match (e.operator.as_str(), values.is_empty()) {
            ("In", false) => Expression::In(key, values.into_iter().collect()),
            ("NotIn", false) => Expression::NotIn(key, values.into_iter().collect()),
            ("Exists", true) => Expression::Exists(key),
            ("DoesNotExist", true) => Expression::DoesNotExist(key),
            ("In" | "NotIn", true) => {
                return Err(format!(
                    "matchExpressions[{i}]: {} needs at least one value",
                    e.operator
                ));
            }
            ("Exists" | "DoesNotExist", false) => {
                return Err(format!(
                    "matchExpressions[{i}]: {} takes no values",
                    e.operator
                ));
            }
            (op, _) => {
                return Err(format!(
                    "matchExpressions[{i}]: unknown operator {op:?} (In, NotIn, Exists or DoesNotExist)"
                ));
            }
        };
        out.extend([expression]);
    }
    if out.selects_all() {
        return Err("an empty selector would restart every workload of the kind".into());
    }
    Ok(out)
}

/// Reads every workload `delivery.rollouts` names, in spec order, without duplicates.
pub async fn workloads(
    client: &Client,
    namespace: &str,
    delivery: &Delivery,
) -> Result<Vec<Workload>, DeliveryError> {
    let mut out: Vec<Workload> = Vec::new();
    for target in &delivery.rollouts {
        let found: Vec<Workload> = match target.kind {
            WorkloadKind::Deployment => list_kind::<Deployment>(client, namespace, target)
                .await?
                .iter()
                .map(|d| Workload {
                    kind: WorkloadKind::Deployment,
                    name: d.name_any(),
                    restarted_for: restarted_for(
                        d.spec
                            .as_ref()
                            .and_then(|s| s.template.metadata.as_ref())
                            .and_then(|m| m.annotations.as_ref()),
                    ),
                    complete: deployment_complete(d),
                })
                .collect(),
            WorkloadKind::StatefulSet => list_kind::<StatefulSet>(client, namespace, target)
                .await?
                .iter()
                .map(|d| Workload {
                    kind: WorkloadKind::StatefulSet,
                    name: d.name_any(),
                    restarted_for: restarted_for(
                        d.spec
                            .as_ref()
                            .and_then(|s| s.template.metadata.as_ref())
                            .and_then(|m| m.annotations.as_ref()),
                    ),
                    complete: statefulset_complete(d),
                })
                .collect(),
            WorkloadKind::DaemonSet => list_kind::<DaemonSet>(client, namespace, target)
                .await?
                .iter()
                .map(|d| Workload {
                    kind: WorkloadKind::DaemonSet,
                    name: d.name_any(),
                    restarted_for: restarted_for(
                        d.spec
                            .as_ref()
                            .and_then(|s| s.template.metadata.as_ref())
                            .and_then(|m| m.annotations.as_ref()),
                    ),
                    complete: daemonset_complete(d),
                })
                .collect(),
        };
        for w in found {
            if !out.iter().any(|o| o.kind == w.kind && o.name == w.name) {
                out.push(w);
            }
        }
    }
    Ok(out)
}

/// Which workloads to restart now for `version`: those not yet stamped with it, as many
/// as keep the unfinished rollouts of this version at `max_concurrent` or fewer.
pub fn to_restart<'w>(
    workloads: &'w [Workload],
    version: &str,
    max_concurrent: usize,
) -> Vec<&'w Workload> {
    let in_flight = workloads
        .iter()
        .filter(|w| w.restarted_for.as_deref() == Some(version) && !w.complete)
        .count();
    workloads
        .iter()
        .filter(|w| w.restarted_for.as_deref() != Some(version))
        .take(max_concurrent.max(1).saturating_sub(in_flight))
        .collect()
}

/// Whether delivery to the workloads of `version` is complete: every workload stamped
/// with it and finished rolling out.
pub fn workloads_delivered(workloads: &[Workload], version: &str) -> bool {
    workloads
        .iter()
        .all(|w| w.restarted_for.as_deref() == Some(version) && w.complete)
}

/// Restarts one workload for `version`: stamps its pod template (a merge patch of two
/// annotations, like `kubectl rollout restart`).
pub async fn restart(
    client: &Client,
    namespace: &str,
    w: &Workload,
    version: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), DeliveryError> {
    let patch = json!({
        "spec": { "template": { "metadata": { "annotations": {
            RESTARTED_FOR_ANNOTATION: version,
            "kubectl.kubernetes.io/restartedAt": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }}}}
    });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let what = format!("restarting {} in {namespace}", w.label());
    let res = match w.kind {
        WorkloadKind::Deployment => Api::<Deployment>::namespaced(client.clone(), namespace)
            .patch(&w.name, &params, &Patch::Merge(&patch))
            .await
            .map(|_| ()),
        WorkloadKind::StatefulSet => Api::<StatefulSet>::namespaced(client.clone(), namespace)
            .patch(&w.name, &params, &Patch::Merge(&patch))
            .await
            .map(|_| ()),
        WorkloadKind::DaemonSet => Api::<DaemonSet>::namespaced(client.clone(), namespace)
            .patch(&w.name, &params, &Patch::Merge(&patch))
            .await
            .map(|_| ()),
    };
    res.map_err(|source| DeliveryError::Kube { what, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::SelectorRequirement;

    fn req(key: &str, operator: &str, values: Option<&[&str]>) -> SelectorRequirement {
        SelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: values.map(|v| v.iter().map(|s| (*s).to_owned()).collect()),
        }
    }

    fn sel(labels: &[(&str, &str)], exprs: Vec<SelectorRequirement>) -> RolloutSelector {
        RolloutSelector {
            match_labels: (!labels.is_empty()).then(|| {
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect()
            }),
            match_expressions: (!exprs.is_empty()).then_some(exprs),
        }
    }

    /// A selector that does not say exactly what it means is an error, never the empty
    /// selector (which matches, and would restart, every workload of the kind); before,
    /// a bad operator turned `app=web,tier Equals db` into "everything".
    #[test]
    fn a_bad_selector_is_refused_not_widened() {
        let bad = [
            sel(
                &[("app", "web")],
                vec![req("tier", "Equals", Some(&["db"]))],
            ),
            sel(&[("app", "web")], vec![req("tier", "in", Some(&["db"]))]),
            sel(&[], vec![req("tier", "In", None)]),
            sel(&[], vec![req("tier", "NotIn", Some(&[]))]),
            sel(&[], vec![req("tier", "Exists", Some(&["db"]))]),
            sel(&[], vec![req("tier", "DoesNotExist", Some(&["db"]))]),
            sel(&[], vec![]),
            RolloutSelector {
                match_labels: Some(BTreeMap::new()),
                match_expressions: Some(vec![]),
            },
        ];
        for s in bad {
            let got = rollout_selector(&s);
            assert!(got.is_err(), "{s:?} gave {got:?}");
        }
    }

    #[test]
    fn good_selectors_keep_every_requirement() {
        let s = sel(
            &[("app", "web")],
            vec![
                req("tier", "In", Some(&["db", "cache"])),
                req("canary", "DoesNotExist", None),
                req("zone", "NotIn", Some(&["a"])),
                req("team", "Exists", Some(&[])),
            ],
        );
        let got = rollout_selector(&s).expect("valid").to_string();
        for part in [
            "app=web",
            "tier in (cache,db)",
            "!canary",
            "zone notin (a)",
            "team",
        ] {
            assert!(got.contains(part), "{part} missing from {got}");
        }
    }

    fn w(name: &str, stamped: Option<&str>, complete: bool) -> Workload {
        Workload {
            kind: WorkloadKind::Deployment,
            name: name.into(),
            restarted_for: stamped.map(Into::into),
            complete,
        }
    }

    #[test]
    fn restarts_are_bounded_and_never_repeated_for_a_version() {
        let ws = vec![
            w("a", Some("v2"), false),
            w("b", Some("v1"), true),
            w("c", None, true),
        ];
        // One rollout of v2 unfinished, limit 2: one more may start.
        let names: Vec<_> = to_restart(&ws, "v2", 2)
            .iter()
            .map(|w| w.name.clone())
            .collect();
        assert_eq!(names, ["b"]);
        // Limit 1: wait for `a`.
        assert!(to_restart(&ws, "v2", 1).is_empty());
        // Everything stamped: nothing to restart, delivered once complete.
        let done = vec![w("a", Some("v2"), true), w("b", Some("v2"), true)];
        assert!(to_restart(&done, "v2", 4).is_empty());
        assert!(workloads_delivered(&done, "v2"));
        assert!(!workloads_delivered(&ws, "v2"));
    }

    #[test]
    fn a_deployment_is_complete_when_observed_updated_and_available() {
        let mut d: Deployment = serde_json::from_value(json!({
            "metadata": { "name": "api", "generation": 3 },
            "spec": { "replicas": 2, "selector": {}, "template": {} },
            "status": { "observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2 }
        }))
        .unwrap_or_default();
        assert!(deployment_complete(&d));
        d.metadata.generation = Some(4);
        assert!(
            !deployment_complete(&d),
            "controller has not seen the new template"
        );
        d.metadata.generation = Some(3);
        if let Some(s) = d.status.as_mut() {
            s.available_replicas = Some(1);
        }
        assert!(!deployment_complete(&d), "one replica not available");
    }
}
