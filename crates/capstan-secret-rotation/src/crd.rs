//! The `SecretRotation` custom resource (`capstan.dev/v1alpha1`, short name `srot`).
//!
//! A SecretRotation rotates one credential on a schedule: it generates a new value
//! ([`Generator`]), stores it as *pending* in a [`Backend`] where consumers don't read it,
//! sets it on the [`Target`] (a database role, or nothing for API keys), tests it, promotes
//! it to *current* in the backend and finally delivers it to workloads ([`Delivery`]). The
//! steps follow the AWS Secrets Manager rotation contract
//! (<https://docs.aws.amazon.com/secretsmanager/latest/userguide/rotate-secrets_lambda-functions.html>):
//! `createSecret`, `setSecret`, `testSecret`, `finishSecret`, plus Capstan's own `Deliver`
//! ([`RotationStep`]).
//!
//! Validation lives where it can be enforced earliest: types, enums, lengths and patterns in
//! the OpenAPI schema, cross-field rules as CEL `x-kubernetes-validations` (refused at
//! admission with a field path), and what CEL cannot express in
//! [`crate::validation::validate`], which the controller reports as a condition.
//!
//! Status never holds a secret value: versions are identifiers, failures are scrubbed by
//! construction ([`RotationFailure::new`]).

use std::collections::BTreeMap;

use capstan_core::connection::ConnectionKind;
pub use capstan_core::connection::ConnectionRef;
use capstan_core::redact::{REDACTED, SecretValue};
use capstan_core::schedule::{
    CRON_MAX_LENGTH, CRON_PATTERN, DurationString, TIME_ZONE_MAX_LENGTH, TIME_ZONE_PATTERN,
};
use capstan_core::scope::ScopedResource;
use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Annotation that requests a rotation now. Each new value (any token, e.g. a timestamp)
/// rotates once; the token last acted on is `status.observedRotateNowToken`. Rotate-now
/// ignores the schedule and the window but not `spec.suspend`.
pub const ROTATE_NOW_ANNOTATION: &str = "capstan.dev/rotate-now";

/// How many finished rotations `status.recentRotations` keeps (newest first).
pub const RECENT_ROTATIONS_LIMIT: usize = 10;

/// Longest `status.lastFailure.message`, in bytes; longer messages are cut.
pub const FAILURE_MESSAGE_MAX_LEN: usize = 1024;

/// Suffix appended to `backend.kubernetes.secretName` to name the pending Secret when
/// `pendingSecretName` is not set.
pub const DEFAULT_PENDING_SECRET_SUFFIX: &str = "-pending";

/// Prefix put in front of `backend.vault.path` to form the pending path when `pendingPath`
/// is not set. A separate top-level prefix, so that consumer policies granting `<app>/*`
/// don't also grant the untested pending value.
pub const DEFAULT_VAULT_PENDING_PREFIX: &str = "capstan-pending/";

/// Suffix appended to the username to name the second role of `alternatingUsers` when
/// `secondaryUsername` is not set.
pub const DEFAULT_SECONDARY_USERNAME_SUFFIX: &str = "_b";

/// Characters of the `symbols` class by default: RFC 3986 "unreserved" punctuation, which
/// needs no escaping in URLs (userinfo), libpq/JDBC/MySQL connection strings or shells.
pub const DEFAULT_SYMBOL_CHARACTERS: &str = "-_.~";

/// Shortest interval the schema accepts. Production schedules are days or weeks; seconds
/// exist so that integration tests can watch several rotations.
pub const MIN_INTERVAL: &str = "1s";

/// Condition types written to `status.conditions`.
pub mod condition_types {
    /// The current credential was set, tested and delivered; consumers can rely on it.
    pub const READY: &str = "Ready";
    /// A rotation is in progress (`status.rotation` is set).
    pub const ROTATING: &str = "Rotating";
    /// The current credential reached every delivery target (Secret, rollouts, ECS).
    pub const DELIVERED: &str = "Delivered";
    /// The scheduled rotation time passed without a successful rotation (failing,
    /// suspended, or waiting for the window): what a compliance alert watches.
    pub const OVERDUE: &str = "Overdue";
}

/// Condition reasons (CamelCase, stable: alerts and `kubectl wait` match on them): all of
/// them, in [`crate::reasons`].
pub use crate::reasons;

// Patterns (RE2 syntax: the API server evaluates them with Go's regexp).

/// Kubernetes object names (DNS-1123 subdomain).
pub(crate) const DNS_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// Keys of a Secret's `data`.
pub(crate) const SECRET_KEY_PATTERN: &str = r"^[-._a-zA-Z0-9]+$";
/// Wall-clock time `HH:MM`, 24-hour.
pub const HH_MM_PATTERN: &str = r"^([01][0-9]|2[0-3]):[0-5][0-9]$";
/// Database user/role names that need no quoting in SQL.
pub(crate) const DB_USERNAME_PATTERN: &str = r"^[A-Za-z_][A-Za-z0-9_]*$";
const HOST_PATTERN: &str = r"^[A-Za-z0-9:]([A-Za-z0-9.:-]*[A-Za-z0-9])?$";
const DB_NAME_PATTERN: &str = r"^[A-Za-z0-9_.$-]+$";
const VAULT_PATH_PATTERN: &str = r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$";
const AWS_ID_PATTERN: &str = r"^[A-Za-z0-9/_+=.@:-]+$";
/// Printable ASCII punctuation (no letters, digits or space).
pub(crate) const SYMBOLS_PATTERN: &str = r"^[!-/:-@\[-`{-~]+$";
const PRINTABLE_ASCII_PATTERN: &str = r"^[!-~]*$";

