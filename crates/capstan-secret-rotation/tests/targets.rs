//! The credential targets against real servers: PostgreSQL and MariaDB from
//! capstan-testenv. Every test uses its own roles, users and objects.

use std::error::Error;
use std::time::Duration;

use capstan_core::redact::SecretValue;
use capstan_secret_rotation::crd;
use capstan_secret_rotation::targets::{
    CredentialTarget, MysqlTarget, NoTarget, PostgresTarget, TargetError,
};
use capstan_testenv::TestEnv;
use mysql_async::prelude::Queryable;
use rand::Rng;

type TestResult = Result<(), Box<dyn Error>>;

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

/// set_password then test_login: the new value logs in, the old one fails with
/// LoginFailed; and with statement logging on, the server log holds the ALTER ROLE with
/// its SCRAM verifier but never the plaintext (leak canary).
#[tokio::test]
async fn postgres_new_password_logs_in_old_fails_and_plaintext_never_reaches_the_log() -> TestResult
{
    let pg = TestEnv::get().postgres().await?;
    pg.enable_statement_logging().await?;
    let t = pg_target().await?;
    t.check().await?;
    let user = format!("app_{}", suffix());
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

/// ensure_user with `like` creates a role with the same role memberships and grants,
/// which logs in after set_password; calling it again changes nothing.
#[tokio::test]
async fn postgres_alternate_role_gets_the_same_memberships_and_grants() -> TestResult {
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

/// A password policy that refuses the value itself (PostgreSQL's `passwordcheck`, which
/// checks even SCRAM verifiers against the user name) is a definitive rejection; another
/// value for the same user passes.
#[tokio::test]
async fn postgres_password_policy_refusal_is_a_definitive_rejection() -> TestResult {
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
    // CREATEROLE may change other roles' passwords (PostgreSQL 16+: roles it created or
    // administers).
    pg_admin_sql(&format!("GRANT {user} TO {admin} WITH ADMIN OPTION")).await?;
    let t = PostgresTarget::new(&pg_spec(pg.port()), &admin, admin_pw, None)?;
    let same_as_name = SecretValue::new(user.clone());
    let err = t
        .set_password(&user, &same_as_name)
        .await
        .expect_err("passwordcheck accepted the user name as password");
    assert!(err.is_definitive_rejection(), "{err:?}");
    assert!(!err.is_transient());
    assert_eq!(err.reason(), "TargetRejected");
    assert!(
        err.to_string()
            .contains("password must not equal user name"),
        "{err}"
    );
    let fine = password("fine");
    t.set_password(&user, &fine).await?;
    t.test_login(&user, &fine).await?;
    Ok(())
}

/// A refused connection is transient, never a rejection of the value.
#[tokio::test]
async fn postgres_refused_connection_is_transient_not_a_rejection() -> TestResult {
    let t = PostgresTarget::new(
        &pg_spec(closed_port()),
        "postgres",
        SecretValue::new("irrelevant"),
        None,
    )?
    .with_connect_timeout(Duration::from_secs(2));
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

/// Wrong admin credentials: access denied before anything changes; a missing user:
/// NotFound.
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

#[tokio::test]
async fn mariadb_new_password_logs_in_old_fails() -> TestResult {
    let _shared = MARIADB_POLICY.read().await;
    let t = my_target().await?;
    t.check().await?;
    let user = format!("app_{}", &suffix()[..8]);
    t.ensure_user(&user, None).await?;
    t.ensure_user(&user, None).await?;
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
    no_password_in(&err, &[&p1, &p2]);
    // The account stores the mysql_native_password hash of the value.
    let mut admin = my_admin().await?;
    let stored: Option<String> = admin
        .exec_first(
            "SELECT authentication_string FROM mysql.user WHERE User = ? AND Host = '%'",
            (user.as_str(),),
        )
        .await?;
    assert_eq!(
        stored.as_deref(),
        Some(capstan_secret_rotation::targets::mysql_native_password_hash(&p2).expose())
    );
    Ok(())
}

#[tokio::test]
async fn mariadb_alternate_user_gets_the_same_grants() -> TestResult {
    let _shared = MARIADB_POLICY.read().await;
    let t = my_target().await?;
    let s = &suffix()[..8];
    let (user, clone, db, role) = (
        format!("app_{s}"),
        format!("app_{s}_b"),
        format!("shop_{s}"),
        format!("reader_{s}"),
    );
    t.ensure_user(&user, None).await?;
    let mut admin = my_admin().await?;
    admin
        .query_drop(format!(
            "CREATE DATABASE {db}; CREATE TABLE {db}.orders (id INT); CREATE ROLE {role}; \
             GRANT SELECT ON {db}.* TO {role}; GRANT {role} TO '{user}'@'%'; \
             SET DEFAULT ROLE {role} FOR '{user}'@'%'; \
             GRANT INSERT, UPDATE ON {db}.orders TO '{user}'@'%'"
        ))
        .await?;
    t.ensure_user(&clone, Some(&user)).await?;
    t.ensure_user(&clone, Some(&user)).await?;
    let grants = |who: String| async move {
        let mut admin = my_admin().await?;
        let rows: Vec<String> = admin.query(format!("SHOW GRANTS FOR '{who}'@'%'")).await?;
        Ok::<Vec<String>, Box<dyn Error>>(
            rows.into_iter()
                .filter(|g| !g.starts_with("GRANT USAGE ON *.*"))
                .map(|g| g.replace(&format!("`{who}`"), "`X`"))
                .collect(),
        )
    };
    let (ours, theirs) = (grants(clone.clone()).await?, grants(user.clone()).await?);
    assert_eq!(ours, theirs);
    assert!(
        ours.iter().any(|g| g.contains("INSERT, UPDATE ON `shop_")),
        "{ours:?}"
    );
    assert!(
        ours.iter()
            .any(|g| g.contains(&format!("GRANT `{role}` TO"))),
        "{ours:?}"
    );
    let p = password("clone");
    t.set_password(&clone, &p).await?;
    t.test_login(&clone, &p).await?;
    Ok(())
}

/// MariaDB's simple_password_check refuses a too-simple value: a definitive rejection.
/// A value that satisfies it passes (sent so the policy can see it: hashes are refused
/// under strict_password_validation).
#[tokio::test]
async fn mariadb_simple_password_check_refusal_is_a_definitive_rejection() -> TestResult {
    let _exclusive = MARIADB_POLICY.write().await;
    let t = my_target().await?;
    let user = format!("app_{}", &suffix()[..8]);
    t.ensure_user(&user, None).await?;
    let mut admin = my_admin().await?;
    admin
        .query_drop("INSTALL SONAME 'simple_password_check'")
        .await?;
    let result = async {
        let simple = SecretValue::new("abc");
        let err = t
            .set_password(&user, &simple)
            .await
            .expect_err("a too-simple password was accepted");
        assert!(err.is_definitive_rejection(), "{err:?}");
        assert_eq!(err.reason(), "TargetRejected");
        no_password_in(&err, &[&simple]);
        let strong = password("strong");
        t.set_password(&user, &strong).await?;
        t.test_login(&user, &strong).await?;
        // A user created while the policy is active gets a compliant throwaway password.
        t.ensure_user(&format!("{user}_b"), Some(&user)).await?;
        Ok::<(), Box<dyn Error>>(())
    }
    .await;
    admin
        .query_drop("UNINSTALL SONAME 'simple_password_check'")
        .await?;
    result
}

#[tokio::test]
async fn mariadb_refused_connection_is_transient_not_a_rejection() -> TestResult {
    let t = MysqlTarget::new(
        &my_spec(closed_port()),
        "root",
        SecretValue::new("irrelevant"),
        None,
    )?
    .with_connect_timeout(Duration::from_secs(2));
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

#[tokio::test]
async fn mariadb_missing_user_is_not_found() -> TestResult {
    let _shared = MARIADB_POLICY.read().await;
    let t = my_target().await?;
    let err = t
        .set_password(&format!("nobody_{}", &suffix()[..8]), &password("x"))
        .await
        .expect_err("set a missing user's password");
    assert!(matches!(err, TargetError::NotFound { .. }), "{err:?}");
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
