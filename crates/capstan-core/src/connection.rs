//! `ClusterConnection`: who may reach which outside system.
//!
//! Objects in a namespace must not be able to point Capstan at arbitrary systems:
//! whoever can create a SecretRotation must not thereby reach another team's Vault or
//! AWS account, or lure Capstan's own credentials to a server they run. So the
//! addresses, accounts, roles and credentials of outside systems are declared by cluster
//! administrators in a cluster-scoped `ClusterConnection` (as External Secrets
//! Operator's ClusterSecretStore and ACK's cross-account role mapping do), which lists
//! the namespaces allowed to use it. A SecretRotation, ServiceScaling or Pipeline names a
//! connection; [`resolve`] refuses a reference from a namespace the connection does not
//! allow, and the controller reports that in a condition naming the connection. Its
//! `scopes` narrow what each allowed namespace may touch there ([`crate::scope`]).
//!
//! Credentials a connection needs come from Secrets in Capstan's own namespace, never
//! from the referencing object's namespace.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{Api, Client, CustomResource, KubeSchema, ResourceExt};
use serde::{Deserialize, Serialize};

use crate::error::Categorized;
pub use crate::namespaces::AllowedNamespaces;
use crate::scope::{ConnectionScope, MAX_SCOPES, ScopedResource, permits};

/// A connection to an outside system (an AWS account or a Vault/OpenBao server) and
/// the namespaces allowed to use it. Cluster-scoped: declared by cluster administrators.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "capstan.dev",
    version = "v1alpha1",
    kind = "ClusterConnection",
    status = "ClusterConnectionStatus",
    shortname = "cconn",
    category = "capstan",
    printcolumn = r#"{"name":"Kind","type":"string","jsonPath":".status.kind"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(
    validation = Rule::new("has(self.aws) != has(self.vault)").message("exactly one of aws or vault must be set").reason(Reason::FieldValueRequired),
    validation = Rule::new(RULE_AWS_SCOPES).message("an aws connection's scopes grant secretsManager, ecs, rds and iam, not vault, transit or vaultDatabase").field_path(".scopes"),
    validation = Rule::new(RULE_VAULT_SCOPES).message("a vault connection's scopes grant vault, transit and vaultDatabase, not secretsManager, ecs, rds or iam").field_path(".scopes"),
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterConnectionSpec {
    /// The namespaces whose objects may use this connection. A namespace is allowed
    /// when its name is listed or its labels match the selector. Empty allows none.
    #[serde(default)]
    pub allowed_namespaces: AllowedNamespaces,
    /// What each allowed namespace may touch through this connection: Secrets Manager
    /// secrets, Vault KV paths, ECS services, as glob patterns (`*` within a `/`
    /// segment, `**` across, `${namespace}` for the object's namespace). Omitted: an
    /// allowed namespace may touch anything the connection reaches. Set: only what the
    /// scopes that apply to its namespace grant; anything else is refused with
    /// `ResourceNotAllowed` before Capstan calls the system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_SCOPES))]
    pub scopes: Option<Vec<ConnectionScope>>,
    /// An AWS account and region, reached with Capstan's own credentials or with a role
    /// it assumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsConnection>,
    /// A Vault or OpenBao server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<VaultConnection>,
}

const RULE_AWS_SCOPES: &str = "!has(self.aws) || !has(self.scopes) || self.scopes.all(s, !has(s.vault) && !has(s.transit) && !has(s.vaultDatabase))";
const RULE_VAULT_SCOPES: &str = "!has(self.vault) || !has(self.scopes) || self.scopes.all(s, !has(s.secretsManager) && !has(s.ecs) && !has(s.rds) && !has(s.iam))";

/// An AWS account and region.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AwsConnection {
    /// The AWS region, e.g. `eu-west-1`.
    #[schemars(regex(pattern = r"^[a-z]{2}(-[a-z]+)+-\d$"))]
    pub region: String,
    /// The account the connection must land in. When set, Capstan checks the caller
    /// identity's account and refuses to use the connection if it differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^\d{12}$"))]
    pub account_id: Option<String>,
    /// An IAM role to assume (with STS AssumeRole) for every call through this
    /// connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$"))]
    pub role_arn: Option<String>,
    /// The external ID the role's trust policy requires, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// An endpoint override for every AWS service (VPC endpoints, a test emulator).
    /// Without it the SDK's standard endpoints (and `AWS_ENDPOINT_URL`) apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub endpoint_url: Option<String>,
    /// Static credentials from a Secret in Capstan's own namespace, with keys
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and optionally `AWS_SESSION_TOKEN`.
    /// Without it the SDK's default chain applies (IRSA, pod identity, instance role).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<LocalSecretRef>,
}

