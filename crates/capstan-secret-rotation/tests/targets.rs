//! The credential targets against real servers: PostgreSQL and MariaDB from
//! capstan-testenv. Every test uses its own roles, users and objects.
//!
//! One contract runs against every target ([`target_contract!`]): a new password logs in
//! and the old one fails; `ensure_user` is idempotent and an alternate user gets the
//! model's grants; a password policy's refusal is a definitive rejection; a refused
//! connection is transient; a missing user is `NotFound`; no error carries a password.
//! A new target (RDS, Vault roles) joins by implementing [`Subject`] (how to reach it as
//! the admin and at a dead port, how to give a model user grants and read them back, how
//! to switch a password policy on) and adding one `target_contract!` line. What only one
//! target has (PostgreSQL's statement-log leak canary, MariaDB's stored hash) stays a
//! test of its own below the contract.

use std::error::Error;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use capstan_core::redact::SecretValue;
use capstan_secret_rotation::crd;
use capstan_secret_rotation::targets::{
    CredentialTarget, MysqlTarget, NoTarget, PostgresTarget, TargetError,
};
use capstan_testenv::TestEnv;
use mysql_async::prelude::Queryable;
use rand::Rng;
use tokio::sync::{RwLockReadGuard, RwLockWriteGuard};

type TestResult = Result<(), Box<dyn Error>>;
type Cleanup = Pin<Box<dyn Future<Output = TestResult> + Send>>;

fn suffix() -> String {
    let n: u64 = rand::rng().random();
    format!("{n:016x}")
}

