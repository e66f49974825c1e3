//! Credential targets of a SecretRotation: what a new value is set on and tested against,
//! behind [`CredentialTarget`].
//!
//! - [`PostgresTarget`]: a PostgreSQL role. The password is sent as a SCRAM-SHA-256
//!   verifier computed here (`ALTER ROLE .. PASSWORD 'SCRAM-SHA-256$...'`), so the
//!   plaintext never reaches the server, its logs or `pg_stat_activity`.
//! - [`MysqlTarget`]: a MySQL/MariaDB account; see its module for how the password is
//!   sent.
//! - [`RdsMasterTarget`]: the master password of an RDS instance or Aurora cluster,
//!   through the RDS API; see its module.
//! - [`IamKeyTarget`]: an IAM user's access key, which IAM issues
//!   ([`CredentialTarget::issue`]); see its module.
//! - [`TransitKeyTarget`]: a Vault/OpenBao transit key's version; see its module.
//! - [`VaultStaticRoleTarget`]: a Vault/OpenBao database static role, declared and
//!   kept in sync by Capstan; see its module.
//! - [`NoTarget`]: nothing to set (API keys, tokens).
//!
//! [`TargetError`] separates a definitive refusal of the value itself
//! ([`TargetError::Rejected`], e.g. a password policy), which must never be replayed,
//! from transient failures (refused connections, too many clients, timeouts) and from the
//! other outcomes, and a write refused by the target's fence ([`TargetError::Fenced`]:
//! a newer attempt already set this user) from both. Usernames reach SQL only quoted ([`quote_pg_ident`],
//! [`quote_mysql_string`]); no error message carries a password.

mod iam;
mod mysql;
mod postgres;
mod rds;
mod transit;
mod vault_db;
mod vault_dynamic;
mod vault_static;

use capstan_core::error::Categorized;
use capstan_core::redact::SecretValue;

pub use iam::{CONSISTENCY_WAIT as IAM_CONSISTENCY_WAIT, IamKeyTarget};
pub use mysql::{MysqlPasswordForm, MysqlTarget, mysql_native_password_hash};
pub use postgres::{PostgresTarget, PostgresTls};
pub use rds::{FENCE_TAG as RDS_FENCE_TAG, RdsMasterTarget};
pub use transit::{KeyInfo as TransitKeyInfo, TransitKeyTarget};
pub use vault_db::Correction;
pub use vault_dynamic::{VaultDynamicRoleTarget, lease_hash};
pub use vault_static::VaultStaticRoleTarget;

/// What a rotated credential is set on.
#[async_trait::async_trait]
pub trait CredentialTarget: Send + Sync + std::fmt::Debug {
    /// Checks the admin connection works (used to report unreachable/denied before changing anything).
    async fn check(&self) -> Result<(), TargetError>;
    /// Ensures `username` exists; with `like = Some(other)`, creates it with the same grants/role
    /// memberships as `other` if missing (alternating users). Idempotent.
    async fn ensure_user(&self, username: &str, like: Option<&str>) -> Result<(), TargetError>;
    /// Sets the password. PostgreSQL: send a SCRAM-SHA-256 verifier (`ALTER ROLE .. PASSWORD '<verifier>'`),
    /// never the plaintext, so it cannot reach server logs. MySQL/MariaDB: the closest equivalent
    /// (see [`MysqlTarget`]).
    async fn set_password(&self, username: &str, password: &SecretValue)
    -> Result<(), TargetError>;
    /// Sets the password only if no newer attempt of the same SecretRotation set it
    /// before ([`Fence`]), and records `fence` on the target in the same locked step, so
    /// a stale Capstan (frozen past its lease between its claim and this call) cannot set
    /// an old value after another one moved on: it gets [`TargetError::Fenced`]. An
    /// equal fence passes (a takeover repeats the same attempt's write). Targets that
    /// keep no fence just set the password.
    async fn set_password_fenced(
        &self,
        username: &str,
        password: &SecretValue,
        fence: &Fence,
    ) -> Result<(), TargetError> {
        let _ = fence;
        self.set_password(username, password).await
    }
    /// Logs in as `username` with `password` and runs a trivial query. Ok(()) or a TargetError.
    async fn test_login(&self, username: &str, password: &SecretValue) -> Result<(), TargetError>;

