//! `spec.target`: what the credential is set on (PostgreSQL, MySQL/MariaDB, nothing),
//! and the admin and CA Secrets a database target reads.

use capstan_core::connection::ConnectionRef;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::backend::*;
use super::rules::*;
use super::status::*;
use crate::template::Variable;

/// What the credential is set on. One variant per target.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum Target {
    /// A PostgreSQL role. The password is sent pre-hashed as a SCRAM-SHA-256 verifier,
    /// so the plaintext never reaches the server or its logs.
    Postgres(PostgresTarget),
    /// A MySQL or MariaDB user.
    Mysql(MysqlTarget),
    /// The master password of an Amazon RDS DB instance or Aurora DB cluster, changed
    /// with ModifyDBInstance/ModifyDBCluster and tested by logging in at its endpoint.
    RdsMasterPassword(RdsMasterPasswordTarget),
    /// An IAM user's access key: AWS issues the new key, Capstan tests it with STS,
    /// delivers it, deactivates the previous one and deletes it after a grace period.
    IamAccessKey(IamAccessKeyTarget),
    /// A Vault/OpenBao transit key: a new version per rotation; its name and version
    /// are delivered, never key material.
    VaultTransitKey(VaultTransitKeyTarget),
    /// A Vault/OpenBao database static role: Capstan declares the database connection
    /// and the role in Vault, triggers `rotate-role` on its schedule and delivers
    /// `static-creds`; Vault holds the password.
    VaultDatabaseStaticRole(VaultDatabaseStaticRoleTarget),
    /// Vault/OpenBao dynamic database credentials: Capstan declares a role whose
    /// users Vault creates per lease, renews the lease on deadlines, obtains new
    /// credentials before the maximum TTL, and revokes the previous lease once the new
    /// credentials are delivered.
    VaultDatabaseDynamicRole(VaultDatabaseDynamicRoleTarget),
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

/// `target.rdsMasterPassword`: the master password of an RDS DB instance or Aurora DB
/// cluster.
///
/// Capstan sets it with ModifyDBInstance (ModifyDBCluster) and `ApplyImmediately`,
/// waits until RDS reports the instance `available` with no change pending, and tests
/// it by logging in as the master user at the endpoint. An instance whose password RDS
/// manages itself (`ManageMasterUserPassword`) is refused (`RdsManagesPassword`) unless
/// `turnOffRdsManagedPassword` is true: two rotators of one password would each lock
/// the other's consumers out.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(RULE_RDS_ONE_RESOURCE).message("exactly one of dbInstanceIdentifier or dbClusterIdentifier must be set"))]
pub struct RdsMasterPasswordTarget {
    /// The AWS ClusterConnection through which RDS is called. Its scopes must grant
    /// this namespace the instance's or cluster's ARN (`scopes[].rds.resources`).
    pub connection_ref: ConnectionRef,
    /// The DB instance (`DBInstanceIdentifier`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = RDS_IDENTIFIER_PATTERN))]
    pub db_instance_identifier: Option<String>,
    /// The Aurora DB cluster (`DBClusterIdentifier`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = RDS_IDENTIFIER_PATTERN))]
    pub db_cluster_identifier: Option<String>,
    /// The master username, as RDS reports it (`MasterUsername`). Checked before any
    /// change, so that an object cannot be pointed at another database by mistake.
    #[schemars(length(min = 1, max = 63), regex(pattern = DB_USERNAME_PATTERN))]
    pub master_username: String,
    /// The database engine, for the login test.
    #[serde(default)]
    pub engine: RdsEngine,
    /// The database to log in to for the test, and the `database` template variable.
    /// Default: `postgres` for PostgreSQL; none for MySQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = DB_NAME_PATTERN))]
    pub database: Option<String>,
    /// Where to log in instead of the endpoint RDS reports (a private DNS name, a
    /// proxy). With it, `host` and `port` are template variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<RdsEndpoint>,
    /// TLS for the login test: `verifyFull` (default) checks the certificate and host
    /// name against `caSecretRef` or the system roots.
    #[serde(default)]
    pub tls: RdsTls,
    /// The RDS CA bundle (e.g. `global-bundle.pem`) for `verifyFull`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<CaSecretRef>,
    /// Turns RDS's own management of the master password off (ManageMasterUserPassword
    /// false, in the same call that sets Capstan's password) instead of refusing an
    /// instance that has it on.
    #[serde(default)]
    pub turn_off_rds_managed_password: bool,
}

