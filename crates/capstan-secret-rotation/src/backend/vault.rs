//! Vault/OpenBao KV version 2 backend.
//!
//! Readers of `path` only ever see tested values, and failed attempts never use up
//! `path`'s limited version history (`max_versions`):
//!
//! - `pendingPath` (a separate key in the same mount, which consumers must not be allowed
//!   to read) holds Capstan's *ledger*: the pending value with its rotation token, and
//!   which rotation tokens wrote the current and previous versions of `path` (KV v2
//!   metadata belongs to the key, not to a version, so per-version facts live here). Every
//!   write of the ledger uses check-and-set with the version read: a stale Capstan loses.
//!   The pending key is set to keep a single version, so values of failed attempts do not
//!   linger in its history.
//! - `path` gets a new version only in `promote`, with `cas` = the version read; the other
//!   keys of the current document (e.g. `host`) are carried over.
//! - `discard_pending` only rewrites the ledger.
//!
//! The client speaks the KV v2 HTTP API directly with the workspace's `reqwest` (0.12,
//! rustls) rather than through `vaultrs` (which pulls a second `reqwest`, 0.13): five
//! endpoints, and the errors stay ours to classify (a failed check-and-set is a 400 whose
//! message says so).

use std::collections::BTreeMap;
use std::time::Duration;

use capstan_core::connection::VaultConnection;
use capstan_core::redact::SecretValue;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{BackendError, Credential, RotationId, SecretBackend, Version};
use crate::crd;

/// A KV v2 capable HTTP client for one Vault/OpenBao server and token.
#[derive(Clone)]
pub struct VaultClient {
    http: reqwest::Client,
    addr: String,
    token: SecretValue,
    namespace: Option<String>,
}

impl std::fmt::Debug for VaultClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultClient")
            .field("addr", &self.addr)
            .field("namespace", &self.namespace)
            .field("token", &self.token)
            .finish()
    }
}