// CEL rules, named so that tests can find them in the generated schema. Every rule that
// touches a string or a list sits on a field bounded by maxLength/maxItems, so that the
// API server's cost estimate stays far below its per-rule budget.

pub(crate) const RULE_CONNECTION_REQUIRED: &str =
    "!(has(self.backend.awsSecretsManager) || has(self.backend.vault)) || has(self.connectionRef)";
pub(crate) const RULE_CONNECTION_FORBIDDEN: &str =
    "!has(self.backend.kubernetes) || !has(self.connectionRef)";
pub(crate) const RULE_ALTERNATING_NEEDS_DATABASE: &str = "!has(self.strategy) || !has(self.strategy.alternatingUsers) || has(self.target.postgres) || has(self.target.mysql)";
pub(crate) const RULE_SINGLE_USER_ACKNOWLEDGED: &str = "!(has(self.delivery) && ((has(self.delivery.rollouts) && size(self.delivery.rollouts) > 0) || (has(self.delivery.ecsServices) && size(self.delivery.ecsServices) > 0))) || (has(self.strategy) && (has(self.strategy.alternatingUsers) || (has(self.strategy.singleUser) && has(self.strategy.singleUser.acceptLoginFailuresUntilRestart) && self.strategy.singleUser.acceptLoginFailuresUntilRestart)))";
pub(crate) const RULE_ECS_NEEDS_CONNECTION: &str = "!has(self.delivery) || !has(self.delivery.ecsServices) || size(self.delivery.ecsServices) == 0 || has(self.delivery.ecsConnectionRef) || has(self.connectionRef)";
pub(crate) const RULE_DELIVERY_SECRET_NOT_BACKEND: &str = "!has(self.backend.kubernetes) || !has(self.delivery) || !has(self.delivery.secret) || (self.delivery.secret.name != self.backend.kubernetes.secretName && self.delivery.secret.name != (has(self.backend.kubernetes.pendingSecretName) ? self.backend.kubernetes.pendingSecretName : self.backend.kubernetes.secretName + '-pending'))";
pub(crate) const RULE_ONE_BACKEND: &str = "(has(self.awsSecretsManager) ? 1 : 0) + (has(self.vault) ? 1 : 0) + (has(self.kubernetes) ? 1 : 0) == 1";
pub(crate) const RULE_ONE_TARGET: &str =
    "(has(self.postgres) ? 1 : 0) + (has(self.mysql) ? 1 : 0) + (has(self.none) ? 1 : 0) == 1";
pub(crate) const RULE_ONE_STRATEGY: &str =
    "(has(self.singleUser) ? 1 : 0) + (has(self.alternatingUsers) ? 1 : 0) == 1";
pub(crate) const RULE_ONE_SCHEDULE: &str = "has(self.interval) != has(self.cron)";
pub(crate) const RULE_TIME_ZONE_WITH_CRON: &str = "!has(self.timeZone) || has(self.cron)";

/// `interval >= 1s`: the floor every tenant duration has
/// ([`capstan_core::schedule::rule_min_duration`]), which sums the components itself, so
/// `0d` is refused too. A string the pattern refuses is left to the pattern's own error.
pub(crate) fn rule_min_interval() -> String {
    capstan_core::schedule::rule_min_duration()
}

pub(crate) const RULE_WINDOW_NOT_EMPTY: &str = "self.start != self.end";
pub(crate) const RULE_GENERATOR_ONE_CLASS: &str =
    "self.lowercase || self.uppercase || self.digits || self.symbols";
pub(crate) const RULE_GENERATOR_LENGTH_FITS_CLASSES: &str = "self.length >= (self.lowercase ? 1 : 0) + (self.uppercase ? 1 : 0) + (self.digits ? 1 : 0) + (self.symbols ? 1 : 0)";
pub(crate) const RULE_ROLLOUT_NAME_XOR_SELECTOR: &str = "has(self.name) != has(self.selector)";
pub(crate) const RULE_SELECTOR_NOT_EMPTY: &str = "(has(self.matchLabels) && size(self.matchLabels) > 0) || (has(self.matchExpressions) && size(self.matchExpressions) > 0)";
pub(crate) const RULE_SELECTOR_VALUES_REQUIRED: &str =
    "!(self.operator in ['In', 'NotIn']) || (has(self.values) && size(self.values) > 0)";
pub(crate) const RULE_SELECTOR_VALUES_FORBIDDEN: &str =
    "!(self.operator in ['Exists', 'DoesNotExist']) || !has(self.values) || size(self.values) == 0";
pub(crate) const RULE_PENDING_SECRET_DIFFERS: &str =
    "!has(self.pendingSecretName) || self.pendingSecretName != self.secretName";
pub(crate) const RULE_PENDING_PATH_DIFFERS: &str =
    "!has(self.pendingPath) || self.pendingPath != self.path";

