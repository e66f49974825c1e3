//! Tests of the generated CRD: names and columns, every CEL rule in its place (and
//! evaluated client-side with kube-cel against good and bad objects), list-map markers,
//! descriptions on every field, serde round trips, status helpers.

use std::collections::BTreeMap;

use kube::{CustomResourceExt, Resource};
use serde_json::{Value, json};

use capstan_core::schema_testing::{self, from_yaml};

use super::*;

const EXAMPLE_YAML: &str = include_str!("../../examples/secretrotation-postgres.yaml");

/// The spec of `examples/secretrotation-postgres.yaml`, built in Rust.
pub(crate) fn example_spec() -> SecretRotationSpec {
    SecretRotationSpec {
        connection_ref: Some(ConnectionRef {
            name: "aws-prod".into(),
        }),
        backend: Backend::AwsSecretsManager(AwsSecretsManagerBackend {
            secret_id: "shop/orders-db".into(),
            kms_key_id: None,
        }),
        target: Target::Postgres(PostgresTarget {
            host: "orders.cluster-abc.eu-west-1.rds.amazonaws.com".into(),
            port: 5432,
            database: "orders".into(),
            ssl_mode: PostgresSslMode::VerifyFull,
            ca_secret_ref: None,
            username: "app".into(),
            admin_secret_ref: AdminSecretRef {
                name: "orders-db-admin".into(),
                username_key: "username".into(),
                password_key: "password".into(),
            },
        }),
        strategy: Strategy::AlternatingUsers(AlternatingUsersStrategy::default()),
        schedule: Schedule {
            interval: Some(DurationString::new("720h").expect("valid")),
            cron: None,
            time_zone: None,
            window: Some(RotationWindow {
                start: "01:00".into(),
                end: "05:00".into(),
                time_zone: Some("Europe/Berlin".into()),
            }),
        },
        suspend: false,
        generator: Generator::default(),
        delivery: Some(Delivery {
            secret: Some(SecretDelivery {
                name: "orders-db-app".into(),
                template: BTreeMap::from([
                    (
                        "DATABASE_URL".to_owned(),
                        "postgres://{{ username }}:{{ password }}@{{ host }}:{{ port }}/{{ database }}?sslmode=verify-full".to_owned(),
                    ),
                    ("PGPASSWORD".to_owned(), "{{ password }}".to_owned()),
                ]),
                deletion_policy: DeletionPolicy::Retain,
            }),
            rollouts: vec![RolloutTarget {
                kind: WorkloadKind::Deployment,
                name: Some("api".into()),
                selector: None,
            }],
            max_concurrent_rollouts: 1,
            ecs_services: vec![EcsService {
                cluster: "shop".into(),
                service: "orders-worker".into(),
            }],
            ecs_connection_ref: None,
        }),
        max_attempts_per_rotation: 3,
    }
}

fn schema() -> Value {
    schema_testing::openapi_schema::<SecretRotation>()
}

/// The schema node at a dotted path of property names below the root.
fn node(path: &str) -> Value {
    schema_testing::node(&schema(), path)
}

fn rules_at(path: &str) -> Vec<Value> {
    schema_testing::rules_at(&schema(), path)
}

fn has_rule(path: &str, rule: &str) -> bool {
    rules_at(path).iter().any(|r| r["rule"] == rule)
}

fn example_value() -> Value {
    from_yaml(EXAMPLE_YAML)
}

fn all_rules() -> Vec<(String, Value)> {
    schema_testing::all_rules(&schema())
}

fn cel_failures(object: &Value) -> Vec<String> {
    schema_testing::cel_failures(&schema(), object)
}

#[test]
fn crd_names_scope_and_subresources() {
    let crd = SecretRotation::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("secretrotations.capstan.dev")
    );
    assert_eq!(crd.spec.group, "capstan.dev");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.short_names, Some(vec!["srot".to_owned()]));
    assert_eq!(crd.spec.names.categories, Some(vec!["capstan".to_owned()]));
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
    assert_eq!(SecretRotation::api_version(&()), "capstan.dev/v1alpha1");
}