/// The engine an RDS instance runs, for the login test.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum RdsEngine {
    /// PostgreSQL or Aurora PostgreSQL.
    #[default]
    Postgres,
    /// MySQL, MariaDB or Aurora MySQL.
    Mysql,
}

/// Where the login test connects.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RdsEndpoint {
    /// Host name or IP address (no brackets around IPv6).
    #[schemars(length(min = 1, max = 253), regex(pattern = HOST_PATTERN))]
    pub host: String,
    /// TCP port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// TLS of the login test.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum RdsTls {
    /// No TLS (an endpoint reached through a tunnel that encrypts).
    Disable,
    /// TLS without a certificate check.
    Require,
    /// TLS with a certificate that a trusted CA signed for the host name.
    #[default]
    VerifyFull,
}

impl IamAccessKeyTarget {
    /// The grace period (the schema's pattern is a subset of [`parse_duration`]'s).
    ///
    /// [`parse_duration`]: capstan_core::schedule::parse_duration
    pub fn grace(&self) -> Result<std::time::Duration, String> {
        capstan_core::schedule::parse_duration(&self.grace_period)
            .map_err(|e| e.to_string())
            .and_then(|d| {
                if d < std::time::Duration::from_secs(1) {
                    Err("must be at least 1s".into())
                } else {
                    Ok(d)
                }
            })
    }
}

impl RdsMasterPasswordTarget {
    /// The database of the login test and the template variable.
    pub fn effective_database(&self) -> Option<&str> {
        match (&self.database, self.engine) {
            (Some(d), _) => Some(d),
            (None, RdsEngine::Postgres) => Some("postgres"),
            (None, RdsEngine::Mysql) => None,
        }
    }
}

/// `target.iamAccessKey`: the access key of one IAM user.
///
/// IAM issues the key (CreateAccessKey), so the generator is not used: the stored
/// credential's `username` is the access key id and its value the secret access key.
/// Capstan tests it with STS GetCallerIdentity (retried while IAM's eventual
/// consistency refuses a fresh key), delivers it, then deactivates the user's other
/// key and deletes it once `gracePeriod` has passed. IAM allows two keys per user and
/// Capstan never needs a third.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IamAccessKeyTarget {
    /// The AWS ClusterConnection through which IAM is called. Its scopes must grant this
    /// namespace the user (`scopes[].iam.users`, matched against `<path><userName>`).
    pub connection_ref: ConnectionRef,
    /// The IAM user (`UserName`).
    #[schemars(length(min = 1, max = 64), regex(pattern = IAM_USER_PATTERN))]
    pub user_name: String,
    /// How long the previous key stays, deactivated, after the new one is delivered,
    /// before it is deleted (a way back while it is inactive): whole seconds, minutes,
    /// hours and days (`30s`, `1h`, `7d`, `1d12h`). At least 1s and at most the
    /// rotation interval.
    #[schemars(length(min = 2, max = 8), regex(pattern = GRACE_PATTERN))]
    #[x_kube(validation = Rule::new(RULE_GRACE_MIN).message("gracePeriod must be at least 1s"))]
    pub grace_period: String,
}

