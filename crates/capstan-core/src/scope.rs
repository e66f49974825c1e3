//! What each namespace may touch through a connection.
//!
//! `allowedNamespaces` says who may use a connection; a connection reaches a whole AWS
//! account or Vault, so without more every allowed namespace could name any Secrets
//! Manager secret, Vault KV path or ECS service in it, and read or overwrite another
//! team's secret through a rotation. `spec.scopes` ([`ConnectionScope`]) narrows that: an
//! allowed namespace may touch only what a scope that applies to it grants, as an IAM
//! policy's resource patterns or a Vault policy's paths do.
//!
//! - No `scopes`: unrestricted, as before the field existed (every example and existing
//!   connection keeps working).
//! - `scopes` set: deny by default. A scope applies to the namespaces it names (by name
//!   or label selector; without `namespaces`, to every namespace the connection allows);
//!   a namespace gets the union of what the scopes that apply to it grant; a kind of
//!   resource no applicable scope lists is refused.
//!
//! Patterns are globs ([`Glob`]) matched against the whole name, case-sensitively:
//! `*` matches any run of characters except `/` (one path segment or part of one),
//! `**` any run including `/`, `${namespace}` the referencing object's namespace;
//! every other character matches itself (no regular expression, no escaping). `***`
//! and any other `${...}` are refused at admission, and match nothing if they get past.
//!
//! What is matched ([`ScopedResource::subject`]):
//! - Secrets Manager: `secretId` as the object writes it. A pattern that starts with
//!   `arn:` matches only ARNs, any other pattern only names, so a tenant cannot slip past
//!   a name pattern by writing an ARN (or the reverse).
//! - Vault KV v2: `<mount>/<path>` as `vault kv get` takes it (no `data/`); an explicit
//!   `pendingPath` is matched too, the default `capstan-pending/<path>` goes with
//!   `<path>`. A path with a `.` or `..` segment matches nothing: the HTTP client would
//!   resolve it to another path than the one the pattern saw.
//! - ECS: `<cluster>/<service>` by name; a cluster or service given as an ARN is reduced
//!   to its name, and a service ARN naming another cluster than `cluster` matches
//!   nothing.
//! - RDS: the DB instance's or cluster's ARN as RDS reports it
//!   (`arn:aws:rds:<region>:<account>:db:<id>`, `...:cluster:<id>`), read before
//!   anything changes, so a pattern can pin the account and region.
//! - Vault transit keys: `<mount>/<key>`.
//! - Vault database roles: `<mount>/<role>`, the role being named
//!   `<namespace>-<name>` after the object that declares it, so a pattern like
//!   `database/${namespace}-*` keeps each tenant to its own roles in a shared mount.
//! - IAM: the user's path and name as IAM reports them, `<path><name>`
//!   (`/services/shop/reporting`), so a path prefix is a pattern like
//!   `/services/${namespace}/*` (or `/services/**`).

use std::collections::BTreeMap;
use std::fmt;

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use crate::namespaces::AllowedNamespaces;

/// The variable a pattern may contain: the referencing object's namespace.
pub const NAMESPACE_VARIABLE: &str = "${namespace}";

/// Most scopes per connection.
pub const MAX_SCOPES: usize = 64;
/// Most patterns per list.
pub const MAX_PATTERNS: usize = 64;

/// Secrets Manager patterns: the characters of secret names and ARNs, `*`, and
/// `${namespace}`. RE2 syntax (the API server evaluates it).
pub const SECRETS_MANAGER_PATTERN: &str = r"^([A-Za-z0-9/_+=.@:*-]|\$\{namespace\})+$";
/// Vault patterns: `/`-separated non-empty segments of path characters, `*` and
/// `${namespace}`, the first segment being the mount.
pub const VAULT_PATTERN: &str =
    r"^([A-Za-z0-9_.*-]|\$\{namespace\})+(/([A-Za-z0-9_.*-]|\$\{namespace\})+)*$";
/// ECS patterns: `<cluster>/<service>`, each of name characters, `*` and `${namespace}`.
pub const ECS_PATTERN: &str =
    r"^([A-Za-z0-9_*-]|\$\{namespace\})+/([A-Za-z0-9_*-]|\$\{namespace\})+$";