/// Rotates one credential on a schedule and delivers it to the workloads that use it.
// Printer columns repeat `type_ = "string"`, which clippy takes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "capstan.dev",
    version = "v1alpha1",
    kind = "SecretRotation",
    namespaced,
    status = "SecretRotationStatus",
    shortname = "srot",
    category = "capstan",
    derive = "PartialEq",
    doc = "Rotates a database password, API key or token on a schedule: generates a value, stores it as pending in AWS Secrets Manager, Vault/OpenBao KV v2 or a Kubernetes Secret, sets and tests it on the target, promotes it to current and delivers it to workloads.",
    printcolumn(
        name = "Backend",
        type_ = "string",
        json_path = ".status.backend",
        description = "Where the credential is stored"
    ),
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".status.target",
        description = "What the credential is set on"
    ),
    printcolumn(
        name = "Last rotation",
        type_ = "date",
        json_path = ".status.lastRotationTime",
        description = "When the last rotation finished"
    ),
    // A future time in a `date` column prints as `<invalid>` (the API server's table
    // printer shows ages, and a negative age is invalid); the time itself, in whole
    // seconds, reads better.
    printcolumn(
        name = "Next rotation",
        type_ = "string",
        json_path = ".status.nextRotationTime",
        description = "When the next scheduled rotation is due (UTC, whole seconds)"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the current credential is tested and delivered"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Why Ready has its status"
    ),
    printcolumn(
        name = "Step",
        type_ = "string",
        json_path = ".status.rotation.step",
        description = "Step of the rotation in progress",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message",
        description = "What Ready's reason means for this object"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(RULE_CONNECTION_REQUIRED)
        .message("connectionRef is required with the awsSecretsManager and vault backends")
        .field_path(".connectionRef")
        .reason(Reason::FieldValueRequired),
    validation = Rule::new(RULE_CONNECTION_FORBIDDEN)
        .message("connectionRef must not be set with the kubernetes backend (ECS delivery takes delivery.ecsConnectionRef)")
        .field_path(".connectionRef")
        .reason(Reason::FieldValueForbidden),
    validation = Rule::new(RULE_ALTERNATING_NEEDS_DATABASE)
        .message("strategy.alternatingUsers needs a database target (postgres or mysql)")
        .field_path(".strategy"),
    validation = Rule::new(RULE_SINGLE_USER_ACKNOWLEDGED)
        .message("the singleUser strategy with delivery to workloads (delivery.rollouts or delivery.ecsServices) requires strategy.singleUser.acceptLoginFailuresUntilRestart: true, because the old password stops working before the workloads restart; alternatingUsers avoids that")
        .field_path(".strategy"),
    validation = Rule::new(RULE_ECS_NEEDS_CONNECTION)
        .message("delivery.ecsServices needs an AWS ClusterConnection: set delivery.ecsConnectionRef, or connectionRef")
        .field_path(".delivery")
        .reason(Reason::FieldValueRequired),
    validation = Rule::new(RULE_DELIVERY_SECRET_NOT_BACKEND)
        .message("delivery.secret.name must differ from the kubernetes backend's Secret and pending Secret")
        .field_path(".delivery")
)]
pub struct SecretRotationSpec {
    /// The cluster-scoped ClusterConnection through which Capstan reaches AWS or Vault.
    /// Required with the `awsSecretsManager` and `vault` backends, not allowed with
    /// `kubernetes`. With `awsSecretsManager` it also serves `delivery.ecsServices` unless
    /// `delivery.ecsConnectionRef` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_ref: Option<ConnectionRef>,

    /// Where the credential is stored: exactly one of `awsSecretsManager`, `vault` or
    /// `kubernetes`. Consumers read the current value there; the untested pending value
    /// is kept where they don't read.
    #[x_kube(validation = Rule::new(RULE_ONE_BACKEND).message("exactly one of awsSecretsManager, vault or kubernetes must be set"))]
    pub backend: Backend,

    /// What the credential is set on: exactly one of `postgres`, `mysql` or `none` (an
    /// API key or token that is only generated, stored and delivered).
    #[x_kube(validation = Rule::new(RULE_ONE_TARGET).message("exactly one of postgres, mysql or none must be set"))]
    pub target: Target,

    /// How a database credential is switched: `singleUser` (one role, its password
    /// changes) or `alternatingUsers` (two roles with the same grants take turns, so the
    /// previous credential keeps working for one more period). Defaults to `singleUser`.
    #[serde(default)]
    #[x_kube(validation = Rule::new(RULE_ONE_STRATEGY).message("exactly one of singleUser or alternatingUsers must be set"))]
    pub strategy: Strategy,

    /// When rotations happen: exactly one of `interval` or `cron`, optionally limited to
    /// a daily window.
    pub schedule: Schedule,

    /// Stops starting rotations, scheduled or requested with `capstan.dev/rotate-now`
    /// (a token set meanwhile is acted on after resuming). A rotation already in progress
    /// finishes, because stopping between its steps would leave the backend pending.
    #[serde(default)]
    pub suspend: bool,

    /// How new values are generated. The defaults give 32 characters from letters,
    /// digits and `-_.~`, safe unescaped in URLs and connection strings.
    #[serde(default)]
    pub generator: Generator,

    /// Where the current credential goes after each rotation: a templated Secret,
    /// rollout restarts of workloads, ECS service redeployments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,

    /// Attempts per rotation before it is given up and reported (Ready=False,
    /// RotationFailed); the next scheduled time or a new rotate-now token starts afresh.
    /// Retries back off exponentially.
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1, max = 10))]
    pub max_attempts_per_rotation: i32,
}

fn default_max_attempts() -> i32 {
    3
}