    /// Whether the target issues each new value itself (an IAM access key): CreatePending
    /// then calls [`CredentialTarget::issue`] instead of the generator.
    fn issues_values(&self) -> bool {
        false
    }

    /// The target's credentials as [`CredentialTarget::issue`] sees them (key ids, the
    /// latest version), recorded before a rotation first issues one. `stored`: the
    /// value the backend holds now, for targets whose credential can change outside
    /// Capstan (a Vault static role).
    async fn inventory(&self, stored: Option<&SecretValue>) -> Result<Vec<String>, TargetError> {
        let _ = stored;
        Ok(Vec::new())
    }

    /// Issues a new credential: its username (an access key id) and its value. `keep`:
    /// the usernames of the credentials the backend holds, never
    /// touched; `preexisting`: the [`CredentialTarget::inventory`] recorded before this
    /// rotation first issued one, so that anything issued since and not stored is
    /// known as an earlier attempt's leftover.
    async fn issue(
        &self,
        keep: &[String],
        preexisting: &[String],
    ) -> Result<(String, SecretValue), TargetError> {
        let _ = (keep, preexisting);
        Err(TargetError::Invalid {
            target: format!("{self:?}"),
            detail: "this target does not issue values".into(),
        })
    }

    /// How long the credentials a rotation replaced stay (inactive) before
    /// [`CredentialTarget::retire`] deletes them; `None` when nothing is retired.
    fn grace_period(&self) -> Option<std::time::Duration> {
        None
    }

    /// Retires every credential but `keep`: deactivates them, or with `delete`, deletes
    /// them. Idempotent; returns the credentials it changed (ids, never values).
    async fn retire(&self, keep: &str, delete: bool) -> Result<Vec<String>, TargetError> {
        let _ = (keep, delete);
        Ok(Vec::new())
    }

    /// The lease of the credential the last [`CredentialTarget::issue`] returned, for
    /// targets whose credentials Vault leases (dynamic credentials).
    fn issued_lease(&self) -> Option<crate::crd::Lease> {
        None
    }

    /// Renews `lease`: the lease as Vault extended it, or `None` when Vault no longer
    /// knows it (revoked behind Capstan's back, or expired).
    async fn renew(
        &self,
        lease: &crate::crd::Lease,
    ) -> Result<Option<crate::crd::Lease>, TargetError> {
        let _ = lease;
        Ok(None)
    }

    /// Writes what differs from the declared configuration; what it wrote.
    async fn correct_drift(&self) -> Result<Vec<Correction>, TargetError> {
        Ok(Vec::new())
    }

    /// Whether the target's credential is no longer `stored` (the backend's current
    /// value): it was rotated outside Capstan, and what the target holds now must be
    /// delivered. Asked at each drift check.
    async fn rotated_outside(&self, stored: &SecretValue) -> Result<bool, TargetError> {
        let _ = stored;
        Ok(false)
    }
}

/// A fencing token: which attempt of which SecretRotation writes a password. Ordered by
/// (rotation, attempt) within one object; the rotation number grows with every rotation
/// of the object (the controller makes it exceed the last one), the attempt within it.
///
/// Kept on the target as `capstan-fence:v1:<object uid>:<rotation>:<attempt>` (see each
/// target for where). A fence of another object (e.g. a deleted and recreated
/// SecretRotation, a new uid) does not refuse anything: only the same object's newer
/// fence does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// `metadata.uid` of the SecretRotation.
    pub object_uid: String,
    /// The rotation number.
    pub rotation: u64,
    /// The attempt within the rotation, from 1.
    pub attempt: u32,
}

impl Fence {
    const PREFIX: &'static str = "capstan-fence:v1:";

    /// The stored form, `capstan-fence:v1:<uid>:<rotation>:<attempt>`.
    pub fn encode(&self) -> String {
        format!(
            "{}{}:{}:{}",
            Self::PREFIX,
            self.object_uid,
            self.rotation,
            self.attempt
        )
    }

    /// Parses the stored form; anything else (no fence, a comment someone wrote) is None.
    pub fn decode(s: &str) -> Option<Self> {
        let rest = s.trim().strip_prefix(Self::PREFIX)?;
        let mut parts = rest.rsplitn(3, ':');
        let attempt = parts.next()?.parse().ok()?;
        let rotation = parts.next()?.parse().ok()?;
        let object_uid = parts.next()?.to_owned();
        (!object_uid.is_empty()).then_some(Self {
            object_uid,
            rotation,
            attempt,
        })
    }

