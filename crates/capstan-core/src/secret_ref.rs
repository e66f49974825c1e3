//! Reading one key of a Secret in Capstan's own namespace: where the credentials a
//! ClusterConnection names live (AWS access keys, a Vault token).
//!
//! Shared by the connection check and every controller that builds clients from a
//! connection, so they all read credentials the same way and report a missing Secret or
//! key with the same words. The value comes back wrapped in [`SecretValue`]; errors name
//! the Secret and the key, never a value.

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use crate::connection::LocalSecretRef;
use crate::error::Categorized;
use crate::redact::SecretValue;

/// Why a key of a Secret could not be read.
#[derive(Debug, thiserror::Error)]
#[error("Secret {namespace}/{name} {problem}")]
pub struct SecretKeyError {
    /// The Secret's namespace.
    pub namespace: String,
    /// The Secret's name.
    pub name: String,
    /// What is wrong: "does not exist", "has no key ...", ...
    pub problem: String,
}

impl Categorized for SecretKeyError {
    fn category(&self) -> &'static str {
        "credentials_secret"
    }
}

/// Reads `reference`'s key (or `default_key` when the reference names none) from the
/// Secret `reference.name` in `namespace`, as UTF-8.
pub async fn read_key(
    client: &Client,
    namespace: &str,
    reference: &LocalSecretRef,
    default_key: &str,
) -> Result<SecretValue, SecretKeyError> {
    let key = reference.key.as_deref().unwrap_or(default_key);
    let err = |problem: String| SecretKeyError {
        namespace: namespace.to_owned(),
        name: reference.name.clone(),
        problem,
    };
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(&reference.name)
        .await
        .map_err(|e| err(format!("cannot be read: {e}")))?
        .ok_or_else(|| err("does not exist".into()))?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| err(format!("has no key {key:?}")))?;
    String::from_utf8(bytes.0.clone())
        .map(SecretValue::new)
        .map_err(|_| err(format!("key {key:?} is not UTF-8")))
}