impl VaultClient {
    /// A client for `addr` (e.g. `https://vault.example.com:8200`) with a token, an
    /// optional Vault Enterprise/OpenBao namespace and an optional PEM CA bundle (else the
    /// bundled web PKI roots apply).
    pub fn new(
        addr: &str,
        token: SecretValue,
        namespace: Option<String>,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, BackendError> {
        let what = format!("Vault {addr}");
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15));
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| BackendError::invalid(&what, format!("CA bundle: {e}")))?;
            if certs.is_empty() {
                return Err(BackendError::invalid(
                    &what,
                    "CA bundle holds no certificate",
                ));
            }
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder
            .build()
            .map_err(|e| BackendError::invalid(&what, format!("building the HTTP client: {e}")))?;
        Ok(Self {
            http,
            addr: addr.trim_end_matches('/').to_owned(),
            token,
            namespace,
        })
    }

    /// A client for a ClusterConnection's Vault with the token its token auth's Secret
    /// holds (read by the caller) and the CA bundle of `caSecretRef`, if any.
    pub fn from_connection(
        conn: &VaultConnection,
        token: SecretValue,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, BackendError> {
        Self::new(&conn.address, token, conn.namespace.clone(), ca_pem)
    }

    /// The server address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The token this client sends.
    pub fn token(&self) -> &SecretValue {
        &self.token
    }

    /// Uses `token` from now on (e.g. one a login returned earlier).
    pub fn set_token(&mut self, token: SecretValue) {
        self.token = token;
    }

    /// Logs in with AppRole (`auth/<mount>/login`) and uses the token it returns from
    /// then on. Returns the token's lease (how long it may be reused). The secret ID is
    /// sent in the body only; Vault's error texts never quote it.
    pub async fn login_approle(
        &mut self,
        mount: &str,
        role_id: &str,
        secret_id: &SecretValue,
    ) -> Result<Duration, BackendError> {
        let body = json!({ "role_id": role_id, "secret_id": secret_id.expose() });
        self.login("AppRole", mount, &body, secret_id).await
    }

    /// Logs in with Kubernetes auth (`auth/<mount>/login`) as `role` with a service
    /// account token, and uses the token it returns from then on. Returns its lease.
    pub async fn login_kubernetes(
        &mut self,
        mount: &str,
        role: &str,
        jwt: &SecretValue,
    ) -> Result<Duration, BackendError> {
        let body = json!({ "role": role, "jwt": jwt.expose() });
        self.login("Kubernetes", mount, &body, jwt).await
    }

    async fn login(
        &mut self,
        method: &str,
        mount: &str,
        body: &Value,
        secret: &SecretValue,
    ) -> Result<Duration, BackendError> {
        let mount = mount.trim_matches('/');
        let what = format!("Vault {} {method} login (auth/{mount})", self.addr);
        self.token = SecretValue::new(String::new());
        let (status, resp) = self
            .call(
                &what,
                Method::POST,
                &format!("auth/{mount}/login"),
                Some(body),
            )
            .await
            .map_err(|e| e.scrubbed(&[secret]))?;
        if !status.is_success() {
            return Err(classify(&what, status, &resp).scrubbed(&[secret]));
        }
        let auth = resp.get("auth");
        let Some(token) = auth
            .and_then(|a| a.get("client_token"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        else {
            return Err(BackendError::invalid(&what, "the login returned no token"));
        };
        self.token = SecretValue::new(token.to_owned());
        let lease = auth
            .and_then(|a| a.get("lease_duration"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        Ok(Duration::from_secs(lease))
    }

    /// One API call for a target (transit, database roles): the JSON body of a 2xx
    /// answer, else the error Vault's status and message say.
    pub(crate) async fn request(
        &self,
        what: &str,
        method: Method,
        api_path: &str,
        body: Option<&Value>,
    ) -> Result<Value, BackendError> {
        let (status, value) = self.call(what, method, api_path, body).await?;
        if status.is_success() {
            Ok(value)
        } else {
            Err(classify(what, status, &value))
        }
    }

    /// One API call; returns the status and the JSON body (`Null` when empty).
    async fn call(
        &self,
        what: &str,
        method: Method,
        api_path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), BackendError> {
        let url = format!("{}/v1/{api_path}", self.addr);
        let mut req = self
            .http
            .request(method, &url)
            .header("X-Vault-Request", "true");
        // Logins go without a token.
        if !self.token.expose().is_empty() {
            req = req.header("X-Vault-Token", self.token.expose());
        }
        if let Some(ns) = &self.namespace {
            req = req.header("X-Vault-Namespace", ns);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| BackendError::Unavailable {
            what: what.to_owned(),
            // The URL holds only the address and the path; reqwest never prints headers.
            detail: error_chain(&e),
        })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| BackendError::Unavailable {
            what: what.to_owned(),
            detail: error_chain(&e),
        })?;
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::Null)
        };
        Ok((status, value))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Vault's `errors` array, joined. Vault's error texts never quote request data.
fn vault_errors(body: &Value) -> String {
    body.get("errors")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
}

fn classify(what: &str, status: StatusCode, body: &Value) -> BackendError {
    let detail = format!("HTTP {}: {}", status.as_u16(), vault_errors(body));
    let what = what.to_owned();
    match status.as_u16() {
        404 => BackendError::NotFound { what, detail },
        401 | 403 => BackendError::AccessDenied { what, detail },
        400 if vault_errors(body).contains("check-and-set") => {
            BackendError::Conflict { what, detail }
        }
        412 => BackendError::Conflict { what, detail },
        429 | 500..=599 => BackendError::Unavailable { what, detail },
        _ => BackendError::Invalid { what, detail },
    }
}

/// A version of a KV v2 key.
struct KvRead {
    version: u64,
    data: Map<String, Value>,
}

/// What KV v2 metadata says about a key.
#[derive(Debug, Default)]
struct KvMeta {
    current_version: u64,
    max_versions: u64,
    /// Version number → live (neither deleted nor destroyed).
    versions: BTreeMap<u64, bool>,
}

/// One version of `path` and the rotation token that wrote it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
struct Written {
    version: u64,
    token: String,
}

/// The pending value of one rotation attempt. Not `Debug`: it holds the value.
#[derive(Serialize, Deserialize, Clone, PartialEq)]
struct Pending {
    token: String,
    /// The full document to write to `path` (other keys, `username`, `password`).
    value: Map<String, Value>,
}

/// The document at `pendingPath`.
#[derive(Serialize, Deserialize, Clone, Default)]
#[serde(rename_all = "camelCase")]
struct Ledger {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pending: Option<Pending>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    current: Option<Written>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous: Option<Written>,
}

impl Ledger {
    fn pending_of(&self, token: &str) -> Option<&Pending> {
        self.pending.as_ref().filter(|p| p.token == token)
    }

    fn token_of(&self, version: u64) -> Option<String> {
        [&self.current, &self.previous]
            .into_iter()
            .flatten()
            .find(|w| w.version == version)
            .map(|w| w.token.clone())
    }
}

/// A KV v2 secret in Vault or OpenBao. The design is in this file's module documentation.
#[derive(Debug)]
pub struct VaultKvBackend {
    client: VaultClient,
    mount: String,
    path: String,
    pending_path: String,
    what: String,
    what_pending: String,
}

fn valid_segment_path(p: &str) -> bool {
    !p.is_empty()
        && p.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        })
}

impl VaultKvBackend {
    /// The backend of `spec` (mount, path, pendingPath or `capstan-pending/<path>`).
    pub fn new(client: VaultClient, spec: &crd::VaultBackend) -> Result<Self, BackendError> {
        let pending_path = spec.effective_pending_path();
        let what = format!("Vault KV {}/{}", spec.mount, spec.path);
        for p in [&spec.mount, &spec.path, &pending_path] {
            if !valid_segment_path(p) {
                return Err(BackendError::invalid(
                    &what,
                    format!("{p:?} is not a path of [A-Za-z0-9_.-] segments"),
                ));
            }
        }
        if pending_path == spec.path {
            return Err(BackendError::invalid(&what, "pendingPath equals path"));
        }
        Ok(Self {
            what_pending: format!("Vault KV {}/{}", spec.mount, pending_path),
            client,
            mount: spec.mount.clone(),
            path: spec.path.clone(),
            pending_path,
            what,
        })
    }

    /// The path consumers read.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The path of the ledger and pending value.
    pub fn pending_path(&self) -> &str {
        &self.pending_path
    }

    fn what(&self, pending: bool) -> &str {
        if pending {
            &self.what_pending
        } else {
            &self.what
        }
    }

    fn key(&self, pending: bool) -> &str {
        if pending {
            &self.pending_path
        } else {
            &self.path
        }
    }

    async fn metadata(&self, pending: bool) -> Result<Option<KvMeta>, BackendError> {
        let what = self.what(pending);
        let api = format!("{}/metadata/{}", self.mount, self.key(pending));
        let (status, body) = self.client.call(what, Method::GET, &api, None).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(classify(what, status, &body));
        }
        let d = &body["data"];
        let mut meta = KvMeta {
            current_version: d["current_version"].as_u64().unwrap_or(0),
            max_versions: d["max_versions"].as_u64().unwrap_or(0),
            versions: BTreeMap::new(),
        };
        if let Some(vs) = d["versions"].as_object() {
            for (k, v) in vs {
                let Ok(n) = k.parse::<u64>() else { continue };
                let deleted = v["deletion_time"].as_str().is_some_and(|t| !t.is_empty());
                let destroyed = v["destroyed"].as_bool().unwrap_or(false);
                meta.versions.insert(n, !deleted && !destroyed);
            }
        }
        Ok(Some(meta))
    }

    /// Reads one version (the latest when `None`); `None` if missing, deleted or
    /// destroyed.
    async fn read(
        &self,
        pending: bool,
        version: Option<u64>,
    ) -> Result<Option<KvRead>, BackendError> {
        let what = self.what(pending);
        let mut api = format!("{}/data/{}", self.mount, self.key(pending));
        if let Some(v) = version {
            api.push_str(&format!("?version={v}"));
        }
        let (status, body) = self.client.call(what, Method::GET, &api, None).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(classify(what, status, &body));
        }
        let d = &body["data"];
        let Some(data) = d["data"].as_object() else {
            return Ok(None);
        };
        Ok(Some(KvRead {
            version: d["metadata"]["version"].as_u64().unwrap_or(0),
            data: data.clone(),
        }))
    }

    /// Writes a new version with check-and-set `cas` (0: the key must not exist yet).
    async fn write(&self, pending: bool, data: &Value, cas: u64) -> Result<u64, BackendError> {
        let what = self.what(pending);
        let api = format!("{}/data/{}", self.mount, self.key(pending));
        let body = json!({ "options": { "cas": cas }, "data": data });
        let (status, resp) = self
            .client
            .call(what, Method::POST, &api, Some(&body))
            .await?;
        if !status.is_success() {
            return Err(classify(what, status, &resp));
        }
        resp["data"]["version"]
            .as_u64()
            .ok_or_else(|| BackendError::invalid(what, "the write's answer has no version"))
    }

    /// The ledger and the pending key's current version (the `cas` of the next write).
    async fn ledger(&self) -> Result<(Ledger, u64), BackendError> {
        let Some(meta) = self.metadata(true).await? else {
            return Ok((Ledger::default(), 0));
        };
        let cas = meta.current_version;
        if meta.versions.get(&cas) != Some(&true) {
            // Deleted by hand: start afresh, still with the right cas.
            return Ok((Ledger::default(), cas));
        }
        let Some(read) = self.read(true, Some(cas)).await? else {
            return Ok((Ledger::default(), cas));
        };
        let ledger = serde_json::from_value(Value::Object(read.data)).map_err(|e| {
            BackendError::invalid(
                &self.what_pending,
                format!(
                    "not a Capstan ledger ({:?} error at line {} column {}); pendingPath must be Capstan's alone",
                    e.classify(),
                    e.line(),
                    e.column()
                ),
            )
        })?;
        Ok((ledger, cas))
    }

    async fn write_ledger(&self, ledger: &Ledger, cas: u64) -> Result<u64, BackendError> {
        let doc = serde_json::to_value(ledger)
            .map_err(|e| BackendError::invalid(&self.what_pending, e.to_string()))?;
        let secrets: Vec<SecretValue> = ledger
            .pending
            .iter()
            .filter_map(|p| p.value.get(super::JSON_PASSWORD))
            .filter_map(Value::as_str)
            .map(SecretValue::new)
            .collect();
        let refs: Vec<&SecretValue> = secrets.iter().collect();
        self.write(true, &doc, cas)
            .await
            .map_err(|e| e.scrubbed(&refs))
    }

    /// Keeps a single version of the pending key, so values of failed attempts do not stay
    /// in its history. Best effort: without the right to write metadata the pending key
    /// keeps the mount's default number of versions.
    async fn limit_pending_history(&self) {
        let api = format!("{}/metadata/{}", self.mount, self.pending_path);
        let body = json!({ "max_versions": 1 });
        match self
            .client
            .call(&self.what_pending, Method::POST, &api, Some(&body))
            .await
        {
            Ok((s, _)) if s.is_success() => {}
            Ok((s, b)) => tracing::warn!(
                backend = %self.what_pending,
                error = %classify(&self.what_pending, s, &b),
                "could not limit the pending key to one version"
            ),
            Err(e) => tracing::warn!(
                backend = %self.what_pending,
                error = %e,
                "could not limit the pending key to one version"
            ),
        }
    }

    fn version_of(&self, read: KvRead, token: Option<String>) -> Result<Version, BackendError> {
        let (credential, _) = Credential::from_map(read.data).ok_or_else(|| {
            BackendError::invalid(
                &self.what,
                format!("version {} has no string \"password\"", read.version),
            )
        })?;
        Ok(Version {
            id: read.version.to_string(),
            credential,
            rotation_token: token,
        })
    }

    fn pending_version(&self, p: &Pending, pending_version: u64) -> Result<Version, BackendError> {
        let (credential, _) = Credential::from_map(p.value.clone()).ok_or_else(|| {
            BackendError::invalid(
                &self.what_pending,
                "pending value has no string \"password\"",
            )
        })?;
        Ok(Version {
            id: pending_version.to_string(),
            credential,
            rotation_token: Some(p.token.clone()),
        })
    }

    /// The latest live version of `path` and its number, if any.
    async fn current_read(&self) -> Result<(Option<KvRead>, u64), BackendError> {
        let Some(meta) = self.metadata(false).await? else {
            return Ok((None, 0));
        };
        let n = meta.current_version;
        if meta.versions.get(&n) != Some(&true) {
            return Ok((None, n));
        }
        Ok((self.read(false, Some(n)).await?, n))
    }

    /// Number of versions `path` keeps (0: the mount's default).
    pub async fn max_versions(&self) -> Result<u64, BackendError> {
        Ok(self
            .metadata(false)
            .await?
            .map(|m| m.max_versions)
            .unwrap_or(0))
    }
}

