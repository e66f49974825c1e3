//! [`IamKeyTarget`]: an IAM user's access key.
//!
//! IAM issues the value, so this target implements [`CredentialTarget::issue`]: the
//! pending credential is a new access key (its id as the credential's username, its
//! secret as the value), made in CreatePending before anything is stored.
//!
//! IAM allows two keys per user, and the protocol never needs a third. Before it
//! creates one, `issue` looks at the user's keys and deletes each one the backend does
//! not hold that is either inactive (the previous key in its grace period, or one
//! someone deactivated) or was not there before this rotation first issued one (the
//! rotation records the user's key ids in its status first): the key of an attempt
//! that died before storing it, or whose test failed. An active key that
//! Capstan does not hold and did not make is somebody's: with two such, or one beside
//! the current, the rotation is refused with a message naming it, and nothing is
//! created.
//!
//! - SetTarget: the key exists and is active (nothing to set).
//! - TestTarget: STS GetCallerIdentity signed with the key must answer with the user's
//!   ARN; retried for up to [`CONSISTENCY_WAIT`] while IAM's eventual consistency
//!   refuses a fresh key.
//! - After delivery (`retire`): the other keys are deactivated, and deleted once the
//!   grace period has passed.
//!
//! Crash points (tests): `secret-rotation::iam-after-create-key` (the key made, not
//! stored).

use std::time::Duration;

use capstan_aws::iam::{IamError, SdkIam};
use capstan_core::redact::SecretValue;

use super::{CredentialTarget, TargetError};
use crate::crd;

/// How long a fresh key's test is retried while STS refuses it as unknown (IAM is
/// eventually consistent: a new key can take seconds to be accepted everywhere).
pub const CONSISTENCY_WAIT: Duration = Duration::from_secs(30);

/// The access keys of one IAM user.
#[derive(Debug)]
pub struct IamKeyTarget {
    iam: SdkIam,
    user: String,
    grace: Duration,
    name: String,
    consistency_wait: Duration,
}

impl IamKeyTarget {
    /// The target of `spec`, called through `iam`.
    pub fn new(iam: SdkIam, spec: &crd::IamAccessKeyTarget) -> Self {
        Self {
            iam,
            user: spec.user_name.clone(),
            grace: spec.grace().unwrap_or(Duration::from_secs(1)),
            name: format!("IAM user {:?}", spec.user_name),
            consistency_wait: CONSISTENCY_WAIT,
        }
    }

    /// The user's ARN and path (for the scope check before anything changes).
    pub async fn user(&self) -> Result<capstan_aws::iam::IamUser, TargetError> {
        self.iam.user(&self.user).await.map_err(|e| self.error(e))
    }

    fn error(&self, e: IamError) -> TargetError {
        let target = self.name.clone();
        match e {
            IamError::NotFound { .. } => TargetError::Invalid {
                target,
                detail: e.to_string(),
            },
            IamError::AccessDenied { .. } => TargetError::AccessDenied {
                target,
                detail: e.to_string(),
            },
            IamError::KeyRefused { .. } => TargetError::LoginFailed {
                target,
                user: self.user.clone(),
                detail: e.to_string(),
            },
            IamError::Unavailable { .. } => TargetError::Unavailable {
                target,
                detail: e.to_string(),
            },
            IamError::LimitExceeded { .. } | IamError::Invalid { .. } => TargetError::Invalid {
                target,
                detail: e.to_string(),
            },
        }
    }
}

#[async_trait::async_trait]
impl CredentialTarget for IamKeyTarget {
    async fn check(&self) -> Result<(), TargetError> {
        self.user().await?;
        self.iam
            .keys(&self.user)
            .await
            .map(|_| ())
            .map_err(|e| self.error(e))
    }

    async fn ensure_user(&self, _username: &str, _like: Option<&str>) -> Result<(), TargetError> {
        Ok(())
    }

