//! Storage backends of a SecretRotation: where the pending, current and previous values
//! live, behind [`SecretBackend`].
//!
//! Every backend follows AWS Secrets Manager's rotation contract
//! (<https://docs.aws.amazon.com/secretsmanager/latest/userguide/rotate-secrets_lambda-functions.html>):
//! the new value is first stored as *pending* where consumers do not read it
//! ([`SecretBackend::put_pending`], before the target is touched, so a crash loses
//! nothing), and becomes *current* only once tested ([`SecretBackend::promote`]), the old
//! current value becoming *previous*. Leader election does not fence, so each step that
//! cannot be undone is guarded by a claim a stale Capstan fails to take:
//!
//! | backend | pending | claim | promote |
//! | --- | --- | --- | --- |
//! | [`AwsSecretsManagerBackend`] | version with `AWSPENDING`, `VersionId` = [`RotationId::token`] | the `AWSPENDING` label on the token's version | `AWSCURRENT` moved from the version read (Secrets Manager checks it) |
//! | [`VaultKvBackend`] | `pendingPath`, a separate KV v2 key, with its own ledger | check-and-set on `pendingPath` | new version of `path` with `cas` = the version read |
//! | [`KubernetesSecretBackend`] | the Secret `<secretName>-pending` | `resourceVersion` of the pending Secret | update of the Secret with the `resourceVersion` read |
//!
//! Values travel as [`Credential`] (a [`SecretValue`] inside), stored as JSON
//! `{"username": ..., "password": ...}` (AWS's own rotation layout) where the backend
//! stores one string; versions are identified by [`Version::id`], never by a value.
//! Errors ([`BackendError`]) name the backend and the secret's path or id, never a value.

mod aws;
mod kubernetes;
mod vault;

use capstan_core::error::Categorized;
use capstan_core::redact::SecretValue;
use serde_json::{Map, Value};

pub use aws::AwsSecretsManagerBackend;
pub use kubernetes::{
    KubernetesSecretBackend, MANAGED_BY_LABEL, PREVIOUS_KEY_SUFFIX, PREVIOUS_TOKEN_ANNOTATION,
    ROTATION_TOKEN_ANNOTATION, USERNAME_KEY,
};
pub use vault::{VaultClient, VaultKvBackend};

/// JSON key of the username in a stored credential.
pub const JSON_USERNAME: &str = "username";
/// JSON key of the value in a stored credential.
pub const JSON_PASSWORD: &str = "password";

/// Namespace of the UUIDv5 tokens of [`RotationId::token`] (a fixed, random UUID).
const TOKEN_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x5f0c_2d1e_8b7a_4c39_9e61_0a4b_7d23_c8f1);

/// Identifies one attempt of one rotation; deterministic, so retries are idempotent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationId {
    /// `metadata.uid` of the SecretRotation.
    pub object_uid: String,
    /// Number of the rotation (e.g. `status.rotationCount + 1`).
    pub rotation: u64,
    /// Attempt within the rotation, from 1.
    pub attempt: u32,
}

impl RotationId {
    /// A rotation id.
    pub fn new(object_uid: impl Into<String>, rotation: u64, attempt: u32) -> Self {
        Self {
            object_uid: object_uid.into(),
            rotation,
            attempt,
        }
    }

    /// A ClientRequestToken for AWS (32–64 chars from [a-zA-Z0-9-]), derived from the three
    /// fields (e.g. a UUIDv5-style hash), identical for identical inputs.
    ///
    /// It is the UUIDv5 (36 characters, lowercase hex and hyphens) of the three fields in
    /// a length-prefixed encoding, so no two different ids share a token.
    pub fn token(&self) -> String {
        let name = format!(
            "{}:{}:{}:{}",
            self.object_uid.len(),
            self.object_uid,
            self.rotation,
            self.attempt
        );
        uuid::Uuid::new_v5(&TOKEN_NAMESPACE, name.as_bytes())
            .hyphenated()
            .to_string()
    }
}

/// A stored credential: the secret value and, for database targets, the username it logs in
/// as. Backends store it as JSON {"username": ..., "password": ...} (AWS's own rotation
/// format; `password` holds the value for targets without a user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The database user, if any.
    pub username: Option<String>,
    /// The password or value.
    pub value: SecretValue,
}