#[async_trait::async_trait]
impl SecretBackend for VaultKvBackend {
    async fn current(&self) -> Result<Option<Version>, BackendError> {
        let (read, _) = self.current_read().await?;
        let Some(read) = read else { return Ok(None) };
        let (ledger, _) = self.ledger().await?;
        let token = ledger.token_of(read.version);
        self.version_of(read, token).map(Some)
    }

    async fn previous(&self) -> Result<Option<Version>, BackendError> {
        let Some(meta) = self.metadata(false).await? else {
            return Ok(None);
        };
        let Some((&prev, _)) = meta
            .versions
            .range(..meta.current_version)
            .rev()
            .find(|(_, live)| **live)
        else {
            return Ok(None);
        };
        let Some(read) = self.read(false, Some(prev)).await? else {
            return Ok(None);
        };
        let (ledger, _) = self.ledger().await?;
        let token = ledger.token_of(prev);
        self.version_of(read, token).map(Some)
    }

    async fn pending(&self, id: &RotationId) -> Result<Option<Version>, BackendError> {
        let (ledger, v) = self.ledger().await?;
        match ledger.pending_of(&id.token()) {
            Some(p) => self.pending_version(p, v).map(Some),
            None => Ok(None),
        }
    }

    async fn put_pending(
        &self,
        id: &RotationId,
        credential: &Credential,
    ) -> Result<Version, BackendError> {
        let token = id.token();
        let (mut ledger, cas) = self.ledger().await?;
        if let Some(p) = ledger.pending_of(&token) {
            return self.pending_version(p, cas);
        }
        if cas == 0 {
            self.limit_pending_history().await;
        }
        let (current, _) = self.current_read().await?;
        let extra = current
            .and_then(|r| Credential::from_map(r.data).map(|(_, extra)| extra))
            .unwrap_or_default();
        let doc = credential.to_json(&extra);
        let value = match serde_json::from_str::<Value>(doc.expose()) {
            Ok(Value::Object(m)) => m,
            _ => {
                return Err(BackendError::invalid(
                    &self.what_pending,
                    "encoding the value",
                ));
            }
        };
        ledger.pending = Some(Pending {
            token: token.clone(),
            value,
        });
        let version = self.write_ledger(&ledger, cas).await?;
        Ok(Version {
            id: version.to_string(),
            credential: credential.clone(),
            rotation_token: Some(token),
        })
    }