/// `target.vaultTransitKey`: a transit key of a Vault/OpenBao.
///
/// Each rotation makes a new key version (`rotate`) and delivers the key's name and that
/// version (template variables `key` and `version`), never key material. The minimum
/// versions are raised only to what a person names here, never on a timer: Capstan
/// cannot know whether data under older versions has been rewrapped.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VaultTransitKeyTarget {
    /// The Vault ClusterConnection. Its scopes must grant this namespace the key
    /// (`scopes[].vault.transitKeys`, `<mount>/<key>`).
    pub connection_ref: ConnectionRef,
    /// The transit secrets engine's mount.
    #[serde(default = "default_transit_mount")]
    #[schemars(length(min = 1, max = 128), regex(pattern = VAULT_PATH_PATTERN))]
    pub mount: String,
    /// The key's name (the key must exist: Capstan rotates it, it does not create it).
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9_.-]+$"))]
    pub key: String,
    /// Raise `min_decryption_version` to this: ciphertexts of older versions stop
    /// decrypting. Set it only once they have been rewrapped. Never lowered by Capstan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_decryption_version: Option<i64>,
    /// Raise `min_encryption_version` to this (0 or unset: encrypt with the latest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub min_encryption_version: Option<i64>,
}

fn default_transit_mount() -> String {
    "transit".to_owned()
}

/// `target.vaultDatabaseStaticRole`: a PostgreSQL user whose password a Vault/OpenBao
/// database secrets engine holds and rotates (a static role).
///
/// Capstan declares, under the names `<namespace>-<name>`, the engine's connection to
/// the database (`<mount>/config/...`, with the admin login of `adminSecretRef`) and the
/// static role (`<mount>/static-roles/...`), and keeps both at the declared state:
/// every `driftCheckInterval` it reads them back, rewrites what differs and says so in
/// the `TargetInSync` condition and a `DriftCorrected` Event. It never adopts a
/// connection or role it did not create (each carries its owner in a SQL comment of its
/// statements). Each rotation triggers `rotate-role`, reads `static-creds`, logs in
/// with them and delivers them. Vault also rotates the role itself every
/// `rotationPeriod` (required by Vault, at least twice the interval here): Capstan
/// notices at the next drift check that the stored password is no longer Vault's and
/// delivers Vault's.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VaultDatabaseStaticRoleTarget {
    /// The Vault ClusterConnection. Its scopes must grant this namespace the role
    /// (`scopes[].vaultDatabase.roles`, `<mount>/<namespace>-<name>`).
    pub connection_ref: ConnectionRef,
    /// The database secrets engine's mount.
    #[serde(default = "default_database_mount")]
    #[schemars(length(min = 1, max = 128), regex(pattern = VAULT_PATH_PATTERN))]
    pub mount: String,
    /// The PostgreSQL server Vault connects to (and Capstan logs in to, to test).
    #[schemars(length(min = 1, max = 253), regex(pattern = HOST_PATTERN))]
    pub host: String,
    /// TCP port.
    #[serde(default = "default_postgres_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// The database Vault's connection and the login test use; the `database` template
    /// variable.
    #[schemars(length(min = 1, max = 63), regex(pattern = DB_NAME_PATTERN))]
    pub database: String,
    /// TLS of both Vault's connection and the login test, as libpq's `sslmode`.
    #[serde(default)]
    pub ssl_mode: PostgresSslMode,
    /// Secret in this namespace with the administrative login Vault's connection uses
    /// to run the rotation statements.
    pub admin_secret_ref: AdminSecretRef,
    /// The PostgreSQL role whose password Vault holds.
    #[schemars(length(min = 1, max = 63), regex(pattern = DB_USERNAME_PATTERN))]
    pub username: String,
    /// The statements Vault runs to set the password (`{{name}}`, `{{password}}`).
    /// Default: `ALTER ROLE "{{name}}" WITH PASSWORD '{{password}}'`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 4096)))]
    pub rotation_statements: Vec<String>,
    /// How often Vault rotates the role by itself (Vault requires one): whole seconds,
    /// minutes, hours and days, at least twice `schedule.interval`, so that Capstan's
    /// schedule rotates first and Vault's own rotation is the exception.
    #[schemars(length(min = 2, max = 8), regex(pattern = GRACE_PATTERN))]
    #[x_kube(validation = Rule::new(RULE_ROTATION_PERIOD_MIN).message("rotationPeriod must be at least 10s"))]
    pub rotation_period: String,
    /// How often Capstan reads the connection and the role back, repairs drift and
    /// checks whether Vault rotated on its own: whole seconds, minutes, hours and days,
    /// at least 5s. Default 5m.
    #[serde(default = "default_drift_check_interval")]
    #[schemars(length(min = 2, max = 8), regex(pattern = GRACE_PATTERN))]
    #[x_kube(validation = Rule::new(RULE_DRIFT_CHECK_MIN).message("driftCheckInterval must be at least 5s"))]
    pub drift_check_interval: String,
}

