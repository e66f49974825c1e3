use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use proptest::prelude::*;

use super::*;
use crate::namespaces::AllowedNamespaces;

fn glob(p: &str) -> Glob {
    Glob::parse(p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

#[test]
fn star_stays_within_a_segment_and_double_star_crosses() {
    let cases = [
        // pattern, subject, matches
        ("payments/*", "payments/db", true),
        ("payments/*", "payments/", true),
        ("payments/*", "payments/db/replica", false),
        ("payments/*", "payments", false),
        ("payments/**", "payments/db/replica", true),
        ("payments/**", "payments/", true),
        ("payments/**", "payments", false),
        ("payments/*-db", "payments/orders-db", true),
        ("payments/*-db", "payments/orders/x-db", false),
        ("payments/**-db", "payments/orders/x-db", true),
        ("*/web", "shop/web", true),
        ("*/web", "a/shop/web", false),
        ("**/web", "a/shop/web", true),
        ("**/web", "web", false),
        ("*", "", true),
        ("**", "a/b/c", true),
        ("*", "a/b", false),
        // Anchored at both ends.
        ("payments/db", "payments/db2", false),
        ("payments/db", "xpayments/db", false),
        ("a*b*c", "abc", true),
        ("a*b*c", "axxbyyc", true),
        ("a*b*c", "axxbyy/c", false),
        // Case-sensitive.
        ("Payments/*", "payments/db", false),
    ];
    for (p, s, want) in cases {
        assert_eq!(glob(p).matches("ns", s), want, "{p:?} vs {s:?}");
    }
}

#[test]
fn every_other_character_is_literal() {
    // No regular-expression syntax leaks through: `.`, `+`, `?`, brackets and
    // backslashes match only themselves.
    let cases = [
        ("a.b", "a.b", true),
        ("a.b", "axb", false),
        ("a+", "aa", false),
        ("a+", "a+", true),
        ("a?", "ab", false),
        ("[ab]", "a", false),
        ("[ab]", "[ab]", true),
        ("a\\*", "a\\xyz", true),
        ("a\\*", "a*", false),
        ("(x|y)", "x", false),
        ("^a", "a", false),
        ("^a", "^a", true),
    ];
    for (p, s, want) in cases {
        assert_eq!(glob(p).matches("ns", s), want, "{p:?} vs {s:?}");
    }
}

#[test]
fn the_namespace_variable_is_substituted_literally() {
    let g = glob("${namespace}/*");
    assert!(g.matches("payments", "payments/db"));
    assert!(!g.matches("payments", "shop/db"));
    assert!(!g.matches("pay", "payments/db"));
    // A namespace's characters are never wildcards, whatever they are.
    assert!(!glob("${namespace}/x").matches("*", "shop/x"));
    assert!(!glob("${namespace}/x").matches("**", "a/b/x"));
    assert!(glob("${namespace}/x").matches("**", "**/x"));
    // Several times, and inside a segment.
    let g = glob("${namespace}-cluster/${namespace}-*");
    assert!(g.matches("shop", "shop-cluster/shop-web"));
    assert!(!g.matches("shop", "shop-cluster/bank-web"));
}

#[test]
fn malformed_patterns_are_refused() {
    assert_eq!(Glob::parse(""), Err(GlobError::Empty));
    assert_eq!(Glob::parse("a/***"), Err(GlobError::TripleStar));
    assert_eq!(Glob::parse("****"), Err(GlobError::TripleStar));
    assert_eq!(Glob::parse("${ns}/x"), Err(GlobError::UnknownVariable));
    assert_eq!(Glob::parse("a$"), Err(GlobError::UnknownVariable));
    assert_eq!(Glob::parse("${namespace"), Err(GlobError::UnknownVariable));
    // And a refused pattern matches nothing.
    let r = ScopedResource::SecretsManagerSecret("a/b".into());
    assert!(!r.matched_by("a/***", "ns"));
    assert!(!r.matched_by("${other}/b", "ns"));
}

#[test]
fn matching_is_linear_not_exponential() {
    // A backtracking matcher takes ~2^40 steps here.
    let pattern = "*a".repeat(40) + "b";
    let subject = "a".repeat(2000);
    assert!(!glob(&pattern).matches("ns", &subject));
    let pattern = "**a".repeat(40) + "b";
    assert!(!glob(&pattern).matches("ns", &subject));
}

/// The same glob as a regular expression, built by escaping: the reference the DP
/// matcher must agree with.
fn reference_regex(pattern: &str, namespace: &str) -> regex::Regex {
    let mut re = String::from("^");
    let mut rest = pattern;
    while let Some(c) = rest.chars().next() {
        if let Some(r) = rest.strip_prefix("**") {
            re.push_str("(?s:.*)");
            rest = r;
        } else if let Some(r) = rest.strip_prefix('*') {
            re.push_str("[^/]*");
            rest = r;
        } else if let Some(r) = rest.strip_prefix(NAMESPACE_VARIABLE) {
            re.push_str(&regex::escape(namespace));
            rest = r;
        } else {
            re.push_str(&regex::escape(&c.to_string()));
            rest = &rest[c.len_utf8()..];
        }
    }
    re.push('$');
    regex::Regex::new(&re).unwrap_or_else(|e| panic!("{re}: {e}"))
}

proptest! {
    #[test]
    fn agrees_with_an_escaped_regular_expression(
        parts in proptest::collection::vec(
            prop_oneof![
                Just("*".to_owned()), Just("**".to_owned()), Just("/".to_owned()),
                Just("${namespace}".to_owned()), "[ab.+-]{1,3}",
            ],
            1..8,
        ),
        subject in "[ab/.+-]{0,12}",
        namespace in "[ab]{1,2}",
    ) {
        let pattern = parts.concat();
        prop_assume!(!pattern.contains("***"));
        let g = glob(&pattern);
        let want = reference_regex(&pattern, &namespace).is_match(&subject);
        prop_assert_eq!(g.matches(&namespace, &subject), want, "{} vs {}", pattern, subject);
    }

    /// What the CRD's pattern admits (and CEL's `***` rule does not refuse) parses.
    #[test]
    fn what_admission_accepts_parses(p in "[a-z/*${}.:-]{1,16}|\\$\\{namespace\\}/[a-z*]{1,4}") {
        for schema in [SECRETS_MANAGER_PATTERN, VAULT_PATTERN, ECS_PATTERN] {
            let admitted = regex::Regex::new(schema).map(|r| r.is_match(&p)).unwrap_or(false)
                && !p.contains("***");
            if admitted {
                prop_assert!(Glob::parse(&p).is_ok(), "{} admitted by {} but not parsed", p, schema);
            }
        }
    }
}

#[test]
fn crd_patterns_admit_the_documented_examples_and_refuse_the_rest() {
    let re = |s: &str| regex::Regex::new(s).unwrap_or_else(|e| panic!("{e}"));
    let sm = re(SECRETS_MANAGER_PATTERN);
    for ok in [
        "${namespace}/*",
        "payments/**",
        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:payments/*",
        "team+a=b@c.d/*",
    ] {
        assert!(sm.is_match(ok), "{ok}");
    }
    for bad in ["${ns}/x", "a b", "a$b", "a?b", ""] {
        assert!(!sm.is_match(bad), "{bad}");
    }
    let vault = re(VAULT_PATTERN);
    for ok in ["secret/${namespace}/**", "kv/team-a/*", "*/x"] {
        assert!(vault.is_match(ok), "{ok}");
    }
    for bad in [
        "/secret/x",
        "secret/x/",
        "secret//x",
        "secret/a:b",
        "secret/${ns}",
    ] {
        assert!(!vault.is_match(bad), "{bad}");
    }
    let ecs = re(ECS_PATTERN);
    for ok in [
        "shop/*",
        "*/*",
        "${namespace}/${namespace}-*",
        "shop-1/web_2",
    ] {
        assert!(ecs.is_match(ok), "{ok}");
    }
    for bad in ["shop", "shop/web/x", "arn:aws:ecs:x", "/web", "shop/"] {
        assert!(!ecs.is_match(bad), "{bad}");
    }
}

#[test]
fn secrets_manager_name_patterns_match_only_names_and_arn_patterns_only_arns() {
    let name = ScopedResource::SecretsManagerSecret("payments/db".into());
    let arn = ScopedResource::SecretsManagerSecret(
        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:payments/db-AbCdEf".into(),
    );
    assert!(name.matched_by("payments/*", "ns"));
    assert!(!arn.matched_by("payments/*", "ns"));
    // Even a pattern that would match the ARN's characters.
    assert!(!arn.matched_by("**", "ns"));
    assert!(!arn.matched_by("*:secret:payments/*", "ns"));
    let arn_pattern = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:payments/*";
    assert!(arn.matched_by(arn_pattern, "ns"));
    assert!(!name.matched_by(arn_pattern, "ns"));
    assert!(!arn.matched_by(
        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:shop/*",
        "ns"
    ));
}

#[test]
fn vault_paths_are_mount_slash_path() {
    let r = ScopedResource::VaultKv {
        mount: "secret".into(),
        path: "payments/card-key".into(),
    };
    assert_eq!(r.subject().as_deref(), Some("secret/payments/card-key"));
    assert!(r.matched_by("secret/payments/*", "ns"));
    assert!(r.matched_by("secret/${namespace}/*", "payments"));
    assert!(!r.matched_by("secret/${namespace}/*", "shop"));
    assert!(!r.matched_by("kv/payments/*", "ns"));
    assert!(!r.matched_by("secret/data/payments/*", "ns"));
    let nested = ScopedResource::VaultKv {
        mount: "kv/team-a".into(),
        path: "db".into(),
    };
    assert!(nested.matched_by("kv/team-a/*", "ns"));
    assert!(!nested.matched_by("kv/*", "ns"));
    assert_eq!(r.to_string(), r#"Vault KV path "secret/payments/card-key""#);
}

#[test]
fn vault_paths_with_dot_segments_match_nothing() {
    // Over HTTP `shop/../payments/db` is `payments/db`: `**` must not let it through.
    for path in [
        "shop/../payments/db",
        "shop/./db",
        "shop/..",
        "../payments/db",
        "shop//db",
    ] {
        let r = ScopedResource::VaultKv {
            mount: "secret".into(),
            path: path.into(),
        };
        assert_eq!(r.subject(), None, "{path}");
        assert!(!r.matched_by("secret/shop/**", "shop"), "{path}");
        assert!(!r.matched_by("**", "shop"), "{path}");
    }
    let mount = ScopedResource::VaultKv {
        mount: "..".into(),
        path: "x".into(),
    };
    assert!(!mount.matched_by("**", "shop"));
    // Dots inside a segment are ordinary characters.
    let dotted = ScopedResource::VaultKv {
        mount: "secret".into(),
        path: "shop/db.v2/..x".into(),
    };
    assert!(dotted.matched_by("secret/shop/**", "shop"));
}

#[test]
fn ecs_arns_are_reduced_to_names() {
    let svc = |cluster: &str, service: &str| ScopedResource::EcsService {
        cluster: cluster.into(),
        service: service.into(),
    };
    let cases = [
        (svc("shop", "web"), Some("shop/web")),
        (
            svc("arn:aws:ecs:eu-west-1:123456789012:cluster/shop", "web"),
            Some("shop/web"),
        ),
        (
            svc(
                "shop",
                "arn:aws:ecs:eu-west-1:123456789012:service/shop/web",
            ),
            Some("shop/web"),
        ),
        // The old service ARN format has no cluster.
        (
            svc("shop", "arn:aws:ecs:eu-west-1:123456789012:service/web"),
            Some("shop/web"),
        ),
        // A service ARN of another cluster names nothing this pattern could grant.
        (
            svc(
                "shop",
                "arn:aws:ecs:eu-west-1:123456789012:service/bank/web",
            ),
            None,
        ),
        (
            svc("arn:aws:ecs:eu-west-1:123456789012:service/shop/web", "web"),
            None,
        ),
        (svc("arn:aws:iam::123456789012:cluster/shop", "web"), None),
        (svc("shop/bank", "web"), None),
        (svc("shop", ""), None),
    ];
    for (r, want) in cases {
        assert_eq!(r.subject().as_deref(), want, "{r}");
        assert_eq!(r.matched_by("*/*", "ns"), want.is_some(), "{r}");
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect()
}

fn by_names(names: &[&str]) -> Option<AllowedNamespaces> {
    Some(AllowedNamespaces {
        names: names.iter().map(|n| (*n).to_owned()).collect(),
        selector: None,
    })
}

fn secrets(patterns: &[&str]) -> Option<SecretsManagerScope> {
    Some(SecretsManagerScope {
        secrets: patterns.iter().map(|p| (*p).to_owned()).collect(),
    })
}

#[test]
fn without_scopes_everything_is_permitted() {
    let r = ScopedResource::SecretsManagerSecret("anything/at-all".into());
    assert!(permits(None, "shop", &labels(&[]), &r));
}

#[test]
fn scopes_grant_per_namespace_and_deny_the_rest() {
    let scopes = vec![
        // Every allowed namespace: its own prefix.
        ConnectionScope {
            secrets_manager: secrets(&["${namespace}/*"]),
            ..ConnectionScope::default()
        },
        // payments also gets the shared card keys and may redeploy its ECS services.
        ConnectionScope {
            namespaces: by_names(&["payments"]),
            secrets_manager: secrets(&["shared/card-*"]),
            ecs: Some(EcsScope {
                services: vec!["payments/*".into()],
            }),
            ..ConnectionScope::default()
        },
        // Namespaces labelled tier=platform may read the platform's secrets.
        ConnectionScope {
            namespaces: Some(AllowedNamespaces {
                names: Vec::new(),
                selector: Some(LabelSelector {
                    match_labels: Some(labels(&[("tier", "platform")])),
                    match_expressions: None,
                }),
            }),
            secrets_manager: secrets(&["platform/**"]),
            ..ConnectionScope::default()
        },
    ];
    let sm = |id: &str| ScopedResource::SecretsManagerSecret(id.into());
    let ecs = |c: &str, s: &str| ScopedResource::EcsService {
        cluster: c.into(),
        service: s.into(),
    };
    let none = labels(&[]);
    let platform = labels(&[("tier", "platform")]);
    let cases = [
        ("payments", &none, sm("payments/db"), true),
        ("payments", &none, sm("shared/card-visa"), true),
        ("payments", &none, ecs("payments", "api"), true),
        ("payments", &none, sm("shop/db"), false),
        ("payments", &none, sm("payments/db/nested"), false),
        ("payments", &none, sm("platform/x"), false),
        ("shop", &none, sm("shop/db"), true),
        ("shop", &none, sm("payments/db"), false),
        ("shop", &none, sm("shared/card-visa"), false),
        // No scope that applies to shop lists ECS: refused.
        ("shop", &none, ecs("shop", "web"), false),
        ("shop", &none, ecs("payments", "api"), false),
        ("infra", &platform, sm("platform/a/b"), true),
        ("infra", &platform, sm("infra/x"), true),
        ("infra", &none, sm("platform/a/b"), false),
        // No scope lists Vault paths at all.
        (
            "payments",
            &none,
            ScopedResource::VaultKv {
                mount: "secret".into(),
                path: "payments/x".into(),
            },
            false,
        ),
    ];
    for (ns, l, r, want) in cases {
        assert_eq!(permits(Some(&scopes), ns, l, &r), want, "{ns}: {r}");
    }
}

#[test]
fn a_scope_with_an_empty_selector_applies_to_no_namespace() {
    let scopes = vec![ConnectionScope {
        namespaces: Some(AllowedNamespaces {
            names: Vec::new(),
            selector: Some(LabelSelector::default()),
        }),
        secrets_manager: secrets(&["**"]),
        ..ConnectionScope::default()
    }];
    let r = ScopedResource::SecretsManagerSecret("a".into());
    assert!(!permits(Some(&scopes), "shop", &labels(&[("a", "b")]), &r));
}

#[test]
fn resources_read_as_a_sentence() {
    assert_eq!(
        ScopedResource::SecretsManagerSecret("payments/db".into()).to_string(),
        r#"Secrets Manager secret "payments/db""#
    );
    assert_eq!(
        ScopedResource::EcsService {
            cluster: "shop".into(),
            service: "web".into()
        }
        .to_string(),
        r#"ECS service "web" of cluster "shop""#
    );
}

#[test]
fn rds_arns_are_matched_whole_and_only_well_formed_ones() {
    let scopes = vec![ConnectionScope {
        rds: Some(RdsScope {
            resources: vec![
                "arn:aws:rds:eu-west-1:123456789012:db:${namespace}-*".into(),
                "arn:aws:rds:*:123456789012:cluster:shared".into(),
            ],
        }),
        ..ConnectionScope::default()
    }];
    let ok = |arn: &str, ns: &str| {
        permits(
            Some(&scopes),
            ns,
            &labels(&[]),
            &ScopedResource::Rds(arn.into()),
        )
    };
    assert!(ok(
        "arn:aws:rds:eu-west-1:123456789012:db:shop-main",
        "shop"
    ));
    assert!(!ok(
        "arn:aws:rds:eu-west-1:123456789012:db:shop-main",
        "payments"
    ));
    assert!(!ok(
        "arn:aws:rds:eu-west-1:999999999999:db:shop-main",
        "shop"
    ));
    assert!(!ok(
        "arn:aws:rds:eu-west-1:123456789012:cluster:shop-main",
        "shop"
    ));
    assert!(ok(
        "arn:aws:rds:us-east-1:123456789012:cluster:shared",
        "shop"
    ));
    // Not an instance or cluster ARN: nothing matches, not even `*` patterns.
    assert!(!ok(
        "arn:aws:rds:eu-west-1:123456789012:snapshot:shop-x",
        "shop"
    ));
    assert!(!ok("shop-main", "shop"));
    // Another kind of scope grants no RDS resource.
    let ecs_only = vec![ConnectionScope {
        ecs: Some(EcsScope {
            services: vec!["*/*".into()],
        }),
        ..ConnectionScope::default()
    }];
    assert!(!permits(
        Some(&ecs_only),
        "shop",
        &labels(&[]),
        &ScopedResource::Rds("arn:aws:rds:eu-west-1:123456789012:db:shop-main".into())
    ));
}

#[test]
fn iam_users_are_matched_by_path_and_name() {
    let scopes = vec![ConnectionScope {
        iam: Some(IamScope {
            users: vec!["/services/${namespace}/*".into()],
        }),
        ..ConnectionScope::default()
    }];
    let ok = |path: &str, name: &str, ns: &str| {
        permits(
            Some(&scopes),
            ns,
            &labels(&[]),
            &ScopedResource::IamUser {
                path: path.into(),
                name: name.into(),
            },
        )
    };
    assert!(ok("/services/shop/", "reporting", "shop"));
    assert!(!ok("/services/shop/", "reporting", "payments"));
    assert!(
        !ok("/", "admin", "shop"),
        "an administrator at the root is not granted"
    );
    assert!(
        !ok("/services/shop/deep/", "x", "shop"),
        "* stays within one segment"
    );
    assert!(
        !ok("services/shop/", "x", "shop"),
        "a path IAM would not report"
    );
}

#[test]
fn vault_database_roles_are_mount_slash_role_and_apart_from_transit_keys() {
    let scopes = vec![ConnectionScope {
        vault_database: Some(VaultDatabaseScope {
            roles: vec!["database/${namespace}-*".into()],
        }),
        ..ConnectionScope::default()
    }];
    let ok = |mount: &str, role: &str, ns: &str| {
        permits(
            Some(&scopes),
            ns,
            &labels(&[]),
            &ScopedResource::VaultDatabaseRole {
                mount: mount.into(),
                role: role.into(),
            },
        )
    };
    assert!(ok("database", "shop-orders", "shop"));
    assert!(!ok("database", "payments-orders", "shop"));
    assert!(!ok("database-admin", "shop-orders", "shop"));
    assert!(!ok("database", "shop-a/../b", "shop"), "a path segment");
    // A database scope grants no transit key of the same name, and the reverse.
    assert!(!permits(
        Some(&scopes),
        "shop",
        &labels(&[]),
        &ScopedResource::TransitKey {
            mount: "database".into(),
            key: "shop-orders".into(),
        }
    ));
    assert_eq!(
        ScopedResource::VaultDatabaseRole {
            mount: "database".into(),
            role: "shop-orders".into()
        }
        .to_string(),
        "Vault database role \"database/shop-orders\""
    );
}
