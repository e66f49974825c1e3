//! `spec.backend`: where the credential is stored (AWS Secrets Manager, Vault/OpenBao
//! KV v2, a Kubernetes Secret).

use capstan_core::connection::ConnectionKind;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::rules::*;
use super::status::*;

/// Where the credential is stored. One variant per backend; a new backend is one more.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum Backend {
    /// AWS Secrets Manager. The new value is added as a version labelled AWSPENDING,
    /// moved to AWSCURRENT when tested (the old one becomes AWSPREVIOUS). The secret
    /// string is JSON in the layout of AWS's own rotation functions (`username`,
    /// `password`, `host`, `port`, `dbname`, `engine`).
    AwsSecretsManager(AwsSecretsManagerBackend),
    /// Vault or OpenBao KV version 2. The pending value is written to `pendingPath`,
    /// which consumers must not be allowed to read; `path` is written only once the value
    /// is tested, with check-and-set, so readers only ever see tested values and failed
    /// attempts don't use up `path`'s limited version history.
    Vault(VaultBackend),
    /// A Kubernetes Secret in this namespace. The pending value goes to a separate Secret
    /// (`pendingSecretName`) that workloads must not mount. Capstan never deletes either
    /// Secret.
    Kubernetes(KubernetesBackend),
}

/// AWS Secrets Manager backend.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AwsSecretsManagerBackend {
    /// Name or ARN of the secret. Created by Capstan if it does not exist.
    #[schemars(length(min = 1, max = 2048), regex(pattern = AWS_ID_PATTERN))]
    pub secret_id: String,
    /// KMS key (ID, alias or ARN) used when Capstan creates the secret; the account's
    /// `aws/secretsmanager` key when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), regex(pattern = AWS_ID_PATTERN))]
    pub kms_key_id: Option<String>,
}

/// Vault/OpenBao KV v2 backend.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(RULE_PENDING_PATH_DIFFERS).message("pendingPath must differ from path").field_path(".pendingPath"))]
pub struct VaultBackend {
    /// Mount point of the KV v2 secrets engine.
    #[serde(default = "default_vault_mount")]
    #[schemars(length(min = 1, max = 128), regex(pattern = VAULT_PATH_PATTERN))]
    pub mount: String,
    /// Path of the secret within the mount, read by consumers. Written only with tested
    /// values.
    #[schemars(length(min = 1, max = 512), regex(pattern = VAULT_PATH_PATTERN))]
    pub path: String,
    /// Path within the same mount for the untested pending value; consumers must not be
    /// able to read it. Defaults to `capstan-pending/<path>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512), regex(pattern = VAULT_PATH_PATTERN))]
    pub pending_path: Option<String>,
}

fn default_vault_mount() -> String {
    "secret".to_owned()
}

/// Kubernetes Secret backend.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(RULE_PENDING_SECRET_DIFFERS).message("pendingSecretName must differ from secretName").field_path(".pendingSecretName"))]
pub struct KubernetesBackend {
    /// Name of the Secret in this namespace holding the current credential. Created by
    /// Capstan if missing; never deleted by it.
    #[schemars(length(min = 1, max = 245), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub secret_name: String,
    /// Data key holding the password or value; `username`, `host`, `port` and
    /// `database` (for database targets) sit beside it under those names.
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY_PATTERN))]
    pub key: String,
    /// Name of the Secret holding the untested pending value, which workloads must not
    /// mount. Defaults to `<secretName>-pending`. Never deleted by Capstan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub pending_secret_name: Option<String>,
}

pub(super) fn default_password_key() -> String {
    "password".to_owned()
}

impl Backend {
    /// The kind of ClusterConnection this backend's `connectionRef` must name. Exhaustive
    /// on purpose: a new backend must say which connection it uses. The Kubernetes
    /// backend uses none (validation refuses a `connectionRef` with it); the gate, which
    /// runs before validation, checks such a reference as an AWS connection.
    pub fn connection_kind(&self) -> ConnectionKind {
        match self {
            Self::Vault(_) => ConnectionKind::Vault,
            Self::AwsSecretsManager(_) | Self::Kubernetes(_) => ConnectionKind::Aws,
        }
    }

    /// Which backend this is.
    pub fn kind(&self) -> BackendKind {
        match self {
            Self::AwsSecretsManager(_) => BackendKind::AwsSecretsManager,
            Self::Vault(_) => BackendKind::Vault,
            Self::Kubernetes(_) => BackendKind::Kubernetes,
        }
    }
}

impl VaultBackend {
    /// The path holding the pending value: `pendingPath`, or `capstan-pending/<path>`.
    pub fn effective_pending_path(&self) -> String {
        self.pending_path
            .clone()
            .unwrap_or_else(|| format!("{DEFAULT_VAULT_PENDING_PREFIX}{}", self.path))
    }
}

impl KubernetesBackend {
    /// The Secret holding the pending value: `pendingSecretName`, or
    /// `<secretName>-pending`.
    pub fn effective_pending_secret_name(&self) -> String {
        self.pending_secret_name
            .clone()
            .unwrap_or_else(|| format!("{}{DEFAULT_PENDING_SECRET_SUFFIX}", self.secret_name))
    }
}
