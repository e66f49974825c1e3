//! PostgreSQL target (`tokio-postgres`, TLS with rustls).
//!
//! - `set_password` sends `ALTER ROLE "<user>" PASSWORD 'SCRAM-SHA-256$4096:...'`: the
//!   verifier is computed here (`postgres_protocol::password::scram_sha_256`, a random
//!   salt per call), so the plaintext never reaches the server, its statement log or
//!   `pg_stat_activity`. PostgreSQL stores a pre-hashed password as given.
//! - `set_password_fenced` does the same in one transaction that first takes
//!   `pg_advisory_xact_lock(hashtext('capstan-fence:' || role))` (with a 10 s
//!   `lock_timeout`), reads the role's fence from its comment
//!   (`shobj_description(oid, 'pg_authid')`), refuses with [`TargetError::Fenced`] when
//!   it is newer than the caller's, else alters the password and stores the caller's
//!   fence with `COMMENT ON ROLE`. The role comment belongs to Capstan on rotated roles (a
//!   comment that is not a fence is overwritten); no schema is needed in users'
//!   databases. Both statements need what `ALTER ROLE .. PASSWORD` already needs
//!   (CREATEROLE with ADMIN OPTION on the role, or superuser).
//! - `test_login` logs in as the user (SCRAM: the password is not sent either) and runs
//!   `SELECT 1`.
//! - `ensure_user(new, Some(like))` creates `new` in one transaction with `like`'s role
//!   attributes (LOGIN, INHERIT, CREATEDB, CREATEROLE, REPLICATION, BYPASSRLS, SUPERUSER,
//!   CONNECTION LIMIT), its role memberships (with ADMIN OPTION where `like` has it) and
//!   the privileges granted to `like` on databases, and, in the connected database, on
//!   schemas, tables, views, sequences, columns and routines (the GRANT statements are
//!   built by the server with `format('%I')`). Not copied: per-role settings
//!   (`ALTER ROLE .. SET`), default privileges, object ownership, privileges in other
//!   databases, large objects, foreign servers and tablespaces.
//!
//! TLS modes follow libpq's `sslmode`: `disable`; `allow` and `prefer` try TLS without a
//! certificate check and fall back to plain (tokio-postgres has no "plain first" mode, so
//! `allow` behaves as `prefer`); `require` insists on TLS without a check; `verifyCa`
//! checks the chain against the CA bundle (or the system roots) but not the host name;
//! `verifyFull` checks both.
//!
//! Error classification by SQLSTATE: class 22 on `ALTER ROLE .. PASSWORD` (e.g. 22023
//! from `passwordcheck` or `credcheck`) is a definitive [`TargetError::Rejected`];
//! classes 08, 40, 53, 57, 58 and 55P03, 25006 (a standby), and connection failures
//! without a SQLSTATE are transient; 28xxx is a failed login; 42501 is access denied;
//! 42704 a missing role.

use std::sync::Arc;
use std::time::Duration;

use capstan_core::redact::SecretValue;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{
    CredentialTarget, Fence, Op, TargetError, check_username, checked_port, quote_pg_ident,
    root_store,
};
use crate::crd;

/// Longest PostgreSQL identifier (NAMEDATALEN - 1).
const MAX_ROLE_LEN: usize = 63;

/// How connections use TLS.
#[derive(Clone)]
pub enum PostgresTls {
    /// Plain TCP.
    Disable,
    /// TLS if the server offers it, no certificate check.
    Prefer(MakeRustlsConnect),
    /// TLS with the given verification (none, chain only, or chain and host name).
    Require(MakeRustlsConnect),
}

impl std::fmt::Debug for PostgresTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PostgresTls::Disable => "Disable",
            PostgresTls::Prefer(_) => "Prefer",
            PostgresTls::Require(_) => "Require",
        })
    }
}

/// A PostgreSQL server and an administrative login. The design is in this file's module documentation.
#[derive(Debug, Clone)]
pub struct PostgresTarget {
    host: String,
    port: u16,
    database: String,
    tls: PostgresTls,
    admin_user: String,
    admin_password: SecretValue,
    connect_timeout: Duration,
    name: String,
    admin_conn: AdminConn,
}

/// The administrative connection, opened on first use and reused by the later calls of
/// the same target (one reconcile: the reference check, then the user and password
/// steps), so a rotation opens one admin connection instead of one per call.
#[derive(Clone, Default)]
struct AdminConn(Arc<tokio::sync::Mutex<Option<Client>>>);