/// A password every policy used here accepts (upper, lower, digit, symbol), unique.
fn password(tag: &str) -> SecretValue {
    SecretValue::new(format!("Pw9-{tag}-{}", suffix()))
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn no_password_in(e: &TargetError, secrets: &[&SecretValue]) {
    let printed = format!("{e:?} {e}");
    for s in secrets {
        assert!(!printed.contains(s.expose()), "password leaked: {printed}");
    }
}

// ---- PostgreSQL ----

fn pg_spec(port: u16) -> crd::PostgresTarget {
    crd::PostgresTarget {
        host: "127.0.0.1".into(),
        port: i32::from(port),
        database: "postgres".into(),
        ssl_mode: crd::PostgresSslMode::Disable,
        ca_secret_ref: None,
        username: "unused".into(),
        admin_secret_ref: crd::AdminSecretRef {
            name: "unused".into(),
            username_key: "username".into(),
            password_key: "password".into(),
        },
    }
}

async fn pg_target() -> Result<PostgresTarget, Box<dyn Error>> {
    let pg = TestEnv::get().postgres().await?;
    Ok(PostgresTarget::new(
        &pg_spec(pg.port()),
        pg.admin_user(),
        SecretValue::new(pg.admin_password()),
        None,
    )?)
}

async fn pg_admin_sql(sql: &str) -> TestResult {
    let pg = TestEnv::get().postgres().await?;
    let (client, conn) = tokio_postgres::connect(&pg.admin_url(), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    client.batch_execute(sql).await?;
    Ok(())
}

// ---- The contract ----

/// A password policy switched on for one user: setting `weak` must be refused.
struct Policy {
    /// The target to set passwords through (its admin is subject to the policy).
    target: Box<dyn CredentialTarget>,
    /// An existing user the policy applies to.
    user: String,
    /// A value the policy refuses.
    weak: SecretValue,
    /// Text the refusal's message carries, if the server's wording is known.
    message: Option<&'static str>,
    /// Switches the policy off again.
    cleanup: Option<Cleanup>,
    /// Held while the policy is on, when it applies to the whole server.
    _exclusive: Option<RwLockWriteGuard<'static, ()>>,
}

/// What the contract needs to know about one kind of target.
#[async_trait::async_trait]
trait Subject: Sync {
    /// The target, connected as the server's admin.
    async fn target(&self) -> Result<Box<dyn CredentialTarget>, Box<dyn Error>>;
    /// The target pointed at a port nothing listens on, with a 2 s connect timeout.
    fn refused(&self) -> Result<Box<dyn CredentialTarget>, Box<dyn Error>>;
    /// A fresh user name this server accepts.
    fn user(&self) -> String;
    /// Gives the existing `user` grants (or memberships) for an alternate to copy; `s`
    /// is unique to the test.
    async fn grant_model(&self, user: &str, s: &str) -> TestResult;
    /// `user`'s grants, normalised so that two users holding the same compare equal.
    async fn grants(&self, user: &str) -> Result<Vec<String>, Box<dyn Error>>;
    /// Switches on a password policy for a fresh user.
    async fn policy(&self) -> Result<Policy, Box<dyn Error>>;
    /// What else must hold while the policy is on for `user`, through `target` (default:
    /// nothing).
    async fn under_policy(&self, _target: &dyn CredentialTarget, _user: &str) -> TestResult {
        Ok(())
    }
    /// A shared hold on server-wide settings, for tests that do not change them.
    async fn shared(&self) -> Option<RwLockReadGuard<'static, ()>> {
        None
    }
}

/// set_password then test_login: the new value logs in, the old one fails with
/// LoginFailed (neither transient nor a rejection of the value); ensure_user is
/// idempotent.
async fn new_password_logs_in_old_fails(s: &dyn Subject) -> TestResult {
    let _shared = s.shared().await;
    let t = s.target().await?;
    t.check().await?;
    let user = s.user();
    t.ensure_user(&user, None).await?;
    t.ensure_user(&user, None).await?; // idempotent
    let (p1, p2) = (password("first"), password("second"));
    t.set_password(&user, &p1).await?;
    t.test_login(&user, &p1).await?;
    t.set_password(&user, &p2).await?;
    t.test_login(&user, &p2).await?;
    let err = t
        .test_login(&user, &p1)
        .await
        .expect_err("old password still works");
    assert!(matches!(err, TargetError::LoginFailed { .. }), "{err:?}");
    assert!(!err.is_transient() && !err.is_definitive_rejection());
    assert_eq!(err.reason(), "TargetLoginFailed");
    no_password_in(&err, &[&p1, &p2]);
    Ok(())
}

/// ensure_user with `like` (twice) creates a user with the model's grants, which logs in
/// after set_password.
async fn alternate_user_gets_the_same_grants(s: &dyn Subject) -> TestResult {
    let _shared = s.shared().await;
    let t = s.target().await?;
    let user = s.user();
    let clone = format!("{user}_b");
    t.ensure_user(&user, None).await?;
    s.grant_model(&user, &suffix()[..8]).await?;
    t.ensure_user(&clone, Some(&user)).await?;
    t.ensure_user(&clone, Some(&user)).await?;
    let (ours, theirs) = (s.grants(&clone).await?, s.grants(&user).await?);
    assert!(!theirs.is_empty(), "the model has no grants to copy");
    assert_eq!(ours, theirs);
    let p = password("clone");
    t.set_password(&clone, &p).await?;
    t.test_login(&clone, &p).await?;
    Ok(())
}

/// A value the server's password policy refuses is a definitive rejection; a compliant
/// value for the same user passes and logs in.
async fn policy_refusal_is_a_definitive_rejection(s: &dyn Subject) -> TestResult {
    let mut policy = s.policy().await?;
    let result = async {
        let t = &policy.target;
        let err = t
            .set_password(&policy.user, &policy.weak)
            .await
            .expect_err("the policy accepted a value it refuses");
        assert!(err.is_definitive_rejection(), "{err:?}");
        assert!(!err.is_transient());
        assert_eq!(err.reason(), "TargetRejected");
        // A policy that refuses the user name as password (PostgreSQL's) makes the value
        // the user's name, which the error names by design.
        if policy.weak.expose() != policy.user {
            no_password_in(&err, &[&policy.weak]);
        }
        if let Some(text) = policy.message {
            assert!(err.to_string().contains(text), "{err}");
        }
        let strong = password("strong");
        t.set_password(&policy.user, &strong).await?;
        t.test_login(&policy.user, &strong).await?;
        s.under_policy(t.as_ref(), &policy.user).await
    }
    .await;
    if let Some(cleanup) = policy.cleanup.take() {
        cleanup.await?;
    }
    result
}

/// A refused connection is transient, never a rejection of the value, for every call.
async fn refused_connection_is_transient(s: &dyn Subject) -> TestResult {
    let t = s.refused()?;
    let p = password("refused");
    for err in [
        t.check().await.expect_err("connected to a closed port"),
        t.set_password("app", &p)
            .await
            .expect_err("set on a closed port"),
        t.test_login("app", &p)
            .await
            .expect_err("login on a closed port"),
    ] {
        assert!(err.is_transient(), "{err:?}");
        assert!(!err.is_definitive_rejection(), "{err:?}");
        no_password_in(&err, &[&p]);
    }
    Ok(())
}

/// Setting a missing user's password is NotFound.
async fn missing_user_is_not_found(s: &dyn Subject) -> TestResult {
    let _shared = s.shared().await;
    let t = s.target().await?;
    let err = t
        .set_password(&format!("nobody_{}", &suffix()[..8]), &password("x"))
        .await
        .expect_err("set a missing user's password");
    assert!(matches!(err, TargetError::NotFound { .. }), "{err:?}");
    Ok(())
}

/// The contract's tests for one subject, in a module named `$name`.
macro_rules! target_contract {
    ($name:ident, $subject:expr) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn new_password_logs_in_old_fails() -> TestResult {
                super::new_password_logs_in_old_fails(&$subject).await
            }

            #[tokio::test]
            async fn alternate_user_gets_the_same_grants() -> TestResult {
                super::alternate_user_gets_the_same_grants(&$subject).await
            }

            #[tokio::test]
            async fn policy_refusal_is_a_definitive_rejection() -> TestResult {
                super::policy_refusal_is_a_definitive_rejection(&$subject).await
            }

            #[tokio::test]
            async fn refused_connection_is_transient() -> TestResult {
                super::refused_connection_is_transient(&$subject).await
            }

            #[tokio::test]
            async fn missing_user_is_not_found() -> TestResult {
                super::missing_user_is_not_found(&$subject).await
            }
        }
    };
}

