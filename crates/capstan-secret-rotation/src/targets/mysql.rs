//! MySQL/MariaDB target (`mysql_async`, TLS with rustls).
//!
//! How the password is sent ([`MysqlPasswordForm`]):
//!
//! - **Hashed (the default).** The `mysql_native_password` hash (`*` + hex of
//!   SHA1(SHA1(password))) is computed here and sent as
//!   `ALTER USER 'u'@'h' IDENTIFIED BY PASSWORD '*…'` (MariaDB) or
//!   `IDENTIFIED WITH mysql_native_password AS '*…'` (MySQL), the closest equivalent of
//!   PostgreSQL's SCRAM verifier: the plaintext never reaches the server, its general log
//!   or its processlist. `caching_sha2_password` (MySQL 8's default) has no hash form a
//!   client can compute and MariaDB (up to 11.x) does not have it; `ed25519` needs a
//!   client plugin. MySQL 8.4+ disables `mysql_native_password` by default: there the
//!   server refuses the statement and the error says so.
//! - **Plaintext, only when the server requires it.** MariaDB with an active password
//!   validation plugin (`simple_password_check`, `cracklib_password_check`, ...) and
//!   `strict_password_validation = ON` (its default) refuses every pre-hashed password,
//!   because a hash cannot be checked against the policy. Then the value is sent as
//!   `IDENTIFIED BY '<value>'`, so the policy can judge it (and reject a too-simple value
//!   definitively); the session first sets `sql_log_off = 1` (when the admin may) so the
//!   statement stays out of the general log. Use TLS to such servers.
//!
//! `ensure_user(new, Some(like))` creates `'new'@'<userHost>'` with an unguessable
//! throwaway password (so nobody can log in before `set_password`) and applies every
//! `GRANT` of `SHOW GRANTS FOR 'like'@'<userHost>'` to it, role grants and the default
//! role included (`WITH GRANT/ADMIN OPTION` kept; authentication, `REQUIRE` and resource
//! limits are not copied). Grants are reapplied on every call with `like`, so an
//! interrupted call completes on retry.
//!
//! `set_password_fenced` serializes writers of one account with
//! `GET_LOCK('capstan-fence:<user>@<host>', 10)` on the admin session, reads the
//! account's fence from the table `capstan.fences` (created with `CREATE DATABASE/TABLE
//! IF NOT EXISTS` on first use: the admin needs CREATE, SELECT, INSERT and UPDATE on the
//! `capstan` database, or an administrator creates it), refuses with
//! [`TargetError::Fenced`] when it is newer than the caller's, else alters the user and
//! upserts the caller's fence, then releases the lock. The fence does not live on the
//! account itself: `ALTER USER .. COMMENT/ATTRIBUTE` is MySQL 8 only (MariaDB 10.11 has
//! neither), and writing `mysql.global_priv` directly is unsupported. `ALTER USER`
//! commits implicitly, so the lock, not a transaction, makes read-check-alter-record one
//! step; a writer that dies in between leaves the password set but the fence old, which
//! only lets a writer of an older attempt through until the next fenced write: the next
//! writer of the same or a newer attempt re-records it.
//!
//! TLS (`sslMode`): `disabled`; `preferred` tries TLS without a certificate check and falls
//! back to plain when the server has no TLS; `required` insists, without a check;
//! `verifyCa` checks the chain (CA bundle, else the bundled web PKI roots) but not the host
//! name; `verifyIdentity` checks both. `mysql_async` builds its rustls configuration with
//! the process's default crypto provider, which the manager installs at start.

use std::time::Duration;

use capstan_core::redact::SecretValue;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, SslOpts};
use rand::Rng;
use sha1::{Digest, Sha1};

use super::{
    CredentialTarget, Fence, Op, TargetError, check_username, checked_port, quote_mysql_ident,
    quote_mysql_string,
};
use crate::crd;

/// Longest MySQL/MariaDB user name.
const MAX_USER_LEN: usize = 80;