#[test]
fn printer_columns() {
    let crd = SecretRotation::crd();
    let columns = crd.spec.versions[0]
        .additional_printer_columns
        .clone()
        .expect("columns");
    let got: Vec<(&str, &str, &str)> = columns
        .iter()
        .map(|c| (c.name.as_str(), c.type_.as_str(), c.json_path.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("Backend", "string", ".status.backend"),
            ("Target", "string", ".status.target"),
            ("Last rotation", "date", ".status.lastRotationTime"),
            // A future time as `date` would print as <invalid>; the status holds it
            // in whole seconds instead (see the table test in crates/capstan/tests).
            ("Next rotation", "string", ".status.nextRotationTime"),
            (
                "Ready",
                "string",
                ".status.conditions[?(@.type==\"Ready\")].status"
            ),
            (
                "Reason",
                "string",
                ".status.conditions[?(@.type==\"Ready\")].reason"
            ),
            (
                "Rotating",
                "string",
                ".status.conditions[?(@.type==\"Rotating\")].reason"
            ),
            ("Step", "string", ".status.rotation.step"),
            ("Age", "date", ".metadata.creationTimestamp"),
            (
                "Message",
                "string",
                ".status.conditions[?(@.type==\"Ready\")].message"
            ),
        ]
    );
    // Reason, Rotating and Message show in `kubectl get` (priority 0): why an object
    // is not Ready, or a rotation stuck, is on the first screen, not behind a
    // custom-columns query.
    for c in &columns {
        if ["Reason", "Rotating", "Message"].contains(&c.name.as_str()) {
            assert_eq!(c.priority, None, "{}", c.name);
        }
    }
}

