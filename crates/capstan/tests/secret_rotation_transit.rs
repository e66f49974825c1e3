//! SecretRotation's `vaultTransitKey` target end to end: the manager (with the chart's
//! RBAC) against the real API server and OpenBao's transit engine. Each rotation makes
//! a new key version and delivers the key's name and version; the minimum versions move
//! only when the spec names them; old ciphertext keeps decrypting until then, rewraps,
//! and is refused below the minimum.

mod common;

use common::rotation::{await_rotations, rotate_now, start};
use common::secret_data;

use std::time::Duration;

use capstan_secret_rotation::crd::SecretRotation;
use capstan_testenv::{TempNamespace, TestEnv, await_condition};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(60);

/// A transit call as root; the answer's JSON and whether Vault accepted it.
async fn bao(vault: &capstan_testenv::Vault, path: &str, body: Option<Value>) -> (bool, Value) {
    let http = reqwest::Client::new();
    let url = format!("{}/v1/{path}", vault.addr());
    let req = match body {
        Some(b) => http.post(&url).json(&b),
        None => http.get(&url),
    };
    let resp = req
        .header("X-Vault-Token", vault.root_token())
        .send()
        .await
        .expect("vault");
    let ok = resp.status().is_success();
    let text = resp.text().await.expect("body");
    (ok, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn decrypts(vault: &capstan_testenv::Vault, mount: &str, ciphertext: &str) -> bool {
    bao(
        vault,
        &format!("{mount}/decrypt/cards"),
        Some(json!({ "ciphertext": ciphertext })),
    )
    .await
    .0
}

async fn latest(vault: &capstan_testenv::Vault, mount: &str) -> (i64, i64) {
    let (_, key) = bao(vault, &format!("{mount}/keys/cards"), None).await;
    (
        key["data"]["latest_version"].as_i64().expect("latest"),
        key["data"]["min_decryption_version"].as_i64().expect("min"),
    )
}

#[tokio::test]
async fn a_transit_key_rotates_and_its_minimum_moves_only_when_a_person_names_it() {
    let env = TestEnv::get();
    let kube = env.kube().await.expect("kube");
    let vault = env.vault().await.expect("vault");
    let ns = TempNamespace::create(kube).await.expect("ns");
    let client = kube.client().await;
    let api: Api<SecretRotation> = ns.api(client.clone());
    let secrets: Api<Secret> = ns.api(client.clone());
    let mount = format!("transit-{}", ns.name());
    let (ok, _) = bao(
        vault,
        &format!("sys/mounts/{mount}"),
        Some(json!({ "type": "transit" })),
    )
    .await;
    assert!(ok, "enable transit");
    assert!(
        bao(vault, &format!("{mount}/keys/cards"), Some(json!({})))
            .await
            .0
    );
    let plaintext = "Y2FyZCA0MTExIDExMTEgMTExMSAxMTEx";
    let (_, enc) = bao(
        vault,
        &format!("{mount}/encrypt/cards"),
        Some(json!({ "plaintext": plaintext })),
    )
    .await;
    let c1 = enc["data"]["ciphertext"]
        .as_str()
        .expect("ciphertext")
        .to_owned();
    assert!(c1.starts_with("vault:v1:"));

    // A Vault connection with the root token, scoped to this namespace's transit mount.
    let conn = common::vault_connection(
        &client,
        vault,
        ns.name(),
        Some(json!([ { "transit": { "keys": ["transit-${namespace}/*"] } } ])),
    )
    .await;
    let spec = |mount: &str| {
        json!({
            "backend": { "kubernetes": { "secretName": "cards-store" } },
            "target": { "vaultTransitKey": { "connectionRef": { "name": conn }, "mount": mount, "key": "cards" } },
            "strategy": { "singleUser": {} },
            "schedule": { "interval": "720h" },
            "delivery": { "secret": { "name": "cards-key", "template": { "KEY": "{{ key }}", "VERSION": "{{ version }}" } } }
        })
    };
    common::rotation::create_rotation(&api, "cards", spec(&mount)).await;
    // Another namespace's mount is out of this namespace's scope.
    common::rotation::create_rotation(&api, "foreign", spec("transit-payments")).await;
    let m = start(kube, ns.name(), "sr-transit").await;

    // Rotation 1: version 2 delivered; the minimum stays 1, so v1 ciphertext decrypts
    // and rewraps to v2.
    await_rotations(&api, "cards", 1, &m).await;
    let delivered = secret_data(&secrets, "cards-key").await;
    assert_eq!(
        delivered.len(),
        2,
        "only the name and the version: {delivered:?}"
    );
    assert_eq!(delivered["KEY"], "cards");
    assert_eq!(delivered["VERSION"], "2");
    assert_eq!(latest(vault, &mount).await, (2, 1));
    assert!(
        decrypts(vault, &mount, &c1).await,
        "v1 decrypts within the minimum"
    );
    let (ok, rewrapped) = bao(
        vault,
        &format!("{mount}/rewrap/cards"),
        Some(json!({ "ciphertext": c1 })),
    )
    .await;
    assert!(ok, "rewrap");
    let c2 = rewrapped["data"]["ciphertext"]
        .as_str()
        .expect("rewrapped")
        .to_owned();
    assert!(c2.starts_with("vault:v2:"), "{c2}");

    // A person who has rewrapped everything names the minimum; the next rotation
    // raises it: v1 is refused, the rewrapped ciphertext decrypts.
    api.patch(
        "cards",
        &PatchParams::default(),
        &Patch::Merge(
            json!({ "spec": { "target": { "vaultTransitKey": { "minDecryptionVersion": 2 } } } }),
        ),
    )
    .await
    .expect("name the minimum");
    rotate_now(&api, "cards", "raise").await;
    await_rotations(&api, "cards", 2, &m).await;
    assert_eq!(latest(vault, &mount).await, (3, 2));
    assert_eq!(secret_data(&secrets, "cards-key").await["VERSION"], "3");
    assert!(
        !decrypts(vault, &mount, &c1).await,
        "v1 is refused below the minimum"
    );
    assert!(
        decrypts(vault, &mount, &c2).await,
        "the rewrapped ciphertext decrypts"
    );

    // A minimum no rotation can reach is refused before anything changes.
    api.patch(
        "cards",
        &PatchParams::default(),
        &Patch::Merge(
            json!({ "spec": { "target": { "vaultTransitKey": { "minDecryptionVersion": 9 } } } }),
        ),
    )
    .await
    .expect("an impossible minimum");
    rotate_now(&api, "cards", "impossible").await;
    await_condition(
        &api,
        "cards",
        |o: &SecretRotation| {
            o.status
                .as_ref()
                .and_then(|s| s.last_failure.as_ref())
                .is_some_and(|f| f.reason() == "TargetInvalid")
        },
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("not refused: {e}\n{}", m.all_logs()));
    assert_eq!(latest(vault, &mount).await, (3, 2), "nothing changed");

    let foreign = await_condition(
        &api,
        "foreign",
        |o: &SecretRotation| {
            common::rotation::ready_reason(o)
                .is_some_and(|(s, r)| s == "False" && r == "ResourceNotAllowed")
        },
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("foreign: {e}\n{}", m.all_logs()));
    let message = serde_json::to_string(&foreign.status).expect("json");
    assert!(message.contains("transit-payments/cards"), "{message}");
    m.assert_no_forbidden();
}

/// A manager killed right after it rotated the key, before storing the version, is
/// followed by one that takes that version: one rotation, one new version.
#[tokio::test]
async fn a_kill_after_the_rotate_call_makes_no_second_version() {
    let env = TestEnv::get();
    let kube = env.kube().await.expect("kube");
    let vault = env.vault().await.expect("vault");
    let ns = TempNamespace::create(kube).await.expect("ns");
    let client = kube.client().await;
    let api: Api<SecretRotation> = ns.api(client.clone());
    let secrets: Api<Secret> = ns.api(client.clone());
    let mount = format!("transit-{}", ns.name());
    assert!(
        bao(
            vault,
            &format!("sys/mounts/{mount}"),
            Some(json!({ "type": "transit" }))
        )
        .await
        .0
    );
    assert!(
        bao(vault, &format!("{mount}/keys/cards"), Some(json!({})))
            .await
            .0
    );
    let conn = common::vault_connection(&client, vault, ns.name(), None).await;
    common::rotation::create_rotation(
        &api,
        "cards",
        json!({
            "backend": { "kubernetes": { "secretName": "cards-store" } },
            "target": { "vaultTransitKey": { "connectionRef": { "name": conn }, "mount": mount, "key": "cards" } },
            "strategy": { "singleUser": {} },
            "schedule": { "interval": "720h" },
            "delivery": { "secret": { "name": "cards-key" } }
        }),
    )
    .await;
    let args = common::rotation::manager_args(ns.name());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    common::crash_at(
        kube,
        "sr-transit-crash",
        &args,
        "secret-rotation::transit-after-rotate",
    )
    .await;
    assert_eq!(
        latest(vault, &mount).await.0,
        2,
        "rotated once before the kill"
    );
    let m = start(kube, ns.name(), "sr-transit-resume").await;
    await_rotations(&api, "cards", 1, &m).await;
    assert_eq!(latest(vault, &mount).await.0, 2, "no second version");
    let delivered = secret_data(&secrets, "cards-key").await;
    assert_eq!(delivered["version"], "2", "{delivered:?}");
    assert_eq!(delivered["key"], "cards");
}