impl std::fmt::Debug for AdminConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminConn")
    }
}

/// Accepts any certificate (`prefer`, `require`): TLS against eavesdropping only, as libpq.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Checks the chain but not the host name (`verifyCa`).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

impl PostgresTarget {
    /// The target of `spec` with the admin credentials read from `adminSecretRef` and the
    /// CA bundle of `caSecretRef` (PEM), if any.
    pub fn new(
        spec: &crd::PostgresTarget,
        admin_user: impl Into<String>,
        admin_password: SecretValue,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, TargetError> {
        let name = format!("PostgreSQL {}:{}", spec.host, spec.port);
        let port = checked_port(&name, spec.port)?;
        let tls = Self::tls(&name, spec.ssl_mode, ca_pem)?;
        Ok(Self {
            host: spec.host.clone(),
            port,
            database: spec.database.clone(),
            tls,
            admin_user: admin_user.into(),
            admin_password,
            connect_timeout: Duration::from_secs(10),
            name,
            admin_conn: AdminConn::default(),
        })
    }

    /// Timeout of each connection attempt (default 10 s).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// `PostgreSQL <host>:<port>`, as errors name it.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn tls(
        name: &str,
        mode: crd::PostgresSslMode,
        ca_pem: Option<&[u8]>,
    ) -> Result<PostgresTls, TargetError> {
        use crd::PostgresSslMode as M;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let invalid = |e: rustls::Error| TargetError::Invalid {
            target: name.to_owned(),
            detail: format!("TLS configuration: {e}"),
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(invalid)?;
        let config = match mode {
            M::Disable => return Ok(PostgresTls::Disable),
            M::Allow | M::Prefer | M::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth(),
            M::VerifyCa => {
                let roots = Arc::new(root_store(name, ca_pem)?);
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| TargetError::Invalid {
                        target: name.to_owned(),
                        detail: format!("TLS configuration: {e}"),
                    })?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
                    .with_no_client_auth()
            }
            M::VerifyFull => builder
                .with_root_certificates(root_store(name, ca_pem)?)
                .with_no_client_auth(),
        };
        let connector = MakeRustlsConnect::new(config);
        Ok(match mode {
            M::Allow | M::Prefer => PostgresTls::Prefer(connector),
            _ => PostgresTls::Require(connector),
        })
    }