    /// Whether `stored` (what the target holds) refuses a write with this fence: only a
    /// newer fence of the same object does.
    pub fn is_refused_by(&self, stored: Option<&Fence>) -> bool {
        stored.is_some_and(|s| {
            s.object_uid == self.object_uid
                && (s.rotation, s.attempt) > (self.rotation, self.attempt)
        })
    }
}

impl std::fmt::Display for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rotation {} attempt {}", self.rotation, self.attempt)
    }
}

/// Why a target call failed. `target` names the server (`PostgreSQL 10.0.0.5:5432`);
/// no variant ever holds a password.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TargetError {
    /// The server refused the value itself (a password policy: MariaDB's
    /// `simple_password_check`, MySQL's `validate_password`, PostgreSQL's `passwordcheck`
    /// or `credcheck`). Replaying the same value fails again: discard it.
    #[error("{target}: the new password for {user:?} was rejected: {reason}")]
    Rejected {
        /// The server.
        target: String,
        /// The user whose password was being set.
        user: String,
        /// What the server said.
        reason: String,
    },
    /// Logging in as the user failed (the test step).
    #[error("{target}: login as {user:?} failed: {detail}")]
    LoginFailed {
        /// The server.
        target: String,
        /// The user.
        user: String,
        /// What the server said.
        detail: String,
    },
    /// The user does not exist.
    #[error("{target}: user {user:?} does not exist")]
    NotFound {
        /// The server.
        target: String,
        /// The missing user.
        user: String,
    },
    /// The admin login failed or lacks a privilege.
    #[error("{target}: access denied to the admin user: {detail}")]
    AccessDenied {
        /// The server.
        target: String,
        /// What the server said.
        detail: String,
    },
    /// Refused connection, timeout, too many clients, a server shutting down or in
    /// recovery, a lock or deadlock, an admin account temporarily locked: retrying may
    /// help.
    #[error("{target}: unavailable: {detail}")]
    Unavailable {
        /// The server.
        target: String,
        /// What failed.
        detail: String,
    },
    /// The target holds a newer fence of the same object: a newer attempt already set
    /// this user's password, so this (stale) writer must stop. Neither a rejection of the
    /// value nor transient.
    #[error("{target}: password of {user:?} not set: {detail}")]
    Fenced {
        /// The server.
        target: String,
        /// The user.
        user: String,
        /// Which fences (attempt numbers only).
        detail: String,
    },
    /// Another system rotates this password (RDS's own `ManageMasterUserPassword`): two
    /// rotators would lock each other's consumers out, so nothing is changed.
    #[error("{target}: {detail}")]
    ManagedByRds {
        /// The instance or cluster.
        target: String,
        /// What to do about it.
        detail: String,
    },
    /// The object exists in the target system but another owner made it (a Vault
    /// connection or role that this SecretRotation did not declare): never adopted.
    #[error("{target}: {detail}")]
    Claimed {
        /// The system.
        target: String,
        /// Which object, and what to do.
        detail: String,
    },
    /// Anything else that retrying does not fix (bad TLS settings or CA bundle, an
    /// invalid username, an unexpected server error).
    #[error("{target}: {detail}")]
    Invalid {
        /// The server.
        target: String,
        /// What is wrong.
        detail: String,
    },
}

impl TargetError {
    /// Whether the server refused the value itself: never replay it.
    pub fn is_definitive_rejection(&self) -> bool {
        matches!(self, TargetError::Rejected { .. })
    }

    /// Whether retrying the same call later may succeed without any change.
    pub fn is_transient(&self) -> bool {
        matches!(self, TargetError::Unavailable { .. })
    }

