//! [`VaultDb`]: what the Vault/OpenBao database targets share, the engine's connection
//! to PostgreSQL that Capstan declares and keeps at the declared state.
//!
//! The connection and the role are both named `<namespace>-<name>` after the
//! SecretRotation. Each carries its owner (`<namespace>/<name>`) in a SQL comment at
//! the head of its statements: the connection in its root rotation statements, a role
//! in its rotation or creation statements. An object of that name without it, or with
//! another owner, was not made by this SecretRotation and is never adopted
//! ([`TargetError::Claimed`]).

use capstan_core::redact::SecretValue;
use reqwest::Method;
use serde_json::{Value, json};

use super::{PostgresTarget, TargetError};
use crate::backend::{BackendError, VaultClient};
use crate::crd;

/// The default statement that sets a PostgreSQL role's password.
pub(super) const DEFAULT_ROTATION: &str = r#"ALTER ROLE "{{name}}" WITH PASSWORD '{{password}}'"#;

/// One thing a sync wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Correction {
    /// What was written: `connection`, `role`, or a field of one (`role.rotation_period`).
    pub what: String,
    /// Whether it was created rather than corrected.
    pub created: bool,
}

/// Where Vault's connection points and how it logs in.
pub(super) struct DbSpec<'a> {
    pub mount: &'a str,
    pub host: &'a str,
    pub port: i32,
    pub database: &'a str,
    pub ssl_mode: crd::PostgresSslMode,
    pub admin_secret_ref: &'a crd::AdminSecretRef,
}

/// One database mount's connection for one SecretRotation.
#[derive(Debug)]
pub(super) struct VaultDb {
    pub vault: VaultClient,
    pub mount: String,
    /// The connection's and the role's name, `<namespace>-<name>`.
    pub object: String,
    /// `<namespace>/<name>`, in the claim comment.
    owner: String,
    connection_url: String,
    admin_user: String,
    admin_password: SecretValue,
    /// `Vault database role <mount>/<object>`, as errors name it.
    pub name: String,
}

/// The name of the Vault connection and role of the SecretRotation `namespace/name`.
pub fn object_name(namespace: &str, name: &str) -> String {
    format!("{namespace}-{name}")
}

impl VaultDb {
    pub fn new(
        vault: VaultClient,
        spec: &DbSpec<'_>,
        (namespace, name): (&str, &str),
        (admin_user, admin_password): (String, SecretValue),
    ) -> Self {
        let object = object_name(namespace, name);
        let host = if spec.host.contains(':') {
            format!("[{}]", spec.host)
        } else {
            spec.host.to_owned()
        };
        let mode = match spec.ssl_mode {
            crd::PostgresSslMode::Disable => "disable",
            crd::PostgresSslMode::Allow => "allow",
            crd::PostgresSslMode::Prefer => "prefer",
            crd::PostgresSslMode::Require => "require",
            crd::PostgresSslMode::VerifyCa => "verify-ca",
            crd::PostgresSslMode::VerifyFull => "verify-full",
        };
        Self {
            name: format!("Vault database role {}/{object}", spec.mount),
            connection_url: format!(
                "postgresql://{{{{username}}}}:{{{{password}}}}@{host}:{}/{}?sslmode={mode}",
                spec.port, spec.database
            ),
            vault,
            mount: spec.mount.to_owned(),
            object,
            owner: format!("{namespace}/{name}"),
            admin_user,
            admin_password,
        }
    }

    /// The login test: a PostgreSQL target that only logs in as the user (the admin
    /// login is Vault's).
    pub fn login(
        spec: &DbSpec<'_>,
        username: &str,
        ca_pem: Option<&[u8]>,
    ) -> Result<PostgresTarget, TargetError> {
        let login_spec = crd::PostgresTarget {
            host: spec.host.to_owned(),
            port: spec.port,
            database: spec.database.to_owned(),
            ssl_mode: spec.ssl_mode,
            ca_secret_ref: None,
            username: username.to_owned(),
            admin_secret_ref: spec.admin_secret_ref.clone(),
        };
        Ok(
            PostgresTarget::new(&login_spec, "unused", SecretValue::new(""), ca_pem)?
                .with_connect_timeout(std::time::Duration::from_secs(5)),
        )
    }

    /// Logs what a sync wrote (names of objects and fields, never values), if anything.
    pub fn log_declared(&self, target_kind: &str, corrections: &[Correction]) {
        if corrections.is_empty() {
            return;
        }
        let what: Vec<&str> = corrections.iter().map(|c| c.what.as_str()).collect();
        tracing::info!(target_kind, mount = %self.mount, role = %self.object, written = %what.join(","), "declared the Vault connection and role");
    }