/// A Vault or OpenBao server.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VaultConnection {
    /// The server's address, e.g. `https://vault.example.com:8200`.
    #[schemars(regex(pattern = r"^https?://"))]
    pub address: String,
    /// A Vault Enterprise / OpenBao namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// A Secret in Capstan's namespace whose `ca.crt` key holds the CA bundle that
    /// signs the server's certificate. Without it the system roots apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<LocalSecretRef>,
    /// How Capstan logs in.
    pub auth: VaultAuth,
}

/// How Capstan logs in to Vault. Exactly one method.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.token), has(self.kubernetes), has(self.appRole)].filter(x, x).size() == 1").message("exactly one of token, kubernetes or appRole must be set"))]
pub struct VaultAuth {
    /// A token from a Secret in Capstan's namespace (key `token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<VaultTokenAuth>,
    /// Kubernetes auth with Capstan's service account token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<VaultKubernetesAuth>,
    /// AppRole auth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_role: Option<VaultAppRoleAuth>,
}

/// Token auth.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VaultTokenAuth {
    /// The Secret holding the token, in Capstan's namespace.
    pub secret_ref: LocalSecretRef,
}

/// Kubernetes auth.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VaultKubernetesAuth {
    /// Where the auth method is mounted.
    #[serde(default = "default_kubernetes_mount")]
    pub mount_path: String,
    /// The Vault role to log in as.
    pub role: String,
}

fn default_kubernetes_mount() -> String {
    "kubernetes".into()
}

/// AppRole auth.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VaultAppRoleAuth {
    /// Where the auth method is mounted.
    #[serde(default = "default_approle_mount")]
    pub mount_path: String,
    /// The role ID.
    pub role_id: String,
    /// The Secret holding the secret ID, in Capstan's namespace.
    pub secret_id_ref: LocalSecretRef,
}

fn default_approle_mount() -> String {
    "approle".into()
}

/// A key of a Secret in Capstan's own namespace.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LocalSecretRef {
    /// The Secret's name.
    pub name: String,
    /// The key within the Secret, where the field using the reference does not fix it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// The observed state of a connection.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterConnectionStatus {
    /// The generation the status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `aws` or `vault`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `Ready`: Capstan reached the system and logged in with the declared credentials.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::conditions::schema")]
    pub conditions: Vec<Condition>,
}

/// A reference from a namespaced object to a `ClusterConnection`.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionRef {
    /// The name of the ClusterConnection.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Which system a reference needs the connection to point at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionKind {
    /// An AWS account.
    Aws,
    /// A Vault or OpenBao server.
    Vault,
}

impl ConnectionKind {
    /// `aws` or `vault`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionKind::Aws => "aws",
            ConnectionKind::Vault => "vault",
        }
    }
}

impl ClusterConnectionSpec {
    /// Which system this connection points at.
    pub fn kind(&self) -> ConnectionKind {
        if self.vault.is_some() {
            ConnectionKind::Vault
        } else {
            ConnectionKind::Aws
        }
    }
}

/// Why a connection reference cannot be used. Each variant is a condition reason.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionRefError {
    /// The named connection does not exist.
    #[error("ClusterConnection {name:?} does not exist")]
    NotFound {
        /// The connection's name.
        name: String,
    },
    /// The connection does not list the object's namespace.
    #[error("ClusterConnection {name:?} does not allow namespace {namespace:?}")]
    NotAllowed {
        /// The connection's name.
        name: String,
        /// The referencing object's namespace.
        namespace: String,
    },
    /// The connection's scopes do not grant the namespace a resource the object names.
    #[error("ClusterConnection {name:?} does not allow namespace {namespace:?} to use {resource}")]
    ResourceNotAllowed {
        /// The connection's name.
        name: String,
        /// The referencing object's namespace.
        namespace: String,
        /// What the object names (e.g. `Secrets Manager secret "payments/db"`).
        resource: String,
    },
    /// The connection points at another kind of system.
    #[error("ClusterConnection {name:?} is a {actual} connection, but {expected} is needed here")]
    WrongKind {
        /// The connection's name.
        name: String,
        /// What the reference needs.
        expected: &'static str,
        /// What the connection is.
        actual: &'static str,
    },
    /// Reading the connection or the namespace failed.
    #[error(
        "reading ClusterConnection {name:?}: {}",
        crate::error::KubeMessage(source)
    )]
    Kube {
        /// The connection's name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

impl ConnectionRefError {
    /// The condition reason for this refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            ConnectionRefError::NotFound { .. } => "ConnectionNotFound",
            ConnectionRefError::NotAllowed { .. } => "ConnectionNotAllowed",
            ConnectionRefError::ResourceNotAllowed { .. } => "ResourceNotAllowed",
            ConnectionRefError::WrongKind { .. } => "ConnectionWrongKind",
            ConnectionRefError::Kube { .. } => "ConnectionUnreadable",
        }
    }

    /// Whether retrying later can help without a change to some object. A refusal
    /// waits for a change to the object or the connection (the controllers watch both).
    pub fn is_transient(&self) -> bool {
        matches!(self, ConnectionRefError::Kube { .. })
    }
}