/// The `mysql_native_password` hash of a password: `*` and 40 uppercase hex digits of
/// SHA1(SHA1(password)), as MySQL's `PASSWORD()` computes it.
pub fn mysql_native_password_hash(password: &SecretValue) -> SecretValue {
    let stage1 = Sha1::digest(password.expose().as_bytes());
    let stage2 = Sha1::digest(stage1);
    let mut out = String::with_capacity(41);
    out.push('*');
    for b in stage2 {
        out.push_str(&format!("{b:02X}"));
    }
    SecretValue::new(out)
}

/// How [`MysqlTarget::set_password`] sends a password; see this file's module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MysqlPasswordForm {
    /// `mysql_native_password` hash, MariaDB syntax (`IDENTIFIED BY PASSWORD '*…'`).
    MariaDbHash,
    /// `mysql_native_password` hash, MySQL syntax (`IDENTIFIED WITH mysql_native_password AS '*…'`).
    MysqlHash,
    /// The plaintext, because the server's password policy must see it.
    PolicyChecked,
}

/// A MySQL/MariaDB server and an administrative login. The design is in this file's module documentation.
#[derive(Debug, Clone)]
pub struct MysqlTarget {
    host: String,
    port: u16,
    user_host: String,
    database: Option<String>,
    ssl: Option<SslOpts>,
    fall_back_to_plain: bool,
    admin_user: String,
    admin_password: SecretValue,
    connect_timeout: Duration,
    name: String,
}