/// IAM patterns: a user's `<path><name>`, with `*` and `${namespace}`.
pub const IAM_PATTERN: &str = r"^/([A-Za-z0-9+=,.@_/*-]|\$\{namespace\})*$";
/// RDS patterns: ARNs of DB instances and clusters, with `*` and `${namespace}`.
pub const RDS_PATTERN: &str = r"^arn:([A-Za-z0-9:_*-]|\$\{namespace\})+$";

pub(crate) const RULE_NO_TRIPLE_STAR: &str = "self.all(p, !p.contains('***'))";
pub(crate) const RULE_SCOPE_GRANTS: &str = "has(self.secretsManager) || has(self.vault) || has(self.ecs) || has(self.rds) || has(self.iam) || has(self.transit) || has(self.vaultDatabase)";
pub(crate) const RULE_SCOPE_NAMESPACES_NOT_EMPTY: &str = "!has(self.namespaces) || (has(self.namespaces.names) && size(self.namespaces.names) > 0) || has(self.namespaces.selector)";

/// What the namespaces a scope applies to may touch through the connection.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(RULE_SCOPE_GRANTS).message("a scope must grant secretsManager, vault, ecs, rds, iam, transit or vaultDatabase"),
    validation = Rule::new(RULE_SCOPE_NAMESPACES_NOT_EMPTY).message("namespaces must list names or a selector; omit it to apply the scope to every namespace the connection allows").field_path(".namespaces")
)]
pub struct ConnectionScope {
    /// The namespaces this scope applies to, by name or labels (an empty selector
    /// selects none). Omitted: every namespace the connection allows. A namespace the
    /// connection does not allow gets nothing from a scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<AllowedNamespaces>,
    /// Secrets Manager secrets (AWS connections).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_manager: Option<SecretsManagerScope>,
    /// Vault/OpenBao KV v2 paths (Vault connections).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<VaultScope>,
    /// ECS services to scale (ServiceScaling) or redeploy (SecretRotation delivery)
    /// (AWS connections).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecs: Option<EcsScope>,
    /// RDS DB instances and clusters whose master password may be rotated (AWS
    /// connections).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rds: Option<RdsScope>,
    /// IAM users whose access keys may be rotated (AWS connections).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam: Option<IamScope>,
    /// Vault/OpenBao transit keys that may be rotated (Vault connections).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transit: Option<TransitScope>,
    /// Vault/OpenBao database secrets engine roles that may be declared and rotated
    /// (Vault connections).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault_database: Option<VaultDatabaseScope>,
}

/// Vault database roles a scope grants.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VaultDatabaseScope {
    /// Patterns of `<mount>/<role>`, e.g. `database/${namespace}-*`.
    #[schemars(
        length(min = 1, max = MAX_PATTERNS),
        inner(length(min = 1, max = 512), regex(pattern = VAULT_PATTERN))
    )]
    #[x_kube(validation = Rule::new(RULE_NO_TRIPLE_STAR).message("*** is ambiguous: write * (within a segment) or ** (across /)"))]
    pub roles: Vec<String>,
}

/// Vault transit keys a scope grants.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TransitScope {
    /// Patterns of `<mount>/<key>`, e.g. `transit/${namespace}-*`.
    #[schemars(
        length(min = 1, max = MAX_PATTERNS),
        inner(length(min = 1, max = 512), regex(pattern = VAULT_PATTERN))
    )]
    #[x_kube(validation = Rule::new(RULE_NO_TRIPLE_STAR).message("*** is ambiguous: write * (within a segment) or ** (across /)"))]
    pub keys: Vec<String>,
}

/// IAM users a scope grants.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IamScope {
    /// Patterns of `<path><userName>`, e.g. `/services/${namespace}/*`: a path prefix
    /// keeps tenants away from administrators and other teams' users.
    #[schemars(
        length(min = 1, max = MAX_PATTERNS),
        inner(length(min = 1, max = 576), regex(pattern = IAM_PATTERN))
    )]
    #[x_kube(validation = Rule::new(RULE_NO_TRIPLE_STAR).message("*** is ambiguous: write * (within a segment) or ** (across /)"))]
    pub users: Vec<String>,
}

/// RDS instances and clusters a scope grants.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RdsScope {
    /// Patterns of DB instance and cluster ARNs, e.g.
    /// `arn:aws:rds:eu-west-1:123456789012:db:${namespace}-*` or
    /// `arn:aws:rds:*:123456789012:cluster:shop`.
    #[schemars(
        length(min = 1, max = MAX_PATTERNS),
        inner(length(min = 1, max = 512), regex(pattern = RDS_PATTERN))
    )]
    #[x_kube(validation = Rule::new(RULE_NO_TRIPLE_STAR).message("*** is ambiguous: write * (within a segment) or ** (across /)"))]
    pub resources: Vec<String>,
}