impl Categorized for ConnectionRefError {
    fn category(&self) -> &'static str {
        match self {
            ConnectionRefError::NotFound { .. } => "connection_not_found",
            ConnectionRefError::NotAllowed { .. } => "connection_not_allowed",
            ConnectionRefError::ResourceNotAllowed { .. } => "resource_not_allowed",
            ConnectionRefError::WrongKind { .. } => "connection_wrong_kind",
            ConnectionRefError::Kube { .. } => "kube_api",
        }
    }
}

/// Looks up the connection `reference` names and checks that `namespace` may use it,
/// that it points at the `expected` kind of system and that its scopes grant the
/// namespace every one of `resources`.
pub async fn resolve(
    client: &Client,
    reference: &ConnectionRef,
    namespace: &str,
    expected: ConnectionKind,
    resources: &[ScopedResource],
) -> Result<ClusterConnection, ConnectionRefError> {
    let name = &reference.name;
    let kube_err = |source| ConnectionRefError::Kube {
        name: name.clone(),
        source,
    };
    let conn = Api::<ClusterConnection>::all(client.clone())
        .get_opt(name)
        .await
        .map_err(kube_err)?
        .ok_or_else(|| ConnectionRefError::NotFound { name: name.clone() })?;
    let ns = Api::<Namespace>::all(client.clone())
        .get_opt(namespace)
        .await
        .map_err(kube_err)?;
    let labels = ns.map(|n| n.labels().clone()).unwrap_or_default();
    check(&conn, namespace, &labels, expected)?;
    check_scopes(&conn, namespace, &labels, resources)?;
    Ok(conn)
}

/// The pure part of [`resolve`].
pub fn check(
    conn: &ClusterConnection,
    namespace: &str,
    namespace_labels: &BTreeMap<String, String>,
    expected: ConnectionKind,
) -> Result<(), ConnectionRefError> {
    let name = conn.name_any();
    if !conn
        .spec
        .allowed_namespaces
        .allows(namespace, namespace_labels)
    {
        return Err(ConnectionRefError::NotAllowed {
            name,
            namespace: namespace.to_owned(),
        });
    }
    let actual = conn.spec.kind();
    if actual != expected {
        return Err(ConnectionRefError::WrongKind {
            name,
            expected: expected.as_str(),
            actual: actual.as_str(),
        });
    }
    Ok(())
}

/// The scope part of [`resolve`]: the first of `resources` the connection's scopes do
/// not grant `namespace` is refused.
pub fn check_scopes(
    conn: &ClusterConnection,
    namespace: &str,
    namespace_labels: &BTreeMap<String, String>,
    resources: &[ScopedResource],
) -> Result<(), ConnectionRefError> {
    let scopes = conn.spec.scopes.as_deref();
    match resources
        .iter()
        .find(|r| !permits(scopes, namespace, namespace_labels, r))
    {
        None => Ok(()),
        Some(r) => Err(ConnectionRefError::ResourceNotAllowed {
            name: conn.name_any(),
            namespace: namespace.to_owned(),
            resource: r.to_string(),
        }),
    }
}