    /// The statements with the owner's claim at the head of the first.
    pub fn claimed(&self, statements: &[String]) -> Vec<String> {
        let mut out = statements.to_vec();
        if let Some(first) = out.first_mut() {
            *first = format!("{} {first}", self.claim());
        }
        out
    }

    fn claim(&self) -> String {
        format!("/* capstan.dev/owner: {} */", self.owner)
    }

    /// Whether `statements` (as Vault reads them back) carry this object's claim.
    pub fn claimed_by_us(&self, statements: &Value) -> bool {
        let claim = self.claim();
        statements
            .as_array()
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .is_some_and(|s| s.starts_with(&claim))
    }

    /// The refusal to adopt `what`.
    pub fn not_ours(&self, what: &str) -> TargetError {
        TargetError::Claimed {
            target: self.name.clone(),
            detail: format!(
                "{what} exists in {} and was not declared by {}: it is not adopted; rename the SecretRotation or remove the Vault object",
                self.mount, self.owner
            ),
        }
    }

    pub fn error(&self, e: BackendError) -> TargetError {
        let target = self.name.clone();
        let detail = crate::crd::scrub(&e.to_string(), &[&self.admin_password]);
        match e {
            BackendError::AccessDenied { .. } => TargetError::AccessDenied { target, detail },
            BackendError::Unavailable { .. } => TargetError::Unavailable { target, detail },
            _ => TargetError::Invalid { target, detail },
        }
    }

    /// `data` of a GET of `<mount>/<path>`, `None` when Vault has nothing there.
    pub async fn get(&self, path: &str) -> Result<Option<Value>, TargetError> {
        self.call_data(Method::GET, &format!("{}/{path}", self.mount), None)
            .await
            .map(|v| v.map(|v| v["data"].clone()))
    }

    /// One call to `api_path` (outside the mount too: `sys/leases/...`); the whole
    /// answer, `None` on 404.
    pub async fn call_data(
        &self,
        method: Method,
        api_path: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>, TargetError> {
        match self.vault.request(&self.name, method, api_path, body).await {
            Ok(v) => Ok(Some(v)),
            Err(BackendError::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(e)),
        }
    }

    /// A write to `<mount>/<path>`.
    pub async fn write(
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

    #[cfg(test)]
    pub fn connection_url(&self) -> &str {
        &self.connection_url
    }

    /// The declared connection: each field as read back (without the password), and
    /// the body that writes it.
    pub fn declared_connection(&self) -> (Vec<(&'static str, Value)>, Value) {
        let root = json!(self.claimed(&[DEFAULT_ROTATION.to_owned()]));
        let fields = vec![
            ("plugin_name", json!("postgresql-database-plugin")),
            ("connection_url", json!(self.connection_url)),
            ("username", json!(self.admin_user)),
            ("allowed_roles", json!([self.object])),
            ("root_rotation_statements", root.clone()),
        ];
        let body = json!({
            "plugin_name": "postgresql-database-plugin",
            "connection_url": self.connection_url,
            "username": self.admin_user,
            "password": self.admin_password.expose(),
            "allowed_roles": [self.object],
            "root_rotation_statements": root,
            "verify_connection": true,
        });
        (fields, body)
    }

    /// Where the connection as read back differs from the declared one.
    pub fn connection_drift(&self, have: &Value) -> Vec<&'static str> {
        let (fields, _) = self.declared_connection();
        let details = &have["connection_details"];
        fields
            .into_iter()
            .filter(|(field, want)| {
                let got = match *field {
                    "connection_url" | "username" => &details[*field],
                    "root_rotation_statements" => &have["root_credentials_rotate_statements"],
                    _ => &have[*field],
                };
                got != want
            })
            .map(|(field, _)| field)
            .collect()
    }

    /// Checks the claims of the connection and of the role at `role_path` (whose claim
    /// sits in `role_statements`), then writes the connection where it differs from
    /// the declared one. Returns what it wrote and the role as read back.
    pub async fn sync_connection(
        &self,
        role_path: &str,
        role_statements: &str,
    ) -> Result<(Vec<Correction>, Option<Value>), TargetError> {
        let config_path = format!("config/{}", self.object);
        let config = self.get(&config_path).await?;
        let role = self.get(role_path).await?;
        if let Some(c) = &config
            && !self.claimed_by_us(&c["root_credentials_rotate_statements"])
        {
            return Err(self.not_ours(&format!("connection {}", self.object)));
        }
        if let Some(r) = &role
            && !self.claimed_by_us(&r[role_statements])
        {
            return Err(self.not_ours(&format!("role {}", self.object)));
        }
        let mut out = Vec::new();
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
        Ok((out, role))
    }
}
