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
use serde_json::{Value, json};

use super::{CredentialTarget, PostgresTarget, TargetError};
use crate::backend::{BackendError, VaultClient};
use crate::crd;

/// The default rotation statement.
const DEFAULT_ROTATION: &str = r#"ALTER ROLE "{{name}}" WITH PASSWORD '{{password}}'"#;

/// One thing [`VaultStaticRoleTarget::sync`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Correction {
    /// What was written: `connection`, `role`, or a field of one (`role.rotation_period`).
    pub what: String,
    /// Whether it was created rather than corrected.
    pub created: bool,
}

/// A static role of one Vault/OpenBao database mount.
#[derive(Debug)]
pub struct VaultStaticRoleTarget {
    vault: VaultClient,
    mount: String,
    /// The connection's and the role's name, `<namespace>-<name>`.
    object: String,
    /// `<namespace>/<name>`, in the claim comment.
    owner: String,
    spec: crd::VaultDatabaseStaticRoleTarget,
    admin_user: String,
    admin_password: SecretValue,
    login: PostgresTarget,
    name: String,
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
        (namespace, name): (&str, &str),
        (admin_user, admin_password): (String, SecretValue),
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, TargetError> {
        let object = Self::object_name(namespace, name);
        let login_spec = crd::PostgresTarget {
            host: spec.host.clone(),
            port: spec.port,
            database: spec.database.clone(),
            ssl_mode: spec.ssl_mode,
            ca_secret_ref: None,
            username: spec.username.clone(),
            admin_secret_ref: spec.admin_secret_ref.clone(),
        };
        // The login test only logs in as the role: the admin login is Vault's.
        let login = PostgresTarget::new(
            &login_spec,
            admin_user.clone(),
            SecretValue::new(""),
            ca_pem,
        )?
        .with_connect_timeout(std::time::Duration::from_secs(5));
        Ok(Self {
            name: format!("Vault database role {}/{object}", spec.mount),
            vault,
            mount: spec.mount.clone(),
            object,
            owner: format!("{namespace}/{name}"),
            spec: spec.clone(),
            admin_user,
            admin_password,
            login,
        })
    }

    /// The name of the Vault connection and role of the SecretRotation `namespace/name`.
    pub fn object_name(namespace: &str, name: &str) -> String {
        format!("{namespace}-{name}")
    }

    fn claim(&self) -> String {
        format!("/* capstan.dev/owner: {} */", self.owner)
    }

    fn claimed_by_us(&self, statements: &Value) -> bool {
        let claim = self.claim();
        statements
            .as_array()
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .is_some_and(|s| s.starts_with(&claim))
    }

    fn error(&self, e: BackendError) -> TargetError {
        let target = self.name.clone();
        let detail = crate::crd::scrub(&e.to_string(), &[&self.admin_password]);
        match e {
            BackendError::AccessDenied { .. } => TargetError::AccessDenied { target, detail },
            BackendError::Unavailable { .. } => TargetError::Unavailable { target, detail },
            _ => TargetError::Invalid { target, detail },
        }
    }

    async fn get(&self, path: &str) -> Result<Option<Value>, TargetError> {
        match self
            .vault
            .request(
                &self.name,
                Method::GET,
                &format!("{}/{path}", self.mount),
                None,
            )
            .await
        {
            Ok(v) => Ok(Some(v["data"].clone())),
            Err(BackendError::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(e)),
        }
    }

