//! The resource's constants (annotations, limits, defaults), the schema's patterns (RE2 syntax: the API server evaluates them with Go's regexp)
//! and CEL rules, named so that tests can find them in the generated schema.

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
pub(super) const HOST_PATTERN: &str = r"^[A-Za-z0-9:]([A-Za-z0-9.:-]*[A-Za-z0-9])?$";
/// IAM user names.
pub(super) const IAM_USER_PATTERN: &str = r"^[A-Za-z0-9+=,.@_-]+$";
/// RDS instance and cluster identifiers: a letter, then letters, digits and hyphens.
pub(super) const RDS_IDENTIFIER_PATTERN: &str = r"^[A-Za-z][A-Za-z0-9-]*$";
pub(super) const DB_NAME_PATTERN: &str = r"^[A-Za-z0-9_.$-]+$";
pub(super) const VAULT_PATH_PATTERN: &str = r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$";
pub(super) const AWS_ID_PATTERN: &str = r"^[A-Za-z0-9/_+=.@:-]+$";
/// Printable ASCII punctuation (no letters, digits or space).
pub(crate) const SYMBOLS_PATTERN: &str = r"^[!-/:-@\[-`{-~]+$";
pub(super) const PRINTABLE_ASCII_PATTERN: &str = r"^[!-~]*$";

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
pub(crate) const RULE_ONE_TARGET: &str = "(has(self.postgres) ? 1 : 0) + (has(self.mysql) ? 1 : 0) + (has(self.rdsMasterPassword) ? 1 : 0) + (has(self.iamAccessKey) ? 1 : 0) + (has(self.vaultTransitKey) ? 1 : 0) + (has(self.vaultDatabaseStaticRole) ? 1 : 0) + (has(self.vaultDatabaseDynamicRole) ? 1 : 0) + (has(self.none) ? 1 : 0) == 1";
pub(crate) const RULE_RDS_ONE_RESOURCE: &str =
    "has(self.dbInstanceIdentifier) != has(self.dbClusterIdentifier)";
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

/// Grace periods: whole `s`, `m`, `h` and `d` components (cheap for CEL to add up).
pub(crate) const GRACE_PATTERN: &str = r"^([0-9]{1,7}[smhd])+$";

/// The seconds of a grace period (a string [`GRACE_PATTERN`] admits) in CEL.
fn grace_seconds(expr: &str) -> String {
    format!(
        "{expr}.findAll('[0-9]+[smhd]').map(c, double(c.substring(0, size(c) - 1)) * (c.endsWith('d') ? 86400.0 : c.endsWith('h') ? 3600.0 : c.endsWith('m') ? 60.0 : 1.0)).sum()"
    )
}

/// `gracePeriod >= 1s`.
pub(crate) const RULE_GRACE_MIN: &str = "!self.matches('^([0-9]{1,7}[smhd])+$') || self.findAll('[0-9]+[smhd]').map(c, double(c.substring(0, size(c) - 1))).sum() >= 1.0";

/// `rotationPeriod >= 10s`.
pub(crate) const RULE_ROTATION_PERIOD_MIN: &str = "!self.matches('^([0-9]{1,7}[smhd])+$') || self.findAll('[0-9]+[smhd]').map(c, double(c.substring(0, size(c) - 1)) * (c.endsWith('d') ? 86400.0 : c.endsWith('h') ? 3600.0 : c.endsWith('m') ? 60.0 : 1.0)).sum() >= 10.0";
/// `driftCheckInterval >= 5s`.
pub(crate) const RULE_DRIFT_CHECK_MIN: &str = "!self.matches('^([0-9]{1,7}[smhd])+$') || self.findAll('[0-9]+[smhd]').map(c, double(c.substring(0, size(c) - 1)) * (c.endsWith('d') ? 86400.0 : c.endsWith('h') ? 3600.0 : c.endsWith('m') ? 60.0 : 1.0)).sum() >= 5.0";

