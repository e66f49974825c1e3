//! The `SecretRotation` object and its spec: strategy, schedule, window and generator.

use capstan_core::connection::ConnectionRef;
use capstan_core::schedule::{
    CRON_MAX_LENGTH, CRON_PATTERN, DurationString, TIME_ZONE_MAX_LENGTH, TIME_ZONE_PATTERN,
};
use capstan_core::scope::ScopedResource;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::backend::*;
use super::delivery::*;
use super::rules::*;
use super::status::*;
use super::target::*;

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
        name = "Rotating",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Rotating\")].reason",
        description = "Why Rotating has its status: Idle, Scheduled, Retrying, RotationStuck, ..."
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
    validation = Rule::new(rule_grace_within_interval())
        .message("target.iamAccessKey.gracePeriod must not be longer than schedule.interval: the previous key must be gone before the next rotation")
        .field_path(".target.iamAccessKey.gracePeriod"),
    validation = Rule::new(rule_rotation_period_vs_interval())
        .message("target.vaultDatabaseStaticRole.rotationPeriod must be at least twice schedule.interval: Capstan's schedule rotates first, Vault's own rotation is the exception")
        .field_path(".target.vaultDatabaseStaticRole.rotationPeriod"),
    validation = Rule::new(RULE_DYNAMIC_NEEDS_KUBERNETES)
        .message("target.vaultDatabaseDynamicRole needs backend.kubernetes: dynamic credentials are not copied into Secrets Manager or Vault KV")
        .field_path(".backend"),
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
    #[x_kube(validation = Rule::new(RULE_ONE_TARGET).message("exactly one of postgres, mysql, rdsMasterPassword, iamAccessKey, vaultTransitKey, vaultDatabaseStaticRole, vaultDatabaseDynamicRole or none must be set"))]
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