impl MysqlTarget {
    /// The target of `spec` with the admin credentials read from `adminSecretRef` and the
    /// CA bundle of `caSecretRef` (PEM), if any.
    pub fn new(
        spec: &crd::MysqlTarget,
        admin_user: impl Into<String>,
        admin_password: SecretValue,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, TargetError> {
        use crd::MysqlSslMode as M;
        let name = format!("MySQL {}:{}", spec.host, spec.port);
        let port = checked_port(&name, spec.port)?;
        if let Some(pem) = ca_pem {
            // Parsed now so that a bad bundle is reported before anything changes.
            super::root_store(&name, Some(pem))?;
        }
        let roots = |o: SslOpts| match ca_pem {
            Some(pem) => o.with_root_certs(vec![pem.to_vec().into()]),
            None => o,
        };
        let ssl = match spec.ssl_mode {
            M::Disabled => None,
            M::Preferred | M::Required => Some(
                SslOpts::default()
                    .with_danger_accept_invalid_certs(true)
                    .with_danger_skip_domain_validation(true),
            ),
            M::VerifyCa => Some(roots(
                SslOpts::default().with_danger_skip_domain_validation(true),
            )),
            M::VerifyIdentity => Some(roots(SslOpts::default())),
        };
        Ok(Self {
            host: spec.host.clone(),
            port,
            user_host: spec.user_host.clone(),
            database: spec.database.clone(),
            ssl,
            fall_back_to_plain: spec.ssl_mode == M::Preferred,
            admin_user: admin_user.into(),
            admin_password,
            connect_timeout: Duration::from_secs(10),
            name,
        })
    }

    /// Timeout of each connection attempt (default 10 s).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// `MySQL <host>:<port>`, as errors name it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `'user'@'userHost'`.
    fn account(&self, user: &str) -> String {
        format!(
            "{}@{}",
            quote_mysql_string(user),
            quote_mysql_string(&self.user_host)
        )
    }

    async fn connect_with(
        &self,
        user: &str,
        password: &SecretValue,
        ssl: Option<SslOpts>,
        op: Op<'_>,
    ) -> Result<Conn, TargetError> {
        let opts = OptsBuilder::default()
            .ip_or_hostname(self.host.clone())
            .tcp_port(self.port)
            .user(Some(user))
            .pass(Some(password.expose()))
            .db_name(self.database.clone())
            .prefer_socket(false)
            .stmt_cache_size(0)
            .ssl_opts(ssl);
        match tokio::time::timeout(self.connect_timeout, Conn::new(opts)).await {
            Err(_) => Err(TargetError::Unavailable {
                target: self.name.clone(),
                detail: format!("no connection within {:?}", self.connect_timeout),
            }),
            Ok(Err(e)) => Err(self.classify(&e, op).scrubbed(&[password])),
            Ok(Ok(c)) => Ok(c),
        }
    }

    async fn connect(
        &self,
        user: &str,
        password: &SecretValue,
        op: Op<'_>,
    ) -> Result<Conn, TargetError> {
        match self
            .connect_with(user, password, self.ssl.clone(), op)
            .await
        {
            Err(TargetError::Invalid { detail, .. })
                if self.fall_back_to_plain && detail.contains(NO_TLS_MARKER) =>
            {
                self.connect_with(user, password, None, op).await
            }
            other => other,
        }
    }

    async fn admin(&self) -> Result<Conn, TargetError> {
        self.connect(&self.admin_user, &self.admin_password, Op::Admin)
            .await
    }

    fn classify(&self, e: &mysql_async::Error, op: Op<'_>) -> TargetError {
        use mysql_async::{DriverError, Error as E, IoError};
        let target = self.name.clone();
        match e {
            E::Server(se) => {
                let detail = format!("ERROR {} ({}): {}", se.code, se.state, se.message);
                match (se.code, op) {
                    (1045 | 1698 | 3118 | 4151, Op::Login(user)) => TargetError::LoginFailed {
                        target,
                        user: user.to_owned(),
                        detail,
                    },
                    (1045 | 1698 | 1044 | 1142 | 1143 | 1227 | 1370 | 1410 | 1211, _) => {
                        TargetError::AccessDenied { target, detail }
                    }
                    (1396 | 1141, Op::SetPassword(user) | Op::EnsureUser(user)) => {
                        TargetError::NotFound {
                            target,
                            user: user.to_owned(),
                        }
                    }
                    (1819, Op::SetPassword(user)) => TargetError::Rejected {
                        target,
                        user: user.to_owned(),
                        reason: detail,
                    },
                    // Too many connections, lock waits, deadlocks, read-only (a failover),
                    // shutdown, killed or timed-out connections, resource limits, and an
                    // admin account temporarily locked.
                    (
                        1040 | 1203 | 1205 | 1213 | 1290 | 1053 | 1927 | 2006 | 2013 | 1159 | 1161
                        | 1226 | 3118 | 4151 | 3955,
                        _,
                    ) => TargetError::Unavailable { target, detail },
                    _ => TargetError::Invalid { target, detail },
                }
            }
            E::Io(IoError::Tls(t)) => TargetError::Invalid {
                target,
                detail: format!("TLS: {t}"),
            },
            E::Io(io) => TargetError::Unavailable {
                target,
                detail: io.to_string(),
            },
            E::Driver(DriverError::NoClientSslFlagFromServer) => TargetError::Invalid {
                target,
                detail: NO_TLS_MARKER.to_owned(),
            },
            E::Driver(
                d @ (DriverError::ConnectionClosed
                | DriverError::PoolDisconnected
                | DriverError::UnexpectedPacket { .. }),
            ) => TargetError::Unavailable {
                target,
                detail: d.to_string(),
            },
            other => TargetError::Invalid {
                target,
                detail: other.to_string(),
            },
        }
    }

    /// `ALTER USER` with the password in the form this server needs; a policy refusal is
    /// a [`TargetError::Rejected`].
    async fn alter_user(
        &self,
        conn: &mut Conn,
        username: &str,
        password: &SecretValue,
    ) -> Result<(), TargetError> {
        let form = self.password_form(conn).await?;
        if form == MysqlPasswordForm::PolicyChecked {
            self.plaintext_session(conn).await?;
        }
        let hash = mysql_native_password_hash(password);
        let stmt = SecretValue::new(format!(
            "ALTER USER {} {}",
            self.account(username),
            Self::identified(form, password).expose()
        ));
        if let Err(e) = conn.query_drop(stmt.expose()).await {
            let mut err = self.classify(&e, Op::SetPassword(username));
            // MariaDB reports a policy refusal in ALTER USER as 1396 "Operation ALTER USER
            // failed", with the reason (1819) only among the warnings.
            if matches!(&e, mysql_async::Error::Server(se) if se.code == 1396)
                && let Some(reason) = self.policy_warning(conn).await
            {
                err = TargetError::Rejected {
                    target: self.name.clone(),
                    user: username.to_owned(),
                    reason,
                };
            }
            return Err(err.scrubbed(&[password, &hash]));
        }
        Ok(())
    }

    /// Under the account's fence lock: check the stored fence, alter, record ours.
    async fn fenced_alter(
        &self,
        conn: &mut Conn,
        username: &str,
        account: &str,
        password: &SecretValue,
        fence: &Fence,
    ) -> Result<(), TargetError> {
        let err = |e: mysql_async::Error| self.classify(&e, Op::Admin);
        conn.query_drop("CREATE DATABASE IF NOT EXISTS capstan")
            .await
            .map_err(err)?;
        conn.query_drop(
            "CREATE TABLE IF NOT EXISTS capstan.fences (\
               account VARCHAR(400) NOT NULL PRIMARY KEY, \
               fence VARCHAR(255) NOT NULL)",
        )
        .await
        .map_err(err)?;
        let stored: Option<String> = conn
            .exec_first(
                "SELECT fence FROM capstan.fences WHERE account = ?",
                (account,),
            )
            .await
            .map_err(err)?;
        let stored = stored.as_deref().and_then(Fence::decode);
        if fence.is_refused_by(stored.as_ref()) {
            return Err(TargetError::Fenced {
                target: self.name.clone(),
                user: username.to_owned(),
                detail: format!(
                    "the account holds a newer fence ({}) than this writer's ({fence})",
                    stored.map_or_else(String::new, |s| s.to_string())
                ),
            });
        }
        self.alter_user(conn, username, password).await?;
        conn.exec_drop(
            "INSERT INTO capstan.fences (account, fence) VALUES (?, ?) \
             ON DUPLICATE KEY UPDATE fence = VALUES(fence)",
            (account, fence.encode()),
        )
        .await
        .map_err(err)?;
        Ok(())
    }

    /// How this server must be sent passwords.
    async fn password_form(&self, conn: &mut Conn) -> Result<MysqlPasswordForm, TargetError> {
        let err = |e: mysql_async::Error| self.classify(&e, Op::Admin);
        let version: Option<String> = conn.query_first("SELECT VERSION()").await.map_err(err)?;
        if !version.unwrap_or_default().contains("MariaDB") {
            return Ok(MysqlPasswordForm::MysqlHash);
        }
        let plugins: Option<u64> = conn
            .query_first(
                "SELECT COUNT(*) FROM information_schema.PLUGINS \
                 WHERE PLUGIN_TYPE = 'PASSWORD VALIDATION' AND PLUGIN_STATUS = 'ACTIVE'",
            )
            .await
            .map_err(err)?;
        if plugins.unwrap_or(0) == 0 {
            return Ok(MysqlPasswordForm::MariaDbHash);
        }
        let strict: Option<u64> = conn
            .query_first("SELECT @@GLOBAL.strict_password_validation")
            .await
            .map_err(err)?;
        Ok(if strict.unwrap_or(1) != 0 {
            MysqlPasswordForm::PolicyChecked
        } else {
            MysqlPasswordForm::MariaDbHash
        })
    }

    /// The `IDENTIFIED ...` clause for `password` in `form`.
    fn identified(form: MysqlPasswordForm, password: &SecretValue) -> SecretValue {
        match form {
            MysqlPasswordForm::MariaDbHash => SecretValue::new(format!(
                "IDENTIFIED BY PASSWORD '{}'",
                mysql_native_password_hash(password).expose()
            )),
            MysqlPasswordForm::MysqlHash => SecretValue::new(format!(
                "IDENTIFIED WITH mysql_native_password AS '{}'",
                mysql_native_password_hash(password).expose()
            )),
            MysqlPasswordForm::PolicyChecked => SecretValue::new(format!(
                "IDENTIFIED BY {}",
                quote_mysql_string(password.expose())
            )),
        }
    }

    /// Prepares a session for a statement holding a plaintext password: backslashes
    /// escape (as [`quote_mysql_string`] assumes), and the general log skips the session
    /// where the admin may say so.
    async fn plaintext_session(&self, conn: &mut Conn) -> Result<(), TargetError> {
        conn.query_drop(
            "SET SESSION sql_mode = REPLACE(@@SESSION.sql_mode, 'NO_BACKSLASH_ESCAPES', '')",
        )
        .await
        .map_err(|e| self.classify(&e, Op::Admin))?;
        if let Err(e) = conn.query_drop("SET SESSION sql_log_off = 1").await {
            tracing::debug!(target_db = %self.name, error = %e, "sql_log_off not permitted");
        }
        Ok(())
    }

    /// The first password-policy warning (1819) of the last statement, if any.
    async fn policy_warning(&self, conn: &mut Conn) -> Option<String> {
        let rows: Vec<(String, u32, String)> = conn.query("SHOW WARNINGS").await.ok()?;
        rows.into_iter()
            .find(|(_, code, _)| *code == 1819)
            .map(|(level, code, message)| format!("{level} {code}: {message}"))
    }

    /// Applies `like`'s grants to `username`.
    async fn copy_grants(
        &self,
        conn: &mut Conn,
        username: &str,
        like: &str,
    ) -> Result<(), TargetError> {
        let lines: Vec<String> = conn
            .query(format!("SHOW GRANTS FOR {}", self.account(like)))
            .await
            .map_err(|e| self.classify(&e, Op::EnsureUser(like)))?;
        for line in lines {
            if let Some(stmt) = clone_grant(&line, like, username, &self.user_host) {
                conn.query_drop(&stmt).await.map_err(|e| {
                    // Grants hold no secret: name the statement that failed.
                    match self.classify(&e, Op::EnsureUser(username)) {
                        TargetError::AccessDenied { target, detail } => TargetError::AccessDenied {
                            target,
                            detail: format!("{stmt}: {detail}"),
                        },
                        TargetError::Invalid { target, detail } => TargetError::Invalid {
                            target,
                            detail: format!("{stmt}: {detail}"),
                        },
                        other => other,
                    }
                })?;
            }
        }
        Ok(())
    }
}

/// What [`MysqlTarget::classify`] says when TLS was asked for and the server has none.
const NO_TLS_MARKER: &str = "the server does not support TLS";

/// `like`'s GRANT (or SET DEFAULT ROLE) line from SHOW GRANTS, rewritten for `to`: the
/// grantee replaced, `WITH GRANT OPTION` / `WITH ADMIN OPTION` kept, authentication,
/// `REQUIRE` and resource limits dropped. `None` for lines that carry nothing to copy
/// (`GRANT USAGE ON *.*` without grant option) or that are not grants.
fn clone_grant(line: &str, from: &str, to: &str, host: &str) -> Option<String> {
    let from_acc = format!("{}@{}", quote_mysql_ident(from), quote_mysql_ident(host));
    let to_acc = format!("{}@{}", quote_mysql_ident(to), quote_mysql_ident(host));
    if let Some(rest) = line.strip_prefix("SET DEFAULT ROLE ") {
        let (role, account) = rest.split_once(" FOR ")?;
        return (account.trim() == from_acc)
            .then(|| format!("SET DEFAULT ROLE {role} FOR {to_acc}"));
    }
    if !line.starts_with("GRANT ") {
        return None;
    }
    let marker = format!(" TO {from_acc}");
    let at = line.find(&marker)?;
    let (head, tail) = (&line[..at], &line[at + marker.len()..]);
    let grant_option = tail.contains("WITH GRANT OPTION");
    let admin_option = tail.contains("WITH ADMIN OPTION");
    if head == "GRANT USAGE ON *.*" && !grant_option {
        return None;
    }
    let mut out = format!("{head} TO {to_acc}");
    if grant_option {
        out.push_str(" WITH GRANT OPTION");
    }
    if admin_option {
        out.push_str(" WITH ADMIN OPTION");
    }
    Some(out)
}

/// An unguessable password that satisfies common policies (upper, lower, digit, symbol,
/// length): the password of a user between creation and its first `set_password`.
fn throwaway_password() -> SecretValue {
    const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..40)
        .map(|_| ALNUM[rng.random_range(0..ALNUM.len())] as char)
        .collect();
    SecretValue::new(format!("Aa1-{tail}"))
}