/// Secrets Manager secrets a scope grants.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretsManagerScope {
    /// Patterns of `secretId`s, e.g. `${namespace}/*` or
    /// `arn:aws:secretsmanager:eu-west-1:123456789012:secret:payments/**`. A pattern
    /// starting with `arn:` matches only secretIds written as ARNs (mind the six
    /// characters AWS appends to a secret's name in its full ARN), any other only names.
    #[schemars(
        length(min = 1, max = MAX_PATTERNS),
        inner(length(min = 1, max = 2048), regex(pattern = SECRETS_MANAGER_PATTERN))
    )]
    #[x_kube(validation = Rule::new(RULE_NO_TRIPLE_STAR).message("*** is ambiguous: write * (within a segment) or ** (across /)"))]
    pub secrets: Vec<String>,
}

/// Vault KV v2 paths a scope grants.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VaultScope {
    /// Patterns of `<mount>/<path>` as `vault kv get` takes them (without `data/`),
    /// e.g. `secret/${namespace}/**`. An explicit `pendingPath` must match too; the
    /// default `capstan-pending/<path>` goes with `<path>`.
    #[schemars(
        length(min = 1, max = MAX_PATTERNS),
        inner(length(min = 1, max = 1024), regex(pattern = VAULT_PATTERN))
    )]
    #[x_kube(validation = Rule::new(RULE_NO_TRIPLE_STAR).message("*** is ambiguous: write * (within a segment) or ** (across /)"))]
    pub paths: Vec<String>,
}

/// ECS services a scope grants.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EcsScope {
    /// Patterns of `<cluster>/<service>` names, e.g. `shop/*` or
    /// `*/${namespace}-*`. ARNs in an object are reduced to names before matching.
    #[schemars(
        length(min = 1, max = MAX_PATTERNS),
        inner(length(min = 1, max = 512), regex(pattern = ECS_PATTERN))
    )]
    #[x_kube(validation = Rule::new(RULE_NO_TRIPLE_STAR).message("*** is ambiguous: write * (within a segment) or ** (across /)"))]
    pub services: Vec<String>,
}

/// Something an object reaches through a connection, checked against its scopes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScopedResource {
    /// A Secrets Manager secret, by `secretId` (name or ARN).
    SecretsManagerSecret(String),
    /// A Vault KV v2 secret: the mount and the path within it.
    VaultKv {
        /// The KV mount.
        mount: String,
        /// The path within the mount.
        path: String,
    },
    /// An ECS service: cluster and service, each a name or an ARN.
    EcsService {
        /// The cluster's name or ARN.
        cluster: String,
        /// The service's name or ARN.
        service: String,
    },
    /// An RDS DB instance or cluster, by the ARN RDS reports.
    Rds(String),
    /// A Vault transit key.
    TransitKey {
        /// The transit mount.
        mount: String,
        /// The key's name.
        key: String,
    },
    /// A Vault database secrets engine role (and the connection named after it).
    VaultDatabaseRole {
        /// The database mount.
        mount: String,
        /// The role's name.
        role: String,
    },
    /// An IAM user, by the path and name IAM reports.
    IamUser {
        /// The user's path (`/`, `/services/shop/`).
        path: String,
        /// The user's name.
        name: String,
    },
}

impl fmt::Display for ScopedResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScopedResource::SecretsManagerSecret(id) => write!(f, "Secrets Manager secret {id:?}"),
            ScopedResource::VaultKv { mount, path } => {
                write!(f, "Vault KV path {:?}", format!("{mount}/{path}"))
            }
            ScopedResource::EcsService { cluster, service } => {
                write!(f, "ECS service {service:?} of cluster {cluster:?}")
            }
            ScopedResource::Rds(arn) => write!(f, "RDS resource {arn:?}"),
            ScopedResource::IamUser { path, name } => {
                write!(f, "IAM user {:?}", format!("{path}{name}"))
            }
            ScopedResource::TransitKey { mount, key } => {
                write!(f, "Vault transit key {:?}", format!("{mount}/{key}"))
            }
            ScopedResource::VaultDatabaseRole { mount, role } => {
                write!(f, "Vault database role {:?}", format!("{mount}/{role}"))
            }
        }
    }
}