/// Where the credential is stored. One variant per backend; a new backend is one more.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum Backend {
    /// AWS Secrets Manager. The new value is added as a version labelled AWSPENDING,
    /// moved to AWSCURRENT when tested (the old one becomes AWSPREVIOUS). The secret
    /// string is JSON in the layout of AWS's own rotation functions (`username`,
    /// `password`, `host`, `port`, `dbname`, `engine`).
    AwsSecretsManager(AwsSecretsManagerBackend),
    /// Vault or OpenBao KV version 2. The pending value is written to `pendingPath`,
    /// which consumers must not be allowed to read; `path` is written only once the value
    /// is tested, with check-and-set, so readers only ever see tested values and failed
    /// attempts don't use up `path`'s limited version history.
    Vault(VaultBackend),
    /// A Kubernetes Secret in this namespace. The pending value goes to a separate Secret
    /// (`pendingSecretName`) that workloads must not mount. Capstan never deletes either
    /// Secret.
    Kubernetes(KubernetesBackend),
}

/// AWS Secrets Manager backend.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AwsSecretsManagerBackend {
    /// Name or ARN of the secret. Created by Capstan if it does not exist.
    #[schemars(length(min = 1, max = 2048), regex(pattern = AWS_ID_PATTERN))]
    pub secret_id: String,
    /// KMS key (ID, alias or ARN) used when Capstan creates the secret; the account's
    /// `aws/secretsmanager` key when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), regex(pattern = AWS_ID_PATTERN))]
    pub kms_key_id: Option<String>,
}

/// Vault/OpenBao KV v2 backend.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(RULE_PENDING_PATH_DIFFERS).message("pendingPath must differ from path").field_path(".pendingPath"))]
pub struct VaultBackend {
    /// Mount point of the KV v2 secrets engine.
    #[serde(default = "default_vault_mount")]
    #[schemars(length(min = 1, max = 128), regex(pattern = VAULT_PATH_PATTERN))]
    pub mount: String,
    /// Path of the secret within the mount, read by consumers. Written only with tested
    /// values.
    #[schemars(length(min = 1, max = 512), regex(pattern = VAULT_PATH_PATTERN))]
    pub path: String,
    /// Path within the same mount for the untested pending value; consumers must not be
    /// able to read it. Defaults to `capstan-pending/<path>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512), regex(pattern = VAULT_PATH_PATTERN))]
    pub pending_path: Option<String>,
}

fn default_vault_mount() -> String {
    "secret".to_owned()
}

/// Kubernetes Secret backend.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(RULE_PENDING_SECRET_DIFFERS).message("pendingSecretName must differ from secretName").field_path(".pendingSecretName"))]
pub struct KubernetesBackend {
    /// Name of the Secret in this namespace holding the current credential. Created by
    /// Capstan if missing; never deleted by it.
    #[schemars(length(min = 1, max = 245), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub secret_name: String,
    /// Data key holding the password or value; `username`, `host`, `port` and
    /// `database` (for database targets) sit beside it under those names.
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY_PATTERN))]
    pub key: String,
    /// Name of the Secret holding the untested pending value, which workloads must not
    /// mount. Defaults to `<secretName>-pending`. Never deleted by Capstan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub pending_secret_name: Option<String>,
}

fn default_password_key() -> String {
    "password".to_owned()
}

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

/// How a database credential is switched.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Strategy {
    /// One role; each rotation changes its password. Between the password change and
    /// the restart of the workloads, new logins with the old password fail.
    SingleUser(SingleUserStrategy),
    /// Two roles with the same grants take turns: each rotation sets a new password on
    /// the role not in use and switches consumers to it, so the previous credential keeps
    /// working until the next rotation. Database targets only.
    AlternatingUsers(AlternatingUsersStrategy),
}

impl Default for Strategy {
    fn default() -> Self {
        Self::SingleUser(SingleUserStrategy::default())
    }
}

/// The `singleUser` strategy.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SingleUserStrategy {
    /// Must be true when `delivery.rollouts` or `delivery.ecsServices` is set: states
    /// that workloads which open connections after the password change and before their
    /// restart will fail to log in. Refused at admission otherwise.
    #[serde(default)]
    pub accept_login_failures_until_restart: bool,
}

/// The `alternatingUsers` strategy.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AlternatingUsersStrategy {
    /// Name of the second role, created by Capstan with the grants of the first.
    /// Defaults to the target's username followed by `_b`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = DB_USERNAME_PATTERN))]
    pub secondary_username: Option<String>,
}

/// When rotations happen.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(RULE_ONE_SCHEDULE).message("exactly one of interval or cron must be set"),
    validation = Rule::new(RULE_TIME_ZONE_WITH_CRON)
        .message("timeZone applies to cron only (the window has its own timeZone)")
        .field_path(".timeZone")
        .reason(Reason::FieldValueForbidden)
)]
pub struct Schedule {
    /// Time from the end of one rotation to the start of the next, as a Go duration
    /// with `d` for 24 hours: `90d`, `24h`, `1h30m`, `30s`. At least `1s`; intervals
    /// under a minute are meant for tests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(rule_min_interval()).message("interval must be at least 1s"))]
    pub interval: Option<DurationString>,
    /// Five-field cron expression (minute hour day-of-month month day-of-week) or a
    /// macro such as `@weekly`, evaluated in `timeZone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = CRON_MAX_LENGTH), regex(pattern = CRON_PATTERN))]
    pub cron: Option<String>,
    /// IANA time zone of `cron`, e.g. `Europe/Berlin`. UTC when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = TIME_ZONE_MAX_LENGTH), regex(pattern = TIME_ZONE_PATTERN))]
    pub time_zone: Option<String>,
    /// Daily window in which scheduled rotations may start; a rotation due outside it
    /// waits for the next opening. Rotate-now requests ignore the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<RotationWindow>,
}