impl Credential {
    /// A credential.
    pub fn new(username: Option<String>, value: SecretValue) -> Self {
        Self { username, value }
    }

    /// The JSON document stored in the backend: `extra` (other keys of the document it
    /// replaces, e.g. `host`, `port`, `dbname`, `engine` in AWS's layout) plus `username`
    /// (when set) and `password`.
    pub fn to_json(&self, extra: &Map<String, Value>) -> SecretValue {
        let mut doc = extra.clone();
        doc.remove(JSON_USERNAME);
        doc.remove(JSON_PASSWORD);
        if let Some(u) = &self.username {
            doc.insert(JSON_USERNAME.into(), Value::String(u.clone()));
        }
        doc.insert(
            JSON_PASSWORD.into(),
            Value::String(self.value.expose().to_owned()),
        );
        SecretValue::new(Value::Object(doc).to_string())
    }

    /// Reads a stored document: a JSON object with a string `password` (and optionally a
    /// string `username`); any string that is not a JSON object is taken as the value
    /// itself (a secret created by hand with a plain string). Returns the credential and
    /// the document's other keys. `None` for a JSON object without a string `password`.
    pub fn from_json(doc: &SecretValue) -> Option<(Credential, Map<String, Value>)> {
        match serde_json::from_str::<Value>(doc.expose()) {
            Ok(Value::Object(map)) => Self::from_map(map),
            _ => Some((
                Credential::new(None, SecretValue::new(doc.expose())),
                Map::new(),
            )),
        }
    }

    /// Like [`Credential::from_json`] for a document already parsed into an object.
    pub fn from_map(mut map: Map<String, Value>) -> Option<(Credential, Map<String, Value>)> {
        let Some(Value::String(password)) = map.remove(JSON_PASSWORD) else {
            return None;
        };
        let username = match map.remove(JSON_USERNAME) {
            Some(Value::String(u)) => Some(u),
            _ => None,
        };
        Some((Credential::new(username, SecretValue::new(password)), map))
    }
}

/// A version identifier, never a value (AWS VersionId, KV v2 version number, Secret resourceVersion).
///
/// - AWS: the `VersionId`, which for versions Capstan wrote is the rotation token.
/// - Vault KV v2: the version number of `path` (for pending values: of `pendingPath`).
/// - Kubernetes: the rotation token that wrote the value (annotation
///   [`ROTATION_TOKEN_ANNOTATION`]), or `resourceVersion:<rv>` for a value Capstan did
///   not write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// The backend's identifier of this version.
    pub id: String,
    /// The stored credential.
    pub credential: Credential,
    /// The [`RotationId::token`] that wrote it, where the backend knows it.
    pub rotation_token: Option<String>,
}

/// Where a credential is stored. See the [module docs](self).
#[async_trait::async_trait]
pub trait SecretBackend: Send + Sync + std::fmt::Debug {
    /// What consumers read now (AWSCURRENT; KV current version at the real path; the Secret).
    async fn current(&self) -> Result<Option<Version>, BackendError>;
    /// The previous value (AWSPREVIOUS; the KV version before current; the Secret's kept previous key).
    async fn previous(&self) -> Result<Option<Version>, BackendError>;
    /// The pending value if it belongs to `id` (same token), else None.
    async fn pending(&self, id: &RotationId) -> Result<Option<Version>, BackendError>;
    /// Stores a new pending value durably BEFORE the target is touched. Idempotent for the same
    /// `id`: a retry returns the stored version and never creates a second one (AWS: PutSecretValue
    /// with ClientRequestToken = id.token(), stage AWSPENDING; KV v2: write the separate pending
    /// path with check-and-set; Kubernetes: the separate pending Secret, annotated with the token,
    /// created or updated with the resourceVersion it read). A pending value of another token is
    /// replaced only if that attempt is over (the caller says so by calling this).
    ///
    /// When a value is already stored for `id`, it is returned and `credential` is ignored:
    /// the caller must go on with the returned credential (it may have generated a new one
    /// after a crash that happened after the store).
    async fn put_pending(
        &self,
        id: &RotationId,
        credential: &Credential,
    ) -> Result<Version, BackendError>;
    /// Promotes the pending value of `id` to current and keeps the old current as previous (AWS:
    /// UpdateSecretVersionStage moving AWSCURRENT, AWSPREVIOUS follows; KV v2: write the real path
    /// with cas = the current version read, then clear pending; Kubernetes: update the Secret with
    /// its resourceVersion). Idempotent: if already promoted, returns the current version.
    ///
    /// Fails with [`BackendError::Conflict`] when `id` holds no pending value (another
    /// attempt replaced it, or it was discarded) or a concurrent writer changed the current
    /// value between the read and the write.
    async fn promote(&self, id: &RotationId) -> Result<Version, BackendError> {
        let current = self.current().await?;
        self.promote_if_current(id, current.as_ref().map(|v| v.id.as_str()))
            .await
    }
    /// Like [`SecretBackend::promote`], but also fails with [`BackendError::Conflict`]
    /// unless the current version is still `expected_current` (a [`Version::id`]; `None`:
    /// there is no current value). A controller that recorded the current version when the
    /// rotation began passes it here, so that a value promoted meanwhile by someone else
    /// (a stale Capstan, a person) is never overwritten. Already promoted: returns the
    /// current version whatever `expected_current` says.
    async fn promote_if_current(
        &self,
        id: &RotationId,
        expected_current: Option<&str>,
    ) -> Result<Version, BackendError>;
    /// Drops a pending value (a value the target definitively rejected). Never touches current.
    async fn discard_pending(&self, id: &RotationId) -> Result<(), BackendError>;
}

