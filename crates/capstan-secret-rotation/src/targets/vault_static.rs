//! [`VaultStaticRoleTarget`]: a PostgreSQL user whose password a Vault/OpenBao
//! database secrets engine holds, as a static role.
//!
//! Capstan declares two Vault objects, both named `<namespace>-<name>` after the
//! SecretRotation: the engine's connection to the database (`<mount>/config/<n>`, with
//! the admin login of the spec's Secret, allowed to serve only that role) and the
//! static role (`<mount>/static-roles/<n>`). Each carries its owner (`<namespace>/<name>`)
//! in a SQL comment of its statements; one without it, or with another owner, was not
//! made by this object and is never adopted ([`TargetError::Claimed`]).
//!
//! - `check` ([`VaultStaticRoleTarget::sync`]): reads both back and writes what differs
//!   from the declared state (creating them the first time). A role whose username or
//!   connection changed is recreated, since Vault does not let either change: Vault
//!   then rotates the password, which the next drift check notices.
//! - `inventory`: Vault's `last_vault_rotation` when the backend holds Vault's current
//!   password, nothing otherwise.
//! - CreatePending (`issue`): `rotate-role` unless Vault rotated since the inventory (an
//!   attempt that died after rotating, or Vault's own `rotation_period`), then
//!   `static-creds`: the stored credential is Vault's username and password.
//! - SetTarget: nothing (Vault set the password); TestTarget: a login to PostgreSQL.
//! - [`CredentialTarget::rotated_outside`]: whether Vault's password is still the one
//!   stored, read at each drift check.
//!
//! Vault never returns the admin password it was given; a changed admin Secret is
//! written at the next rotation or correction, not detected by reading back.

use capstan_core::redact::SecretValue;
use reqwest::Method;
use serde_json::json;

use super::vault_db::{Correction, DEFAULT_ROTATION, DbSpec, VaultDb};
use super::{CredentialTarget, PostgresTarget, TargetError};
use crate::backend::VaultClient;
use crate::crd;

/// A static role of one Vault/OpenBao database mount.
#[derive(Debug)]
pub struct VaultStaticRoleTarget {
    db: VaultDb,
    spec: crd::VaultDatabaseStaticRoleTarget,
    login: PostgresTarget,
}

/// The static credentials Vault holds now. Not `Debug`: it holds the password.
struct StaticCreds {
    username: String,
    password: SecretValue,
    last_rotation: String,
}

impl VaultStaticRoleTarget {
    /// The target of `spec` for the SecretRotation `namespace/name`, with the admin
    /// login Vault's connection uses and the CA bundle of the login test.
    pub fn new(
        vault: VaultClient,
        spec: &crd::VaultDatabaseStaticRoleTarget,
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
        Ok(Self {
            login: VaultDb::login(&db_spec, &spec.username, ca_pem)?,
            db: VaultDb::new(vault, &db_spec, object, admin),
            spec: spec.clone(),
        })
    }

    /// The name of the Vault connection and role of the SecretRotation `namespace/name`.
    pub fn object_name(namespace: &str, name: &str) -> String {
        super::vault_db::object_name(namespace, name)
    }

    fn declared_statements(&self) -> Vec<String> {
        if self.spec.rotation_statements.is_empty() {
            self.db.claimed(&[DEFAULT_ROTATION.to_owned()])
        } else {
            self.db.claimed(&self.spec.rotation_statements)
        }
    }

    fn rotation_period_seconds(&self) -> Result<u64, TargetError> {
        self.spec
            .rotation_period()
            .map(|d| d.as_secs())
            .map_err(|e| TargetError::Invalid {
                target: self.db.name.clone(),
                detail: format!("rotationPeriod {e}"),
            })
    }

    /// Reads the connection and the role back and writes what differs from the
    /// declared state; what it wrote (nothing when both were in sync).
    pub async fn sync(&self) -> Result<Vec<Correction>, TargetError> {
        let role_path = format!("static-roles/{}", self.db.object);
        let (mut out, role) = self
            .db
            .sync_connection(&role_path, "rotation_statements")
            .await?;
        let period = self.rotation_period_seconds()?;
        let statements = self.declared_statements();
        let role_body = json!({
            "db_name": self.db.object,
            "username": self.spec.username,
            "rotation_statements": statements,
            "rotation_period": period,
        });
        match &role {
            None => {
                self.db
                    .write(Method::POST, &role_path, Some(&role_body))
                    .await?;
                out.push(Correction {
                    what: "role".into(),
                    created: true,
                });
            }
            Some(have) => {
                let mut drift = Vec::new();
                if have["username"] != json!(self.spec.username) {
                    drift.push("username");
                }
                if have["db_name"] != json!(self.db.object) {
                    drift.push("db_name");
                }
                let recreate = !drift.is_empty();
                if have["rotation_statements"] != json!(statements) {
                    drift.push("rotation_statements");
                }
                if have["rotation_period"].as_u64() != Some(period) {
                    drift.push("rotation_period");
                }
                if recreate {
                    // Vault changes neither of these in place.
                    self.db.write(Method::DELETE, &role_path, None).await?;
                }
                if !drift.is_empty() {
                    self.db
                        .write(Method::POST, &role_path, Some(&role_body))
                        .await?;
                    out.extend(drift.into_iter().map(|f| Correction {
                        what: format!("role.{f}"),
                        created: false,
                    }));
                }
            }
        }
        Ok(out)
    }

