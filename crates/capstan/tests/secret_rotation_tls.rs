//! PostgreSQL over TLS: this binary's PostgreSQL gets a server certificate from a CA made
//! here and refuses the rotated role any connection without TLS (`hostnossl ... reject`),
//! so a rotation can only pass its login test over TLS. `verify-full` with the CA
//! rotates; `verify-full` with another CA is refused with a reason and changes nothing;
//! `require` (no certificate check) rotates.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use capstan_core::conditions::find;
use capstan_secret_rotation::crd::SecretRotation;
use capstan_testenv::{TempNamespace, TestEnv, await_condition};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(60);

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca")
}

/// Turns TLS on in `pg` with a certificate for 127.0.0.1 signed by `issuer`, and makes
/// `user` log in over TLS only.
fn enable_tls(
    pg: &capstan_testenv::Postgres,
    issuer: &CertifiedIssuer<'static, KeyPair>,
    user: &str,
) {
    let key = KeyPair::generate().expect("key");
    let params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("params");
    let cert = params.signed_by(&key, issuer).expect("cert");
    let dir = pg.data_dir();
    let (crt_path, key_path) = (dir.join("capstan-test.crt"), dir.join("capstan-test.key"));
    std::fs::write(&crt_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    // The server runs as the data directory's owner and reads its key as that user.
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(dir).expect("stat"));
    let group = std::os::unix::fs::MetadataExt::gid(&std::fs::metadata(dir).expect("stat"));
    for p in [&crt_path, &key_path] {
        std::os::unix::fs::chown(p, Some(owner), Some(group)).expect("chown");
    }
    let hba = dir.join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
    std::fs::write(
        &hba,
        format!("hostnossl all {user} 0.0.0.0/0 reject\nhostnossl all {user} ::/0 reject\n{rules}"),
    )
    .expect("write pg_hba.conf");
    for sql in [
        format!("ALTER SYSTEM SET ssl_cert_file = '{}'", crt_path.display()),
        format!("ALTER SYSTEM SET ssl_key_file = '{}'", key_path.display()),
        "ALTER SYSTEM SET ssl = on".to_owned(),
        "SELECT pg_reload_conf()".to_owned(),
    ] {
        common::psql(pg, &pg.admin_url(), &sql).expect("configure TLS");
    }
}

fn ready(o: &SecretRotation) -> Option<(String, String, String)> {
    let c = find(&o.status.as_ref()?.conditions, "Ready")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn object(name: &str, pg: &capstan_testenv::Postgres, user: &str, tls: Value) -> SecretRotation {
    let mut target = json!({
        "host": "127.0.0.1", "port": pg.port(), "database": "postgres",
        "username": user, "adminSecretRef": { "name": "pg-admin" }
    });
    for (k, v) in tls.as_object().expect("object") {
        target[k] = v.clone();
    }
    serde_json::from_value(json!({
        "apiVersion": "capstan.dev/v1alpha1", "kind": "SecretRotation",
        "metadata": { "name": name },
        "spec": {
            "backend": { "kubernetes": { "secretName": format!("{name}-store") } },
            "target": { "postgres": target },
            "strategy": { "singleUser": {} },
            "schedule": { "interval": "720h" }
        }
    }))
    .expect("SecretRotation")
}

#[tokio::test]
async fn postgres_over_tls_verifies_the_server_and_rotates_only_over_tls() {
    let env = TestEnv::get();
    let kube = env.kube().await.expect("kube");
    let pg = env.postgres().await.expect("postgres");
    let ns = TempNamespace::create(kube).await.expect("ns");
    let n = ns.name();
    let client = kube.client().await;
    let api: Api<SecretRotation> = ns.api(client.clone());
    let secrets: Api<Secret> = ns.api(client.clone());

    let user = format!("tls_{}", n.replace('-', "_"));
    common::psql(
        pg,
        &pg.admin_url(),
        &format!("CREATE ROLE {user} LOGIN PASSWORD 'initial'"),
    )
    .expect("create role");
    let right = ca("capstan-test-pg-ca");
    let wrong = ca("someone-else-ca");
    enable_tls(pg, &right, &user);
    let url = |mode: &str, password: &str| {
        format!(
            "postgres://{user}:{password}@127.0.0.1:{}/postgres?sslmode={mode}",
            pg.port()
        )
    };
    assert!(
        common::psql(pg, &url("disable", "initial"), "select 1").is_err(),
        "the role must be refused without TLS"
    );
    assert!(common::psql(pg, &url("require", "initial"), "select 1").is_ok());

    for (name, data) in [
        (
            "pg-admin",
            json!({ "username": pg.admin_user(), "password": pg.admin_password() }),
        ),
        ("pg-ca", json!({ "ca.crt": right.pem() })),
        ("other-ca", json!({ "ca.crt": wrong.pem() })),
    ] {
        let s: Secret = serde_json::from_value(json!({
            "metadata": { "name": name }, "stringData": data
        }))
        .expect("secret");
        secrets
            .create(&PostParams::default(), &s)
            .await
            .expect("secret");
    }
    // Refused first, so that a refusal provably changed nothing.
    api.create(
        &PostParams::default(),
        &object(
            "wrong-ca",
            pg,
            &user,
            json!({ "sslMode": "verifyFull", "caSecretRef": { "name": "other-ca" } }),
        ),
    )
    .await
    .expect("create");
    let args = [
        "--leader-elect=false",
        "--namespaces",
        n,
        "--own-namespace",
        n,
        "--controllers",
        "secret-rotation",
    ];
    let m = common::start(kube, "sr-tls", &args).await;
    let refused = await_condition(
        &api,
        "wrong-ca",
        |o: &SecretRotation| ready(o).is_some_and(|(s, _, _)| s == "False"),
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("wrong-ca: {e}\n{}", m.all_logs()));
    let (_, reason, message) = ready(&refused).expect("Ready");
    assert_eq!(reason, "TargetInvalid", "{message}");
    assert!(message.contains("PostgreSQL 127.0.0.1"), "{message}");
    assert!(
        common::psql(pg, &url("require", "initial"), "select 1").is_ok(),
        "a refused rotation changed the password"
    );

    for (name, tls) in [
        (
            "verify-full",
            json!({ "sslMode": "verifyFull", "caSecretRef": { "name": "pg-ca" } }),
        ),
        ("require", json!({ "sslMode": "require" })),
    ] {
        api.create(&PostParams::default(), &object(name, pg, &user, tls))
            .await
            .expect("create");
        let done = await_condition(
            &api,
            name,
            |o: &SecretRotation| {
                o.status.as_ref().is_some_and(|s| s.rotation_count >= 1)
                    && ready(o).is_some_and(|(s, r, _)| s == "True" && r == "CredentialCurrent")
            },
            TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}\n{}", m.all_logs()));
        assert_eq!(done.status.as_ref().map(|s| s.rotation_count), Some(1));
        let store = secrets.get(&format!("{name}-store")).await.expect("store");
        let password =
            String::from_utf8(store.data.expect("data")["password"].0.clone()).expect("utf8");
        let encoded = common::pct(&password);
        assert!(
            common::psql(pg, &url("require", &encoded), "select 1").is_ok(),
            "{name}: the stored value does not log in over TLS"
        );
    }
}