/// Why a backend call failed. `what` names the backend and the secret's path or id (e.g.
/// `Vault KV secret/app/db`); no variant ever holds a secret value.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The secret, path, mount or version does not exist.
    #[error("{what}: not found{}", suffix(detail))]
    NotFound {
        /// Backend and path or id.
        what: String,
        /// What the backend said, if anything.
        detail: String,
    },
    /// Capstan's identity may not do this.
    #[error("{what}: access denied{}", suffix(detail))]
    AccessDenied {
        /// Backend and path or id.
        what: String,
        /// What the backend said.
        detail: String,
    },
    /// A claim was lost: a check-and-set or resourceVersion did not match, or the pending
    /// value of this rotation is gone (a stale Capstan, or a concurrent writer).
    #[error("{what}: conflict: {detail}")]
    Conflict {
        /// Backend and path or id.
        what: String,
        /// Which claim was lost.
        detail: String,
    },
    /// Unreachable, throttled, timed out, sealed or a server error: retrying may help.
    #[error("{what}: unavailable: {detail}")]
    Unavailable {
        /// Backend and path or id.
        what: String,
        /// What failed.
        detail: String,
    },
    /// The request or the stored data is invalid (a malformed stored document, a secret
    /// scheduled for deletion, a bad path); retrying does not help.
    #[error("{what}: invalid: {detail}")]
    Invalid {
        /// Backend and path or id.
        what: String,
        /// What is wrong.
        detail: String,
    },
}

fn suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

impl BackendError {
    /// Whether retrying the same call later may succeed without any change.
    pub fn is_transient(&self) -> bool {
        matches!(self, BackendError::Unavailable { .. })
    }

