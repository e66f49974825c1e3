//! `spec.target`: what the credential is set on (PostgreSQL, MySQL/MariaDB, nothing),
//! and the admin and CA Secrets a database target reads.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::backend::*;
use super::rules::*;
use super::status::*;
use crate::template::Variable;

/// What the credential is set on. One variant per target; RDS master passwords, IAM access
/// keys, transit keys or Vault database roles would each be one more.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum Target {
    /// A PostgreSQL role. The password is sent pre-hashed as a SCRAM-SHA-256 verifier,
    /// so the plaintext never reaches the server or its logs.
    Postgres(PostgresTarget),
    /// A MySQL or MariaDB user.
    Mysql(MysqlTarget),
    /// No target: an API key or token that is generated, stored and delivered only.
    #[serde(rename = "none")]
    ValueOnly(ValueOnlyTarget),
}

/// PostgreSQL target.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PostgresTarget {
    /// Host name or IP address of the server (no brackets around IPv6).
    #[schemars(length(min = 1, max = 253), regex(pattern = HOST_PATTERN))]
    pub host: String,
    /// TCP port.
    #[serde(default = "default_postgres_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Database to connect to for testing the credential, and the `database` template
    /// variable.
    #[schemars(length(min = 1, max = 63), regex(pattern = DB_NAME_PATTERN))]
    pub database: String,
    /// TLS mode, as libpq's `sslmode`. `verifyFull` checks the certificate and host name.
    #[serde(default)]
    pub ssl_mode: PostgresSslMode,
    /// CA bundle for `verifyCa` and `verifyFull` when the server's CA is not a public one
    /// (e.g. Amazon RDS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<CaSecretRef>,
    /// Role whose password is rotated. With `alternatingUsers` this is the first of the
    /// two roles.
    #[schemars(length(min = 1, max = 63), regex(pattern = DB_USERNAME_PATTERN))]
    pub username: String,
    /// Secret in this namespace with the credentials of an administrative role allowed
    /// to change the password (and, for `alternatingUsers`, to create the second role).
    pub admin_secret_ref: AdminSecretRef,
}

fn default_postgres_port() -> i32 {
    5432
}

/// libpq `sslmode` values.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum PostgresSslMode {
    /// No TLS.
    Disable,
    /// TLS only if the server insists.
    Allow,
    /// TLS if the server offers it, no certificate check.
    Prefer,
    /// TLS, no certificate check.
    Require,
    /// TLS, certificate signed by a trusted CA.
    VerifyCa,
    /// TLS, trusted certificate that names the host.
    #[default]
    VerifyFull,
}

/// MySQL/MariaDB target.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MysqlTarget {
    /// Host name or IP address of the server (no brackets around IPv6).
    #[schemars(length(min = 1, max = 253), regex(pattern = HOST_PATTERN))]
    pub host: String,
    /// TCP port.
    #[serde(default = "default_mysql_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Default database for connections, used only by the `database` template variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = DB_NAME_PATTERN))]
    pub database: Option<String>,
    /// User whose password is rotated. With `alternatingUsers` this is the first of the
    /// two users.
    #[schemars(length(min = 1, max = 32), regex(pattern = DB_USERNAME_PATTERN))]
    pub username: String,
    /// Host part of the account (`'username'@'userHost'`).
    #[serde(default = "default_mysql_user_host")]
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[A-Za-z0-9%_.:-]+$"))]
    pub user_host: String,
    /// TLS mode, as the mysql client's `--ssl-mode`.
    #[serde(default)]
    pub ssl_mode: MysqlSslMode,
    /// CA bundle for `verifyCa` and `verifyIdentity` when the server's CA is not a public
    /// one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<CaSecretRef>,
    /// Secret in this namespace with the credentials of an administrative user allowed
    /// to change the password (and, for `alternatingUsers`, to create the second user).
    pub admin_secret_ref: AdminSecretRef,
}

fn default_mysql_port() -> i32 {
    3306
}

fn default_mysql_user_host() -> String {
    "%".to_owned()
}

/// mysql client `--ssl-mode` values.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum MysqlSslMode {
    /// No TLS.
    Disabled,
    /// TLS if the server offers it, no certificate check.
    Preferred,
    /// TLS, no certificate check.
    Required,
    /// TLS, certificate signed by a trusted CA.
    VerifyCa,
    /// TLS, trusted certificate that names the host.
    #[default]
    VerifyIdentity,
}

/// The `none` target: nothing outside the backend changes.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
pub struct ValueOnlyTarget {}

/// A Secret in this namespace with an administrative database login.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AdminSecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub name: String,
    /// Data key holding the admin username.
    #[serde(default = "default_username_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY_PATTERN))]
    pub username_key: String,
    /// Data key holding the admin password.
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY_PATTERN))]
    pub password_key: String,
}

fn default_username_key() -> String {
    "username".to_owned()
}

/// A CA bundle in a Secret or ConfigMap-like Secret key in this namespace.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CaSecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub name: String,
    /// Data key holding the PEM bundle.
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY_PATTERN))]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".to_owned()
}

impl Target {
    /// The variables this target provides to the delivered Secret's templates.
    pub fn available_variables(&self) -> Vec<Variable> {
        match self {
            Target::Postgres(_) => Variable::ALL.to_vec(),
            Target::Mysql(m) => Variable::ALL
                .into_iter()
                .filter(|v| *v != Variable::Database || m.database.is_some())
                .collect(),
            Target::ValueOnly(_) => vec![Variable::Password],
        }
    }

    /// Which target this is.
    pub fn kind(&self) -> TargetKind {
        match self {
            Self::Postgres(_) => TargetKind::Postgres,
            Self::Mysql(_) => TargetKind::Mysql,
            Self::ValueOnly(_) => TargetKind::None,
        }
    }

    /// The database username (first role), if this is a database target.
    pub fn username(&self) -> Option<&str> {
        match self {
            Self::Postgres(t) => Some(&t.username),
            Self::Mysql(t) => Some(&t.username),
            Self::ValueOnly(_) => None,
        }
    }

    /// Longest username the target accepts, if this is a database target.
    pub fn max_username_len(&self) -> Option<usize> {
        match self {
            Self::Postgres(_) => Some(63),
            Self::Mysql(_) => Some(32),
            Self::ValueOnly(_) => None,
        }
    }

    /// Whether the target is a database (the only kind alternating users applies to).
    pub fn is_database(&self) -> bool {
        self.username().is_some()
    }
}
