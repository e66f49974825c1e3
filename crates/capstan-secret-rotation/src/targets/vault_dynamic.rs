//! [`VaultDynamicRoleTarget`]: PostgreSQL users a Vault/OpenBao database secrets engine
//! creates per lease ("dynamic secrets").
//!
//! Capstan declares the engine's connection and a role, both `<namespace>-<name>`
//! ([`super::vault_db`]), with the spec's creation and revocation statements and TTLs;
//! `max_ttl` is always set, so a lease a crash left unrecorded dies with it rather than
//! after Vault's 32-day default.
//!
//! - `check`: the connection and the role written where they drifted (each rotation).
//! - CreatePending (`issue`): `creds/<role>`, then `sys/leases/lookup` for the lease's
//!   times as Vault keeps them; the controller records the lease
//!   ([`CredentialTarget::issued_lease`]) with the pending credentials, before they are
//!   delivered.
//! - SetTarget: nothing (Vault created the user); TestTarget: a login as it.
//! - [`CredentialTarget::renew`]: `sys/leases/renew` by the `defaultTtl`; `None` when
//!   Vault no longer knows the lease (revoked behind Capstan's back).
//! - [`CredentialTarget::retire`]: after delivery, every other lease of the role is
//!   revoked (`sys/leases/revoke`): the previous one, and any that an attempt issued
//!   and never delivered.
//!
//! Status and logs name a lease by [`lease_hash`], never by its id: the leases of the
//! role are listed (`LIST sys/leases/lookup/<mount>/creds/<role>/`, which needs `list`
//! and `sudo` on that path) to find the one a hash names.

use std::sync::Mutex;

use capstan_core::redact::SecretValue;
use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::vault_db::{Correction, DbSpec, VaultDb};
use super::{CredentialTarget, PostgresTarget, TargetError};
use crate::backend::VaultClient;
use crate::crd;