impl ScopedResource {
    /// The string patterns are matched against; `None` when it cannot be named (a Vault
    /// path with `.`, `..` or empty segments, an ECS ARN that is not a cluster's or a
    /// service's, or names another cluster), which no pattern matches.
    pub fn subject(&self) -> Option<String> {
        match self {
            ScopedResource::SecretsManagerSecret(id) => Some(id.clone()),
            ScopedResource::VaultKv { mount, path } => {
                let joined = format!("{}/{}", mount.trim_matches('/'), path.trim_matches('/'));
                // Vault is called over HTTP, where `a/../b` is `b`: such a path is not the
                // one its characters spell, so no pattern may match it.
                (!joined
                    .split('/')
                    .any(|s| s == "." || s == ".." || s.is_empty()))
                .then_some(joined)
            }
            ScopedResource::EcsService { cluster, service } => {
                let cluster = ecs_cluster_name(cluster)?;
                let service = ecs_service_name(service, cluster)?;
                Some(format!("{cluster}/{service}"))
            }
            ScopedResource::Rds(arn) => {
                let parts: Vec<&str> = arn.splitn(7, ':').collect();
                matches!(
                    parts.as_slice(),
                    ["arn", _, "rds", _, _, "db" | "cluster", id] if !id.is_empty()
                )
                .then(|| arn.clone())
            }
            ScopedResource::TransitKey { mount, key: name }
            | ScopedResource::VaultDatabaseRole { mount, role: name } => {
                let joined = format!("{}/{name}", mount.trim_matches('/'));
                (!name.is_empty()
                    && !name.contains('/')
                    && !joined
                        .split('/')
                        .any(|s| s == "." || s == ".." || s.is_empty()))
                .then_some(joined)
            }
            ScopedResource::IamUser { path, name } => (path.starts_with('/')
                && path.ends_with('/')
                && !name.is_empty()
                && !name.contains('/'))
            .then(|| format!("{path}{name}")),
        }
    }

    /// Whether `pattern` (from the list of this resource's kind) matches the resource
    /// for an object in `namespace`.
    pub fn matched_by(&self, pattern: &str, namespace: &str) -> bool {
        let Some(subject) = self.subject() else {
            return false;
        };
        if let ScopedResource::SecretsManagerSecret(id) = self
            && pattern.starts_with("arn:") != id.starts_with("arn:")
        {
            return false;
        }
        Glob::parse(pattern).is_ok_and(|g| g.matches(namespace, &subject))
    }

    /// The patterns a scope grants for this kind of resource.
    fn patterns<'s>(&self, scope: &'s ConnectionScope) -> &'s [String] {
        match self {
            ScopedResource::SecretsManagerSecret(_) => scope
                .secrets_manager
                .as_ref()
                .map_or(&[], |s| s.secrets.as_slice()),
            ScopedResource::VaultKv { .. } => {
                scope.vault.as_ref().map_or(&[], |s| s.paths.as_slice())
            }
            ScopedResource::EcsService { .. } => {
                scope.ecs.as_ref().map_or(&[], |s| s.services.as_slice())
            }
            ScopedResource::Rds(_) => scope.rds.as_ref().map_or(&[], |s| s.resources.as_slice()),
            ScopedResource::IamUser { .. } => {
                scope.iam.as_ref().map_or(&[], |s| s.users.as_slice())
            }
            ScopedResource::TransitKey { .. } => {
                scope.transit.as_ref().map_or(&[], |s| s.keys.as_slice())
            }
            ScopedResource::VaultDatabaseRole { .. } => scope
                .vault_database
                .as_ref()
                .map_or(&[], |s| s.roles.as_slice()),
        }
    }
}

/// The name in `arn:<partition>:ecs:<region>:<account>:<resource>`, when `resource` is
/// `<kind>/...`: the part after `<kind>/`.
fn ecs_arn_resource<'a>(arn: &'a str, kind: &str) -> Option<&'a str> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    match parts.as_slice() {
        ["arn", _, "ecs", _, _, resource] => resource
            .strip_prefix(kind)
            .and_then(|r| r.strip_prefix('/')),
        _ => None,
    }
}