    async fn connect(
        &self,
        user: &str,
        password: &SecretValue,
        op: Op<'_>,
    ) -> Result<Client, TargetError> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&self.host)
            .port(self.port)
            .dbname(&self.database)
            .user(user)
            .password(password.expose().as_bytes())
            .application_name("capstan")
            .connect_timeout(self.connect_timeout);
        let err = |e: tokio_postgres::Error| self.classify(&e, op).scrubbed(&[password]);
        // The whole connect is bounded too: connect_timeout covers only the TCP connect.
        let bound = self.connect_timeout * 2;
        let timed_out = || TargetError::Unavailable {
            target: self.name.clone(),
            detail: format!("no connection within {bound:?}"),
        };
        let client = match &self.tls {
            PostgresTls::Disable => {
                cfg.ssl_mode(SslMode::Disable);
                let (client, conn) = tokio::time::timeout(bound, cfg.connect(NoTls))
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(err)?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                client
            }
            PostgresTls::Prefer(tls) | PostgresTls::Require(tls) => {
                cfg.ssl_mode(if matches!(self.tls, PostgresTls::Prefer(_)) {
                    SslMode::Prefer
                } else {
                    SslMode::Require
                });
                let (client, conn) = tokio::time::timeout(bound, cfg.connect(tls.clone()))
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(err)?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                client
            }
        };
        Ok(client)
    }

    async fn admin(&self) -> Result<tokio::sync::MappedMutexGuard<'_, Client>, TargetError> {
        let mut held = self.admin_conn.0.lock().await;
        if held.as_ref().is_none_or(Client::is_closed) {
            *held = Some(
                self.connect(&self.admin_user, &self.admin_password, Op::Admin)
                    .await?,
            );
        }
        tokio::sync::MutexGuard::try_map(held, Option::as_mut).map_err(|_| {
            TargetError::Unavailable {
                target: self.name.clone(),
                detail: "no admin connection".into(),
            }
        })
    }

    fn classify(&self, e: &tokio_postgres::Error, op: Op<'_>) -> TargetError {
        let target = self.name.clone();
        let Some(db) = e.as_db_error() else {
            // No SQLSTATE: the connection failed, closed or timed out, or TLS failed. A
            // certificate the configuration refuses is not going to change by itself.
            let detail = error_chain(e);
            let tls_refusal = source_is::<rustls::Error>(e);
            return if tls_refusal {
                TargetError::Invalid { target, detail }
            } else {
                TargetError::Unavailable { target, detail }
            };
        };
        let code = db.code().code();
        let mut detail = format!("{} {}: {}", db.severity(), code, db.message());
        if let Some(d) = db.detail() {
            detail.push_str(&format!(" ({d})"));
        }
        let class = &code[..2.min(code.len())];
        match (class, code, op) {
            ("28", _, Op::Login(user)) => TargetError::LoginFailed {
                target,
                user: user.to_owned(),
                detail,
            },
            ("28", _, _) | (_, "42501", _) => TargetError::AccessDenied { target, detail },
            (_, "42704", Op::SetPassword(user) | Op::EnsureUser(user)) => TargetError::NotFound {
                target,
                user: user.to_owned(),
            },
            ("08" | "40" | "53" | "57" | "58", _, _) | (_, "55P03" | "25006", _) => {
                TargetError::Unavailable { target, detail }
            }
            ("22", _, Op::SetPassword(user)) => TargetError::Rejected {
                target,
                user: user.to_owned(),
                reason: detail,
            },
            (_, "3D000", Op::Login(user)) => TargetError::LoginFailed {
                target,
                user: user.to_owned(),
                detail,
            },
            _ => TargetError::Invalid { target, detail },
        }
    }

    /// `ALTER ROLE .. PASSWORD '<SCRAM verifier>'` and the verifier (both secret).
    fn alter_password(
        &self,
        username: &str,
        password: &SecretValue,
    ) -> Result<(SecretValue, SecretValue), TargetError> {
        let verifier = postgres_protocol::password::scram_sha_256(password.expose().as_bytes());
        if verifier.contains('\'') || verifier.contains('\\') {
            return Err(TargetError::Invalid {
                target: self.name.clone(),
                detail: "the SCRAM verifier has an unexpected character".into(),
            });
        }
        let verifier = SecretValue::new(verifier);
        let stmt = SecretValue::new(format!(
            "ALTER ROLE {} PASSWORD '{}'",
            quote_pg_ident(username),
            verifier.expose()
        ));
        Ok((stmt, verifier))
    }

    async fn create_like(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        username: &str,
        like: &str,
    ) -> Result<(), TargetError> {
        let op = Op::EnsureUser(like);
        let row = tx
            .query_opt(
                "SELECT rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolreplication, \
                 rolbypassrls, rolconnlimit FROM pg_roles WHERE rolname = $1",
                &[&like],
            )
            .await
            .map_err(|e| self.classify(&e, op))?
            .ok_or_else(|| TargetError::NotFound {
                target: self.name.clone(),
                user: like.to_owned(),
            })?;
        let flag = |i: usize, yes: &str, no: &str| -> String {
            if row.get::<_, bool>(i) { yes } else { no }.to_owned()
        };
        let connlimit: i32 = row.get(6);
        let create = format!(
            "CREATE ROLE {} WITH LOGIN {} {} {} {} {} {} CONNECTION LIMIT {connlimit}",
            quote_pg_ident(username),
            flag(0, "SUPERUSER", "NOSUPERUSER"),
            flag(1, "INHERIT", "NOINHERIT"),
            flag(2, "CREATEROLE", "NOCREATEROLE"),
            flag(3, "CREATEDB", "NOCREATEDB"),
            flag(4, "REPLICATION", "NOREPLICATION"),
            flag(5, "BYPASSRLS", "NOBYPASSRLS"),
        );
        tx.batch_execute(&create)
            .await
            .map_err(|e| self.classify(&e, Op::EnsureUser(username)))?;
        let grants = tx
            .query(CLONE_GRANTS_SQL, &[&like, &username])
            .await
            .map_err(|e| self.classify(&e, op))?;
        for row in grants {
            let stmt: String = row.get(0);
            tx.batch_execute(&stmt)
                .await
                .map_err(|e| self.classify(&e, Op::EnsureUser(username)))?;
        }
        Ok(())
    }
}

/// The GRANT statements that give `$2` what `$1` was granted: role memberships, then
/// privileges on databases, schemas, tables/views/sequences, columns and routines (of the
/// connected database), built by the server with `%I` quoting.
const CLONE_GRANTS_SQL: &str = r#"
WITH src AS (SELECT oid FROM pg_roles WHERE rolname = $1),
     opt(grantable, suffix) AS (VALUES (true, ' WITH GRANT OPTION'), (false, ''))
