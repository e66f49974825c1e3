//! AWS Secrets Manager backend: AWS's own staging labels.
//!
//! - pending: PutSecretValue with `ClientRequestToken` = [`RotationId::token`] and the
//!   label `AWSPENDING`. The token becomes the `VersionId`, so a retry never creates a
//!   second version; putting a new pending value moves `AWSPENDING` off the old one, which
//!   loses its claim.
//! - promote: `AWSCURRENT` is moved to the token's version with `RemoveFromVersionId` =
//!   the current version read, which Secrets Manager checks (a compare-and-swap); it moves
//!   `AWSPREVIOUS` to the old version itself. Then `AWSPENDING` is removed.
//! - discard: `AWSPENDING` is removed from the token's version.
//!
//! A secret that does not exist is created without a value on the first `put_pending`.
//! Secrets Manager labels the first version of a secret `AWSCURRENT` whatever the caller
//! asks, so on a brand-new secret the first pending value is also current (there is no
//! older value consumers could be reading); `promote` then only removes `AWSPENDING`, and
//! `discard_pending` leaves it current.

use capstan_aws::secrets_manager::{
    AWSCURRENT, AWSPENDING, AWSPREVIOUS, SdkSecretsManager, SecretDescription, SecretsManagerApi,
    SecretsManagerError, VersionSelector,
};
use serde_json::Map;

use super::{BackendError, Credential, RotationId, SecretBackend, Version};
use crate::crd;

/// A secret in AWS Secrets Manager. The design is in this file's module documentation.
#[derive(Debug)]
pub struct AwsSecretsManagerBackend<A: SecretsManagerApi = SdkSecretsManager> {
    api: A,
    secret_id: String,
    kms_key_id: Option<String>,
    what: String,
}

impl AwsSecretsManagerBackend<SdkSecretsManager> {
    /// The backend of `spec` with an SDK client (e.g. `capstan_aws::AwsClients::secrets_manager`).
    pub fn from_client(
        client: aws_sdk_secretsmanager::Client,
        spec: &crd::AwsSecretsManagerBackend,
    ) -> Self {
        Self::new(SdkSecretsManager::new(client), spec)
    }
}

impl<A: SecretsManagerApi> AwsSecretsManagerBackend<A> {
    /// The backend of `spec` over any [`SecretsManagerApi`].
    pub fn new(api: A, spec: &crd::AwsSecretsManagerBackend) -> Self {
        Self {
            api,
            secret_id: spec.secret_id.clone(),
            kms_key_id: spec.kms_key_id.clone(),
            what: format!("AWS Secrets Manager secret {:?}", spec.secret_id),
        }
    }

    /// The API client.
    pub fn api(&self) -> &A {
        &self.api
    }

    /// The secret's name or ARN.
    pub fn secret_id(&self) -> &str {
        &self.secret_id
    }

    fn err(&self, e: SecretsManagerError) -> BackendError {
        let what = self.what.clone();
        match e {
            SecretsManagerError::NotFound { message, .. } => BackendError::NotFound {
                what,
                detail: message,
            },
            SecretsManagerError::AlreadyExists { message, .. } => BackendError::Conflict {
                what,
                detail: message,
            },
            SecretsManagerError::AccessDenied { code, message, .. } => BackendError::AccessDenied {
                what,
                detail: format!("{code}: {message}"),
            },
            SecretsManagerError::Invalid { code, message, .. } => BackendError::Invalid {
                what,
                detail: format!("{code}: {message}"),
            },
            SecretsManagerError::Unavailable { message, .. } => BackendError::Unavailable {
                what,
                detail: message,
            },
        }
    }

    /// DescribeSecret, `None` if the secret does not exist.
    async fn describe(&self) -> Result<Option<SecretDescription>, BackendError> {
        match self.api.describe_secret(&self.secret_id).await {
            Ok(d) => Ok(Some(d)),
            Err(SecretsManagerError::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(e)),
        }
    }

    async fn read(&self, version_id: &str) -> Result<Version, BackendError> {
        let s = self
            .api
            .get_secret_value(&self.secret_id, VersionSelector::Id(version_id))
            .await
            .map_err(|e| self.err(e))?;
        let (credential, _) = Credential::from_json(&s.value).ok_or_else(|| {
            BackendError::invalid(
                &self.what,
                format!("version {version_id} is a JSON object without a string \"password\""),
            )
        })?;
        Ok(Version {
            id: s.version_id.clone(),
            credential,
            // Secrets Manager makes the ClientRequestToken the VersionId.
            rotation_token: Some(s.version_id),
        })
    }

    async fn read_stage(&self, stage: &str) -> Result<Option<Version>, BackendError> {
        let Some(d) = self.describe().await? else {
            return Ok(None);
        };
        match d.version_with(stage) {
            Some(v) => self.read(&v.version_id).await.map(Some),
            None => Ok(None),
        }
    }

    /// The keys of the current value other than `username` and `password` (`host`,
    /// `port`, `dbname`, `engine` in AWS's layout), carried into the new value.
    async fn current_extras(
        &self,
        d: &SecretDescription,
    ) -> Result<Map<String, serde_json::Value>, BackendError> {
        let Some(cur) = d.version_with(AWSCURRENT) else {
            return Ok(Map::new());
        };
        let s = self
            .api
            .get_secret_value(&self.secret_id, VersionSelector::Id(&cur.version_id))
            .await
            .map_err(|e| self.err(e))?;
        Ok(Credential::from_json(&s.value)
            .map(|(_, extra)| extra)
            .unwrap_or_default())
    }
}