/// A daily time window. `end` before `start` spans midnight (`22:00`-`04:00`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(RULE_WINDOW_NOT_EMPTY).message("window start and end must differ").field_path(".end"))]
pub struct RotationWindow {
    /// Opening time, `HH:MM` (24-hour).
    #[schemars(length(min = 5, max = 5), regex(pattern = HH_MM_PATTERN))]
    pub start: String,
    /// Closing time, `HH:MM` (24-hour). A rotation started before the end runs to
    /// completion.
    #[schemars(length(min = 5, max = 5), regex(pattern = HH_MM_PATTERN))]
    pub end: String,
    /// IANA time zone of `start` and `end`. UTC when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = TIME_ZONE_MAX_LENGTH), regex(pattern = TIME_ZONE_PATTERN))]
    pub time_zone: Option<String>,
}

/// How new values are generated: `length` characters from the enabled classes, at least
/// one of each, minus `excludeCharacters`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(RULE_GENERATOR_ONE_CLASS).message("at least one of lowercase, uppercase, digits or symbols must be enabled"),
    validation = Rule::new(RULE_GENERATOR_LENGTH_FITS_CLASSES)
        .message("length must be at least the number of enabled character classes")
        .field_path(".length")
)]
pub struct Generator {
    /// Number of characters.
    #[serde(default = "default_length")]
    #[schemars(range(min = 12, max = 1024))]
    pub length: i32,
    /// Use `a`-`z`.
    #[serde(default = "default_true")]
    pub lowercase: bool,
    /// Use `A`-`Z`.
    #[serde(default = "default_true")]
    pub uppercase: bool,
    /// Use `0`-`9`.
    #[serde(default = "default_true")]
    pub digits: bool,
    /// Use the characters of `symbolCharacters`.
    #[serde(default = "default_true")]
    pub symbols: bool,
    /// The symbols class. The default `-_.~` needs no escaping in URLs or connection
    /// strings; adding `@:/?#[]%` or quotes breaks templates such as `DATABASE_URL`
    /// unless they use `urlencode`.
    #[serde(default = "default_symbol_characters")]
    #[schemars(length(min = 1, max = 32), regex(pattern = SYMBOLS_PATTERN))]
    pub symbol_characters: String,
    /// Characters never to use, e.g. look-alikes `0O1lI`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128), regex(pattern = PRINTABLE_ASCII_PATTERN))]
    pub exclude_characters: Option<String>,
}

fn default_length() -> i32 {
    32
}

fn default_true() -> bool {
    true
}

fn default_symbol_characters() -> String {
    DEFAULT_SYMBOL_CHARACTERS.to_owned()
}

impl Default for Generator {
    fn default() -> Self {
        Self {
            length: default_length(),
            lowercase: true,
            uppercase: true,
            digits: true,
            symbols: true,
            symbol_characters: default_symbol_characters(),
            exclude_characters: None,
        }
    }
}

/// Where the current credential goes after each rotation, in this order: the Secret,
/// then rollouts and ECS redeployments.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// A Secret in this namespace written from templates, for workloads to mount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretDelivery>,
    /// Workloads in this namespace to restart (`kubectl rollout restart`) once the new
    /// credential is current.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub rollouts: Vec<RolloutTarget>,
    /// How many workloads restart at the same time.
    #[serde(default = "default_max_concurrent_rollouts")]
    #[schemars(range(min = 1, max = 16))]
    pub max_concurrent_rollouts: i32,
    /// ECS services to redeploy (`forceNewDeployment`) once the new credential is
    /// current. Needs an AWS ClusterConnection: `ecsConnectionRef`, else `connectionRef`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub ecs_services: Vec<EcsService>,
    /// ClusterConnection used for `ecsServices`, when it is not `spec.connectionRef`
    /// (e.g. with the vault or kubernetes backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecs_connection_ref: Option<ConnectionRef>,
}

fn default_max_concurrent_rollouts() -> i32 {
    1
}

impl Default for Delivery {
    fn default() -> Self {
        Self {
            secret: None,
            rollouts: Vec::new(),
            max_concurrent_rollouts: default_max_concurrent_rollouts(),
            ecs_services: Vec::new(),
            ecs_connection_ref: None,
        }
    }
}

/// A Secret written from templates.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretDelivery {
    /// Name of the Secret in this namespace, owned and written by Capstan. Must differ
    /// from the kubernetes backend's Secrets.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub name: String,
    /// Data key to template. Variables: `{{ password }}` (alias `{{ value }}`),
    /// `{{ username }}`, `{{ host }}`, `{{ port }}`, `{{ database }}` (database targets);
    /// `{{ password | urlencode }}` percent-encodes. Example:
    /// `DATABASE_URL: postgres://{{ username }}:{{ password }}@{{ host }}:{{ port }}/{{ database }}`.
    /// When empty, the Secret gets one key per available variable.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 32,
        "additionalProperties" = {"type": "string", "maxLength": 4096}
    ))]
    pub template: BTreeMap<String, String>,
    /// What happens to the Secret when the SecretRotation is deleted: `Retain` keeps it
    /// (workloads keep running), `Delete` removes it.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// What happens to a delivered Secret when its SecretRotation is deleted.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeletionPolicy {
    /// Keep the Secret.
    #[default]
    Retain,
    /// Delete the Secret.
    Delete,
}