    /// CamelCase condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            TargetError::Rejected { .. } => crate::reasons::TARGET_REJECTED,
            TargetError::LoginFailed { .. } => crate::reasons::TARGET_LOGIN_FAILED,
            TargetError::NotFound { .. } => crate::reasons::TARGET_USER_NOT_FOUND,
            TargetError::AccessDenied { .. } => crate::reasons::TARGET_ACCESS_DENIED,
            TargetError::Unavailable { .. } => crate::reasons::TARGET_UNAVAILABLE,
            TargetError::Fenced { .. } => crate::reasons::TARGET_FENCED,
            TargetError::ManagedByRds { .. } => crate::reasons::RDS_MANAGES_PASSWORD,
            TargetError::Claimed { .. } => crate::reasons::TARGET_CLAIMED,
            TargetError::Invalid { .. } => crate::reasons::TARGET_INVALID,
        }
    }

    /// The same error with every occurrence of `secrets` (and their percent-encoded
    /// forms) in its texts replaced by `[redacted]`: a server that echoes a statement
    /// cannot carry a password out.
    pub(crate) fn scrubbed(self, secrets: &[&SecretValue]) -> Self {
        let s = |t: String| crate::crd::scrub(&t, secrets);
        match self {
            TargetError::Rejected {
                target,
                user,
                reason,
            } => TargetError::Rejected {
                target,
                user,
                reason: s(reason),
            },
            TargetError::LoginFailed {
                target,
                user,
                detail,
            } => TargetError::LoginFailed {
                target,
                user,
                detail: s(detail),
            },
            e @ (TargetError::NotFound { .. }
            | TargetError::Fenced { .. }
            | TargetError::ManagedByRds { .. }) => e,
            TargetError::Claimed { target, detail } => TargetError::Claimed {
                target,
                detail: s(detail),
            },
            TargetError::AccessDenied { target, detail } => TargetError::AccessDenied {
                target,
                detail: s(detail),
            },
            TargetError::Unavailable { target, detail } => TargetError::Unavailable {
                target,
                detail: s(detail),
            },
            TargetError::Invalid { target, detail } => TargetError::Invalid {
                target,
                detail: s(detail),
            },
        }
    }
}

impl Categorized for TargetError {
    fn category(&self) -> &'static str {
        match self {
            TargetError::Rejected { .. } => "target_rejected",
            TargetError::LoginFailed { .. } => "target_login_failed",
            TargetError::NotFound { .. } => "target_user_not_found",
            TargetError::AccessDenied { .. } => "target_access_denied",
            TargetError::Unavailable { .. } => "target_unavailable",
            TargetError::Fenced { .. } => "target_fenced",
            TargetError::ManagedByRds { .. } => "rds_manages_password",
            TargetError::Claimed { .. } => "target_claimed",
            TargetError::Invalid { .. } => "target_invalid",
        }
    }
}

/// The `none` target: the value is only stored and delivered.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoTarget;

#[async_trait::async_trait]
impl CredentialTarget for NoTarget {
    async fn check(&self) -> Result<(), TargetError> {
        Ok(())
    }

    async fn ensure_user(&self, _username: &str, _like: Option<&str>) -> Result<(), TargetError> {
        Ok(())
    }

    async fn set_password(
        &self,
        _username: &str,
        _password: &SecretValue,
    ) -> Result<(), TargetError> {
        Ok(())
    }

    async fn test_login(
        &self,
        _username: &str,
        _password: &SecretValue,
    ) -> Result<(), TargetError> {
        Ok(())
    }
}

/// A PostgreSQL identifier in double quotes, inner quotes doubled (`quote_ident`).
pub fn quote_pg_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A MySQL/MariaDB identifier in backticks, inner backticks doubled.
pub fn quote_mysql_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A MySQL/MariaDB string literal in single quotes, with `\` and `'` escaped (valid
/// whether or not `NO_BACKSLASH_ESCAPES` is set only for strings without a backslash;
/// [`MysqlTarget`] clears that mode on its sessions).
pub fn quote_mysql_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\u{1a}' => out.push_str("\\Z"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Checks a username before it goes into SQL (quoted anyway): not empty, at most
/// `max_len` bytes, no NUL.
fn check_username(target: &str, username: &str, max_len: usize) -> Result<(), TargetError> {
    if username.is_empty() || username.len() > max_len || username.contains('\0') {
        return Err(TargetError::Invalid {
            target: target.to_owned(),
            detail: format!("username {username:?} must be 1 to {max_len} bytes without NUL"),
        });
    }
    Ok(())
}

/// Rustls roots from a PEM bundle.
fn root_store(target: &str, ca_pem: Option<&[u8]>) -> Result<rustls::RootCertStore, TargetError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let invalid = |detail: String| TargetError::Invalid {
        target: target.to_owned(),
        detail,
    };
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| invalid(format!("CA bundle: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| invalid(format!("CA bundle: {e}")))?;
            }
            if roots.is_empty() {
                return Err(invalid("CA bundle holds no certificate".into()));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                // Unparsable system certificates are skipped, as libpq does.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(invalid(
                    "no CA bundle given and no system root certificates found".into(),
                ));
            }
        }
    }
    Ok(roots)
}

