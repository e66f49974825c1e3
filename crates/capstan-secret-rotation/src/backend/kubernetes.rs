//! Kubernetes Secret backend.
//!
//! Layout (the CRD's `backend.kubernetes`):
//!
//! - The Secret `secretName` (read by consumers) holds the current value under `key` and
//!   the username under `username` (database targets); the **previous** value under
//!   `<key>.previous` and `username.previous`. Previous lives in the same Secret so that
//!   promotion is one atomic update (current → previous, pending → current) guarded by
//!   the `resourceVersion` read: there is no moment with a lost or duplicated value. It is
//!   a tested value that consumers may legitimately fall back on (with `alternatingUsers`
//!   it still logs in), and a key with a dot is not a valid environment variable name, so
//!   `envFrom` skips it. Other keys (e.g. `host`) are left alone.
//! - The Secret `pendingSecretName` (default `<secretName>-pending`, which workloads must
//!   not mount) holds the pending value under the same keys, annotated with its rotation
//!   token ([`ROTATION_TOKEN_ANNOTATION`]); it is created, or updated with the
//!   `resourceVersion` read. Discarding or promoting empties it; it is never deleted.
//! - Annotations on `secretName` record which rotation tokens wrote the current and
//!   previous values ([`ROTATION_TOKEN_ANNOTATION`], [`PREVIOUS_TOKEN_ANNOTATION`]).
//!
//! Capstan never deletes either Secret and sets no owner reference on them (the garbage
//! collector would delete them with the SecretRotation).

use std::collections::BTreeMap;

use capstan_core::redact::SecretValue;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

use super::{BackendError, Credential, RotationId, SecretBackend, Version};
use crate::crd;

/// Annotation naming the rotation token that wrote the value (both Secrets).
pub const ROTATION_TOKEN_ANNOTATION: &str = "capstan.dev/rotation-token";
/// Annotation naming the rotation token that wrote the previous value.
pub const PREVIOUS_TOKEN_ANNOTATION: &str = "capstan.dev/previous-rotation-token";
/// Label put on both Secrets (`app.kubernetes.io/managed-by: capstan`).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Data key of the username.
pub const USERNAME_KEY: &str = "username";
/// Suffix of the keys holding the previous value.
pub const PREVIOUS_KEY_SUFFIX: &str = ".previous";

/// A Kubernetes Secret in the SecretRotation's namespace. The design is in this file's module documentation.
#[derive(Debug)]
pub struct KubernetesSecretBackend {
    api: Api<Secret>,
    namespace: String,
    name: String,
    pending_name: String,
    key: String,
    what: String,
    what_pending: String,
}