SELECT format('GRANT %I TO %I%s', r.rolname, $2::text,
              CASE WHEN m.admin_option THEN ' WITH ADMIN OPTION' ELSE '' END)
  FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid, src
 WHERE m.member = src.oid
UNION ALL
SELECT format('GRANT %s ON DATABASE %I TO %I%s', a.privilege_type, d.datname, $2::text, o.suffix)
  FROM pg_database d CROSS JOIN LATERAL aclexplode(d.datacl) a, src, opt o
 WHERE a.grantee = src.oid AND o.grantable = a.is_grantable
UNION ALL
SELECT format('GRANT %s ON SCHEMA %I TO %I%s', a.privilege_type, n.nspname, $2::text, o.suffix)
  FROM pg_namespace n CROSS JOIN LATERAL aclexplode(n.nspacl) a, src, opt o
 WHERE a.grantee = src.oid AND o.grantable = a.is_grantable
UNION ALL
SELECT format('GRANT %s ON %s %s TO %I%s', a.privilege_type,
              CASE WHEN c.relkind = 'S' THEN 'SEQUENCE' ELSE 'TABLE' END,
              c.oid::regclass, $2::text, o.suffix)
  FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a, src, opt o
 WHERE a.grantee = src.oid AND o.grantable = a.is_grantable
   AND c.relkind IN ('r', 'v', 'm', 'f', 'p', 'S')
UNION ALL
SELECT format('GRANT %s (%I) ON TABLE %s TO %I%s', a.privilege_type, att.attname,
              c.oid::regclass, $2::text, o.suffix)
  FROM pg_attribute att JOIN pg_class c ON c.oid = att.attrelid
       CROSS JOIN LATERAL aclexplode(att.attacl) a, src, opt o
 WHERE a.grantee = src.oid AND o.grantable = a.is_grantable AND NOT att.attisdropped
UNION ALL
SELECT format('GRANT %s ON ROUTINE %s TO %I%s', a.privilege_type, p.oid::regprocedure,
              $2::text, o.suffix)
  FROM pg_proc p CROSS JOIN LATERAL aclexplode(p.proacl) a, src, opt o
 WHERE a.grantee = src.oid AND o.grantable = a.is_grantable
"#;

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

fn source_is<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if c.is::<T>() {
            return true;
        }
        // rustls errors reach tokio-postgres wrapped in io::Error.
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && io.get_ref().is_some_and(|inner| inner.is::<T>())
        {
            return true;
        }
        cur = c.source();
    }
    false
}