target_contract!(postgres, Postgres);
target_contract!(mariadb, Mariadb);

// ---- PostgreSQL ----

struct Postgres;

#[async_trait::async_trait]
impl Subject for Postgres {
    async fn target(&self) -> Result<Box<dyn CredentialTarget>, Box<dyn Error>> {
        Ok(Box::new(pg_target().await?))
    }

    fn refused(&self) -> Result<Box<dyn CredentialTarget>, Box<dyn Error>> {
        Ok(Box::new(
            PostgresTarget::new(
                &pg_spec(closed_port()),
                "postgres",
                SecretValue::new("irrelevant"),
                None,
            )?
            .with_connect_timeout(Duration::from_secs(2)),
        ))
    }

    fn user(&self) -> String {
        format!("app_{}", suffix())
    }

    async fn grant_model(&self, user: &str, s: &str) -> TestResult {
        pg_admin_sql(&format!(
            "CREATE ROLE readers_{s} NOLOGIN; GRANT readers_{s} TO {user}; \
             CREATE SCHEMA shop_{s}; CREATE TABLE shop_{s}.orders (id int); \
             GRANT USAGE ON SCHEMA shop_{s} TO {user}; \
             GRANT SELECT, INSERT ON shop_{s}.orders TO {user};"
        ))
        .await
    }