/// Workloads to restart: one by name, or all matching a label selector.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(RULE_ROLLOUT_NAME_XOR_SELECTOR).message("exactly one of name or selector must be set"))]
pub struct RolloutTarget {
    /// Kind of workload.
    pub kind: WorkloadKind,
    /// Name of the workload in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub name: Option<String>,
    /// Restarts every workload of `kind` in this namespace that matches. Must not be
    /// empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<RolloutSelector>,
}

/// A label selector (as in a Deployment's `spec.selector`), checked at admission: a
/// known operator, values exactly where the operator takes them, and not empty. A
/// selector that does not mean what it says is refused, never widened: Capstan would
/// otherwise restart more workloads than named.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(RULE_SELECTOR_NOT_EMPTY).message("an empty selector would restart every workload of the kind; name them").reason(Reason::FieldValueRequired))]
pub struct RolloutSelector {
    /// Labels a workload must carry, each with this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 16))]
    pub match_labels: Option<BTreeMap<String, String>>,
    /// Requirements a workload's labels must all meet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub match_expressions: Option<Vec<SelectorRequirement>>,
}

/// One requirement of a [`RolloutSelector`]: `key` `operator` `values`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(RULE_SELECTOR_VALUES_REQUIRED).message("In and NotIn need at least one value").field_path(".values").reason(Reason::FieldValueRequired),
    validation = Rule::new(RULE_SELECTOR_VALUES_FORBIDDEN).message("Exists and DoesNotExist take no values").field_path(".values").reason(Reason::FieldValueForbidden)
)]
pub struct SelectorRequirement {
    /// The label key.
    #[schemars(length(min = 1, max = 317))]
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`. A string in the Rust type, so that an
    /// object stored before this rule existed still reads (and is refused in status).
    #[schemars(extend("enum" = ["In", "NotIn", "Exists", "DoesNotExist"]))]
    pub operator: String,
    /// The values, for `In` and `NotIn` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxItems" = 64, "items" = {"type": "string", "maxLength": 63}))]
    pub values: Option<Vec<String>>,
}

/// Kinds of workload that can be restarted.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
    /// apps/v1 DaemonSet.
    DaemonSet,
}

/// An ECS service to redeploy.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EcsService {
    /// Name or ARN of the ECS cluster.
    #[schemars(length(min = 1, max = 2048), regex(pattern = AWS_ID_PATTERN))]
    pub cluster: String,
    /// Name or ARN of the service.
    #[schemars(length(min = 1, max = 2048), regex(pattern = AWS_ID_PATTERN))]
    pub service: String,
}

/// Which backend a spec uses, for status and metrics (never a name or path).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum BackendKind {
    /// `backend.awsSecretsManager`.
    AwsSecretsManager,
    /// `backend.vault`.
    Vault,
    /// `backend.kubernetes`.
    Kubernetes,
}

impl BackendKind {
    /// The spelling used in the spec, status and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AwsSecretsManager => "awsSecretsManager",
            Self::Vault => "vault",
            Self::Kubernetes => "kubernetes",
        }
    }
}

/// Which target a spec uses, for status and metrics.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum TargetKind {
    /// `target.postgres`.
    Postgres,
    /// `target.mysql`.
    Mysql,
    /// `target.none`.
    None,
}

impl TargetKind {
    /// The spelling used in the spec, status and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Mysql => "mysql",
            Self::None => "none",
        }
    }
}

impl Backend {
    /// The kind of ClusterConnection this backend's `connectionRef` must name. Exhaustive
    /// on purpose: a new backend must say which connection it uses. The Kubernetes
    /// backend uses none (validation refuses a `connectionRef` with it); the gate, which
    /// runs before validation, checks such a reference as an AWS connection.
    pub fn connection_kind(&self) -> ConnectionKind {
        match self {
            Self::Vault(_) => ConnectionKind::Vault,
            Self::AwsSecretsManager(_) | Self::Kubernetes(_) => ConnectionKind::Aws,
        }
    }

    /// Which backend this is.
    pub fn kind(&self) -> BackendKind {
        match self {
            Self::AwsSecretsManager(_) => BackendKind::AwsSecretsManager,
            Self::Vault(_) => BackendKind::Vault,
            Self::Kubernetes(_) => BackendKind::Kubernetes,
        }
    }
}

impl VaultBackend {
    /// The path holding the pending value: `pendingPath`, or `capstan-pending/<path>`.
    pub fn effective_pending_path(&self) -> String {
        self.pending_path
            .clone()
            .unwrap_or_else(|| format!("{DEFAULT_VAULT_PENDING_PREFIX}{}", self.path))
    }
}

impl KubernetesBackend {
    /// The Secret holding the pending value: `pendingSecretName`, or
    /// `<secretName>-pending`.
    pub fn effective_pending_secret_name(&self) -> String {
        self.pending_secret_name
            .clone()
            .unwrap_or_else(|| format!("{}{DEFAULT_PENDING_SECRET_SUFFIX}", self.secret_name))
    }
}

impl Target {
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

impl Delivery {
    /// Whether delivery restarts or redeploys workloads (which makes `singleUser` need
    /// `acceptLoginFailuresUntilRestart`).
    pub fn restarts_workloads(&self) -> bool {
        !self.rollouts.is_empty() || !self.ecs_services.is_empty()
    }

    /// Whether there is anything to deliver at all.
    pub fn is_empty(&self) -> bool {
        self.secret.is_none() && !self.restarts_workloads()
    }
}

impl SecretRotationSpec {
    /// The two usernames an `alternatingUsers` rotation switches between, first role
    /// first; `None` unless the strategy is `alternatingUsers` on a database target.
    pub fn alternating_usernames(&self) -> Option<(String, String)> {
        let Strategy::AlternatingUsers(alt) = &self.strategy else {
            return None;
        };
        let first = self.target.username()?;
        let second = alt
            .secondary_username
            .clone()
            .unwrap_or_else(|| format!("{first}{DEFAULT_SECONDARY_USERNAME_SUFFIX}"));
        Some((first.to_owned(), second))
    }

    /// The ClusterConnection used for `delivery.ecsServices`, if any are configured.
    pub fn ecs_connection(&self) -> Option<&ConnectionRef> {
        let delivery = self.delivery.as_ref()?;
        if delivery.ecs_services.is_empty() {
            return None;
        }
        delivery
            .ecs_connection_ref
            .as_ref()
            .or(self.connection_ref.as_ref())
    }

    /// What the object reaches through `connectionRef`, checked against that
    /// connection's scopes: its backend's Secrets Manager secret or Vault KV paths (an
    /// explicit `pendingPath` too; the default one goes with `path`), and its ECS
    /// services when they use the same connection.
    pub fn scoped_resources(&self) -> Vec<ScopedResource> {
        let mut out = match &self.backend {
            Backend::AwsSecretsManager(a) => {
                vec![ScopedResource::SecretsManagerSecret(a.secret_id.clone())]
            }
            Backend::Vault(v) => std::iter::once(&v.path)
                .chain(v.pending_path.as_ref())
                .map(|path| ScopedResource::VaultKv {
                    mount: v.mount.clone(),
                    path: path.clone(),
                })
                .collect(),
            Backend::Kubernetes(_) => Vec::new(),
        };
        if let (Some(main), Some(ecs)) = (&self.connection_ref, self.ecs_connection())
            && main.name == ecs.name
        {
            out.extend(self.ecs_scoped_resources());
        }
        out
    }

    /// The services of `delivery.ecsServices`, checked against the scopes of
    /// [`Self::ecs_connection`].
    pub fn ecs_scoped_resources(&self) -> Vec<ScopedResource> {
        self.delivery
            .iter()
            .flat_map(|d| &d.ecs_services)
            .map(|s| ScopedResource::EcsService {
                cluster: s.cluster.clone(),
                service: s.service.clone(),
            })
            .collect()
    }
}

/// Observed state of a SecretRotation. Holds identifiers, times and counts, never a
/// secret value.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretRotationStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Rotating, Delivered and Overdue, with reasons (see the API reference).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "capstan_core::conditions::schema")]
    pub conditions: Vec<Condition>,
    /// Backend in use (`awsSecretsManager`, `vault`, `kubernetes`), for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendKind>,
    /// Target in use (`postgres`, `mysql`, `none`), for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetKind>,
    /// The rotation in progress, if any: enough to resume it after a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationInProgress>,
    /// Backend identifier of the current value (Secrets Manager VersionId, KV version,
    /// rotation id for Kubernetes); never the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<String>,
    /// Backend identifier of the value before the current one; never the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<String>,
    /// The database user consumers are currently given (alternates with
    /// `alternatingUsers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_username: Option<String>,
    /// When the last successful rotation finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation_time: Option<DateTime<Utc>>,
    /// When the next scheduled rotation is due (the window's next opening if it falls
    /// outside the window). Unset while suspended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_time: Option<DateTime<Utc>>,
    /// Successful rotations so far.
    #[serde(default)]
    pub rotation_count: i64,
    /// The most recent failed attempt, scrubbed of secret values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<RotationFailure>,
    /// The last finished rotations, newest first, at most ten.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_rotations: Vec<RotationSummary>,
    /// The last `capstan.dev/rotate-now` token acted on (its rotation has started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_rotate_now_token: Option<String>,
    /// The last `capstan.dev/rotate-now` token whose rotation has ended: delivered
    /// (`Ready=True`), or given up (`Ready=False`, reason `RotationFailed`). Wait for
    /// exactly the rotation a token requested with
    /// `kubectl wait --for=jsonpath='{.status.completedRotateNowToken}'=<token>`:
    /// `Ready` stays True during a rotation, so waiting on it returns at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_rotate_now_token: Option<String>,
}