#[async_trait::async_trait]
impl CredentialTarget for MysqlTarget {
    async fn check(&self) -> Result<(), TargetError> {
        let mut conn = self.admin().await?;
        conn.query_drop("SELECT 1")
            .await
            .map_err(|e| self.classify(&e, Op::Admin))?;
        let _ = conn.disconnect().await;
        Ok(())
    }

    async fn ensure_user(&self, username: &str, like: Option<&str>) -> Result<(), TargetError> {
        check_username(&self.name, username, MAX_USER_LEN)?;
        if let Some(l) = like {
            check_username(&self.name, l, MAX_USER_LEN)?;
        }
        let op = Op::EnsureUser(username);
        let mut conn = self.admin().await?;
        let exists: Option<u64> = conn
            .exec_first(
                "SELECT COUNT(*) FROM mysql.user WHERE User = ? AND Host = ?",
                (username, self.user_host.as_str()),
            )
            .await
            .map_err(|e| self.classify(&e, op))?;
        if exists.unwrap_or(0) == 0 {
            if let Some(l) = like {
                // Fail before creating anything when the model user is missing.
                let found: Option<u64> = conn
                    .exec_first(
                        "SELECT COUNT(*) FROM mysql.user WHERE User = ? AND Host = ?",
                        (l, self.user_host.as_str()),
                    )
                    .await
                    .map_err(|e| self.classify(&e, op))?;
                if found.unwrap_or(0) == 0 {
                    return Err(TargetError::NotFound {
                        target: self.name.clone(),
                        user: l.to_owned(),
                    });
                }
            }
            let form = self.password_form(&mut conn).await?;
            let throwaway = throwaway_password();
            if form == MysqlPasswordForm::PolicyChecked {
                self.plaintext_session(&mut conn).await?;
            }
            let clause = Self::identified(form, &throwaway);
            let stmt = SecretValue::new(format!(
                "CREATE USER {} {}",
                self.account(username),
                clause.expose()
            ));
            match conn.query_drop(stmt.expose()).await {
                Ok(()) => {}
                // Created meanwhile by a concurrent call.
                Err(mysql_async::Error::Server(se)) if se.code == 1396 => {}
                Err(e) => {
                    return Err(self
                        .classify(&e, Op::Admin)
                        .scrubbed(&[&throwaway, &mysql_native_password_hash(&throwaway)]));
                }
            }
        }
        if let Some(l) = like {
            self.copy_grants(&mut conn, username, l).await?;
        }
        let _ = conn.disconnect().await;
        Ok(())
    }