/// `target.vaultDatabaseDynamicRole`: PostgreSQL users that a Vault/OpenBao database
/// secrets engine creates per lease ("dynamic secrets").
///
/// Capstan declares the engine's connection (`<mount>/config/<namespace>-<name>`) and a
/// role (`<mount>/roles/<namespace>-<name>`) with the creation and revocation
/// statements and TTLs, as it does for a static role (owner in a SQL comment, never
/// adopting a same-named object; drift written back at each renewal). Each rotation
/// reads `creds/<role>`, logs in, stores and delivers the credentials; the lease is
/// renewed on its own deadline (`renewBefore` before it expires, jittered per object)
/// while Vault extends it, new credentials are obtained `renewBefore` before `maxTtl`
/// ends (or at once when Vault revoked the lease behind Capstan's back), and every
/// other lease of the role is revoked only once the new credentials are delivered.
/// Stored only in a `kubernetes` backend; status shows the lease's times and a hash of
/// its id, never the id.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(RULE_MAX_TTL_COVERS_TTL).message("maxTtl must be at least defaultTtl").field_path(".maxTtl"),
    validation = Rule::new(RULE_RENEW_BEFORE_WITHIN_TTL).message("renewBefore must be shorter than defaultTtl").field_path(".renewBefore")
)]
pub struct VaultDatabaseDynamicRoleTarget {
    /// The Vault ClusterConnection. Its scopes must grant this namespace the role
    /// (`scopes[].vaultDatabase.roles`, `<mount>/<namespace>-<name>`).
    pub connection_ref: ConnectionRef,
    /// The database secrets engine's mount.
    #[serde(default = "default_database_mount")]
    #[schemars(length(min = 1, max = 128), regex(pattern = VAULT_PATH_PATTERN))]
    pub mount: String,
    /// The PostgreSQL server Vault connects to (and Capstan logs in to, to test).
    #[schemars(length(min = 1, max = 253), regex(pattern = HOST_PATTERN))]
    pub host: String,
    /// TCP port.
    #[serde(default = "default_postgres_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// The database of Vault's connection and of the login test; the `database`
    /// template variable.
    #[schemars(length(min = 1, max = 63), regex(pattern = DB_NAME_PATTERN))]
    pub database: String,
    /// TLS of both Vault's connection and the login test, as libpq's `sslmode`.
    #[serde(default)]
    pub ssl_mode: PostgresSslMode,
    /// Secret in this namespace with the administrative login Vault's connection uses
    /// to create and drop the users.
    pub admin_secret_ref: AdminSecretRef,
    /// The statements that create a user (`{{name}}`, `{{password}}`,
    /// `{{expiration}}`), e.g. `CREATE ROLE "{{name}}" LOGIN PASSWORD '{{password}}'
    /// VALID UNTIL '{{expiration}}'` followed by its grants.
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 4096)))]
    pub creation_statements: Vec<String>,
    /// The statements that drop a user when its lease is revoked or expires. Default:
    /// Vault's (revoke its privileges, reassign its objects, drop it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 4096)))]
    pub revocation_statements: Vec<String>,
    /// The lease Vault grants and each renewal extends it by: whole seconds, minutes,
    /// hours and days, at least 10s. Default 1h.
    #[serde(default = "default_dynamic_ttl")]
    #[schemars(length(min = 2, max = 8), regex(pattern = GRACE_PATTERN))]
    #[x_kube(validation = Rule::new(RULE_TTL_MIN).message("defaultTtl must be at least 10s"))]
    pub default_ttl: String,
    /// The longest a set of credentials lives, renewals included; Capstan always sets
    /// it on the role (Vault's own default is 32 days), so a lease that a crash left
    /// unrecorded dies with it. At least `defaultTtl`, at most 30d. Default 24h.
    #[serde(default = "default_dynamic_max_ttl")]
    #[schemars(length(min = 2, max = 8), regex(pattern = GRACE_PATTERN))]
    #[x_kube(validation = Rule::new(RULE_MAX_TTL_MAX).message("maxTtl must be at most 30d"))]
    pub max_ttl: String,
    /// How long before a lease expires it is renewed, and before `maxTtl` ends new
    /// credentials are obtained: whole seconds, minutes, hours and days, at least 2s
    /// and shorter than `defaultTtl`. Each object's deadlines are jittered by up to a
    /// tenth of it, so that many leases do not renew at once. Default: a third of
    /// `defaultTtl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 8), regex(pattern = GRACE_PATTERN))]
    #[x_kube(validation = Rule::new(RULE_RENEW_BEFORE_MIN).message("renewBefore must be at least 2s"))]
    pub renew_before: Option<String>,
}