/// The seconds of a whole-unit duration (`1h30m`) in CEL, for rules on `self`.
macro_rules! whole_seconds {
    ($expr:literal) => {
        concat!($expr, ".findAll('[0-9]+[smhd]').map(c, double(c.substring(0, size(c) - 1)) * (c.endsWith('d') ? 86400.0 : c.endsWith('h') ? 3600.0 : c.endsWith('m') ? 60.0 : 1.0)).sum()")
    };
}
/// `defaultTtl >= 10s`.
pub(crate) const RULE_TTL_MIN: &str = concat!(
    "!self.matches('^([0-9]{1,7}[smhd])+$') || ",
    whole_seconds!("self"),
    " >= 10.0"
);
/// `maxTtl <= 30d`.
pub(crate) const RULE_MAX_TTL_MAX: &str = concat!(
    "!self.matches('^([0-9]{1,7}[smhd])+$') || ",
    whole_seconds!("self"),
    " <= 2592000.0"
);
/// `renewBefore >= 2s`.
pub(crate) const RULE_RENEW_BEFORE_MIN: &str = concat!(
    "!self.matches('^([0-9]{1,7}[smhd])+$') || ",
    whole_seconds!("self"),
    " >= 2.0"
);
/// `maxTtl >= defaultTtl` (defaults 24h and 1h).
pub(crate) const RULE_MAX_TTL_COVERS_TTL: &str = concat!(
    "!self.defaultTtl.matches('^([0-9]{1,7}[smhd])+$') || !self.maxTtl.matches('^([0-9]{1,7}[smhd])+$') || ",
    whole_seconds!("self.maxTtl"),
    " >= ",
    whole_seconds!("self.defaultTtl")
);
/// `renewBefore < defaultTtl` (default: a third of it).
pub(crate) const RULE_RENEW_BEFORE_WITHIN_TTL: &str = concat!(
    "!has(self.renewBefore) || !self.defaultTtl.matches('^([0-9]{1,7}[smhd])+$') || !self.renewBefore.matches('^([0-9]{1,7}[smhd])+$') || ",
    whole_seconds!("self.renewBefore"),
    " < ",
    whole_seconds!("self.defaultTtl")
);
/// Dynamic credentials live in a `kubernetes` backend: Secrets Manager or Vault KV
/// would keep a copy of short-lived users past their lease.
pub(crate) const RULE_DYNAMIC_NEEDS_KUBERNETES: &str =
    "!has(self.target.vaultDatabaseDynamicRole) || has(self.backend.kubernetes)";

/// The whole-second components of `schedule.interval` (sub-second ones count 0): a
/// lower bound, far cheaper for the API server's cost estimate than exact.
const INTERVAL_LOWER_BOUND: &str = "self.schedule.interval.findAll('[0-9.]+(ns|us|ms|s|m|h|d)').map(c, c.endsWith('ns') || c.endsWith('us') || c.endsWith('ms') ? 0.0 : double(c.substring(0, size(c) - 1)) * (c.endsWith('d') ? 86400.0 : c.endsWith('h') ? 3600.0 : c.endsWith('m') ? 60.0 : 1.0)).sum()";

/// `target.vaultDatabaseStaticRole.rotationPeriod` at least twice `schedule.interval`:
/// Capstan's schedule rotates first, Vault's own rotation is the exception (a cron
/// schedule, and the sub-second part of an interval, are checked by the controller).
pub(crate) fn rule_rotation_period_vs_interval() -> String {
    format!(
        "!has(self.target.vaultDatabaseStaticRole) || !has(self.schedule.interval) || {} >= 2.0 * {INTERVAL_LOWER_BOUND}",
        grace_seconds("self.target.vaultDatabaseStaticRole.rotationPeriod"),
    )
}

/// `target.iamAccessKey.gracePeriod` at most `schedule.interval`: the previous key is
/// gone before the next rotation is due (a cron schedule is checked by the controller).
pub(crate) fn rule_grace_within_interval() -> String {
    format!(
        "!has(self.target.iamAccessKey) || !has(self.schedule.interval) || {} <= {}",
        grace_seconds("self.target.iamAccessKey.gracePeriod"),
        INTERVAL_LOWER_BOUND
    )
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