    async fn promote_if_current(
        &self,
        id: &RotationId,
        expected_current: Option<&str>,
    ) -> Result<Version, BackendError> {
        let token = id.token();
        let (mut ledger, ledger_cas) = self.ledger().await?;
        let (current, n) = self.current_read().await?;
        let current_version = current.as_ref().map(|r| r.version);
        if ledger
            .current
            .as_ref()
            .is_some_and(|w| w.token == token && Some(w.version) == current_version)
        {
            // Already promoted. A ledger still holding this pending value was left by a
            // crash; clearing it is not needed for correctness, so a lost race is fine.
            if ledger.pending_of(&token).is_some() {
                ledger.pending = None;
                match self.write_ledger(&ledger, ledger_cas).await {
                    Ok(_) | Err(BackendError::Conflict { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            return self
                .current()
                .await?
                .ok_or_else(|| BackendError::conflict(&self.what, "current version vanished"));
        }
        let Some(pending) = ledger.pending_of(&token).cloned() else {
            return Err(BackendError::conflict(
                &self.what_pending,
                format!(
                    "no pending value of rotation token {token}: another attempt replaced it or it was discarded"
                ),
            ));
        };
        // A crash after writing `path` but before the ledger: `path` already holds the
        // pending value, so it is not written twice.
        let written = match &current {
            Some(r) if r.data == pending.value => r.version,
            _ => {
                let actual = current_version.map(|v| v.to_string());
                if actual.as_deref() != expected_current {
                    return Err(BackendError::conflict(
                        &self.what,
                        format!(
                            "current version is {} but {} was expected",
                            actual.as_deref().unwrap_or("(none)"),
                            expected_current.unwrap_or("(none)")
                        ),
                    ));
                }
                let secret = SecretValue::new(
                    pending
                        .value
                        .get(super::JSON_PASSWORD)
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                );
                self.write(false, &Value::Object(pending.value.clone()), n)
                    .await
                    .map_err(|e| e.scrubbed(&[&secret]))?
            }
        };
        let superseded = current_version.filter(|v| *v != written);
        ledger.previous = match superseded {
            Some(v) => Some(Written {
                version: v,
                token: ledger.token_of(v).unwrap_or_default(),
            }),
            None => ledger.previous.clone(),
        }
        .filter(|w| !w.token.is_empty());
        ledger.current = Some(Written {
            version: written,
            token: token.clone(),
        });
        ledger.pending = None;
        // A conflict here means another writer touched the ledger after `path` was
        // written; the retry finds `path` holding the value and only rewrites the ledger.
        self.write_ledger(&ledger, ledger_cas).await?;
        let read = self
            .read(false, Some(written))
            .await?
            .ok_or_else(|| BackendError::conflict(&self.what, "promoted version vanished"))?;
        self.version_of(read, Some(token))
    }

    async fn discard_pending(&self, id: &RotationId) -> Result<(), BackendError> {
        let (mut ledger, cas) = self.ledger().await?;
        if ledger.pending_of(&id.token()).is_none() {
            return Ok(());
        }
        ledger.pending = None;
        self.write_ledger(&ledger, cas).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_plain_segments() {
        assert!(valid_segment_path("app/db"));
        assert!(valid_segment_path("capstan-pending/app.v1/db_x"));
        for bad in ["", "/a", "a/", "a//b", "a/../b", "a?b", "a b", "a%2f"] {
            assert!(!valid_segment_path(bad), "{bad:?}");
        }
    }

    #[test]
    fn cas_failures_are_conflicts_and_server_errors_transient() {
        let cas = json!({"errors": ["check-and-set parameter did not match the current version"]});
        assert!(classify("w", StatusCode::BAD_REQUEST, &cas).is_conflict());
        let other = json!({"errors": ["invalid"]});
        assert!(matches!(
            classify("w", StatusCode::BAD_REQUEST, &other),
            BackendError::Invalid { .. }
        ));
        assert!(classify("w", StatusCode::SERVICE_UNAVAILABLE, &Value::Null).is_transient());
        assert!(matches!(
            classify("w", StatusCode::FORBIDDEN, &Value::Null),
            BackendError::AccessDenied { .. }
        ));
    }

    #[test]
    fn the_client_debugs_without_its_token() {
        let c = VaultClient::new(
            "http://127.0.0.1:1",
            SecretValue::new("s.tok3n"),
            None,
            None,
        )
        .expect("client");
        assert!(!format!("{c:?}").contains("s.tok3n"));
    }
}