    async fn set_password(
        &self,
        username: &str,
        password: &SecretValue,
    ) -> Result<(), TargetError> {
        check_username(&self.name, username, MAX_USER_LEN)?;
        let mut conn = self.admin().await?;
        self.alter_user(&mut conn, username, password).await?;
        let _ = conn.disconnect().await;
        Ok(())
    }

    async fn set_password_fenced(
        &self,
        username: &str,
        password: &SecretValue,
        fence: &Fence,
    ) -> Result<(), TargetError> {
        check_username(&self.name, username, MAX_USER_LEN)?;
        let mut conn = self.admin().await?;
        let account = format!("{username}@{}", self.user_host);
        let lock = format!("capstan-fence:{account}");
        let err = |e: mysql_async::Error| self.classify(&e, Op::Admin);
        let got: Option<Option<i64>> = conn
            .exec_first("SELECT GET_LOCK(?, 10)", (lock.as_str(),))
            .await
            .map_err(err)?;
        if got.flatten() != Some(1) {
            return Err(TargetError::Unavailable {
                target: self.name.clone(),
                detail: format!("the fence lock of {account:?} is held by another writer"),
            });
        }
        let result = self
            .fenced_alter(&mut conn, username, &account, password, fence)
            .await;
        // Closing the session would release the lock too.
        let _ = conn
            .exec_drop("SELECT RELEASE_LOCK(?)", (lock.as_str(),))
            .await;
        let _ = conn.disconnect().await;
        result
    }