/// Which operation of a database target failed, for classifying its errors.
#[derive(Clone, Copy)]
pub(crate) enum Op<'a> {
    Admin,
    EnsureUser(&'a str),
    SetPassword(&'a str),
    Login(&'a str),
}

/// The spec's port as a TCP port, or `Invalid` naming the target.
pub(crate) fn checked_port(target: &str, port: i32) -> Result<u16, TargetError> {
    u16::try_from(port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| TargetError::Invalid {
            target: target.to_owned(),
            detail: format!("port {port} is out of range"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_strings_are_quoted() {
        assert_eq!(quote_pg_ident("app"), "\"app\"");
        assert_eq!(quote_pg_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_mysql_ident("a`b"), "`a``b`");
        assert_eq!(quote_mysql_string("it's\\x"), "'it''s\\\\x'");
    }

    #[test]
    fn only_rejections_are_definitive_and_only_unavailable_is_transient() {
        let t = || "PostgreSQL h:1".to_owned();
        let all = [
            TargetError::Rejected {
                target: t(),
                user: "u".into(),
                reason: "policy".into(),
            },
            TargetError::LoginFailed {
                target: t(),
                user: "u".into(),
                detail: "d".into(),
            },
            TargetError::NotFound {
                target: t(),
                user: "u".into(),
            },
            TargetError::AccessDenied {
                target: t(),
                detail: "d".into(),
            },
            TargetError::Unavailable {
                target: t(),
                detail: "refused".into(),
            },
            TargetError::Fenced {
                target: t(),
                user: "u".into(),
                detail: "d".into(),
            },
            TargetError::ManagedByRds {
                target: t(),
                detail: "d".into(),
            },
            TargetError::Claimed {
                target: t(),
                detail: "d".into(),
            },
            TargetError::Invalid {
                target: t(),
                detail: "d".into(),
            },
        ];
        let rejections: Vec<_> = all.iter().filter(|e| e.is_definitive_rejection()).collect();
        assert_eq!(rejections.len(), 1);
        assert_eq!(rejections[0].reason(), crate::reasons::TARGET_REJECTED);
        let transient: Vec<_> = all.iter().filter(|e| e.is_transient()).collect();
        assert_eq!(transient.len(), 1);
        assert_eq!(transient[0].category(), "target_unavailable");
        let reasons: std::collections::BTreeSet<_> = all.iter().map(TargetError::reason).collect();
        assert_eq!(reasons.len(), all.len());
    }

    #[test]
    fn fences_round_trip_and_only_a_newer_one_of_the_same_object_refuses() {
        let f = |uid: &str, rotation, attempt| Fence {
            object_uid: uid.into(),
            rotation,
            attempt,
        };
        let ours = f("9f0c-uid", 1_700_000_000_000, 2);
        assert_eq!(Fence::decode(&ours.encode()), Some(ours.clone()));
        assert_eq!(Fence::decode("owned by the payments team"), None);
        assert_eq!(Fence::decode("capstan-fence:v1::1:1"), None);
        assert!(!ours.is_refused_by(None));
        assert!(!ours.is_refused_by(Some(&ours)));
        assert!(!ours.is_refused_by(Some(&f("9f0c-uid", 1_700_000_000_000, 1))));
        assert!(!ours.is_refused_by(Some(&f("9f0c-uid", 1_600_000_000_000, 9))));
        assert!(ours.is_refused_by(Some(&f("9f0c-uid", 1_700_000_000_000, 3))));
        assert!(ours.is_refused_by(Some(&f("9f0c-uid", 1_700_000_000_001, 1))));
        assert!(!ours.is_refused_by(Some(&f("other", u64::MAX, 9))));
    }

    #[test]
    fn usernames_are_bounded() {
        assert!(check_username("t", "app", 63).is_ok());
        assert!(check_username("t", "", 63).is_err());
        assert!(check_username("t", &"a".repeat(64), 63).is_err());
        assert!(check_username("t", "a\0", 63).is_err());
    }

    #[test]
    fn a_ca_bundle_without_certificates_is_invalid() {
        assert!(matches!(
            root_store("t", Some(b"not a pem")),
            Err(TargetError::Invalid { .. })
        ));
    }
}
