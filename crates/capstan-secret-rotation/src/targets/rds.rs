//! [`RdsMasterTarget`]: the master password of an RDS DB instance or Aurora DB cluster.
//!
//! - `check`: the instance exists, its master user is the one the spec names, and RDS
//!   does not manage its password itself (unless the spec turns that off).
//! - `set_password_fenced`: the fence goes into the tag [`FENCE_TAG`] first (a newer
//!   fence of the same object refuses the write), then ModifyDBInstance/ModifyDBCluster
//!   with `ApplyImmediately`, then a bounded wait until RDS reports the instance
//!   `available` with no change pending. A retry of the same attempt (a takeover, a
//!   wait that ran out) finds its own fence: it waits for a change still pending, and
//!   once settled logs in with the value before sending it again, so an applied change
//!   is never repeated. RDS has no compare-and-set on tags: the fence narrows the window
//!   for a stale writer to the time between reading the tag and ModifyDBInstance, where
//!   the database targets' fences close it under a lock.
//! - `test_login`: a login as the master user at the endpoint (the spec's override, or
//!   the one RDS reports), through the PostgreSQL or MySQL target's own login.
//!
//! Crash points (tests): `secret-rotation::rds-before-modify` (the fence tag written,
//! the password not sent) and `secret-rotation::rds-after-modify` (RDS accepted the
//! change, not applied yet).
//!
//! The password reaches RDS only in ModifyDBInstance's `MasterUserPassword`; no error
//! holds it ([`TargetError::scrubbed`]).

use std::time::Duration;

use capstan_aws::rds::{RdsError, RdsResource, RdsState, SdkRds};
use capstan_core::redact::SecretValue;

use super::{CredentialTarget, Fence, MysqlTarget, PostgresTarget, TargetError};
use crate::crd;

/// The tag that holds the fence of the last writer ([`Fence::encode`]).
pub const FENCE_TAG: &str = "capstan.dev/fence";

/// Longest wait, within one call, for RDS to apply a password change; after it the
/// call reports the change as still applying and the step is retried (RDS usually
/// takes one to a few minutes).
const APPLY_WAIT: Duration = Duration::from_secs(60);

/// The master password of one RDS instance or cluster.
#[derive(Debug)]
pub struct RdsMasterTarget {
    rds: SdkRds,
    resource: RdsResource,
    spec: crd::RdsMasterPasswordTarget,
    ca: Option<Vec<u8>>,
    name: String,
    apply_wait: Duration,
    poll: Duration,
}

impl RdsMasterTarget {
    /// The target of `spec`, called through `rds`; `ca_pem` verifies the login test.
    pub fn new(rds: SdkRds, spec: &crd::RdsMasterPasswordTarget, ca_pem: Option<&[u8]>) -> Self {
        let resource = match (&spec.db_instance_identifier, &spec.db_cluster_identifier) {
            (Some(id), _) => RdsResource::Instance(id.clone()),
            (None, Some(id)) => RdsResource::Cluster(id.clone()),
            (None, None) => RdsResource::Instance(String::new()),
        };
        Self {
            rds,
            name: format!("RDS {resource}"),
            resource,
            spec: spec.clone(),
            ca: ca_pem.map(<[u8]>::to_vec),
            apply_wait: APPLY_WAIT,
            poll: Duration::from_secs(1),
        }
    }

    /// The instance or cluster.
    pub fn resource(&self) -> &RdsResource {
        &self.resource
    }

    /// Its current state (for the scope check of its ARN before anything changes).
    pub async fn describe(&self) -> Result<RdsState, TargetError> {
        self.rds
            .describe(&self.resource)
            .await
            .map_err(|e| self.error(e))
    }

    fn error(&self, e: RdsError) -> TargetError {
        let target = self.name.clone();
        match e {
            RdsError::NotFound { .. } => TargetError::Invalid {
                target,
                detail: e.to_string(),
            },
            RdsError::AccessDenied { .. } => TargetError::AccessDenied {
                target,
                detail: e.to_string(),
            },
            RdsError::InvalidState { .. } | RdsError::Unavailable { .. } => {
                TargetError::Unavailable {
                    target,
                    detail: e.to_string(),
                }
            }
            RdsError::Invalid { .. } => TargetError::Invalid {
                target,
                detail: e.to_string(),
            },
        }
    }

    /// The state, refused when it does not fit the spec: another master user, or a
    /// password RDS manages and the spec does not turn that off.
    async fn checked(&self) -> Result<RdsState, TargetError> {
        let state = self.describe().await?;
        let master = state.master_username.as_deref().unwrap_or_default();
        if master != self.spec.master_username {
            return Err(TargetError::Invalid {
                target: self.name.clone(),
                detail: format!(
                    "its master user is {master:?}, not {:?} as masterUsername says",
                    self.spec.master_username
                ),
            });
        }
        if state.managed_by_rds && !self.spec.turn_off_rds_managed_password {
            return Err(TargetError::ManagedByRds {
                target: self.name.clone(),
                detail: "RDS manages this master password in Secrets Manager (ManageMasterUserPassword); set turnOffRdsManagedPassword: true to let Capstan take it over".into(),
            });
        }
        Ok(state)
    }