    async fn write(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(), TargetError> {
        self.vault
            .request(&self.name, method, &format!("{}/{path}", self.mount), body)
            .await
            .map(|_| ())
            .map_err(|e| self.error(e))
    }

    fn connection_url(&self) -> String {
        let host = if self.spec.host.contains(':') {
            format!("[{}]", self.spec.host)
        } else {
            self.spec.host.clone()
        };
        let mode = match self.spec.ssl_mode {
            crd::PostgresSslMode::Disable => "disable",
            crd::PostgresSslMode::Allow => "allow",
            crd::PostgresSslMode::Prefer => "prefer",
            crd::PostgresSslMode::Require => "require",
            crd::PostgresSslMode::VerifyCa => "verify-ca",
            crd::PostgresSslMode::VerifyFull => "verify-full",
        };
        format!(
            "postgresql://{{{{username}}}}:{{{{password}}}}@{host}:{}/{}?sslmode={mode}",
            self.spec.port, self.spec.database
        )
    }

    /// The declared connection, as read back (without the password) and as written.
    fn declared_connection(&self) -> (Vec<(&'static str, Value, Value)>, Value) {
        let root = json!([format!("{} {DEFAULT_ROTATION}", self.claim())]);
        let fields = vec![
            (
                "plugin_name",
                json!("postgresql-database-plugin"),
                json!("postgresql-database-plugin"),
            ),
            (
                "connection_url",
                json!(self.connection_url()),
                json!(self.connection_url()),
            ),
            ("username", json!(self.admin_user), json!(self.admin_user)),
            ("allowed_roles", json!([self.object]), json!([self.object])),
            ("root_rotation_statements", root.clone(), root),
        ];
        let body = json!({
            "plugin_name": "postgresql-database-plugin",
            "connection_url": self.connection_url(),
            "username": self.admin_user,
            "password": self.admin_password.expose(),
            "allowed_roles": [self.object],
            "root_rotation_statements": [format!("{} {DEFAULT_ROTATION}", self.claim())],
            "verify_connection": true,
        });
        (fields, body)
    }

    fn declared_statements(&self) -> Vec<String> {
        let mut statements = if self.spec.rotation_statements.is_empty() {
            vec![DEFAULT_ROTATION.to_owned()]
        } else {
            self.spec.rotation_statements.clone()
        };
        statements[0] = format!("{} {}", self.claim(), statements[0]);
        statements
    }

    fn rotation_period_seconds(&self) -> Result<u64, TargetError> {
        self.spec
            .rotation_period()
            .map(|d| d.as_secs())
            .map_err(|e| TargetError::Invalid {
                target: self.name.clone(),
                detail: format!("rotationPeriod {e}"),
            })
    }

    /// Where the connection as read back differs from the declared one.
    fn connection_drift(&self, have: &Value) -> Vec<&'static str> {
        let (fields, _) = self.declared_connection();
        let details = &have["connection_details"];
        fields
            .into_iter()
            .filter(|(field, want, _)| {
                let got = match *field {
                    "connection_url" | "username" => &details[*field],
                    "root_rotation_statements" => &have["root_credentials_rotate_statements"],
                    _ => &have[*field],
                };
                got != want
            })
            .map(|(field, _, _)| field)
            .collect()
    }

    /// Reads the connection and the role back and writes what differs from the
    /// declared state; what it wrote (nothing when both were in sync).
    pub async fn sync(&self) -> Result<Vec<Correction>, TargetError> {
        let mut out = Vec::new();
        let config_path = format!("config/{}", self.object);
        let role_path = format!("static-roles/{}", self.object);
        let config = self.get(&config_path).await?;
        let role = self.get(&role_path).await?;
        // Neither is adopted unless this object made it.
        if let Some(c) = &config
            && !self.claimed_by_us(&c["root_credentials_rotate_statements"])
        {
            return Err(self.claimed(&format!("connection {}", self.object)));
        }
        if let Some(r) = &role
            && !self.claimed_by_us(&r["rotation_statements"])
        {
            return Err(self.claimed(&format!("static role {}", self.object)));
        }
        let (_, body) = self.declared_connection();
        match &config {
            None => {
                self.write(Method::POST, &config_path, Some(&body)).await?;
                out.push(Correction {
                    what: "connection".into(),
                    created: true,
                });
            }
            Some(have) => {
                let drift = self.connection_drift(have);
                if !drift.is_empty() {
                    self.write(Method::POST, &config_path, Some(&body)).await?;
                    out.extend(drift.into_iter().map(|f| Correction {
                        what: format!("connection.{f}"),
                        created: false,
                    }));
                }
            }
        }
        let period = self.rotation_period_seconds()?;
        let statements = self.declared_statements();
        let role_body = json!({
            "db_name": self.object,
            "username": self.spec.username,
            "rotation_statements": statements,
            "rotation_period": period,
        });
        match &role {
            None => {
                self.write(Method::POST, &role_path, Some(&role_body))
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
                if have["db_name"] != json!(self.object) {
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
                    self.write(Method::DELETE, &role_path, None).await?;
                }
                if !drift.is_empty() {
                    self.write(Method::POST, &role_path, Some(&role_body))
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

    fn claimed(&self, what: &str) -> TargetError {
        TargetError::Claimed {
            target: self.name.clone(),
            detail: format!(
                "{what} exists in {} and was not declared by {}: it is not adopted; rename the SecretRotation or remove the Vault object",
                self.mount, self.owner
            ),
        }
    }

    async fn creds(&self) -> Result<StaticCreds, TargetError> {
        let data = self
            .get(&format!("static-creds/{}", self.object))
            .await?
            .ok_or_else(|| TargetError::NotFound {
                target: self.name.clone(),
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
                target: self.name.clone(),
                detail: "Vault's static-creds answer has no username or password".into(),
            }),
        }
    }
}

#[async_trait::async_trait]
impl CredentialTarget for VaultStaticRoleTarget {
    async fn check(&self) -> Result<(), TargetError> {
        let corrections = self.sync().await?;
        if !corrections.is_empty() {
            let what: Vec<&str> = corrections.iter().map(|c| c.what.as_str()).collect();
            tracing::info!(target_kind = "vaultDatabaseStaticRole", mount = %self.mount, role = %self.object, written = %what.join(","), "declared the Vault connection and static role");
        }
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
        self.write(
            Method::POST,
            &format!("rotate-role/{}", self.object),
            Some(&json!({})),
        )
        .await?;
        capstan_core::failpoints::crash_point("secret-rotation::vault-static-after-rotate");
        let after = self.creds().await?;
        if after.last_rotation == before.last_rotation {
            return Err(TargetError::Unavailable {
                target: self.name.clone(),
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
        assert_eq!(t.object, "shop-orders-db");
        assert_eq!(
            t.connection_url(),
            "postgresql://{{username}}:{{password}}@db.internal:5432/shop?sslmode=require"
        );
        let statements = t.declared_statements();
        assert_eq!(
            statements,
            vec![format!(
                "/* capstan.dev/owner: shop/orders-db */ {DEFAULT_ROTATION}"
            )]
        );
        assert!(t.claimed_by_us(&json!(statements)));
        assert!(!t.claimed_by_us(&json!([DEFAULT_ROTATION])));
        assert!(!t.claimed_by_us(&json!(["/* capstan.dev/owner: shop/orders */ x"])));
        // What Vault reads back for the declared connection has no drift; a changed
        // URL and allowed role list do.
        let have = json!({
            "plugin_name": "postgresql-database-plugin",
            "connection_details": { "connection_url": t.connection_url(), "username": "vault_admin" },
            "allowed_roles": ["shop-orders-db"],
            "root_credentials_rotate_statements": [format!("/* capstan.dev/owner: shop/orders-db */ {DEFAULT_ROTATION}")],
        });
        assert!(t.connection_drift(&have).is_empty());
        let mut changed = have.clone();
        changed["connection_details"]["connection_url"] = json!("postgresql://elsewhere");
        changed["allowed_roles"] = json!(["*"]);
        assert_eq!(
            t.connection_drift(&changed),
            vec!["connection_url", "allowed_roles"]
        );
        // The admin password is written, never compared or logged.
        let (_, body) = t.declared_connection();
        assert_eq!(body["password"], "admin-pw");
        assert!(!format!("{t:?}").contains("admin-pw"));
    }
}
