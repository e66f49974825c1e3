//! Which namespaces may use a ClusterConnection ([`AllowedNamespaces`]): by name or by
//! label selector. Used by the connection itself (`spec.allowedNamespaces`) and by each
//! of its scopes (`spec.scopes[].namespaces`), so it lives beside both.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::KubeSchema;
use kube::core::{Selector, SelectorExt};
use serde::{Deserialize, Serialize};

/// Which namespaces may use a connection.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AllowedNamespaces {
    /// Namespaces allowed by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub names: Vec<String>,
    /// Namespaces allowed by their labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

impl AllowedNamespaces {
    /// Whether a namespace with this name and these labels may use the connection.
    /// A selector that cannot be parsed allows nothing.
    pub fn allows(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        if self.names.iter().any(|n| n == namespace) {
            return true;
        }
        let Some(selector) = &self.selector else {
            return false;
        };
        // An empty selector ({}) would select everything; an administrator who means
        // "every namespace" must say so with an explicit expression.
        if selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
            && selector
                .match_expressions
                .as_ref()
                .is_none_or(|e| e.is_empty())
        {
            return false;
        }
        match Selector::try_from(selector.clone()) {
            Ok(s) => s.matches(labels),
            Err(_) => false,
        }
    }
}
