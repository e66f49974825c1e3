//! What every resource crate's CRD schema tests need, in one place (tests only: behind
//! the `schema-testing` feature, which only dev-dependencies turn on).
//!
//! Paths are dotted property names below the schema root; `[]` steps into a list's
//! `items` and `{}` into a map's `additionalProperties` (`spec.stages.[].name`,
//! `spec.labels.{}`). [`all_rules`] walks all three, so a rule on a list item or a map
//! value is never missed.

use kube::CustomResourceExt;
use kube::core::cel::Validator;
use serde_json::Value;

/// The OpenAPI v3 schema of `K`'s first (only) version.
pub fn openapi_schema<K: CustomResourceExt>() -> Value {
    let crd = serde_json::to_value(K::crd()).expect("CRD serializes");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// The node at `path` below `schema`'s root; panics naming the missing part.
pub fn node(schema: &Value, path: &str) -> Value {
    let mut n = schema.clone();
    for part in path.split('.') {
        n = match part {
            "[]" => n["items"].clone(),
            "{}" => n["additionalProperties"].clone(),
            name => n["properties"][name].clone(),
        };
        assert!(!n.is_null(), "no schema at {path} (missing {part})");
    }
    n
}

/// The CEL rules (`x-kubernetes-validations`) at one node.
pub fn rules_at(schema: &Value, path: &str) -> Vec<Value> {
    node(schema, path)["x-kubernetes-validations"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Every CEL rule in `schema`, with the path of the node that carries it (`""` for the
/// root, else `.spec.x`, `.spec.list.[]`, `.spec.map.{}`).
pub fn all_rules(schema: &Value) -> Vec<(String, Value)> {
    fn walk(path: &str, n: &Value, out: &mut Vec<(String, Value)>) {
        if !n.is_object() {
            return;
        }
        for r in n["x-kubernetes-validations"]
            .as_array()
            .into_iter()
            .flatten()
        {
            out.push((path.to_owned(), r.clone()));
        }
        for (name, p) in n["properties"].as_object().into_iter().flatten() {
            walk(&format!("{path}.{name}"), p, out);
        }
        walk(&format!("{path}.[]"), &n["items"], out);
        walk(&format!("{path}.{{}}"), &n["additionalProperties"], out);
    }
    let mut out = Vec::new();
    walk("", schema, &mut out);
    out
}

/// What the API server's CEL rules say about `object`, evaluated client-side with
/// kube-cel: `fieldPath: message` per failure (or the rule when it has no message).
pub fn cel_failures(schema: &Value, object: &Value) -> Vec<String> {
    match Validator::new().validate(schema, object, None) {
        Ok(()) => vec![],
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

/// YAML parsed the way the API server sees it (serde_yaml would expect `!tags` for
/// enums, so go through JSON values).
pub fn from_yaml<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
    let value: Value = serde_yaml::from_str(yaml).expect("YAML parses");
    serde_json::from_value(value).expect("matches the type")
}