    async fn creds(&self) -> Result<StaticCreds, TargetError> {
        let data = self
            .db
            .get(&format!("static-creds/{}", self.db.object))
            .await?
            .ok_or_else(|| TargetError::NotFound {
                target: self.db.name.clone(),
                user: self.spec.username.clone(),
            })?;
        let text = |k: &str| data[k].as_str().map(str::to_owned);
        match (text("username"), text("password")) {
            (Some(username), Some(password)) => Ok(StaticCreds {
                username,
                password: SecretValue::new(password),
                last_rotation: text("last_vault_rotation").unwrap_or_default(),
            }),
            _ => Err(TargetError::Invalid {
                target: self.db.name.clone(),
                detail: "Vault's static-creds answer has no username or password".into(),
            }),
        }
    }
}

#[async_trait::async_trait]
impl CredentialTarget for VaultStaticRoleTarget {
    async fn check(&self) -> Result<(), TargetError> {
        let corrections = self.sync().await?;
        self.db
            .log_declared("vaultDatabaseStaticRole", &corrections);
        Ok(())
    }

    async fn ensure_user(&self, _username: &str, _like: Option<&str>) -> Result<(), TargetError> {
        Ok(())
    }

    /// Vault set the password when it rotated the role.
    async fn set_password(&self, _user: &str, _password: &SecretValue) -> Result<(), TargetError> {
        Ok(())
    }

    async fn test_login(&self, username: &str, password: &SecretValue) -> Result<(), TargetError> {
        self.login.test_login(username, password).await
    }

    fn issues_values(&self) -> bool {
        true
    }

    async fn inventory(&self, stored: Option<&SecretValue>) -> Result<Vec<String>, TargetError> {
        let creds = self.creds().await?;
        Ok(
            if stored.is_some_and(|s| s.expose() == creds.password.expose()) {
                vec![creds.last_rotation]
            } else {
                Vec::new()
            },
        )
    }

    async fn issue(
        &self,
        _keep: &[String],
        preexisting: &[String],
    ) -> Result<(String, SecretValue), TargetError> {
        let before = self.creds().await?;
        // Vault rotated since the inventory (this rotation's earlier attempt, or
        // Vault's own period), or the backend never held its password: deliver that.
        if !preexisting.contains(&before.last_rotation) {
            return Ok((before.username, before.password));
        }
        self.db
            .write(
                Method::POST,
                &format!("rotate-role/{}", self.db.object),
                Some(&json!({})),
            )
            .await?;
        capstan_core::failpoints::crash_point("secret-rotation::vault-static-after-rotate");
        let after = self.creds().await?;
        if after.last_rotation == before.last_rotation {
            return Err(TargetError::Unavailable {
                target: self.db.name.clone(),
                detail: "rotate-role returned but Vault still reports the previous rotation".into(),
            });
        }
        Ok((after.username, after.password))
    }

    async fn correct_drift(&self) -> Result<Vec<Correction>, TargetError> {
        self.sync().await
    }

    async fn rotated_outside(&self, stored: &SecretValue) -> Result<bool, TargetError> {
        Ok(self.creds().await?.password.expose() != stored.expose())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn spec() -> crd::VaultDatabaseStaticRoleTarget {
        serde_json::from_value(json!({
            "connectionRef": { "name": "vault" },
            "host": "db.internal", "database": "shop", "sslMode": "require",
            "adminSecretRef": { "name": "pg-admin" },
            "username": "app", "rotationPeriod": "2h"
        }))
        .expect("spec")
    }

    fn target() -> VaultStaticRoleTarget {
        let vault: capstan_core::connection::VaultConnection = serde_json::from_value(json!({
            "address": "http://127.0.0.1:8200",
            "auth": { "token": { "secretRef": { "name": "t" } } }
        }))
        .expect("connection");
        let vc = VaultClient::from_connection(&vault, SecretValue::new("t"), None).expect("client");
        VaultStaticRoleTarget::new(
            vc,
            &spec(),
            ("shop", "orders-db"),
            ("vault_admin".into(), SecretValue::new("admin-pw")),
            None,
        )
        .expect("target")
    }

    #[test]
    fn declares_the_owner_in_every_statement_list_and_reads_drift_back() {
        let t = target();
        assert_eq!(t.db.object, "shop-orders-db");
        assert_eq!(
            t.db.connection_url(),
            "postgresql://{{username}}:{{password}}@db.internal:5432/shop?sslmode=require"
        );
        let statements = t.declared_statements();
        assert_eq!(
            statements,
            vec![format!(
                "/* capstan.dev/owner: shop/orders-db */ {DEFAULT_ROTATION}"
            )]
        );
        assert!(t.db.claimed_by_us(&json!(statements)));
        assert!(!t.db.claimed_by_us(&json!([DEFAULT_ROTATION])));
        assert!(
            !t.db
                .claimed_by_us(&json!(["/* capstan.dev/owner: shop/orders */ x"]))
        );
        // What Vault reads back for the declared connection has no drift; a changed
        // URL and allowed role list do.
        let have: Value = json!({
            "plugin_name": "postgresql-database-plugin",
            "connection_details": { "connection_url": t.db.connection_url(), "username": "vault_admin" },
            "allowed_roles": ["shop-orders-db"],
            "root_credentials_rotate_statements": [format!("/* capstan.dev/owner: shop/orders-db */ {DEFAULT_ROTATION}")],
        });
        assert!(t.db.connection_drift(&have).is_empty());
        let mut changed = have.clone();
        changed["connection_details"]["connection_url"] = json!("postgresql://elsewhere");
        changed["allowed_roles"] = json!(["*"]);
        assert_eq!(
            t.db.connection_drift(&changed),
            vec!["connection_url", "allowed_roles"]
        );
        // The admin password is written, never compared or logged.
        let (_, body) = t.db.declared_connection();
        assert_eq!(body["password"], "admin-pw");
        assert!(!format!("{t:?}").contains("admin-pw"));
    }
}
