//! [`TransitKeyTarget`]: a Vault/OpenBao transit key.
//!
//! A rotation makes a new key version and delivers the key's name and that version,
//! never key material: the stored "credential" is the key name (its `username`) and the
//! version number (its value), which the `key` and `version` template variables render.
//!
//! - CreatePending (`issue`): `POST <mount>/keys/<name>/rotate`, then the new
//!   `latest_version`. The rotation records the latest version in its status before it
//!   first rotates; a version beyond it (made by an attempt that died before storing
//!   it) is taken instead of rotating again, so a crash never makes two versions for
//!   one rotation.
//! - SetTarget: raises `min_decryption_version` / `min_encryption_version` to the values
//!   the spec names, and only then: never on a timer, never lowered, never by trimming
//!   versions. Capstan cannot know whether the data under older versions has been
//!   rewrapped; a person who has rewrapped it names the minimum. A minimum above the
//!   latest version is refused and nothing is changed.
//! - TestTarget: encrypts a probe with the key and decrypts it, and checks that the
//!   ciphertext carries the version being delivered.
//!
//! Vault's answers are read for versions and times only; no key material is requested
//! (`exportable` keys are never exported).

use capstan_core::redact::SecretValue;
use reqwest::Method;
use serde_json::{Value, json};

use super::{CredentialTarget, TargetError};
use crate::backend::{BackendError, VaultClient};
use crate::crd;

/// A transit key of one Vault/OpenBao.
#[derive(Debug)]
pub struct TransitKeyTarget {
    vault: VaultClient,
    mount: String,
    key: String,
    min_decryption: Option<i64>,
    min_encryption: Option<i64>,
    name: String,
}

/// What `GET <mount>/keys/<name>` says (versions and times only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// `latest_version`.
    pub latest: i64,
    /// `min_decryption_version`.
    pub min_decryption: i64,
    /// `min_encryption_version` (0: the latest).
    pub min_encryption: i64,
}

impl KeyInfo {
    fn parse(data: &Value) -> Option<Self> {
        let latest = data.get("latest_version")?.as_i64()?;
        Some(Self {
            latest,
            min_decryption: data
                .get("min_decryption_version")
                .and_then(Value::as_i64)
                .unwrap_or(1),
            min_encryption: data
                .get("min_encryption_version")
                .and_then(Value::as_i64)
                .unwrap_or(0),
        })
    }
}

impl TransitKeyTarget {
    /// The target of `spec`, called through `vault`.
    pub fn new(vault: VaultClient, spec: &crd::VaultTransitKeyTarget) -> Self {
        Self {
            name: format!("Vault transit key {}/{}", spec.mount, spec.key),
            vault,
            mount: spec.mount.clone(),
            key: spec.key.clone(),
            min_decryption: spec.min_decryption_version,
            min_encryption: spec.min_encryption_version,
        }
    }

    fn error(&self, e: BackendError) -> TargetError {
        let target = self.name.clone();
        match e {
            BackendError::AccessDenied { .. } => TargetError::AccessDenied {
                target,
                detail: e.to_string(),
            },
            BackendError::Unavailable { .. } => TargetError::Unavailable {
                target,
                detail: e.to_string(),
            },
            _ => TargetError::Invalid {
                target,
                detail: e.to_string(),
            },
        }
    }

    /// The key's versions and minimums.
    pub async fn info(&self) -> Result<KeyInfo, TargetError> {
        let body = self
            .vault
            .request(
                &self.name,
                Method::GET,
                &format!("{}/keys/{}", self.mount, self.key),
                None,
            )
            .await
            .map_err(|e| self.error(e))?;
        KeyInfo::parse(&body["data"]).ok_or_else(|| TargetError::Invalid {
            target: self.name.clone(),
            detail: "Vault's answer has no latest_version".into(),
        })
    }

    /// The minimums to set: the spec's, where they raise what Vault has.
    fn raises(&self, info: &KeyInfo) -> Result<Option<Value>, TargetError> {
        let mut config = serde_json::Map::new();
        for (field, want, have) in [
            (
                "min_decryption_version",
                self.min_decryption,
                info.min_decryption,
            ),
            (
                "min_encryption_version",
                self.min_encryption,
                info.min_encryption,
            ),
        ] {
            let Some(want) = want else { continue };
            if want > info.latest {
                return Err(TargetError::Invalid {
                    target: self.name.clone(),
                    detail: format!(
                        "{field} {want} is above the key's latest version {}",
                        info.latest
                    ),
                });
            }
            if want > have {
                config.insert(field.into(), json!(want));
            }
        }
        Ok((!config.is_empty()).then_some(Value::Object(config)))
    }
}

#[async_trait::async_trait]
impl CredentialTarget for TransitKeyTarget {
    async fn check(&self) -> Result<(), TargetError> {
        self.info().await.map(|_| ())
    }