fn default_dynamic_ttl() -> String {
    "1h".to_owned()
}

fn default_dynamic_max_ttl() -> String {
    "24h".to_owned()
}

/// The least `defaultTtl`.
pub const MIN_DYNAMIC_TTL: std::time::Duration = std::time::Duration::from_secs(10);
/// The most `maxTtl`.
pub const MAX_DYNAMIC_MAX_TTL: std::time::Duration = std::time::Duration::from_secs(30 * 86400);
/// The least `renewBefore`.
pub const MIN_RENEW_BEFORE: std::time::Duration = std::time::Duration::from_secs(2);

impl VaultDatabaseDynamicRoleTarget {
    /// `(defaultTtl, maxTtl, renewBefore)`, checked against their floors and each other.
    pub fn durations(
        &self,
    ) -> Result<
        (
            std::time::Duration,
            std::time::Duration,
            std::time::Duration,
        ),
        (&'static str, String),
    > {
        let parse = |field: &'static str, s: &str| {
            capstan_core::schedule::parse_duration(s).map_err(|e| (field, e.to_string()))
        };
        let ttl = parse("defaultTtl", &self.default_ttl)?;
        let max = parse("maxTtl", &self.max_ttl)?;
        if ttl < MIN_DYNAMIC_TTL {
            return Err(("defaultTtl", "must be at least 10s".into()));
        }
        if max < ttl {
            return Err(("maxTtl", "must be at least defaultTtl".into()));
        }
        if max > MAX_DYNAMIC_MAX_TTL {
            return Err(("maxTtl", "must be at most 30d".into()));
        }
        let before = match &self.renew_before {
            Some(b) => parse("renewBefore", b)?,
            None => ttl / 3,
        };
        if before < MIN_RENEW_BEFORE {
            return Err(("renewBefore", "must be at least 2s".into()));
        }
        if before >= ttl {
            return Err(("renewBefore", "must be shorter than defaultTtl".into()));
        }
        Ok((ttl, max, before))
    }
}

fn default_database_mount() -> String {
    "database".to_owned()
}

fn default_drift_check_interval() -> String {
    "5m".to_owned()
}

/// The least `rotationPeriod` (Vault's own floor is 5s).
pub const MIN_ROTATION_PERIOD: std::time::Duration = std::time::Duration::from_secs(10);
/// The least `driftCheckInterval`.
pub const MIN_DRIFT_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

impl VaultDatabaseStaticRoleTarget {
    fn parse(s: &str, floor: std::time::Duration) -> Result<std::time::Duration, String> {
        capstan_core::schedule::parse_duration(s)
            .map_err(|e| e.to_string())
            .and_then(|d| {
                if d < floor {
                    Err(format!("must be at least {}s", floor.as_secs()))
                } else {
                    Ok(d)
                }
            })
    }

    /// Vault's own rotation period.
    pub fn rotation_period(&self) -> Result<std::time::Duration, String> {
        Self::parse(&self.rotation_period, MIN_ROTATION_PERIOD)
    }