fn ecs_cluster_name(cluster: &str) -> Option<&str> {
    let name = if cluster.starts_with("arn:") {
        ecs_arn_resource(cluster, "cluster")?
    } else {
        cluster
    };
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

/// A service's name; a service ARN's cluster (new format) must be `cluster`.
fn ecs_service_name<'a>(service: &'a str, cluster: &str) -> Option<&'a str> {
    let name = if service.starts_with("arn:") {
        let rest = ecs_arn_resource(service, "service")?;
        match rest.split_once('/') {
            Some((c, n)) if c == cluster => n,
            Some(_) => return None,
            None => rest,
        }
    } else {
        service
    };
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

/// Whether an object in `namespace` (with `labels`) may reach `resource` under
/// `scopes`: always without scopes; otherwise when a scope that applies to the namespace
/// has a pattern for the resource's kind that matches it.
pub fn permits(
    scopes: Option<&[ConnectionScope]>,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    resource: &ScopedResource,
) -> bool {
    let Some(scopes) = scopes else {
        return true;
    };
    scopes
        .iter()
        .filter(|s| {
            s.namespaces
                .as_ref()
                .is_none_or(|n| n.allows(namespace, labels))
        })
        .flat_map(|s| resource.patterns(s))
        .any(|p| resource.matched_by(p, namespace))
}

/// Why a pattern cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    /// The pattern is empty.
    #[error("empty pattern")]
    Empty,
    /// Three or more `*` in a row.
    #[error("*** is ambiguous: write * (within a segment) or ** (across /)")]
    TripleStar,
    /// A `$` that does not start `${namespace}`.
    #[error("only ${{namespace}} may follow $")]
    UnknownVariable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    /// A character that matches itself.
    Char(char),
    /// `${namespace}`.
    Namespace,
    /// `*`: any run of characters except `/`.
    Star,
    /// `**`: any run of characters.
    DoubleStar,
}

/// A token with `${namespace}` expanded.
#[derive(Clone, Copy, Debug)]
enum Atom {
    Char(char),
    Star { crosses_slash: bool },
}

/// A parsed pattern. Matching is linear in pattern × subject length (no backtracking),
/// so a hostile pattern or name cannot make it slow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    tokens: Vec<Token>,
}

impl Glob {
    /// Parses `pattern`.
    pub fn parse(pattern: &str) -> Result<Glob, GlobError> {
        if pattern.is_empty() {
            return Err(GlobError::Empty);
        }
        let mut tokens = Vec::with_capacity(pattern.len());
        let mut rest = pattern;
        while let Some(c) = rest.chars().next() {
            if c == '*' {
                let stars = rest.len() - rest.trim_start_matches('*').len();
                tokens.push(match stars {
                    1 => Token::Star,
                    2 => Token::DoubleStar,
                    _ => return Err(GlobError::TripleStar),
                });
                rest = &rest[stars..];
            } else if c == '$' {
                rest = rest
                    .strip_prefix(NAMESPACE_VARIABLE)
                    .ok_or(GlobError::UnknownVariable)?;
                tokens.push(Token::Namespace);
            } else {
                tokens.push(Token::Char(c));
                rest = &rest[c.len_utf8()..];
            }
        }
        Ok(Glob { tokens })
    }

    /// Whether the whole of `subject` matches, with `${namespace}` standing for
    /// `namespace` (literally: its characters are never wildcards).
    pub fn matches(&self, namespace: &str, subject: &str) -> bool {
        let subject: Vec<char> = subject.chars().collect();
        let n = subject.len();
        let expanded = self.tokens.iter().flat_map(|t| match t {
            Token::Char(c) => vec![Atom::Char(*c)],
            Token::Namespace => namespace.chars().map(Atom::Char).collect(),
            Token::Star => vec![Atom::Star {
                crosses_slash: false,
            }],
            Token::DoubleStar => vec![Atom::Star {
                crosses_slash: true,
            }],
        });
        // reach[j]: the tokens so far match subject[..j].
        let mut reach = vec![false; n + 1];
        reach[0] = true;
        for t in expanded {
            let mut next = vec![false; n + 1];
            match t {
                Atom::Char(c) => {
                    for j in 0..n {
                        next[j + 1] = reach[j] && subject[j] == c;
                    }
                }
                Atom::Star { crosses_slash } => {
                    next[0] = reach[0];
                    for j in 1..=n {
                        let extend = next[j - 1] && (crosses_slash || subject[j - 1] != '/');
                        next[j] = reach[j] || extend;
                    }
                }
            }
            if !next.iter().any(|r| *r) {
                return false;
            }
            reach = next;
        }
        reach[n]
    }
}

#[cfg(test)]
mod tests;