    /// The key was made by `issue`: it must still exist and be active.
    async fn set_password(&self, key_id: &str, _password: &SecretValue) -> Result<(), TargetError> {
        let keys = self.iam.keys(&self.user).await.map_err(|e| self.error(e))?;
        match keys.iter().find(|k| k.id == key_id) {
            Some(k) if k.active => Ok(()),
            Some(_) => Err(TargetError::Invalid {
                target: self.name.clone(),
                detail: format!("access key {key_id} was deactivated before it was tested"),
            }),
            None => Err(TargetError::NotFound {
                target: self.name.clone(),
                user: key_id.to_owned(),
            }),
        }
    }

    async fn test_login(&self, key_id: &str, secret: &SecretValue) -> Result<(), TargetError> {
        let want = self.user().await?.arn;
        let deadline = tokio::time::Instant::now() + self.consistency_wait;
        let mut delay = Duration::from_millis(500);
        loop {
            match self.iam.caller_of(key_id, secret).await {
                Ok(arn) if arn == want => return Ok(()),
                Ok(arn) => {
                    return Err(TargetError::LoginFailed {
                        target: self.name.clone(),
                        user: key_id.to_owned(),
                        detail: format!("the key signs as {arn}, not as {want}"),
                    });
                }
                Err(IamError::KeyRefused { .. })
                    if tokio::time::Instant::now() + delay < deadline =>
                {
                    // IAM's eventual consistency: a fresh key is not accepted everywhere yet.
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(self.error(e).scrubbed(&[secret])),
            }
        }
    }

    fn issues_values(&self) -> bool {
        true
    }

    async fn inventory(&self, _stored: Option<&SecretValue>) -> Result<Vec<String>, TargetError> {
        let keys = self.iam.keys(&self.user).await.map_err(|e| self.error(e))?;
        Ok(keys.into_iter().map(|k| k.id).collect())
    }

    async fn issue(
        &self,
        keep: &[String],
        preexisting: &[String],
    ) -> Result<(String, SecretValue), TargetError> {
        let keys = self.iam.keys(&self.user).await.map_err(|e| self.error(e))?;
        let mut left = Vec::new();
        for k in keys.iter().filter(|k| !keep.contains(&k.id)) {
            // Inactive, or made by this rotation (not there before it first issued one).
            if !k.active || !preexisting.contains(&k.id) {
                self.iam
                    .delete_key(&self.user, &k.id)
                    .await
                    .map_err(|e| self.error(e))?;
                tracing::info!(target_kind = "iamAccessKey", user = %self.user, key = %k.id, active = k.active, "deleted an access key Capstan does not hold, to make room for the new one");
            } else {
                left.push(k.id.clone());
            }
        }
        let held = keys.iter().filter(|k| keep.contains(&k.id)).count();
        if held + left.len() >= 2 {
            return Err(TargetError::Invalid {
                target: self.name.clone(),
                detail: format!(
                    "the user already has two access keys and {} active one(s) Capstan does not hold ({}); IAM allows two, so delete or deactivate one and Capstan will issue the new key",
                    left.len(),
                    left.join(", ")
                ),
            });
        }
        let (id, secret) = self
            .iam
            .create_key(&self.user)
            .await
            .map_err(|e| self.error(e))?;
        capstan_core::failpoints::crash_point("secret-rotation::iam-after-create-key");
        Ok((id, secret))
    }

    fn grace_period(&self) -> Option<Duration> {
        Some(self.grace)
    }

    async fn retire(&self, keep: &str, delete: bool) -> Result<Vec<String>, TargetError> {
        let keys = self.iam.keys(&self.user).await.map_err(|e| self.error(e))?;
        if !keys.iter().any(|k| k.id == keep) {
            return Err(TargetError::Invalid {
                target: self.name.clone(),
                detail: format!("the delivered access key {keep} is gone; nothing else is retired"),
            });
        }
        let mut done = Vec::new();
        for k in keys.iter().filter(|k| k.id != keep) {
            if delete {
                self.iam
                    .delete_key(&self.user, &k.id)
                    .await
                    .map_err(|e| self.error(e))?;
                done.push(k.id.clone());
            } else if k.active {
                self.iam
                    .set_active(&self.user, &k.id, false)
                    .await
                    .map_err(|e| self.error(e))?;
                done.push(k.id.clone());
            }
        }
        Ok(done)
    }
}