    async fn grants(&self, user: &str) -> Result<Vec<String>, Box<dyn Error>> {
        let pg = TestEnv::get().postgres().await?;
        let (client, conn) =
            tokio_postgres::connect(&pg.admin_url(), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        let rows = client
            .query(
                "SELECT 'member of ' || r.rolname FROM pg_auth_members m \
                 JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles u ON u.oid = m.member \
                 WHERE u.rolname = $1 \
                 UNION ALL SELECT privilege_type || ' ON ' || table_schema || '.' || table_name \
                 FROM information_schema.role_table_grants WHERE grantee = $1 ORDER BY 1",
                &[&user],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
    }

    /// `passwordcheck`, which checks even SCRAM verifiers against the user name, loaded
    /// for a CREATEROLE admin of its own: only that admin's sessions are affected.
    async fn policy(&self) -> Result<Policy, Box<dyn Error>> {
        let pg = TestEnv::get().postgres().await?;
        let s = suffix();
        let admin = format!("adm_{s}");
        let admin_pw = password("admin");
        let user = format!("app_{s}");
        pg_admin_sql(&format!(
            "CREATE ROLE {admin} LOGIN CREATEROLE PASSWORD '{}'; \
             ALTER ROLE {admin} SET session_preload_libraries = 'passwordcheck'; \
             CREATE ROLE {user} LOGIN;",
            admin_pw.expose()
        ))
        .await?;
        // CREATEROLE may change other roles' passwords (PostgreSQL 16+: roles it created
        // or administers).
        pg_admin_sql(&format!("GRANT {user} TO {admin} WITH ADMIN OPTION")).await?;
        let target = PostgresTarget::new(&pg_spec(pg.port()), &admin, admin_pw, None)?;
        Ok(Policy {
            target: Box::new(target),
            weak: SecretValue::new(user.clone()),
            user,
            message: Some("password must not equal user name"),
            cleanup: None,
            _exclusive: None,
        })
    }
}

/// With statement logging on, the server log holds each ALTER ROLE with its SCRAM
/// verifier but never the plaintext (leak canary).
#[tokio::test]
async fn postgres_plaintext_never_reaches_the_statement_log() -> TestResult {
    let pg = TestEnv::get().postgres().await?;
    pg.enable_statement_logging().await?;
    let t = pg_target().await?;
    let user = format!("app_{}", suffix());
    t.ensure_user(&user, None).await?;
    let (p1, p2) = (password("first"), password("second"));
    t.set_password(&user, &p1).await?;
    t.set_password(&user, &p2).await?;
    t.test_login(&user, &p2).await?;
    // The log is written asynchronously by the server's logger.
    let log = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let log = std::fs::read_to_string(pg.log_path()).unwrap_or_default();
            if log
                .matches(&format!("ALTER ROLE \"{user}\" PASSWORD 'SCRAM-SHA-256$"))
                .count()
                >= 2
            {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .map_err(|_| "the ALTER ROLE statements never reached the statement log")?;
    assert!(!log.contains(p1.expose()), "plaintext in the server log");
    assert!(!log.contains(p2.expose()), "plaintext in the server log");
    Ok(())
}

/// Beyond the contract: the alternate role also gets the model's column grants,
/// attributes (CREATEDB, connection limit) and nothing it was never granted; a model role
/// that does not exist is NotFound.
#[tokio::test]
async fn postgres_alternate_role_copies_columns_attributes_and_no_more() -> TestResult {
    let t = pg_target().await?;
    let s = suffix();
    let (user, clone, group, schema) = (
        format!("app_{s}"),
        format!("app_{s}_b"),
        format!("readers_{s}"),
        format!("shop_{s}"),
    );
    pg_admin_sql(&format!(
        "CREATE ROLE {group} NOLOGIN; CREATE ROLE {user} LOGIN CREATEDB CONNECTION LIMIT 7; \
         GRANT {group} TO {user}; CREATE SCHEMA {schema}; \
         CREATE TABLE {schema}.orders (id int, note text); \
         CREATE TABLE {schema}.secret_notes (id int); \
         GRANT USAGE ON SCHEMA {schema} TO {user}; \
         GRANT SELECT, INSERT ON {schema}.orders TO {user}; \
         GRANT UPDATE (note) ON {schema}.orders TO {user}; \
         GRANT CONNECT ON DATABASE postgres TO {user};"
    ))
    .await?;
    t.ensure_user(&clone, Some(&user)).await?;
    t.ensure_user(&clone, Some(&user)).await?;
    let pg = TestEnv::get().postgres().await?;
    let (client, conn) = tokio_postgres::connect(&pg.admin_url(), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let memberships = |who: String| {
        let client = &client;
        async move {
            let rows = client
                .query(
                    "SELECT r.rolname::text FROM pg_auth_members m \
                     JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles u ON u.oid = m.member \
                     WHERE u.rolname = $1 ORDER BY 1",
                    &[&who],
                )
                .await?;
            Ok::<Vec<String>, tokio_postgres::Error>(rows.iter().map(|r| r.get(0)).collect())
        }
    };
    assert_eq!(
        memberships(clone.clone()).await?,
        memberships(user.clone()).await?
    );
    assert_eq!(memberships(clone.clone()).await?, vec![group.clone()]);
    let row = client
        .query_one(
            "SELECT has_table_privilege($1, $2, 'SELECT'), has_table_privilege($1, $2, 'INSERT'), \
             has_table_privilege($1, $2, 'DELETE'), has_schema_privilege($1, $3, 'USAGE'), \
             has_column_privilege($1, $2, 'note', 'UPDATE'), \
             has_table_privilege($1, $4, 'SELECT'), \
             (SELECT rolcreatedb FROM pg_roles WHERE rolname = $1), \
             (SELECT rolconnlimit FROM pg_roles WHERE rolname = $1)",
            &[
                &clone,
                &format!("{schema}.orders"),
                &schema,
                &format!("{schema}.secret_notes"),
            ],
        )
        .await?;
    assert!(row.get::<_, bool>(0), "SELECT");
    assert!(row.get::<_, bool>(1), "INSERT");
    assert!(!row.get::<_, bool>(2), "DELETE was never granted");
    assert!(row.get::<_, bool>(3), "schema USAGE");
    assert!(row.get::<_, bool>(4), "column UPDATE");
    assert!(!row.get::<_, bool>(5), "a table never granted");
    assert!(row.get::<_, bool>(6), "CREATEDB attribute");
    assert_eq!(row.get::<_, i32>(7), 7, "connection limit");
    let p = password("clone");
    t.set_password(&clone, &p).await?;
    t.test_login(&clone, &p).await?;
    // A model role that does not exist is reported as such.
    let err = t
        .ensure_user(&format!("x_{s}"), Some(&format!("missing_{s}")))
        .await
        .expect_err("cloned a missing role");
    assert!(matches!(err, TargetError::NotFound { .. }), "{err:?}");
    Ok(())
}

/// Wrong admin credentials: access denied before anything changes (and a missing
/// user: NotFound, as in the contract).
#[tokio::test]
async fn postgres_wrong_admin_is_denied_and_missing_user_not_found() -> TestResult {
    let pg = TestEnv::get().postgres().await?;
    let bad = PostgresTarget::new(
        &pg_spec(pg.port()),
        pg.admin_user(),
        SecretValue::new("wrong-admin-password"),
        None,
    )?;
    let err = bad
        .check()
        .await
        .expect_err("wrong admin password accepted");
    assert!(matches!(err, TargetError::AccessDenied { .. }), "{err:?}");
    no_password_in(&err, &[&SecretValue::new("wrong-admin-password")]);
    let t = pg_target().await?;
    let err = t
        .set_password(&format!("nobody_{}", suffix()), &password("x"))
        .await
        .expect_err("set a missing role's password");
    assert!(matches!(err, TargetError::NotFound { .. }), "{err:?}");
    Ok(())
}

// ---- MariaDB ----

/// Tests that install a password-validation plugin change the server for every test:
/// they take this lock exclusively, the others share it.
static MARIADB_POLICY: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn my_spec(port: u16) -> crd::MysqlTarget {
    crd::MysqlTarget {
        host: "127.0.0.1".into(),
        port: i32::from(port),
        database: None,
        username: "unused".into(),
        user_host: "%".into(),
        ssl_mode: crd::MysqlSslMode::Disabled,
        ca_secret_ref: None,
        admin_secret_ref: crd::AdminSecretRef {
            name: "unused".into(),
            username_key: "username".into(),
            password_key: "password".into(),
        },
    }
}

async fn my_target() -> Result<MysqlTarget, Box<dyn Error>> {
    let db = TestEnv::get().mariadb().await?;
    Ok(MysqlTarget::new(
        &my_spec(db.port()),
        db.admin_user(),
        SecretValue::new(db.admin_password()),
        None,
    )?)
}

async fn my_admin() -> Result<mysql_async::Conn, Box<dyn Error>> {
    let db = TestEnv::get().mariadb().await?;
    // Over TCP like the target (mysql_async would switch to the Unix socket and log in
    // as root@localhost, whose roles root@'%' may not grant).
    let opts = mysql_async::OptsBuilder::from_opts(mysql_async::Opts::from_url(&db.admin_url())?)
        .prefer_socket(false);
    Ok(mysql_async::Conn::new(opts).await?)
}

struct Mariadb;

#[async_trait::async_trait]
impl Subject for Mariadb {
    async fn target(&self) -> Result<Box<dyn CredentialTarget>, Box<dyn Error>> {
        Ok(Box::new(my_target().await?))
    }

    fn refused(&self) -> Result<Box<dyn CredentialTarget>, Box<dyn Error>> {
        Ok(Box::new(
            MysqlTarget::new(
                &my_spec(closed_port()),
                "root",
                SecretValue::new("irrelevant"),
                None,
            )?
            .with_connect_timeout(Duration::from_secs(2)),
        ))
    }

    fn user(&self) -> String {
        format!("app_{}", &suffix()[..8])
    }

    async fn grant_model(&self, user: &str, s: &str) -> TestResult {
        let mut admin = my_admin().await?;
        admin
            .query_drop(format!(
                "CREATE DATABASE shop_{s}; CREATE TABLE shop_{s}.orders (id INT); \
                 CREATE ROLE reader_{s}; GRANT SELECT ON shop_{s}.* TO reader_{s}; \
                 GRANT reader_{s} TO '{user}'@'%'; SET DEFAULT ROLE reader_{s} FOR '{user}'@'%'; \
                 GRANT INSERT, UPDATE ON shop_{s}.orders TO '{user}'@'%'"
            ))
            .await?;
        Ok(())
    }

    async fn grants(&self, user: &str) -> Result<Vec<String>, Box<dyn Error>> {
        let mut admin = my_admin().await?;
        let rows: Vec<String> = admin.query(format!("SHOW GRANTS FOR '{user}'@'%'")).await?;
        Ok(rows
            .into_iter()
            .filter(|g| !g.starts_with("GRANT USAGE ON *.*"))
            .map(|g| g.replace(&format!("`{user}`"), "`X`"))
            .collect())
    }

    /// MariaDB's `simple_password_check` plugin: it applies to the whole server, so the
    /// test holds [`MARIADB_POLICY`] exclusively while it is installed.
    async fn policy(&self) -> Result<Policy, Box<dyn Error>> {
        let exclusive = MARIADB_POLICY.write().await;
        let t = my_target().await?;
        let user = self.user();
        t.ensure_user(&user, None).await?;
        let mut admin = my_admin().await?;
        admin
            .query_drop("INSTALL SONAME 'simple_password_check'")
            .await?;
        let cleanup: Cleanup = Box::pin(async move {
            admin
                .query_drop("UNINSTALL SONAME 'simple_password_check'")
                .await?;
            Ok(())
        });
        Ok(Policy {
            target: Box::new(t),
            user,
            weak: SecretValue::new("abc"),
            message: None,
            cleanup: Some(cleanup),
            _exclusive: Some(exclusive),
        })
    }

    /// A user created while the policy is active gets a compliant throwaway password.
    async fn under_policy(&self, target: &dyn CredentialTarget, user: &str) -> TestResult {
        target.ensure_user(&format!("{user}_b"), Some(user)).await?;
        Ok(())
    }

    async fn shared(&self) -> Option<RwLockReadGuard<'static, ()>> {
        Some(MARIADB_POLICY.read().await)
    }
}

/// Beyond the contract: the account stores the mysql_native_password hash of the value.
#[tokio::test]
async fn mariadb_stores_the_native_password_hash() -> TestResult {
    let _shared = MARIADB_POLICY.read().await;
    let t = my_target().await?;
    let user = format!("app_{}", &suffix()[..8]);
    t.ensure_user(&user, None).await?;
    let p = password("hashed");
    t.set_password(&user, &p).await?;
    let mut admin = my_admin().await?;
    let stored: Option<String> = admin
        .exec_first(
            "SELECT authentication_string FROM mysql.user WHERE User = ? AND Host = '%'",
            (user.as_str(),),
        )
        .await?;
    assert_eq!(
        stored.as_deref(),
        Some(capstan_secret_rotation::targets::mysql_native_password_hash(&p).expose())
    );
    Ok(())
}

/// The `none` target accepts everything: the value is only stored and delivered.
#[tokio::test]
async fn no_target_changes_nothing_and_accepts_every_step() -> TestResult {
    let t = NoTarget;
    let p = password("none");
    t.check().await?;
    t.ensure_user("anything", Some("other")).await?;
    t.set_password("anything", &p).await?;
    t.test_login("anything", &p).await?;
    Ok(())
}