impl crate::object_metrics::Summarize for ClusterConnection {
    /// Readiness, whose reason says why not (`VaultSealed`, `AwsUnreachable`,
    /// `LoginRefused`, ...).
    fn summary(&self) -> crate::object_metrics::Summary {
        let conditions = self
            .status
            .as_ref()
            .map(|s| s.conditions.as_slice())
            .unwrap_or_default();
        let (ready, reason) = crate::object_metrics::ready_of(conditions);
        crate::object_metrics::Summary {
            ready,
            reason,
            samples: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use kube::CustomResourceExt;

    fn aws_conn(allowed: AllowedNamespaces) -> ClusterConnection {
        ClusterConnection::new(
            "prod-aws",
            ClusterConnectionSpec {
                allowed_namespaces: allowed,
                scopes: None,
                aws: Some(AwsConnection {
                    region: "eu-west-1".into(),
                    account_id: None,
                    role_arn: None,
                    external_id: None,
                    endpoint_url: None,
                    credentials_secret_ref: None,
                }),
                vault: None,
            },
        )
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn names_and_selectors_allow_and_nothing_else_does() {
        let by_label = AllowedNamespaces {
            names: vec!["payments".into()],
            selector: Some(LabelSelector {
                match_labels: Some(labels(&[("team", "payments")])),
                match_expressions: None,
            }),
        };
        let conn = aws_conn(by_label);
        let cases = [
            ("payments", labels(&[]), true),
            ("payments-staging", labels(&[("team", "payments")]), true),
            ("shop", labels(&[("team", "shop")]), false),
            ("shop", labels(&[]), false),
        ];
        for (ns, l, want) in cases {
            let got = check(&conn, ns, &l, ConnectionKind::Aws).is_ok();
            assert_eq!(got, want, "namespace {ns}");
        }
    }

    #[test]
    fn an_empty_selector_allows_nothing() {
        let conn = aws_conn(AllowedNamespaces {
            names: vec![],
            selector: Some(LabelSelector::default()),
        });
        let err = check(&conn, "any", &labels(&[("a", "b")]), ConnectionKind::Aws);
        assert!(matches!(err, Err(ConnectionRefError::NotAllowed { .. })));
    }

    #[test]
    fn a_refusal_names_the_connection_and_the_namespace() {
        let conn = aws_conn(AllowedNamespaces::default());
        let err = check(&conn, "shop", &labels(&[]), ConnectionKind::Aws).unwrap_err();
        assert_eq!(err.reason(), "ConnectionNotAllowed");
        let msg = err.to_string();
        assert!(msg.contains("prod-aws") && msg.contains("shop"), "{msg}");
    }

    #[test]
    fn a_vault_reference_to_an_aws_connection_is_refused() {
        let conn = aws_conn(AllowedNamespaces {
            names: vec!["a".into()],
            selector: None,
        });
        let err = check(&conn, "a", &labels(&[]), ConnectionKind::Vault).unwrap_err();
        assert_eq!(err.reason(), "ConnectionWrongKind");
    }

    #[test]
    fn an_out_of_scope_resource_is_refused_naming_the_connection_and_the_resource() {
        let mut conn = aws_conn(AllowedNamespaces {
            names: vec!["shop".into()],
            selector: None,
        });
        let own = ScopedResource::SecretsManagerSecret("shop/db".into());
        let theirs = ScopedResource::SecretsManagerSecret("payments/db".into());
        let none = labels(&[]);
        // No scopes: unrestricted, as before scopes existed.
        assert!(check_scopes(&conn, "shop", &none, &[own.clone(), theirs.clone()]).is_ok());
        conn.spec.scopes = Some(vec![ConnectionScope {
            secrets_manager: Some(crate::scope::SecretsManagerScope {
                secrets: vec!["${namespace}/*".into()],
            }),
            ..ConnectionScope::default()
        }]);
        assert!(check_scopes(&conn, "shop", &none, std::slice::from_ref(&own)).is_ok());
        let err = check_scopes(&conn, "shop", &none, &[own, theirs]).unwrap_err();
        assert_eq!(err.reason(), "ResourceNotAllowed");
        assert_eq!(err.category(), "resource_not_allowed");
        assert!(!err.is_transient());
        assert_eq!(
            err.to_string(),
            r#"ClusterConnection "prod-aws" does not allow namespace "shop" to use Secrets Manager secret "payments/db""#
        );
    }

    #[test]
    fn crd_carries_the_scope_rules() {
        let json = serde_json::to_string(&ClusterConnection::crd()).unwrap_or_default();
        for needle in [
            "an aws connection's scopes grant secretsManager, ecs, rds and iam, not vault, transit or vaultDatabase",
            "a vault connection's scopes grant vault, transit and vaultDatabase, not secretsManager, ecs, rds or iam",
            "a scope must grant secretsManager, vault, ecs, rds, iam, transit or vaultDatabase",
            "*** is ambiguous",
            "namespaces must list names or a selector",
        ] {
            assert!(json.contains(needle), "{needle}");
        }
        for pattern in [
            crate::scope::SECRETS_MANAGER_PATTERN,
            crate::scope::VAULT_PATTERN,
            crate::scope::ECS_PATTERN,
        ] {
            let escaped = serde_json::to_string(pattern).unwrap_or_default();
            assert!(json.contains(escaped.trim_matches('"')), "{pattern}");
        }
    }

    #[test]
    fn crd_is_cluster_scoped_and_carries_its_cel_rules() {
        let crd = ClusterConnection::crd();
        assert_eq!(crd.spec.scope, "Cluster");
        let json = serde_json::to_string(&crd).unwrap_or_default();
        assert!(json.contains("exactly one of aws or vault must be set"));
        assert!(json.contains("exactly one of token, kubernetes or appRole must be set"));
        assert!(json.contains("x-kubernetes-list-map-keys"));
    }
}