    /// Polls until RDS reports the change applied, for at most `apply_wait`.
    async fn settle(&self, mut state: RdsState) -> Result<RdsState, TargetError> {
        let deadline = tokio::time::Instant::now() + self.apply_wait;
        let mut delay = self.poll;
        while !state.settled() {
            if tokio::time::Instant::now() + delay > deadline {
                return Err(TargetError::Unavailable {
                    target: self.name.clone(),
                    detail: format!(
                        "the new master password is still being applied (status {}); waiting",
                        state.status
                    ),
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
            state = self.describe().await?;
        }
        Ok(state)
    }

    /// ModifyDBInstance/ModifyDBCluster with the password (and RDS's own management
    /// turned off when the spec says so), then the wait until RDS has applied it.
    async fn modify(&self, password: &SecretValue) -> Result<(), TargetError> {
        let state = self
            .rds
            .set_master_password(
                &self.resource,
                password,
                self.spec.turn_off_rds_managed_password,
            )
            .await
            .map_err(|e| self.error(e).scrubbed(&[password]))?;
        capstan_core::failpoints::crash_point("secret-rotation::rds-after-modify");
        self.settle(state).await.map(|_| ())
    }

    /// Where the login test connects: the override, or the endpoint RDS reports.
    fn endpoint(&self, state: Option<&RdsState>) -> Result<(String, i32), TargetError> {
        if let Some(e) = &self.spec.endpoint {
            return Ok((e.host.clone(), e.port));
        }
        let state = state.ok_or_else(|| TargetError::Unavailable {
            target: self.name.clone(),
            detail: "its endpoint is not known yet".into(),
        })?;
        match (&state.address, state.port) {
            (Some(host), Some(port)) if !host.is_empty() => Ok((host.clone(), port)),
            _ => Err(TargetError::Unavailable {
                target: self.name.clone(),
                detail: format!("RDS reports no endpoint (status {})", state.status),
            }),
        }
    }

    async fn login(
        &self,
        state: Option<&RdsState>,
        username: &str,
        password: &SecretValue,
    ) -> Result<(), TargetError> {
        let (host, port) = self.endpoint(state)?;
        let ca = self.ca.as_deref();
        // The admin login of the database targets is not used by a login test.
        let unused = || SecretValue::new(String::new());
        match self.spec.engine {
            crd::RdsEngine::Postgres => {
                let spec = crd::PostgresTarget {
                    host,
                    port,
                    database: self
                        .spec
                        .effective_database()
                        .unwrap_or("postgres")
                        .to_owned(),
                    ssl_mode: match self.spec.tls {
                        crd::RdsTls::Disable => crd::PostgresSslMode::Disable,
                        crd::RdsTls::Require => crd::PostgresSslMode::Require,
                        crd::RdsTls::VerifyFull => crd::PostgresSslMode::VerifyFull,
                    },
                    ca_secret_ref: None,
                    username: username.to_owned(),
                    admin_secret_ref: unused_admin_ref(),
                };
                PostgresTarget::new(&spec, username, unused(), ca)?
                    .with_connect_timeout(Duration::from_secs(5))
                    .test_login(username, password)
                    .await
            }
            crd::RdsEngine::Mysql => {
                let spec = crd::MysqlTarget {
                    host,
                    port,
                    database: self.spec.database.clone(),
                    username: username.to_owned(),
                    user_host: "%".into(),
                    ssl_mode: match self.spec.tls {
                        crd::RdsTls::Disable => crd::MysqlSslMode::Disabled,
                        crd::RdsTls::Require => crd::MysqlSslMode::Required,
                        crd::RdsTls::VerifyFull => crd::MysqlSslMode::VerifyIdentity,
                    },
                    ca_secret_ref: None,
                    admin_secret_ref: unused_admin_ref(),
                };
                MysqlTarget::new(&spec, username, unused(), ca)?
                    .test_login(username, password)
                    .await
            }
        }
    }

    #[cfg(test)]
    fn with_waits(mut self, apply_wait: Duration, poll: Duration) -> Self {
        self.apply_wait = apply_wait;
        self.poll = poll;
        self
    }
}

fn unused_admin_ref() -> crd::AdminSecretRef {
    crd::AdminSecretRef {
        name: "unused".into(),
        username_key: "username".into(),
        password_key: "password".into(),
    }
}

#[async_trait::async_trait]
impl CredentialTarget for RdsMasterTarget {
    async fn check(&self) -> Result<(), TargetError> {
        self.checked().await.map(|_| ())
    }

    async fn ensure_user(&self, username: &str, _like: Option<&str>) -> Result<(), TargetError> {
        let state = self.checked().await?;
        if state.master_username.as_deref() != Some(username) {
            return Err(TargetError::NotFound {
                target: self.name.clone(),
                user: username.to_owned(),
            });
        }
        Ok(())
    }

    async fn set_password(
        &self,
        username: &str,
        password: &SecretValue,
    ) -> Result<(), TargetError> {
        self.ensure_user(username, None).await?;
        self.modify(password).await
    }

    async fn set_password_fenced(
        &self,
        username: &str,
        password: &SecretValue,
        fence: &Fence,
    ) -> Result<(), TargetError> {
        let state = self.checked().await?;
        if state.master_username.as_deref() != Some(username) {
            return Err(TargetError::NotFound {
                target: self.name.clone(),
                user: username.to_owned(),
            });
        }
        let stored = state.tag(FENCE_TAG).and_then(Fence::decode);
        if fence.is_refused_by(stored.as_ref()) {
            return Err(TargetError::Fenced {
                target: self.name.clone(),
                user: username.to_owned(),
                detail: format!(
                    "{} was set by a newer attempt ({}), not by {fence}",
                    username,
                    stored.map(|s| s.to_string()).unwrap_or_default()
                ),
            });
        }
        if stored.as_ref() == Some(fence) {
            // This attempt wrote before (a takeover, or a wait that ran out): wait for
            // its change, and send the value again only if it is not the one in place.
            let state = self.settle(state).await?;
            if self.login(Some(&state), username, password).await.is_ok() {
                return Ok(());
            }
        } else if !state.settled() {
            return Err(TargetError::Unavailable {
                target: self.name.clone(),
                detail: format!(
                    "not available for a password change (status {}{})",
                    state.status,
                    if state.password_pending {
                        ", a master password change pending"
                    } else {
                        ""
                    }
                ),
            });
        } else {
            self.rds
                .tag(&self.resource, &state.arn, FENCE_TAG, &fence.encode())
                .await
                .map_err(|e| self.error(e))?;
        }
        capstan_core::failpoints::crash_point("secret-rotation::rds-before-modify");
        self.modify(password).await
    }

    async fn test_login(&self, username: &str, password: &SecretValue) -> Result<(), TargetError> {
        let state = match self.spec.endpoint {
            Some(_) => None,
            None => Some(self.describe().await?),
        };
        self.login(state.as_ref(), username, password).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> crd::RdsMasterPasswordTarget {
        serde_json::from_value(serde_json::json!({
            "connectionRef": {"name": "aws"},
            "dbInstanceIdentifier": "shop",
            "masterUsername": "master",
        }))
        .expect("spec")
    }

    fn target(spec: &crd::RdsMasterPasswordTarget) -> RdsMasterTarget {
        let config = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        RdsMasterTarget::new(SdkRds::from_config(&config), spec, None)
            .with_waits(Duration::from_millis(50), Duration::from_millis(10))
    }

    #[test]
    fn the_login_goes_to_the_override_or_the_reported_endpoint() {
        let mut s = spec();
        let t = target(&s);
        let state = RdsState {
            address: Some("shop.abc.eu-west-1.rds.amazonaws.com".into()),
            port: Some(5432),
            ..RdsState::default()
        };
        assert_eq!(
            t.endpoint(Some(&state)).expect("endpoint"),
            ("shop.abc.eu-west-1.rds.amazonaws.com".into(), 5432)
        );
        assert!(t.endpoint(Some(&RdsState::default())).is_err());
        s.endpoint = Some(crd::RdsEndpoint {
            host: "db.internal".into(),
            port: 6432,
        });
        assert_eq!(
            target(&s).endpoint(None).expect("override"),
            ("db.internal".into(), 6432)
        );
    }

    #[tokio::test]
    async fn a_change_that_does_not_settle_in_time_is_reported_as_applying() {
        let t = target(&spec());
        let state = RdsState {
            status: "resetting-master-credentials".into(),
            password_pending: true,
            ..RdsState::default()
        };
        // The wait is shorter than one poll: no call is made.
        let t = t.with_waits(Duration::from_millis(5), Duration::from_millis(10));
        let err = t.settle(state).await.expect_err("still applying");
        assert!(err.is_transient());
        assert!(err.to_string().contains("still being applied"), "{err}");
    }

    #[test]
    fn rds_errors_keep_their_meaning() {
        let t = target(&spec());
        let e = |err| t.error(err);
        assert!(
            e(RdsError::InvalidState {
                operation: "ModifyDBInstance",
                resource: "DB instance \"shop\"".into(),
                code: "InvalidDBInstanceState".into(),
                message: "not available".into(),
            })
            .is_transient()
        );
        assert_eq!(
            e(RdsError::AccessDenied {
                operation: "ModifyDBInstance",
                resource: "x".into(),
                code: "AccessDenied".into(),
                message: "no".into(),
            })
            .reason(),
            crate::reasons::TARGET_ACCESS_DENIED
        );
        assert_eq!(
            e(RdsError::NotFound {
                operation: "DescribeDBInstances",
                resource: "x".into(),
                message: "gone".into(),
            })
            .reason(),
            crate::reasons::TARGET_INVALID
        );
    }
}
