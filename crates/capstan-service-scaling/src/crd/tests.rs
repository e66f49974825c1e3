//! Tests of the generated CRD: identity, CEL rules in place and evaluated, patterns and
//! bounds, serde round trips.

use kube::CustomResourceExt;
use serde_json::{Value, json};

use super::*;

fn crd_json() -> Value {
    serde_json::to_value(ServiceScaling::crd()).expect("CRD serializes")
}

fn schema() -> Value {
    capstan_core::schema_testing::openapi_schema::<ServiceScaling>()
}

fn rules(v: &Value) -> Vec<String> {
    v["x-kubernetes-validations"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| r["rule"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn crd_identity() {
    let crd = crd_json();
    assert_eq!(crd["metadata"]["name"], "servicescalings.capstan.dev");
    assert_eq!(crd["spec"]["group"], capstan_core::API_GROUP);
    assert_eq!(
        crd["spec"]["versions"][0]["name"],
        capstan_core::API_VERSION
    );
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["kind"], "ServiceScaling");
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["ssc"]));
    assert!(crd["spec"]["versions"][0]["subresources"]["status"].is_object());
    let columns: Vec<_> = crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .expect("printer columns")
        .iter()
        .map(|c| c["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        columns,
        [
            "Service", "Min", "Max", "Desired", "Running", "Active", "Ready", "Reason", "Age",
            "Message"
        ]
    );
    let ready = &crd["spec"]["versions"][0]["additionalPrinterColumns"][6];
    assert_eq!(
        ready["jsonPath"],
        ".status.conditions[?(@.type==\"Ready\")].status"
    );
    assert!(
        ready.get("priority").is_none(),
        "Ready shows in kubectl get"
    );
}

/// The CEL rules that refuse bad input at admission are in the generated schema,
/// at the level they are scoped to.
#[test]
fn crd_carries_cel_rules() {
    let s = schema();
    let spec = &s["properties"]["spec"];
    assert_eq!(
        spec["x-kubernetes-validations"][0],
        json!({
            "rule": "self.minReplicas <= self.maxReplicas",
            "message": "minReplicas must be less than or equal to maxReplicas",
            "fieldPath": ".minReplicas",
        })
    );
    assert_eq!(
        spec["x-kubernetes-validations"][1]["rule"],
        "self.metricLookbackSeconds >= self.metricPeriodSeconds"
    );
    let metric = &spec["properties"]["metrics"]["items"];
    assert!(rules(metric)[0].contains("has(self.cpuUtilization)"));
    let target = &metric["properties"]["cloudWatch"]["properties"]["target"];
    assert_eq!(
        rules(target),
        ["has(self.value) != has(self.averageValuePerTask)"]
    );
    let window = &spec["properties"]["schedules"]["items"];
    let window_rules = rules(window);
    for want in [
        "has(self.cron) != has(self.start)",
        "!has(self.cron) || has(self.duration)",
        "!has(self.start) || has(self.end)",
        "!has(self.start) || !has(self.end) || self.end > self.start",
    ] {
        assert!(window_rules.iter().any(|r| r == want), "missing {want}");
    }
    // Durations a tenant sets have the shared 1 s floor.
    let floor = capstan_core::schedule::rule_min_duration();
    assert_eq!(rules(&window["properties"]["duration"]), [floor.as_str()]);
    assert_eq!(
        rules(&spec["properties"]["evaluationInterval"]),
        [floor.as_str()]
    );
    let fallback = &spec["properties"]["fallback"];
    assert_eq!(rules(fallback).len(), 2);
}

/// List-maps: status.conditions keyed by type, spec.schedules keyed by name.
#[test]
fn crd_carries_list_map_markers() {
    let s = schema();
    let conditions = &s["properties"]["status"]["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
    let schedules = &s["properties"]["spec"]["properties"]["schedules"];
    assert_eq!(schedules["x-kubernetes-list-type"], "map");
    assert_eq!(schedules["x-kubernetes-list-map-keys"], json!(["name"]));
    assert_eq!(
        schedules["items"]["required"],
        json!(["name"]),
        "a list-map key must be required"
    );
}

/// Bounds, patterns and defaults the API server applies.
#[test]
fn crd_carries_bounds_patterns_and_defaults() {
    let s = schema();
    let spec = &s["properties"]["spec"]["properties"];
    assert_eq!(spec["minReplicas"]["minimum"], 1.0);
    assert_eq!(spec["minReplicas"]["default"], 1);
    assert_eq!(spec["tolerance"]["default"], "0.1");
    assert_eq!(spec["tolerance"]["pattern"], TOLERANCE_PATTERN);
    assert_eq!(spec["evaluationInterval"]["default"], "15s");
    assert_eq!(
        spec["evaluationInterval"]["pattern"],
        capstan_core::schedule::DURATION_PATTERN
    );
    assert_eq!(spec["mode"]["default"], "Direct");
    assert_eq!(spec["metricPeriodSeconds"]["default"], 60);
    assert_eq!(spec["metricLookbackSeconds"]["default"], 300);
    assert_eq!(
        rules(&spec["metricPeriodSeconds"]),
        ["self in [1, 5, 10, 30] || self % 60 == 0"]
    );
    assert_eq!(spec["metrics"]["minItems"], 1);
    let metric = &spec["metrics"]["items"]["properties"];
    assert_eq!(
        metric["cpuUtilization"]["properties"]["targetPercent"]["minimum"],
        1.0
    );
    let target = &metric["cloudWatch"]["properties"]["target"]["properties"];
    assert_eq!(target["value"]["exclusiveMinimum"], true);
    assert_eq!(target["averageValuePerTask"]["exclusiveMinimum"], true);
    let window = &spec["schedules"]["items"]["properties"];
    assert_eq!(window["cron"]["pattern"], CRON_PATTERN);
    assert_eq!(window["timeZone"]["pattern"], TIME_ZONE_PATTERN);
    assert_eq!(window["start"]["format"], "date-time");
    let policy = &spec["behavior"]["properties"]["scaleUp"]["properties"]["policies"];
    assert_eq!(
        policy["items"]["properties"]["periodSeconds"]["maximum"],
        1800.0
    );
}

/// Every field in the schema has a description (it is the `kubectl explain` text).
#[test]
fn every_field_is_documented() {
    fn walk(path: &str, v: &Value, missing: &mut Vec<String>) {
        if let Some(props) = v["properties"].as_object() {
            for (name, p) in props {
                let here = format!("{path}.{name}");
                // Condition is k8s-openapi's and documented there.
                if p["description"].as_str().is_none_or(str::is_empty) {
                    missing.push(here.clone());
                }
                if !here.contains(".conditions") {
                    walk(&here, p, missing);
                }
            }
        }
        if v["items"].is_object() {
            walk(&format!("{path}[]"), &v["items"], missing);
        }
    }
    let s = schema();
    let mut missing = Vec::new();
    walk("", &s["properties"]["spec"], &mut missing);
    walk(".status", &s["properties"]["status"], &mut missing);
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:?}"
    );
}