/// Steps of a rotation, in order (AWS's createSecret, setSecret, testSecret,
/// finishSecret, then delivery).
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord,
)]
pub enum RotationStep {
    /// Generate a value and store it as pending in the backend.
    CreatePending,
    /// Set the pending value on the target (e.g. `ALTER ROLE ... PASSWORD`).
    SetTarget,
    /// Log in to the target with the pending value.
    TestTarget,
    /// Promote pending to current in the backend.
    Finish,
    /// Write the delivery Secret, restart workloads, redeploy ECS services.
    Deliver,
}

impl RotationStep {
    /// Every step, in order.
    pub const ALL: [RotationStep; 5] = [
        Self::CreatePending,
        Self::SetTarget,
        Self::TestTarget,
        Self::Finish,
        Self::Deliver,
    ];

    /// The step after this one, `None` after `Deliver`.
    pub fn next(self) -> Option<Self> {
        let i = Self::ALL.iter().position(|s| *s == self)?;
        Self::ALL.get(i + 1).copied()
    }

    /// The spelling used in status and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreatePending => "CreatePending",
            Self::SetTarget => "SetTarget",
            Self::TestTarget => "TestTarget",
            Self::Finish => "Finish",
            Self::Deliver => "Deliver",
        }
    }
}

/// What started a rotation.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotationTrigger {
    /// The first rotation of a new SecretRotation.
    Initial,
    /// The schedule.
    Schedule,
    /// A new `capstan.dev/rotate-now` token.
    RotateNow,
}