    /// How often drift is checked.
    pub fn drift_check(&self) -> Result<std::time::Duration, String> {
        Self::parse(&self.drift_check_interval, MIN_DRIFT_CHECK_INTERVAL)
    }
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
            Target::RdsMasterPassword(r) => Variable::ALL
                .into_iter()
                .filter(|v| match v {
                    Variable::Host | Variable::Port => r.endpoint.is_some(),
                    Variable::Database => r.effective_database().is_some(),
                    _ => true,
                })
                .collect(),
            Target::IamAccessKey(_) => vec![
                Variable::Username,
                Variable::Password,
                Variable::AccessKeyId,
                Variable::SecretAccessKey,
            ],
            Target::VaultTransitKey(_) => vec![Variable::Key, Variable::Version],
            Target::VaultDatabaseStaticRole(_) | Target::VaultDatabaseDynamicRole(_) => {
                Variable::ALL.to_vec()
            }
            Target::ValueOnly(_) => vec![Variable::Password],
        }
    }

    /// Which target this is.
    pub fn kind(&self) -> TargetKind {
        match self {
            Self::Postgres(_) => TargetKind::Postgres,
            Self::Mysql(_) => TargetKind::Mysql,
            Self::RdsMasterPassword(_) => TargetKind::RdsMasterPassword,
            Self::IamAccessKey(_) => TargetKind::IamAccessKey,
            Self::VaultTransitKey(_) => TargetKind::VaultTransitKey,
            Self::VaultDatabaseStaticRole(_) => TargetKind::VaultDatabaseStaticRole,
            Self::VaultDatabaseDynamicRole(_) => TargetKind::VaultDatabaseDynamicRole,
            Self::ValueOnly(_) => TargetKind::None,
        }
    }

    /// The database username (first role; the master user of RDS), if the target has
    /// users.
    pub fn username(&self) -> Option<&str> {
        match self {
            Self::Postgres(t) => Some(&t.username),
            Self::Mysql(t) => Some(&t.username),
            Self::RdsMasterPassword(t) => Some(&t.master_username),
            Self::VaultDatabaseStaticRole(t) => Some(&t.username),
            Self::IamAccessKey(_)
            | Self::VaultTransitKey(_)
            | Self::VaultDatabaseDynamicRole(_)
            | Self::ValueOnly(_) => None,
        }
    }

    /// Longest username the target accepts, if this is a database target.
    pub fn max_username_len(&self) -> Option<usize> {
        match self {
            Self::Postgres(_) => Some(63),
            Self::Mysql(_) => Some(32),
            Self::RdsMasterPassword(_)
            | Self::VaultDatabaseStaticRole(_)
            | Self::VaultDatabaseDynamicRole(_)
            | Self::IamAccessKey(_)
            | Self::VaultTransitKey(_)
            | Self::ValueOnly(_) => None,
        }
    }

    /// Whether the target is a database whose users Capstan manages (the only kind
    /// alternating users applies to; an RDS instance has one master user).
    pub fn is_database(&self) -> bool {
        matches!(self, Self::Postgres(_) | Self::Mysql(_))
    }

    /// The kind of system [`Target::connection`] must point at.
    pub fn connection_kind(&self) -> capstan_core::connection::ConnectionKind {
        match self {
            Self::VaultTransitKey(_)
            | Self::VaultDatabaseStaticRole(_)
            | Self::VaultDatabaseDynamicRole(_) => capstan_core::connection::ConnectionKind::Vault,
            _ => capstan_core::connection::ConnectionKind::Aws,
        }
    }

    /// The ClusterConnection the target itself is reached through, if any.
    pub fn connection(&self) -> Option<&ConnectionRef> {
        match self {
            Self::RdsMasterPassword(t) => Some(&t.connection_ref),
            Self::IamAccessKey(t) => Some(&t.connection_ref),
            Self::VaultTransitKey(t) => Some(&t.connection_ref),
            Self::VaultDatabaseStaticRole(t) => Some(&t.connection_ref),
            Self::VaultDatabaseDynamicRole(t) => Some(&t.connection_ref),
            Self::Postgres(_) | Self::Mysql(_) | Self::ValueOnly(_) => None,
        }
    }
}