#[test]
fn structural_schema_has_no_refs_or_one_of() {
    let text = serde_json::to_string(&schema()).expect("serializes");
    assert!(!text.contains("$ref"), "schema must be inlined");
    assert!(!text.contains("\"oneOf\""));
    assert!(!text.contains("\"anyOf\""));
}

/// A minimal object deserializes with the documented defaults.
#[test]
fn minimal_spec_takes_defaults() {
    let spec: ServiceScalingSpec = serde_json::from_value(json!({
        "connectionRef": {"name": "prod"},
        "service": {"cluster": "main", "service": "web"},
        "maxReplicas": 10,
        "metrics": [{"cpuUtilization": {"targetPercent": 60}}],
    }))
    .expect("deserializes");
    assert_eq!(spec.min_replicas, 1);
    assert_eq!(spec.tolerance.fraction(), Some(0.1));
    assert_eq!(
        spec.evaluation_interval.duration(),
        Ok(std::time::Duration::from_secs(15))
    );
    assert_eq!(spec.mode, ScalingMode::Direct);
    assert!(!spec.suspend);
    assert!(matches!(spec.metrics[0].kind(), Some(MetricKind::Cpu(t)) if t.target_percent == 60));
    assert_eq!(spec.metrics[0].display_name(), "cpu");
}

/// Any non-negative decimal or milli-quantity is a tolerance, as in the HPA (whose
/// validation only refuses a negative Quantity); the schema's pattern and the
/// parser agree on every case.
#[test]
fn tolerance_accepts_every_non_negative_quantity_form() {
    let cases = [
        ("0", Some(0.0)),
        ("0.1", Some(0.1)),
        (".05", Some(0.05)),
        ("0.125", Some(0.125)),
        ("0.999", Some(0.999)),
        ("0.0", Some(0.0)),
        ("1", Some(1.0)),
        ("2.0", Some(2.0)),
        ("10", Some(10.0)),
        ("0.1234", Some(0.1234)),
        ("100m", Some(0.1)),
        ("2000m", Some(2.0)),
        ("1.5m", Some(0.0015)),
        ("0.", None),
        ("-0.1", None),
        ("-2", None),
        ("+1", None),
        ("10%", None),
        ("1e3", None),
        ("inf", None),
        ("NaN", None),
        ("m", None),
        (".m", None),
        ("1Ki", None),
        ("", None),
        ("123456789012345678901", None),
    ];
    let re = regex::Regex::new(TOLERANCE_PATTERN).expect("pattern compiles");
    for (s, want) in cases {
        assert_eq!(Tolerance(s.to_owned()).fraction(), want, "{s}");
        assert_eq!(
            re.is_match(s) && s.len() <= TOLERANCE_MAX_LENGTH,
            want.is_some(),
            "pattern and parser agree on {s:?}"
        );
    }
    assert_eq!(Tolerance::new("2.0").and_then(|t| t.fraction()), Some(2.0));
    assert_eq!(Tolerance::new("-1"), None);
}