    async fn test_login(&self, username: &str, password: &SecretValue) -> Result<(), TargetError> {
        let mut conn = self
            .connect(username, password, Op::Login(username))
            .await?;
        conn.query_drop("SELECT 1")
            .await
            .map_err(|e| self.classify(&e, Op::Login(username)).scrubbed(&[password]))?;
        let _ = conn.disconnect().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_password_hash_matches_mysql_password_function() {
        // SELECT PASSWORD('password') on MySQL 5.7 / MariaDB.
        assert_eq!(
            mysql_native_password_hash(&SecretValue::new("password")).expose(),
            "*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19"
        );
    }

    #[test]
    fn grants_are_rewritten_for_the_clone() {
        let g = |l| clone_grant(l, "app", "app_b", "%");
        assert_eq!(
            g("GRANT SELECT, INSERT ON `shop`.* TO `app`@`%`").as_deref(),
            Some("GRANT SELECT, INSERT ON `shop`.* TO `app_b`@`%`")
        );
        assert_eq!(
            g(
                "GRANT USAGE ON *.* TO `app`@`%` IDENTIFIED BY PASSWORD '*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19'"
            ),
            None
        );
        assert_eq!(
            g("GRANT USAGE ON *.* TO `app`@`%` IDENTIFIED BY PASSWORD '*24' WITH GRANT OPTION")
                .as_deref(),
            Some("GRANT USAGE ON *.* TO `app_b`@`%` WITH GRANT OPTION")
        );
        assert_eq!(
            g("GRANT `reader` TO `app`@`%` WITH ADMIN OPTION").as_deref(),
            Some("GRANT `reader` TO `app_b`@`%` WITH ADMIN OPTION")
        );
        assert_eq!(
            g("SET DEFAULT ROLE `reader` FOR `app`@`%`").as_deref(),
            Some("SET DEFAULT ROLE `reader` FOR `app_b`@`%`")
        );
        assert_eq!(g("GRANT SELECT ON `a`.* TO `other`@`%`"), None);
        assert_eq!(g("REVOKE x"), None);
    }

    #[test]
    fn throwaway_passwords_differ_and_have_every_class() {
        let a = throwaway_password();
        let b = throwaway_password();
        assert_ne!(a.expose(), b.expose());
        let s = a.expose();
        assert!(s.len() >= 40);
        assert!(s.chars().any(|c| c.is_ascii_uppercase()));
        assert!(s.chars().any(|c| c.is_ascii_lowercase()));
        assert!(s.chars().any(|c| c.is_ascii_digit()));
        assert!(s.chars().any(|c| !c.is_ascii_alphanumeric()));
    }

    #[test]
    fn identified_clauses_hash_unless_the_policy_must_see_the_value() {
        let p = SecretValue::new("password");
        let h = MysqlTarget::identified(MysqlPasswordForm::MariaDbHash, &p);
        assert!(!h.expose().contains("'password'"));
        assert!(
            h.expose()
                .contains("*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19")
        );
        let m = MysqlTarget::identified(MysqlPasswordForm::MysqlHash, &p);
        assert!(
            m.expose()
                .starts_with("IDENTIFIED WITH mysql_native_password AS '*")
        );
        let c = MysqlTarget::identified(MysqlPasswordForm::PolicyChecked, &SecretValue::new("a'b"));
        assert_eq!(c.expose(), "IDENTIFIED BY 'a''b'");
    }
}