    /// CamelCase condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            BackendError::NotFound { .. } => crate::reasons::BACKEND_NOT_FOUND,
            BackendError::AccessDenied { .. } => crate::reasons::BACKEND_ACCESS_DENIED,
            BackendError::Conflict { .. } => crate::reasons::BACKEND_CONFLICT,
            BackendError::Unavailable { .. } => crate::reasons::BACKEND_UNAVAILABLE,
            BackendError::Invalid { .. } => crate::reasons::BACKEND_INVALID,
        }
    }

    /// Whether the backend refused Capstan's credentials ([`BackendError::AccessDenied`]):
    /// a Vault login token is then logged in afresh instead of being reused.
    pub fn is_access_denied(&self) -> bool {
        matches!(self, BackendError::AccessDenied { .. })
    }

    /// Whether this is a lost claim ([`BackendError::Conflict`]).
    pub fn is_conflict(&self) -> bool {
        matches!(self, BackendError::Conflict { .. })
    }

    pub(crate) fn conflict(what: &str, detail: impl Into<String>) -> Self {
        BackendError::Conflict {
            what: what.to_owned(),
            detail: detail.into(),
        }
    }

    pub(crate) fn invalid(what: &str, detail: impl Into<String>) -> Self {
        BackendError::Invalid {
            what: what.to_owned(),
            detail: detail.into(),
        }
    }

    /// The same error with every occurrence of `secrets` in its texts replaced by
    /// `[redacted]`: a last line of defence for messages that quote a server's answer.
    pub(crate) fn scrubbed(self, secrets: &[&SecretValue]) -> Self {
        let s = |t: String| crate::crd::scrub(&t, secrets);
        match self {
            BackendError::NotFound { what, detail } => BackendError::NotFound {
                what,
                detail: s(detail),
            },
            BackendError::AccessDenied { what, detail } => BackendError::AccessDenied {
                what,
                detail: s(detail),
            },
            BackendError::Conflict { what, detail } => BackendError::Conflict {
                what,
                detail: s(detail),
            },
            BackendError::Unavailable { what, detail } => BackendError::Unavailable {
                what,
                detail: s(detail),
            },
            BackendError::Invalid { what, detail } => BackendError::Invalid {
                what,
                detail: s(detail),
            },
        }
    }
}

impl Categorized for BackendError {
    fn category(&self) -> &'static str {
        match self {
            BackendError::NotFound { .. } => "backend_not_found",
            BackendError::AccessDenied { .. } => "backend_access_denied",
            BackendError::Conflict { .. } => "backend_conflict",
            BackendError::Unavailable { .. } => "backend_unavailable",
            BackendError::Invalid { .. } => "backend_invalid",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_deterministic_aws_shaped_and_distinct() {
        let a = RotationId::new("uid-1", 3, 1);
        assert_eq!(a.token(), a.clone().token());
        let t = a.token();
        assert!((32..=64).contains(&t.len()), "{t}");
        assert!(t.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        let others = [
            RotationId::new("uid-1", 3, 2),
            RotationId::new("uid-1", 4, 1),
            RotationId::new("uid-2", 3, 1),
            // Without a length prefix these two would encode alike.
            RotationId::new("uid-1:3", 1, 1),
        ];
        for o in &others {
            assert_ne!(o.token(), t, "{o:?}");
        }
        assert_ne!(
            RotationId::new("a:1", 2, 3).token(),
            RotationId::new("a", 12, 3).token()
        );
    }

    #[test]
    fn credentials_round_trip_through_aws_layout_keeping_other_keys() {
        let mut extra = Map::new();
        extra.insert("host".into(), Value::String("db".into()));
        extra.insert("password".into(), Value::String("old".into()));
        let c = Credential::new(Some("app".into()), SecretValue::new("p\"w{}"));
        let doc = c.to_json(&extra);
        let (back, rest) = Credential::from_json(&doc).expect("parses");
        assert_eq!(back, c);
        assert_eq!(rest.get("host"), Some(&Value::String("db".into())));
        assert!(!rest.contains_key("password"));
    }

    #[test]
    fn plain_strings_are_values_and_objects_need_a_password() {
        let (c, rest) = Credential::from_json(&SecretValue::new("plain")).expect("plain");
        assert_eq!(c.value.expose(), "plain");
        assert!(c.username.is_none() && rest.is_empty());
        assert!(Credential::from_json(&SecretValue::new(r#"{"username":"u"}"#)).is_none());
        let (c, _) = Credential::from_json(&SecretValue::new(r#"{"password":"x"}"#)).expect("x");
        assert!(c.username.is_none());
    }

    #[test]
    fn errors_have_reasons_categories_and_transience() {
        let e = BackendError::Unavailable {
            what: "Vault KV secret/a".into(),
            detail: "connection refused".into(),
        };
        assert!(e.is_transient());
        assert_eq!(e.reason(), crate::reasons::BACKEND_UNAVAILABLE);
        assert_eq!(e.category(), "backend_unavailable");
        let c = BackendError::conflict("k", "cas");
        assert!(c.is_conflict() && !c.is_transient());
        let leaked =
            BackendError::invalid("k", "near 's3cret'").scrubbed(&[&SecretValue::new("s3cret")]);
        assert!(!leaked.to_string().contains("s3cret"), "{leaked}");
    }
}