#[async_trait::async_trait]
impl CredentialTarget for PostgresTarget {
    async fn check(&self) -> Result<(), TargetError> {
        let client = self.admin().await?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| self.classify(&e, Op::Admin))?;
        Ok(())
    }

    async fn ensure_user(&self, username: &str, like: Option<&str>) -> Result<(), TargetError> {
        check_username(&self.name, username, MAX_ROLE_LEN)?;
        if let Some(l) = like {
            check_username(&self.name, l, MAX_ROLE_LEN)?;
        }
        let op = Op::EnsureUser(username);
        let mut client = self.admin().await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| self.classify(&e, op))?;
        let exists = tx
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&username])
            .await
            .map_err(|e| self.classify(&e, op))?
            .is_some();
        if exists {
            return Ok(());
        }
        let created = match like {
            None => tx
                .batch_execute(&format!(
                    "CREATE ROLE {} WITH LOGIN",
                    quote_pg_ident(username)
                ))
                .await
                .map_err(|e| self.classify(&e, op)),
            Some(like) => self.create_like(&tx, username, like).await,
        };
        let result = match created {
            Ok(()) => tx.commit().await.map_err(|e| self.classify(&e, op)),
            Err(e) => Err(e),
        };
        match result {
            // Created meanwhile by a concurrent call (duplicate_object): it exists.
            Err(TargetError::Invalid { ref detail, .. }) if detail.contains(" 42710:") => Ok(()),
            other => other,
        }
    }

    async fn set_password(
        &self,
        username: &str,
        password: &SecretValue,
    ) -> Result<(), TargetError> {
        check_username(&self.name, username, MAX_ROLE_LEN)?;
        let (stmt, verifier) = self.alter_password(username, password)?;
        let client = self.admin().await?;
        client.batch_execute(stmt.expose()).await.map_err(|e| {
            self.classify(&e, Op::SetPassword(username))
                .scrubbed(&[password, &verifier])
        })?;
        Ok(())
    }

    async fn set_password_fenced(
        &self,
        username: &str,
        password: &SecretValue,
        fence: &Fence,
    ) -> Result<(), TargetError> {
        check_username(&self.name, username, MAX_ROLE_LEN)?;
        let (stmt, verifier) = self.alter_password(username, password)?;
        let op = Op::SetPassword(username);
        let err = |e: tokio_postgres::Error| self.classify(&e, op).scrubbed(&[password, &verifier]);
        let mut client = self.admin().await?;
        let tx = client.transaction().await.map_err(err)?;
        tx.batch_execute("SET LOCAL lock_timeout = '10s'")
            .await
            .map_err(err)?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('capstan-fence:' || $1::text))",
            &[&username],
        )
        .await
        .map_err(err)?;
        let row = tx
            .query_opt(
                "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1",
                &[&username],
            )
            .await
            .map_err(err)?
            .ok_or_else(|| TargetError::NotFound {
                target: self.name.clone(),
                user: username.to_owned(),
            })?;
        let stored = row
            .get::<_, Option<String>>(0)
            .as_deref()
            .and_then(Fence::decode);
        if fence.is_refused_by(stored.as_ref()) {
            // Dropping the transaction rolls it back and releases the lock.
            return Err(TargetError::Fenced {
                target: self.name.clone(),
                user: username.to_owned(),
                detail: format!(
                    "the role holds a newer fence ({}) than this writer's ({fence})",
                    stored.map_or_else(String::new, |s| s.to_string())
                ),
            });
        }
        tx.batch_execute(stmt.expose()).await.map_err(err)?;
        // The fence is [a-z0-9:-] only (a Kubernetes uid and numbers); quoted anyway.
        tx.batch_execute(&format!(
            "COMMENT ON ROLE {} IS '{}'",
            quote_pg_ident(username),
            fence.encode().replace('\'', "''")
        ))
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        Ok(())
    }

    async fn test_login(&self, username: &str, password: &SecretValue) -> Result<(), TargetError> {
        let client = self
            .connect(username, password, Op::Login(username))
            .await?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| self.classify(&e, Op::Login(username)).scrubbed(&[password]))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mode: crd::PostgresSslMode) -> crd::PostgresTarget {
        crd::PostgresTarget {
            host: "db.example".into(),
            port: 5432,
            database: "app".into(),
            ssl_mode: mode,
            ca_secret_ref: None,
            username: "app".into(),
            admin_secret_ref: crd::AdminSecretRef {
                name: "admin".into(),
                username_key: "username".into(),
                password_key: "password".into(),
            },
        }
    }

    #[test]
    fn ssl_modes_map_to_connection_tls() {
        use crd::PostgresSslMode as M;
        let pem = b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n";
        let t = |m| PostgresTarget::new(&spec(m), "admin", SecretValue::new("x"), None);
        assert!(matches!(
            t(M::Disable).map(|t| t.tls),
            Ok(PostgresTls::Disable)
        ));
        assert!(matches!(
            t(M::Allow).map(|t| t.tls),
            Ok(PostgresTls::Prefer(_))
        ));
        assert!(matches!(
            t(M::Prefer).map(|t| t.tls),
            Ok(PostgresTls::Prefer(_))
        ));
        assert!(matches!(
            t(M::Require).map(|t| t.tls),
            Ok(PostgresTls::Require(_))
        ));
        // A CA bundle that does not parse is refused up front, not at connect time.
        let bad = PostgresTarget::new(
            &spec(M::VerifyFull),
            "admin",
            SecretValue::new("x"),
            Some(pem),
        );
        assert!(matches!(bad, Err(TargetError::Invalid { .. })));
    }

    #[test]
    fn ports_out_of_range_are_invalid() {
        let mut s = spec(crd::PostgresSslMode::Disable);
        s.port = 70000;
        assert!(PostgresTarget::new(&s, "a", SecretValue::new("x"), None).is_err());
    }

    #[test]
    fn the_admin_password_never_debugs() {
        let t = PostgresTarget::new(
            &spec(crd::PostgresSslMode::Disable),
            "admin",
            SecretValue::new("adm1n-canary"),
            None,
        )
        .expect("target");
        assert!(!format!("{t:?}").contains("adm1n-canary"));
    }
}