/// The first 16 hex digits of the SHA-256 of `lease_id`: how status and logs name a
/// lease.
pub fn lease_hash(lease_id: &str) -> String {
    Sha256::digest(lease_id.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A dynamic-credentials role of one Vault/OpenBao database mount.
#[derive(Debug)]
pub struct VaultDynamicRoleTarget {
    db: VaultDb,
    spec: crd::VaultDatabaseDynamicRoleTarget,
    login: PostgresTarget,
    ttl: u64,
    max_ttl: u64,
    issued: Mutex<Option<crd::Lease>>,
}

impl VaultDynamicRoleTarget {
    /// The target of `spec` for the SecretRotation `namespace/name`.
    pub fn new(
        vault: VaultClient,
        spec: &crd::VaultDatabaseDynamicRoleTarget,
        object: (&str, &str),
        admin: (String, SecretValue),
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, TargetError> {
        let db_spec = DbSpec {
            mount: &spec.mount,
            host: &spec.host,
            port: spec.port,
            database: &spec.database,
            ssl_mode: spec.ssl_mode,
            admin_secret_ref: &spec.admin_secret_ref,
        };
        let db = VaultDb::new(vault, &db_spec, object, admin);
        let (ttl, max_ttl, _) = spec.durations().map_err(|(f, e)| TargetError::Invalid {
            target: db.name.clone(),
            detail: format!("{f} {e}"),
        })?;
        Ok(Self {
            login: VaultDb::login(&db_spec, "dynamic", ca_pem)?,
            db,
            spec: spec.clone(),
            ttl: ttl.as_secs(),
            max_ttl: max_ttl.as_secs(),
            issued: Mutex::new(None),
        })
    }

    fn role_body(&self) -> Value {
        json!({
            "db_name": self.db.object,
            "creation_statements": self.db.claimed(&self.spec.creation_statements),
            "revocation_statements": self.spec.revocation_statements,
            "default_ttl": self.ttl,
            "max_ttl": self.max_ttl,
        })
    }

    /// Reads the connection and the role back and writes what differs.
    pub async fn sync(&self) -> Result<Vec<Correction>, TargetError> {
        let role_path = format!("roles/{}", self.db.object);
        let (mut out, role) = self
            .db
            .sync_connection(&role_path, "creation_statements")
            .await?;
        let want = self.role_body();
        let drift: Vec<&str> = match &role {
            None => vec![],
            Some(have) => [
                "db_name",
                "creation_statements",
                "revocation_statements",
                "default_ttl",
                "max_ttl",
            ]
            .into_iter()
            .filter(|f| {
                let got = &have[*f];
                let want = &want[*f];
                // Vault reads an empty statement list back as null or [].
                !(got == want
                    || (want.as_array().is_some_and(Vec::is_empty)
                        && (got.is_null() || got.as_array().is_some_and(Vec::is_empty))))
            })
            .collect(),
        };
        if role.is_none() || !drift.is_empty() {
            self.db.write(Method::POST, &role_path, Some(&want)).await?;
            if role.is_none() {
                out.push(Correction {
                    what: "role".into(),
                    created: true,
                });
            }
            out.extend(drift.into_iter().map(|f| Correction {
                what: format!("role.{f}"),
                created: false,
            }));
        }
        Ok(out)
    }

    fn prefix(&self) -> String {
        format!("{}/creds/{}", self.db.mount, self.db.object)
    }

    /// The ids of the role's leases Vault holds now.
    async fn leases(&self) -> Result<Vec<String>, TargetError> {
        let list = Method::from_bytes(b"LIST").expect("LIST is a method");
        let prefix = self.prefix();
        let answer = self
            .db
            .call_data(list, &format!("sys/leases/lookup/{prefix}/"), None)
            .await?;
        Ok(answer
            .and_then(|a| a["data"]["keys"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(Value::as_str)
            .map(|k| format!("{prefix}/{k}"))
            .collect())
    }

    /// The lease `lease_id` as Vault keeps it.
    async fn lookup(&self, lease_id: &str) -> Result<Option<crd::Lease>, TargetError> {
        let Some(answer) = self
            .db
            .call_data(
                Method::PUT,
                "sys/leases/lookup",
                Some(&json!({ "lease_id": lease_id })),
            )
            .await
            .or_else(|e| match e {
                // Vault answers an unknown lease with 400 "invalid lease".
                TargetError::Invalid { .. } => Ok(None),
                e => Err(e),
            })?
        else {
            return Ok(None);
        };
        let data = &answer["data"];
        let time = |k: &str| {
            data[k]
                .as_str()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc))
        };
        let (Some(issue), Some(expire)) = (time("issue_time"), time("expire_time")) else {
            return Err(TargetError::Invalid {
                target: self.db.name.clone(),
                detail: "Vault's lease lookup has no issue or expire time".into(),
            });
        };
        Ok(Some(crd::Lease {
            id_hash: lease_hash(lease_id),
            issue_time: issue,
            expire_time: expire,
            max_expire_time: issue + chrono::Duration::seconds(self.max_ttl as i64),
            next_renewal_time: None,
            renewable: data["renewable"].as_bool().unwrap_or(false),
        }))
    }
}

#[async_trait::async_trait]
impl CredentialTarget for VaultDynamicRoleTarget {
    async fn check(&self) -> Result<(), TargetError> {
        let corrections = self.sync().await?;
        self.db
            .log_declared("vaultDatabaseDynamicRole", &corrections);
        Ok(())
    }

    async fn ensure_user(&self, _username: &str, _like: Option<&str>) -> Result<(), TargetError> {
        Ok(())
    }

    /// Vault created the user with its password.
    async fn set_password(&self, _user: &str, _password: &SecretValue) -> Result<(), TargetError> {
        Ok(())
    }

    async fn test_login(&self, username: &str, password: &SecretValue) -> Result<(), TargetError> {
        self.login.test_login(username, password).await
    }

    fn issues_values(&self) -> bool {
        true
    }

    async fn issue(
        &self,
        _keep: &[String],
        _preexisting: &[String],
    ) -> Result<(String, SecretValue), TargetError> {
        let answer = self
            .db
            .call_data(
                Method::GET,
                &format!("{}/creds/{}", self.db.mount, self.db.object),
                None,
            )
            .await?
            .ok_or_else(|| TargetError::Invalid {
                target: self.db.name.clone(),
                detail: "the role is missing".into(),
            })?;
        let lease_id = answer["lease_id"].as_str().unwrap_or_default().to_owned();
        let text = |k: &str| answer["data"][k].as_str().map(str::to_owned);
        let (Some(username), Some(password)) = (text("username"), text("password")) else {
            return Err(TargetError::Invalid {
                target: self.db.name.clone(),
                detail: "Vault's creds answer has no username or password".into(),
            });
        };
        capstan_core::failpoints::crash_point("secret-rotation::vault-dynamic-after-issue");
        let lease = self
            .lookup(&lease_id)
            .await?
            .ok_or_else(|| TargetError::Unavailable {
                target: self.db.name.clone(),
                detail: "the lease Vault just issued is unknown to its lookup".into(),
            })?;
        tracing::info!(target_kind = "vaultDatabaseDynamicRole", role = %self.db.object, lease = %lease.id_hash, expires = %lease.expire_time, "Vault issued credentials");
        *self.issued.lock().unwrap_or_else(|e| e.into_inner()) = Some(lease);
        Ok((username, SecretValue::new(password)))
    }

    fn issued_lease(&self) -> Option<crd::Lease> {
        self.issued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn renew(&self, lease: &crd::Lease) -> Result<Option<crd::Lease>, TargetError> {
        let Some(id) = self
            .leases()
            .await?
            .into_iter()
            .find(|id| lease_hash(id) == lease.id_hash)
        else {
            return Ok(None);
        };
        let renewed = self
            .db
            .call_data(
                Method::PUT,
                "sys/leases/renew",
                Some(&json!({ "lease_id": id, "increment": self.ttl })),
            )
            .await;
        match renewed {
            Ok(Some(_)) => {}
            Ok(None) | Err(TargetError::Invalid { .. }) => return Ok(None),
            Err(e) => return Err(e),
        }
        let mut now = self.lookup(&id).await?;
        if let Some(l) = now.as_mut() {
            // The maximum runs from the first issue, which a renewal keeps.
            l.max_expire_time = lease.max_expire_time;
        }
        Ok(now)
    }

    /// Revokes every lease of the role but `keep` (a [`lease_hash`]).
    async fn retire(&self, keep: &str, _delete: bool) -> Result<Vec<String>, TargetError> {
        let mut revoked = Vec::new();
        for id in self.leases().await? {
            let hash = lease_hash(&id);
            if hash == keep {
                continue;
            }
            self.db
                .call_data(
                    Method::PUT,
                    "sys/leases/revoke",
                    Some(&json!({ "lease_id": id })),
                )
                .await?;
            capstan_core::failpoints::crash_point("secret-rotation::vault-dynamic-after-revoke");
            revoked.push(format!("lease {hash}"));
        }
        Ok(revoked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_named_by_a_short_hash_that_hides_its_id() {
        let id = "database/creds/shop-orders/AbCdEf0123456789";
        let h = lease_hash(id);
        assert_eq!(h.len(), 16);
        assert!(h.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(h, lease_hash(id));
        assert_ne!(h, lease_hash("database/creds/shop-orders/AbCdEf0123456780"));
        assert!(!id.contains(&h));
    }
}