#[async_trait::async_trait]
impl<A: SecretsManagerApi> SecretBackend for AwsSecretsManagerBackend<A> {
    async fn current(&self) -> Result<Option<Version>, BackendError> {
        self.read_stage(AWSCURRENT).await
    }

    async fn previous(&self) -> Result<Option<Version>, BackendError> {
        self.read_stage(AWSPREVIOUS).await
    }

    async fn pending(&self, id: &RotationId) -> Result<Option<Version>, BackendError> {
        let token = id.token();
        let Some(d) = self.describe().await? else {
            return Ok(None);
        };
        match d.version(&token) {
            Some(v) if v.has(AWSPENDING) => self.read(&token).await.map(Some),
            _ => Ok(None),
        }
    }

    async fn put_pending(
        &self,
        id: &RotationId,
        credential: &Credential,
    ) -> Result<Version, BackendError> {
        let token = id.token();
        let d = match self.describe().await? {
            Some(d) => d,
            None => {
                match self
                    .api
                    .create_secret(
                        &self.secret_id,
                        self.kms_key_id.as_deref(),
                        "Rotated by Capstan (SecretRotation)",
                    )
                    .await
                {
                    // Created meanwhile by a concurrent writer: fine, it has no value yet
                    // or the checks below see it.
                    Ok(_) | Err(SecretsManagerError::AlreadyExists { .. }) => {}
                    Err(e) => return Err(self.err(e)),
                }
                self.describe()
                    .await?
                    .ok_or_else(|| BackendError::NotFound {
                        what: self.what.clone(),
                        detail: "not found right after CreateSecret".into(),
                    })?
            }
        };
        if d.deleted {
            return Err(BackendError::invalid(
                &self.what,
                "the secret is scheduled for deletion; restore it (RestoreSecret) first",
            ));
        }
        if let Some(v) = d.version(&token) {
            if v.has(AWSPENDING) || v.has(AWSCURRENT) {
                // A retry: the value stored for this attempt, whatever was passed now.
                return self.read(&token).await;
            }
            return Err(BackendError::conflict(
                &self.what,
                format!(
                    "the version of rotation token {token} lost AWSPENDING: another attempt replaced it"
                ),
            ));
        }
        let extra = self.current_extras(&d).await?;
        let doc = credential.to_json(&extra);
        let version_id = self
            .api
            .put_secret_value(&self.secret_id, &token, &doc, &[AWSPENDING])
            .await
            .map_err(|e| self.err(e).scrubbed(&[&doc, &credential.value]))?;
        Ok(Version {
            id: version_id,
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
        let d = self
            .describe()
            .await?
            .ok_or_else(|| BackendError::NotFound {
                what: self.what.clone(),
                detail: String::new(),
            })?;
        let mine = d.version(&token);
        if mine.is_some_and(|v| v.has(AWSCURRENT)) {
            // Already promoted (or the first version of a new secret): drop the pending
            // label if it is still there.
            if mine.is_some_and(|v| v.has(AWSPENDING)) {
                self.api
                    .update_secret_version_stage(&self.secret_id, AWSPENDING, None, Some(&token))
                    .await
                    .map_err(|e| self.err(e))?;
            }
            return self.read(&token).await;
        }
        if !mine.is_some_and(|v| v.has(AWSPENDING)) {
            return Err(BackendError::conflict(
                &self.what,
                format!(
                    "no AWSPENDING version of rotation token {token}: another attempt replaced it or it was discarded"
                ),
            ));
        }
        let current = d.version_with(AWSCURRENT).map(|v| v.version_id.clone());
        if current.as_deref() != expected_current {
            return Err(BackendError::conflict(
                &self.what,
                format!(
                    "AWSCURRENT is on version {} but {} was expected",
                    current.as_deref().unwrap_or("(none)"),
                    expected_current.unwrap_or("(none)")
                ),
            ));
        }
        if let Err(e) = self
            .api
            .update_secret_version_stage(
                &self.secret_id,
                AWSCURRENT,
                Some(&token),
                current.as_deref(),
            )
            .await
        {
            // RemoveFromVersionId no longer holds AWSCURRENT: someone moved it meanwhile.
            let moved = self
                .describe()
                .await?
                .and_then(|d| d.version_with(AWSCURRENT).map(|v| v.version_id.clone()));
            if moved != current {
                return Err(BackendError::conflict(
                    &self.what,
                    format!(
                        "AWSCURRENT moved to version {} while promoting",
                        moved.as_deref().unwrap_or("(none)")
                    ),
                ));
            }
            return Err(self.err(e));
        }
        self.api
            .update_secret_version_stage(&self.secret_id, AWSPENDING, None, Some(&token))
            .await
            .map_err(|e| self.err(e))?;
        self.read(&token).await
    }

    async fn discard_pending(&self, id: &RotationId) -> Result<(), BackendError> {
        let token = id.token();
        let Some(d) = self.describe().await? else {
            return Ok(());
        };
        if d.version(&token).is_some_and(|v| v.has(AWSPENDING)) {
            match self
                .api
                .update_secret_version_stage(&self.secret_id, AWSPENDING, None, Some(&token))
                .await
            {
                Ok(()) => {}
                // Moved off meanwhile (another attempt put its value): nothing to drop.
                Err(SecretsManagerError::Invalid { .. })
                    if !self
                        .describe()
                        .await?
                        .and_then(|d| d.version(&token).map(|v| v.has(AWSPENDING)))
                        .unwrap_or(false) => {}
                Err(e) => return Err(self.err(e)),
            }
        }
        Ok(())
    }
}