    async fn ensure_user(&self, _username: &str, _like: Option<&str>) -> Result<(), TargetError> {
        Ok(())
    }

    /// Raises the minimums the spec names (the version itself was made by `issue`).
    async fn set_password(&self, _key: &str, version: &SecretValue) -> Result<(), TargetError> {
        let info = self.info().await?;
        let made: i64 = version.expose().parse().unwrap_or(0);
        if made > info.latest || made < 1 {
            return Err(TargetError::Invalid {
                target: self.name.clone(),
                detail: format!(
                    "version {} is not a version of the key (latest {})",
                    version.expose(),
                    info.latest
                ),
            });
        }
        if let Some(config) = self.raises(&info)? {
            self.vault
                .request(
                    &self.name,
                    Method::POST,
                    &format!("{}/keys/{}/config", self.mount, self.key),
                    Some(&config),
                )
                .await
                .map_err(|e| self.error(e))?;
            tracing::info!(target_kind = "vaultTransitKey", key = %self.key, config = %config, "raised the key's minimum versions to the spec's");
        }
        Ok(())
    }

    /// Encrypts a probe and decrypts it; the ciphertext must carry `version`.
    async fn test_login(&self, _key: &str, version: &SecretValue) -> Result<(), TargetError> {
        use base64::Engine;
        let probe = base64::engine::general_purpose::STANDARD.encode("capstan transit probe");
        let enc = self
            .vault
            .request(
                &self.name,
                Method::POST,
                &format!("{}/encrypt/{}", self.mount, self.key),
                Some(&json!({ "plaintext": probe })),
            )
            .await
            .map_err(|e| self.error(e))?;
        let ciphertext = enc["data"]["ciphertext"].as_str().unwrap_or_default();
        let prefix = format!("vault:v{}:", version.expose());
        if !ciphertext.starts_with(&prefix) {
            return Err(TargetError::LoginFailed {
                target: self.name.clone(),
                user: self.key.clone(),
                detail: format!(
                    "encryption used {}, not version {}",
                    ciphertext.split(':').nth(1).unwrap_or("no version"),
                    version.expose()
                ),
            });
        }
        let dec = self
            .vault
            .request(
                &self.name,
                Method::POST,
                &format!("{}/decrypt/{}", self.mount, self.key),
                Some(&json!({ "ciphertext": ciphertext })),
            )
            .await
            .map_err(|e| self.error(e))?;
        if dec["data"]["plaintext"].as_str() != Some(probe.as_str()) {
            return Err(TargetError::LoginFailed {
                target: self.name.clone(),
                user: self.key.clone(),
                detail: "the probe did not decrypt to itself".into(),
            });
        }
        Ok(())
    }

    fn issues_values(&self) -> bool {
        true
    }

    async fn inventory(&self, _stored: Option<&SecretValue>) -> Result<Vec<String>, TargetError> {
        Ok(vec![self.info().await?.latest.to_string()])
    }

    async fn issue(
        &self,
        _keep: &[String],
        preexisting: &[String],
    ) -> Result<(String, SecretValue), TargetError> {
        let before = self.info().await?;
        // A minimum the rotation could never satisfy is refused before anything changes.
        self.raises(&KeyInfo {
            latest: before.latest + 1,
            ..before.clone()
        })?;
        // A version beyond the latest one before this rotation first issued is this
        // rotation's (an attempt that died before storing it): take it rather than
        // make another.
        let base = preexisting
            .iter()
            .filter_map(|v| v.parse::<i64>().ok())
            .max();
        if base.is_some_and(|b| before.latest > b) {
            return Ok((
                self.key.clone(),
                SecretValue::new(before.latest.to_string()),
            ));
        }
        self.vault
            .request(
                &self.name,
                Method::POST,
                &format!("{}/keys/{}/rotate", self.mount, self.key),
                None,
            )
            .await
            .map_err(|e| self.error(e))?;
        capstan_core::failpoints::crash_point("secret-rotation::transit-after-rotate");
        let after = self.info().await?;
        Ok((self.key.clone(), SecretValue::new(after.latest.to_string())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_info_reads_versions_and_minimums() {
        let aes = json!({"latest_version": 3, "min_decryption_version": 2,
            "min_encryption_version": 0, "keys": {"1": 100, "2": 200, "3": 300}});
        assert_eq!(
            KeyInfo::parse(&aes),
            Some(KeyInfo {
                latest: 3,
                min_decryption: 2,
                min_encryption: 0,
            })
        );
        assert_eq!(
            KeyInfo::parse(&json!({"latest_version": 1})),
            Some(KeyInfo {
                latest: 1,
                min_decryption: 1,
                min_encryption: 0,
            })
        );
        assert_eq!(KeyInfo::parse(&json!({})), None);
    }
}