impl KubernetesSecretBackend {
    /// The backend of `spec` in `namespace` (the SecretRotation's).
    pub fn new(client: Client, namespace: &str, spec: &crd::KubernetesBackend) -> Self {
        let pending_name = spec.effective_pending_secret_name();
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            what: format!("Kubernetes Secret {namespace}/{}", spec.secret_name),
            what_pending: format!("Kubernetes Secret {namespace}/{pending_name}"),
            name: spec.secret_name.clone(),
            pending_name,
            key: spec.key.clone(),
        }
    }

    /// The Secret consumers read.
    pub fn secret_name(&self) -> &str {
        &self.name
    }

    /// The Secret holding the pending value.
    pub fn pending_secret_name(&self) -> &str {
        &self.pending_name
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn previous_key(&self) -> String {
        format!("{}{PREVIOUS_KEY_SUFFIX}", self.key)
    }

    fn kube_err(what: &str, e: kube::Error) -> BackendError {
        let what = what.to_owned();
        match e {
            kube::Error::Api(s) => {
                let detail = format!("{} {}: {}", s.code, s.reason, s.message);
                match s.code {
                    404 => BackendError::NotFound { what, detail },
                    401 | 403 => BackendError::AccessDenied { what, detail },
                    409 => BackendError::Conflict { what, detail },
                    429 | 500..=599 => BackendError::Unavailable { what, detail },
                    _ => BackendError::Invalid { what, detail },
                }
            }
            other => BackendError::Unavailable {
                what,
                detail: other.to_string(),
            },
        }
    }

    async fn get(&self, pending: bool) -> Result<Option<Secret>, BackendError> {
        let (name, what) = if pending {
            (&self.pending_name, &self.what_pending)
        } else {
            (&self.name, &self.what)
        };
        self.api
            .get_opt(name)
            .await
            .map_err(|e| Self::kube_err(what, e))
    }

    /// The credential under `value_key`/`user_key`, if the value key is there.
    fn credential(
        &self,
        what: &str,
        secret: &Secret,
        value_key: &str,
        user_key: &str,
    ) -> Result<Option<Credential>, BackendError> {
        let data = secret.data.as_ref();
        let Some(value) = data.and_then(|d| d.get(value_key)) else {
            return Ok(None);
        };
        let value = String::from_utf8(value.0.clone())
            .map_err(|_| BackendError::invalid(what, format!("key {value_key:?} is not UTF-8")))?;
        let username = match data.and_then(|d| d.get(user_key)) {
            Some(u) => Some(String::from_utf8(u.0.clone()).map_err(|_| {
                BackendError::invalid(what, format!("key {user_key:?} is not UTF-8"))
            })?),
            None => None,
        };
        Ok(Some(Credential::new(username, SecretValue::new(value))))
    }

    fn annotation(secret: &Secret, name: &str) -> Option<String> {
        secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(name))
            .cloned()
    }

    /// The id of the value in `secretName`: its rotation token, or
    /// `resourceVersion:<rv>` for a value Capstan did not write.
    fn current_id(secret: &Secret) -> String {
        Self::annotation(secret, ROTATION_TOKEN_ANNOTATION).unwrap_or_else(|| {
            format!(
                "resourceVersion:{}",
                secret.metadata.resource_version.as_deref().unwrap_or("")
            )
        })
    }

    fn current_version(&self, secret: &Secret) -> Result<Option<Version>, BackendError> {
        Ok(self
            .credential(&self.what, secret, &self.key, USERNAME_KEY)?
            .map(|credential| Version {
                id: Self::current_id(secret),
                credential,
                rotation_token: Self::annotation(secret, ROTATION_TOKEN_ANNOTATION),
            }))
    }

    fn pending_of(&self, secret: &Secret, token: &str) -> Result<Option<Version>, BackendError> {
        if Self::annotation(secret, ROTATION_TOKEN_ANNOTATION).as_deref() != Some(token) {
            return Ok(None);
        }
        Ok(self
            .credential(&self.what_pending, secret, &self.key, USERNAME_KEY)?
            .map(|credential| Version {
                id: token.to_owned(),
                credential,
                rotation_token: Some(token.to_owned()),
            }))
    }

    fn check_keys(&self, credential: &Credential) -> Result<(), BackendError> {
        if credential.username.is_some() && (self.key == USERNAME_KEY) {
            return Err(BackendError::invalid(
                &self.what,
                "key \"username\" would hold both the value and the username; choose another key",
            ));
        }
        Ok(())
    }

    fn put_credential(
        &self,
        data: &mut BTreeMap<String, ByteString>,
        credential: &Credential,
        value_key: &str,
        user_key: &str,
    ) {
        data.insert(
            value_key.to_owned(),
            ByteString(credential.value.expose().as_bytes().to_vec()),
        );
        match &credential.username {
            Some(u) => {
                data.insert(user_key.to_owned(), ByteString(u.as_bytes().to_vec()));
            }
            None => {
                data.remove(user_key);
            }
        }
    }

    fn new_meta(&self, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(self.namespace.clone()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_owned(),
                "capstan".to_owned(),
            )])),
            ..ObjectMeta::default()
        }
    }

    async fn write(
        &self,
        pending: bool,
        secret: &Secret,
        secrets: &[&SecretValue],
    ) -> Result<Secret, BackendError> {
        let what = if pending {
            &self.what_pending
        } else {
            &self.what
        };
        let pp = PostParams {
            field_manager: Some("capstan-secret-rotation".to_owned()),
            ..PostParams::default()
        };
        let res = if secret.metadata.resource_version.is_some() {
            let name = secret.metadata.name.as_deref().unwrap_or_default();
            self.api.replace(name, &pp, secret).await
        } else {
            self.api.create(&pp, secret).await
        };
        res.map_err(|e| Self::kube_err(what, e).scrubbed(secrets))
    }

    /// Empties the pending Secret if it still holds `token`'s value. A lost race (409)
    /// means someone else rewrote it: nothing of ours to clear.
    async fn clear_pending(&self, token: &str) -> Result<(), BackendError> {
        let Some(mut p) = self.get(true).await? else {
            return Ok(());
        };
        if Self::annotation(&p, ROTATION_TOKEN_ANNOTATION).as_deref() != Some(token) {
            return Ok(());
        }
        p.data = None;
        p.string_data = None;
        if let Some(a) = p.metadata.annotations.as_mut() {
            a.remove(ROTATION_TOKEN_ANNOTATION);
        }
        match self.write(true, &p, &[]).await {
            Ok(_) | Err(BackendError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[async_trait::async_trait]
impl SecretBackend for KubernetesSecretBackend {
    async fn current(&self) -> Result<Option<Version>, BackendError> {
        match self.get(false).await? {
            Some(s) => self.current_version(&s),
            None => Ok(None),
        }
    }

    async fn previous(&self) -> Result<Option<Version>, BackendError> {
        let Some(s) = self.get(false).await? else {
            return Ok(None);
        };
        let user_key = format!("{USERNAME_KEY}{PREVIOUS_KEY_SUFFIX}");
        Ok(self
            .credential(&self.what, &s, &self.previous_key(), &user_key)?
            .map(|credential| {
                let token = Self::annotation(&s, PREVIOUS_TOKEN_ANNOTATION);
                Version {
                    id: token.clone().unwrap_or_else(|| "unknown".to_owned()),
                    credential,
                    rotation_token: token.filter(|t| !t.starts_with("resourceVersion:")),
                }
            }))
    }

    async fn pending(&self, id: &RotationId) -> Result<Option<Version>, BackendError> {
        match self.get(true).await? {
            Some(s) => self.pending_of(&s, &id.token()),
            None => Ok(None),
        }
    }

    async fn put_pending(
        &self,
        id: &RotationId,
        credential: &Credential,
    ) -> Result<Version, BackendError> {
        self.check_keys(credential)?;
        let token = id.token();
        let existing = self.get(true).await?;
        if let Some(s) = &existing
            && let Some(v) = self.pending_of(s, &token)?
        {
            return Ok(v);
        }
        let mut secret = existing.unwrap_or_else(|| Secret {
            metadata: self.new_meta(&self.pending_name),
            type_: Some("Opaque".to_owned()),
            ..Secret::default()
        });
        let mut data = BTreeMap::new();
        self.put_credential(&mut data, credential, &self.key, USERNAME_KEY);
        secret.data = Some(data);
        secret.string_data = None;
        secret
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(ROTATION_TOKEN_ANNOTATION.to_owned(), token.clone());
        self.write(true, &secret, &[&credential.value]).await?;
        Ok(Version {
            id: token.clone(),
            credential: credential.clone(),
            rotation_token: Some(token),
        })
    }

    async fn promote_if_current(
        &self,
        id: &RotationId,
        expected_current: Option<&str>,
    ) -> Result<Version, BackendError> {
        let token = id.token();
        let main = self.get(false).await?;
        if let Some(m) = &main
            && Self::annotation(m, ROTATION_TOKEN_ANNOTATION).as_deref() == Some(token.as_str())
        {
            self.clear_pending(&token).await?;
            return self.current_version(m)?.ok_or_else(|| {
                BackendError::conflict(&self.what, "the promoted value was removed")
            });
        }
        let pending = match self.get(true).await? {
            Some(p) => self.pending_of(&p, &token)?,
            None => None,
        };
        let Some(pending) = pending else {
            return Err(BackendError::conflict(
                &self.what_pending,
                format!(
                    "no pending value of rotation token {token}: another attempt replaced it or it was discarded"
                ),
            ));
        };
        let current = match &main {
            Some(m) => self.current_version(m)?,
            None => None,
        };
        let actual = current.as_ref().map(|v| v.id.as_str());
        if actual != expected_current {
            return Err(BackendError::conflict(
                &self.what,
                format!(
                    "current version is {} but {} was expected",
                    actual.unwrap_or("(none)"),
                    expected_current.unwrap_or("(none)")
                ),
            ));
        }
        let mut secret = main.unwrap_or_else(|| Secret {
            metadata: self.new_meta(&self.name),
            type_: Some("Opaque".to_owned()),
            ..Secret::default()
        });
        let mut data = secret.data.take().unwrap_or_default();
        let annotations = secret
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new);
        let previous_user_key = format!("{USERNAME_KEY}{PREVIOUS_KEY_SUFFIX}");
        match &current {
            Some(cur) => {
                self.put_credential(
                    &mut data,
                    &cur.credential,
                    &self.previous_key(),
                    &previous_user_key,
                );
                annotations.insert(PREVIOUS_TOKEN_ANNOTATION.to_owned(), cur.id.clone());
            }
            None => {
                data.remove(&self.previous_key());
                data.remove(&previous_user_key);
                annotations.remove(PREVIOUS_TOKEN_ANNOTATION);
            }
        }
        annotations.insert(ROTATION_TOKEN_ANNOTATION.to_owned(), token.clone());
        self.put_credential(&mut data, &pending.credential, &self.key, USERNAME_KEY);
        secret.data = Some(data);
        let mut secrets = vec![&pending.credential.value];
        if let Some(c) = &current {
            secrets.push(&c.credential.value);
        }
        let written = self.write(false, &secret, &secrets).await?;
        self.clear_pending(&token).await?;
        self.current_version(&written)?
            .ok_or_else(|| BackendError::conflict(&self.what, "the promoted value was removed"))
    }

    async fn discard_pending(&self, id: &RotationId) -> Result<(), BackendError> {
        let token = id.token();
        let Some(mut p) = self.get(true).await? else {
            return Ok(());
        };
        if self.pending_of(&p, &token)?.is_none() {
            return Ok(());
        }
        p.data = None;
        p.string_data = None;
        if let Some(a) = p.metadata.annotations.as_mut() {
            a.remove(ROTATION_TOKEN_ANNOTATION);
        }
        self.write(true, &p, &[]).await?;
        Ok(())
    }
}