/// A rotation in progress, persisted after every step so that a restarted controller
/// resumes it instead of starting over.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RotationInProgress {
    /// Unique id of this rotation; also the client request token (idempotency key) of
    /// backend writes, so a retried write doesn't create a second version.
    pub id: String,
    /// What started it.
    pub trigger: RotationTrigger,
    /// The rotate-now token that started it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_now_token: Option<String>,
    /// When it started.
    pub started: DateTime<Utc>,
    /// Attempt number, from 1 up to `maxAttemptsPerRotation`.
    pub attempt: i32,
    /// The step to run (or re-run) next.
    pub step: RotationStep,
    /// Backend identifier of the pending value once stored; never the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_version: Option<String>,
    /// The database user whose password this rotation sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// A failed attempt. Built only by [`RotationFailure::new`], which scrubs every secret
/// value it is given out of the message and bounds its length, so that a database error
/// echoing a statement cannot carry a password into status.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RotationFailure {
    /// When the attempt failed.
    time: DateTime<Utc>,
    /// The step that failed.
    step: RotationStep,
    /// Machine-readable CamelCase reason, e.g. `TargetLoginFailed`.
    reason: String,
    /// Human-readable description, with secret values replaced by `[redacted]`.
    message: String,
}

impl RotationFailure {
    /// Records a failure. `reason` is a constant; every value in `secrets` (and its
    /// percent-encoded form) is replaced by `[redacted]` in `message`, which is then cut
    /// to [`FAILURE_MESSAGE_MAX_LEN`] bytes.
    pub fn new(
        time: DateTime<Utc>,
        step: RotationStep,
        reason: &'static str,
        message: &str,
        secrets: &[&SecretValue],
    ) -> Self {
        Self {
            time,
            step,
            reason: reason.to_owned(),
            message: scrub(message, secrets),
        }
    }

    /// When the attempt failed.
    pub fn time(&self) -> DateTime<Utc> {
        self.time
    }

    /// The step that failed.
    pub fn step(&self) -> RotationStep {
        self.step
    }

    /// The reason.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The scrubbed message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Replaces every occurrence of each secret (plain and percent-encoded) with
/// `[redacted]` and cuts the result to [`FAILURE_MESSAGE_MAX_LEN`] bytes on a character
/// boundary.
pub fn scrub(message: &str, secrets: &[&SecretValue]) -> String {
    let mut out = message.to_owned();
    for secret in secrets {
        if secret.is_empty() {
            continue;
        }
        out = out.replace(secret.expose(), REDACTED);
        let encoded = crate::template::percent_encode(secret.expose());
        if encoded != secret.expose() {
            out = out.replace(&encoded, REDACTED);
        }
    }
    if out.len() > FAILURE_MESSAGE_MAX_LEN {
        let mut cut = FAILURE_MESSAGE_MAX_LEN;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

/// How a finished rotation ended.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotationOutcome {
    /// The new credential is current and delivered.
    Succeeded,
    /// All attempts failed; the previous credential stayed current.
    Failed,
}

/// A finished rotation, as kept in `status.recentRotations`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RotationSummary {
    /// Id of the rotation.
    pub id: String,
    /// What started it.
    pub trigger: RotationTrigger,
    /// When it started.
    pub started: DateTime<Utc>,
    /// When it finished.
    pub finished: DateTime<Utc>,
    /// How it ended.
    pub outcome: RotationOutcome,
    /// Attempts used.
    pub attempts: i32,
    /// Backend identifier of the value it made current, if it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The database user it set, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Failure reason of the last attempt, if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
}

impl capstan_core::conditions::ObjectStatus for SecretRotationStatus {
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }

    fn set_observed_generation(&mut self, generation: Option<i64>) {
        self.observed_generation = generation;
    }
}

impl SecretRotationStatus {
    /// Adds a finished rotation to `recentRotations`, newest first, keeping at most
    /// [`RECENT_ROTATIONS_LIMIT`].
    pub fn record_rotation(&mut self, summary: RotationSummary) {
        self.recent_rotations.insert(0, summary);
        self.recent_rotations.truncate(RECENT_ROTATIONS_LIMIT);
    }

    /// The step of the rotation in progress, if any.
    pub fn current_step(&self) -> Option<RotationStep> {
        self.rotation.as_ref().map(|r| r.step)
    }
}

#[cfg(test)]
pub(crate) mod tests;