#[test]
fn every_cel_rule_sits_where_it_applies() {
    let spec_rules = [
        RULE_CONNECTION_REQUIRED,
        RULE_CONNECTION_FORBIDDEN,
        RULE_ALTERNATING_NEEDS_DATABASE,
        RULE_SINGLE_USER_ACKNOWLEDGED,
        RULE_ECS_NEEDS_CONNECTION,
        RULE_DELIVERY_SECRET_NOT_BACKEND,
        &rule_grace_within_interval(),
        &rule_rotation_period_vs_interval(),
        RULE_DYNAMIC_NEEDS_KUBERNETES,
    ];
    for rule in spec_rules {
        assert!(has_rule("spec", rule), "spec lacks {rule}");
    }
    let min_interval = rule_min_interval();
    let placed = [
        ("spec.backend", RULE_ONE_BACKEND),
        ("spec.target", RULE_ONE_TARGET),
        ("spec.strategy", RULE_ONE_STRATEGY),
        ("spec.schedule", RULE_ONE_SCHEDULE),
        ("spec.schedule", RULE_TIME_ZONE_WITH_CRON),
        ("spec.schedule.interval", min_interval.as_str()),
        ("spec.schedule.window", RULE_WINDOW_NOT_EMPTY),
        ("spec.generator", RULE_GENERATOR_ONE_CLASS),
        ("spec.generator", RULE_GENERATOR_LENGTH_FITS_CLASSES),
        ("spec.backend.vault", RULE_PENDING_PATH_DIFFERS),
        ("spec.backend.kubernetes", RULE_PENDING_SECRET_DIFFERS),
        ("spec.target.rdsMasterPassword", RULE_RDS_ONE_RESOURCE),
        ("spec.target.iamAccessKey.gracePeriod", RULE_GRACE_MIN),
        (
            "spec.target.vaultDatabaseStaticRole.rotationPeriod",
            RULE_ROTATION_PERIOD_MIN,
        ),
        (
            "spec.target.vaultDatabaseStaticRole.driftCheckInterval",
            RULE_DRIFT_CHECK_MIN,
        ),
        (
            "spec.target.vaultDatabaseDynamicRole",
            RULE_MAX_TTL_COVERS_TTL,
        ),
        (
            "spec.target.vaultDatabaseDynamicRole",
            RULE_RENEW_BEFORE_WITHIN_TTL,
        ),
        (
            "spec.target.vaultDatabaseDynamicRole.defaultTtl",
            RULE_TTL_MIN,
        ),
        (
            "spec.target.vaultDatabaseDynamicRole.maxTtl",
            RULE_MAX_TTL_MAX,
        ),
        (
            "spec.target.vaultDatabaseDynamicRole.renewBefore",
            RULE_RENEW_BEFORE_MIN,
        ),
    ];
    for (path, rule) in placed {
        assert!(has_rule(path, rule), "{path} lacks {rule}");
    }
    let rollout_rules = node("spec.delivery.rollouts")["items"]["x-kubernetes-validations"].clone();
    assert_eq!(rollout_rules[0]["rule"], RULE_ROLLOUT_NAME_XOR_SELECTOR);
    let selector = node("spec.delivery.rollouts")["items"]["properties"]["selector"].clone();
    assert_eq!(
        selector["x-kubernetes-validations"][0]["rule"],
        RULE_SELECTOR_NOT_EMPTY
    );
    let requirement = selector["properties"]["matchExpressions"]["items"].clone();
    let rules = &requirement["x-kubernetes-validations"];
    assert_eq!(rules[0]["rule"], RULE_SELECTOR_VALUES_REQUIRED);
    assert_eq!(rules[0]["fieldPath"], ".values");
    assert_eq!(rules[1]["rule"], RULE_SELECTOR_VALUES_FORBIDDEN);
    assert_eq!(rules[1]["fieldPath"], ".values");
    // The operator is an enum: any other is refused at admission with its field path.
    assert_eq!(
        requirement["properties"]["operator"]["enum"],
        json!(["In", "NotIn", "Exists", "DoesNotExist"])
    );
    assert_eq!(selector["properties"]["matchExpressions"]["maxItems"], 16);
    // Every rule carries a human message, and there are no rules the lists above miss.
    let all = all_rules();
    for (path, rule) in &all {
        assert!(
            rule["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{path}: {rule}"
        );
    }
    assert_eq!(all.len(), spec_rules.len() + placed.len() + 4);
}

#[test]
fn field_paths_of_spec_rules_name_the_offending_field() {
    let by_rule: BTreeMap<String, Value> = rules_at("spec")
        .into_iter()
        .map(|r| (r["rule"].as_str().unwrap_or_default().to_owned(), r))
        .collect();
    assert_eq!(
        by_rule[RULE_CONNECTION_REQUIRED]["fieldPath"],
        ".connectionRef"
    );
    assert_eq!(
        by_rule[RULE_CONNECTION_REQUIRED]["reason"],
        "FieldValueRequired"
    );
    assert_eq!(
        by_rule[RULE_CONNECTION_FORBIDDEN]["reason"],
        "FieldValueForbidden"
    );
    assert_eq!(
        by_rule[RULE_SINGLE_USER_ACKNOWLEDGED]["fieldPath"],
        ".strategy"
    );
}

#[test]
fn conditions_are_a_list_map_keyed_by_type() {
    let conditions = node("status.conditions");
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
    assert_eq!(
        conditions["items"]["required"]
            .as_array()
            .map(|r| r.contains(&json!("type"))),
        Some(true)
    );
}

#[test]
fn one_of_backend_target_strategy_is_structural() {
    // The API server also refuses two or no variants through oneOf/required.
    for path in ["spec.backend", "spec.target", "spec.strategy"] {
        let n = node(path);
        let one_of = n["oneOf"].as_array().expect("oneOf");
        assert!(
            one_of
                .iter()
                .all(|v| v["required"].as_array().is_some_and(|r| r.len() == 1))
        );
        assert!(
            one_of.iter().all(|v| v.get("properties").is_none()),
            "{path}: not structural"
        );
    }
}

/// Every property in the schema has a description: it is what `kubectl explain` shows.
#[test]
fn every_field_is_documented() {
    fn walk(path: &str, n: &Value, missing: &mut Vec<String>) {
        if !n.is_object() {
            return;
        }
        if let Some(props) = n["properties"].as_object() {
            for (name, p) in props {
                let here = format!("{path}.{name}");
                // metadata, apiVersion and kind come from Kubernetes.
                let inherited =
                    path.is_empty() && ["metadata", "apiVersion", "kind"].contains(&name.as_str());
                if !inherited && p["description"].as_str().is_none_or(str::is_empty) {
                    missing.push(here.clone());
                }
                walk(&here, p, missing);
            }
        }
        walk(path, &n["items"], missing);
        if n["additionalProperties"].is_object() {
            walk(path, &n["additionalProperties"], missing);
        }
    }
    let mut missing = Vec::new();
    walk("", &schema(), &mut missing);
    assert!(missing.is_empty(), "undocumented: {missing:?}");
}

#[test]
fn patterns_bounds_and_defaults_are_in_the_schema() {
    assert_eq!(
        node("spec.schedule.interval")["pattern"],
        capstan_core::schedule::DURATION_PATTERN
    );
    assert_eq!(node("spec.schedule.interval")["maxLength"], 64);
    assert_eq!(node("spec.schedule.cron")["pattern"], CRON_PATTERN);
    assert_eq!(node("spec.schedule.window.start")["pattern"], HH_MM_PATTERN);
    assert_eq!(
        node("spec.generator.length")["minimum"].as_f64(),
        Some(12.0)
    );
    assert_eq!(
        node("spec.generator.length")["maximum"].as_f64(),
        Some(1024.0)
    );
    assert_eq!(node("spec.generator.length")["default"], 32);
    assert_eq!(node("spec.generator.symbolCharacters")["default"], "-_.~");
    assert_eq!(node("spec.delivery.rollouts")["maxItems"], 16);
    assert_eq!(node("spec.delivery.ecsServices")["maxItems"], 16);
    assert_eq!(node("spec.delivery.secret.template")["maxProperties"], 32);
    assert_eq!(
        node("spec.delivery.secret.template")["additionalProperties"]["maxLength"],
        4096
    );
    assert_eq!(
        node("spec.delivery.secret.deletionPolicy")["default"],
        "Retain"
    );
    assert_eq!(node("spec.target.postgres.port")["default"], 5432);
    assert_eq!(node("spec.target.mysql.port")["default"], 3306);
    assert_eq!(node("spec.maxAttemptsPerRotation")["default"], 3);
    assert_eq!(node("spec.delivery.maxConcurrentRollouts")["default"], 1);
    assert_eq!(
        node("spec.strategy")["default"],
        json!({"singleUser": {"acceptLoginFailuresUntilRestart": false}})
    );
    assert_eq!(node("spec.generator")["default"]["length"], 32);
}

#[test]
fn example_round_trips_through_serde() {
    let parsed: SecretRotation = from_yaml(EXAMPLE_YAML);
    assert_eq!(parsed.spec, example_spec());
    assert_eq!(parsed.metadata.namespace.as_deref(), Some("shop"));
    let json = serde_json::to_value(&parsed).expect("serializes");
    let back: SecretRotation = serde_json::from_value(json.clone()).expect("deserializes");
    assert_eq!(back, parsed);
    // Externally tagged unions keep the spec's spelling.
    assert!(json["spec"]["backend"]["awsSecretsManager"].is_object());
    assert_eq!(json["spec"]["strategy"], json!({"alternatingUsers": {}}));
}

#[test]
fn a_minimal_spec_gets_safe_defaults() {
    let minimal = r#"
connectionRef: { name: vault }
backend: { vault: { path: payments/api-key } }
target: { none: {} }
schedule: { cron: "0 3 * * 0", timeZone: Europe/Berlin }
"#;
    let spec: SecretRotationSpec = from_yaml(minimal);
    assert_eq!(
        spec.strategy,
        Strategy::SingleUser(SingleUserStrategy::default())
    );
    assert_eq!(spec.generator, Generator::default());
    assert_eq!(spec.max_attempts_per_rotation, 3);
    assert!(!spec.suspend);
    let Backend::Vault(vault) = &spec.backend else {
        panic!("vault")
    };
    assert_eq!(vault.mount, "secret");
    assert_eq!(
        vault.effective_pending_path(),
        "capstan-pending/payments/api-key"
    );
    assert_eq!(spec.target, Target::ValueOnly(ValueOnlyTarget {}));
    assert_eq!(crate::validation::validate(&spec), Ok(()));
    let json = serde_json::to_value(&spec).expect("serializes");
    assert_eq!(json["target"], json!({"none": {}}));
}

#[test]
fn the_example_passes_every_cel_rule() {
    assert_eq!(cel_failures(&example_value()), Vec::<String>::new());
}

/// Each case breaks the example in one way; the CEL rules must refuse it with the
/// message fragment given (the API server adds the field path).
#[test]
fn cel_rules_refuse_bad_specs() {
    type Case = (&'static str, fn(&mut Value), &'static str);
    let cases: Vec<Case> = vec![
        (
            "no backend",
            |v| v["spec"]["backend"] = json!({}),
            "exactly one of awsSecretsManager, vault or kubernetes",
        ),
        (
            "two backends",
            |v| v["spec"]["backend"]["vault"] = json!({"path": "a/b"}),
            "exactly one of awsSecretsManager, vault or kubernetes",
        ),
        (
            "no target",
            |v| v["spec"]["target"] = json!({}),
            "exactly one of postgres, mysql, rdsMasterPassword, iamAccessKey, vaultTransitKey, vaultDatabaseStaticRole, vaultDatabaseDynamicRole or none",
        ),
        (
            "two targets",
            |v| v["spec"]["target"]["none"] = json!({}),
            "exactly one of postgres, mysql, rdsMasterPassword, iamAccessKey, vaultTransitKey, vaultDatabaseStaticRole, vaultDatabaseDynamicRole or none",
        ),
        (
            "an RDS target naming neither an instance nor a cluster",
            |v| {
                v["spec"]["target"] = json!({"rdsMasterPassword": {
                    "connectionRef": {"name": "aws"}, "masterUsername": "master"}});
                v["spec"]["strategy"] = json!({"singleUser": {}});
            },
            "exactly one of dbInstanceIdentifier or dbClusterIdentifier",
        ),
        (
            "an RDS target naming both an instance and a cluster",
            |v| {
                v["spec"]["target"] = json!({"rdsMasterPassword": {
                    "connectionRef": {"name": "aws"}, "masterUsername": "master",
                    "dbInstanceIdentifier": "shop", "dbClusterIdentifier": "shop"}});
                v["spec"]["strategy"] = json!({"singleUser": {}});
            },
            "exactly one of dbInstanceIdentifier or dbClusterIdentifier",
        ),
        (
            "alternating users of an RDS master",
            |v| {
                v["spec"]["target"] = json!({"rdsMasterPassword": {
                    "connectionRef": {"name": "aws"}, "masterUsername": "master",
                    "dbInstanceIdentifier": "shop"}});
            },
            "strategy.alternatingUsers needs a database target",
        ),
        (
            "an IAM key's grace period longer than the interval",
            |v| {
                v["spec"]["target"] = json!({"iamAccessKey": {
                    "connectionRef": {"name": "aws"}, "userName": "reporting",
                    "gracePeriod": "1d1s"}});
                v["spec"]["strategy"] = json!({"singleUser": {}});
                v["spec"]["schedule"] = json!({"interval": "24h"});
            },
            "gracePeriod must not be longer than schedule.interval",
        ),
        (
            "an IAM key's grace period under a second",
            |v| {
                v["spec"]["target"] = json!({"iamAccessKey": {
                    "connectionRef": {"name": "aws"}, "userName": "reporting",
                    "gracePeriod": "0s"}});
                v["spec"]["strategy"] = json!({"singleUser": {}});
            },
            "gracePeriod must be at least 1s",
        ),
        (
            "two strategies",
            |v| v["spec"]["strategy"]["singleUser"] = json!({}),
            "exactly one of singleUser or alternatingUsers",
        ),
        (
            "aws backend without connection",
            |v| {
                v["spec"]
                    .as_object_mut()
                    .expect("spec")
                    .remove("connectionRef");
            },
            "connectionRef is required",
        ),
        (
            "kubernetes backend with connection",
            |v| v["spec"]["backend"] = json!({"kubernetes": {"secretName": "db"}}),
            "connectionRef must not be set",
        ),
        (
            "alternating users without a database",
            |v| v["spec"]["target"] = json!({"none": {}}),
            "needs a database target",
        ),
        (
            "single user with rollouts, unacknowledged",
            |v| v["spec"]["strategy"] = json!({"singleUser": {}}),
            "requires strategy.singleUser.acceptLoginFailuresUntilRestart",
        ),
        (
            "strategy left to its default with rollouts",
            |v| {
                v["spec"].as_object_mut().expect("spec").remove("strategy");
            },
            "requires strategy.singleUser.acceptLoginFailuresUntilRestart",
        ),
        (
            "ecs without connection",
            |v| {
                v["spec"]["backend"] = json!({"kubernetes": {"secretName": "db"}});
                v["spec"]
                    .as_object_mut()
                    .expect("spec")
                    .remove("connectionRef");
            },
            "delivery.ecsServices needs an AWS ClusterConnection",
        ),
        (
            "delivery secret is the default pending secret",
            |v| {
                v["spec"]["backend"] = json!({"kubernetes": {"secretName": "orders-db"}});
                v["spec"]
                    .as_object_mut()
                    .expect("spec")
                    .remove("connectionRef");
                v["spec"]["delivery"]["ecsConnectionRef"] = json!({"name": "aws"});
                v["spec"]["delivery"]["secret"]["name"] = json!("orders-db-pending");
            },
            "delivery.secret.name must differ",
        ),
        (
            "pending secret equals secret",
            |v| {
                v["spec"]["backend"] =
                    json!({"kubernetes": {"secretName": "db", "pendingSecretName": "db"}});
                v["spec"]
                    .as_object_mut()
                    .expect("spec")
                    .remove("connectionRef");
                v["spec"]["delivery"]["ecsConnectionRef"] = json!({"name": "aws"});
            },
            "pendingSecretName must differ",
        ),
        (
            "pending path equals path",
            |v| v["spec"]["backend"] = json!({"vault": {"path": "a/b", "pendingPath": "a/b"}}),
            "pendingPath must differ",
        ),
        (
            "interval and cron",
            |v| v["spec"]["schedule"]["cron"] = json!("0 3 * * *"),
            "exactly one of interval or cron",
        ),
        (
            "neither interval nor cron",
            |v| v["spec"]["schedule"] = json!({}),
            "exactly one of interval or cron",
        ),
        (
            "zero interval",
            |v| v["spec"]["schedule"]["interval"] = json!("0h0m0s"),
            "at least 1s",
        ),
        (
            "time zone with interval",
            |v| v["spec"]["schedule"]["timeZone"] = json!("UTC"),
            "timeZone applies to cron only",
        ),
        (
            "empty window",
            |v| v["spec"]["schedule"]["window"]["end"] = json!("01:00"),
            "window start and end must differ",
        ),
        (
            "no character class",
            |v| {
                v["spec"]["generator"] = json!({"lowercase": false, "uppercase": false, "digits": false, "symbols": false})
            },
            "at least one of lowercase, uppercase, digits or symbols",
        ),
        (
            "rollout with name and selector",
            |v| {
                v["spec"]["delivery"]["rollouts"][0]["selector"] =
                    json!({"matchLabels": {"a": "b"}})
            },
            "exactly one of name or selector",
        ),
        (
            "selector In without values",
            |v| {
                v["spec"]["delivery"]["rollouts"][0] = json!({"kind": "Deployment", "selector": {
                    "matchLabels": {"app": "web"},
                    "matchExpressions": [{"key": "tier", "operator": "In"}]
                }})
            },
            "In and NotIn need at least one value",
        ),
        (
            "selector Exists with values",
            |v| {
                v["spec"]["delivery"]["rollouts"][0] = json!({"kind": "Deployment", "selector": {
                    "matchExpressions": [{"key": "tier", "operator": "Exists", "values": ["x"]}]
                }})
            },
            "Exists and DoesNotExist take no values",
        ),
        (
            "empty selector",
            |v| {
                v["spec"]["delivery"]["rollouts"][0] =
                    json!({"kind": "Deployment", "selector": {"matchLabels": {}}})
            },
            "an empty selector would restart every workload",
        ),
        (
            "rollout with neither",
            |v| v["spec"]["delivery"]["rollouts"][0] = json!({"kind": "Deployment"}),
            "exactly one of name or selector",
        ),
    ];
    for (name, break_it, want) in cases {
        let mut v = example_value();
        break_it(&mut v);
        let failures = cel_failures(&v);
        assert!(
            failures.iter().any(|f| f.contains(want)),
            "{name}: want a failure containing {want:?}, got {failures:?}"
        );
    }
}

#[test]
fn acknowledged_single_user_and_value_only_targets_pass_cel() {
    let mut v = example_value();
    v["spec"]["strategy"] = json!({"singleUser": {"acceptLoginFailuresUntilRestart": true}});
    assert_eq!(cel_failures(&v), Vec::<String>::new());

    let mut v = example_value();
    v["spec"]["strategy"] = json!({"singleUser": {}});
    v["spec"]["delivery"] = json!({"secret": {"name": "out"}});
    assert_eq!(
        cel_failures(&v),
        Vec::<String>::new(),
        "no workloads, no acknowledgement needed"
    );

    let mut v = example_value();
    v["spec"]["target"] = json!({"none": {}});
    v["spec"]["strategy"] = json!({"singleUser": {"acceptLoginFailuresUntilRestart": true}});
    v["spec"]["schedule"] = json!({"cron": "@weekly", "timeZone": "America/New_York"});
    assert_eq!(cel_failures(&v), Vec::<String>::new());
}

/// kube-cel's static analysis: no rule is estimated above the API server's per-rule
/// budget or iterates an unbounded list or string.
#[test]
fn cel_rules_stay_within_the_cost_budget() {
    let compiled = kube::core::cel::compile_schema(&schema());
    assert!(
        !compiled.has_errors(),
        "{:?}",
        compiled.compilation_errors()
    );
    for (_, rule) in all_rules() {
        let rule = rule["rule"].as_str().unwrap_or_default().to_owned();
        let warnings = kube::core::cel::estimate_rule_cost(&rule, &compiled);
        assert!(warnings.is_empty(), "{rule}: {warnings:?}");
    }
}

/// A grace period as long as the interval, written in other units, passes; one second
/// more does not.
#[test]
fn an_iam_grace_period_may_equal_the_interval() {
    let with = |grace: &str, interval: &str| {
        let mut v = example_value();
        v["spec"]["target"] = json!({"iamAccessKey": {
            "connectionRef": {"name": "aws"}, "userName": "reporting", "gracePeriod": grace}});
        v["spec"]["strategy"] = json!({"singleUser": {"acceptLoginFailuresUntilRestart": true}});
        v["spec"]["schedule"] = json!({"interval": interval});
        cel_failures(&v)
    };
    assert_eq!(with("1d", "24h"), Vec::<String>::new());
    assert_eq!(with("90m", "1.5h"), Vec::<String>::new());
    assert_eq!(with("7d", "720h"), Vec::<String>::new());
    assert_eq!(with("1d1s", "24h").len(), 1);
}
