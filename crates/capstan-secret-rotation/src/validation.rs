//! Validation of a [`SecretRotationSpec`] beyond what the CRD schema and its CEL rules
//! enforce at admission: time zones, template variables, character classes emptied by
//! exclusions, derived names that would not fit. The controller runs [`validate`] first
//! and reports failures as Ready=False/InvalidSpec, then waits for the spec to change.
//!
//! The safety-relevant admission rules (single-user acknowledgement, strategy/target fit,
//! connection references) are checked here again, so a cluster whose CRD was installed
//! without them cannot talk the controller into an unsafe rotation.

use std::time::Duration;

use capstan_core::schedule::{CronSchedule, parse_time_zone};

use crate::crd::{Backend, Delivery, Generator, Schedule, SecretRotationSpec, Strategy, Target};
use crate::generator::{self, GeneratorError};
use crate::template::{Template, Variable};

/// [`crate::crd::MIN_INTERVAL`] as a duration.
const MIN_INTERVAL_DURATION: Duration = Duration::from_secs(1);

pub use capstan_core::validation::{FieldError, summarize};

/// Checks a spec. Returns every problem found, not just the first.
pub fn validate(spec: &SecretRotationSpec) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    check_references(spec, &mut errors);
    check_strategy(spec, &mut errors);
    check_schedule(&spec.schedule, &mut errors);
    check_generator(&spec.generator, &mut errors);
    check_target(spec, &mut errors);
    if let Some(delivery) = &spec.delivery {
        check_delivery(spec, delivery, &mut errors);
    }
    if !(1..=10).contains(&spec.max_attempts_per_rotation) {
        errors.push(FieldError::new(
            "spec.maxAttemptsPerRotation",
            "must be between 1 and 10",
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn check_references(spec: &SecretRotationSpec, errors: &mut Vec<FieldError>) {
    match &spec.backend {
        Backend::AwsSecretsManager(_) | Backend::Vault(_) if spec.connection_ref.is_none() => {
            errors.push(FieldError::new(
                "spec.connectionRef",
                "required with the awsSecretsManager and vault backends",
            ));
        }
        Backend::Kubernetes(_) if spec.connection_ref.is_some() => {
            errors.push(FieldError::new(
                "spec.connectionRef",
                "must not be set with the kubernetes backend (ECS delivery takes delivery.ecsConnectionRef)",
            ));
        }
        Backend::Vault(vault) if vault.effective_pending_path() == vault.path => {
            errors.push(FieldError::new(
                "spec.backend.vault.pendingPath",
                "must differ from path",
            ));
        }
        Backend::Kubernetes(k8s) if k8s.effective_pending_secret_name() == k8s.secret_name => {
            errors.push(FieldError::new(
                "spec.backend.kubernetes.pendingSecretName",
                "must differ from secretName",
            ));
        }
        _ => {}
    }
    if let Backend::Kubernetes(k8s) = &spec.backend
        && k8s.effective_pending_secret_name().len() > 253
    {
        errors.push(FieldError::new(
            "spec.backend.kubernetes.secretName",
            "too long to derive the pending Secret's name; set pendingSecretName",
        ));
    }
}

/// What the schema cannot say about a target: an IAM key's grace period within the
/// interval (the admission rule's twin, for objects stored before it).
fn check_target(spec: &SecretRotationSpec, errors: &mut Vec<FieldError>) {
    if let Target::VaultDatabaseDynamicRole(r) = &spec.target {
        if let Err((field, e)) = r.durations() {
            errors.push(FieldError::new(
                format!("spec.target.vaultDatabaseDynamicRole.{field}"),
                e,
            ));
        }
        if !matches!(spec.backend, crate::crd::Backend::Kubernetes(_)) {
            errors.push(FieldError::new(
                "spec.backend",
                "target.vaultDatabaseDynamicRole needs backend.kubernetes: dynamic credentials are not copied into Secrets Manager or Vault KV",
            ));
        }
    }
    if let Target::VaultDatabaseStaticRole(r) = &spec.target {
        let path = "spec.target.vaultDatabaseStaticRole.rotationPeriod";
        match r.rotation_period() {
            Err(e) => errors.push(FieldError::new(path, e)),
            Ok(period) => {
                if let Some(Ok(interval)) = spec.schedule.interval.as_ref().map(|i| i.duration())
                    && period < interval * 2
                {
                    errors.push(FieldError::new(
                        path,
                        "must be at least twice schedule.interval: Capstan's schedule rotates first, Vault's own rotation is the exception",
                    ));
                }
            }
        }
        if let Err(e) = r.drift_check() {
            errors.push(FieldError::new(
                "spec.target.vaultDatabaseStaticRole.driftCheckInterval",
                e,
            ));
        }
    }
    if let Target::IamAccessKey(k) = &spec.target {
        let path = "spec.target.iamAccessKey.gracePeriod";
        match k.grace() {
            Err(e) => errors.push(FieldError::new(path, e)),
            Ok(grace) => {
                if let Some(Ok(interval)) = spec.schedule.interval.as_ref().map(|i| i.duration())
                    && grace > interval
                {
                    errors.push(FieldError::new(
                        path,
                        "must not be longer than schedule.interval: the previous key must be gone before the next rotation",
                    ));
                }
            }
        }
    }
}

fn check_strategy(spec: &SecretRotationSpec, errors: &mut Vec<FieldError>) {
    match &spec.strategy {
        Strategy::AlternatingUsers(alt) => {
            if !spec.target.is_database() {
                errors.push(FieldError::new(
                    "spec.strategy.alternatingUsers",
                    "needs a database target (postgres or mysql)",
                ));
                return;
            }
            if let (Some((first, second)), Some(max)) =
                (spec.alternating_usernames(), spec.target.max_username_len())
            {
                let path = if alt.secondary_username.is_some() {
                    "spec.strategy.alternatingUsers.secondaryUsername"
                } else {
                    "spec.strategy.alternatingUsers"
                };
                if first == second {
                    errors.push(FieldError::new(
                        path,
                        "must differ from the target's username",
                    ));
                }
                if second.len() > max {
                    errors.push(FieldError::new(
                        path,
                        format!(
                            "the second username `{second}` is longer than the {max} characters the target allows; set secondaryUsername"
                        ),
                    ));
                }
            }
        }
        Strategy::SingleUser(single) => {
            let restarts = spec
                .delivery
                .as_ref()
                .is_some_and(Delivery::restarts_workloads);
            if restarts && !single.accept_login_failures_until_restart {
                errors.push(FieldError::new(
                    "spec.strategy.singleUser.acceptLoginFailuresUntilRestart",
                    "must be true with delivery.rollouts or delivery.ecsServices: the old password stops working before the workloads restart (alternatingUsers avoids that)",
                ));
            }
        }
    }
}

fn check_schedule(schedule: &Schedule, errors: &mut Vec<FieldError>) {
    match (&schedule.interval, &schedule.cron) {
        (Some(_), Some(_)) | (None, None) => errors.push(FieldError::new(
            "spec.schedule",
            "exactly one of interval or cron must be set",
        )),
        _ => {}
    }
    if let Some(interval) = &schedule.interval {
        match interval.duration() {
            Ok(d) if d >= MIN_INTERVAL_DURATION => {}
            Ok(_) => errors.push(FieldError::new(
                "spec.schedule.interval",
                "must be at least 1s",
            )),
            Err(e) => errors.push(FieldError::new("spec.schedule.interval", e.to_string())),
        }
    }
    if let Some(cron) = &schedule.cron {
        // Parses in the time zone too, so a bad zone is reported once, at timeZone.
        match CronSchedule::parse(cron, None) {
            Ok(_) => {}
            Err(e) => errors.push(FieldError::new("spec.schedule.cron", e.to_string())),
        }
    }
    if let Some(tz) = &schedule.time_zone {
        if schedule.cron.is_none() {
            errors.push(FieldError::new(
                "spec.schedule.timeZone",
                "applies to cron only (the window has its own timeZone)",
            ));
        }
        check_time_zone("spec.schedule.timeZone", tz, errors);
    }
    if let Some(window) = &schedule.window {
        let start = parse_hh_mm(&window.start);
        let end = parse_hh_mm(&window.end);
        if start.is_none() {
            errors.push(FieldError::new(
                "spec.schedule.window.start",
                "must be HH:MM",
            ));
        }
        if end.is_none() {
            errors.push(FieldError::new("spec.schedule.window.end", "must be HH:MM"));
        }
        if start.is_some() && start == end {
            errors.push(FieldError::new(
                "spec.schedule.window.end",
                "window start and end must differ",
            ));
        }
        if let Some(tz) = &window.time_zone {
            check_time_zone("spec.schedule.window.timeZone", tz, errors);
        }
    }
}

fn check_time_zone(path: &str, tz: &str, errors: &mut Vec<FieldError>) {
    if let Err(e) = parse_time_zone(tz) {
        errors.push(FieldError::new(path, e.to_string()));
    }
}

/// Minutes after midnight of `HH:MM`, `None` if malformed.
pub fn parse_hh_mm(text: &str) -> Option<u32> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let h: u32 = h.parse().ok()?;
    let m: u32 = m.parse().ok()?;
    (h < 24 && m < 60).then_some(h * 60 + m)
}

fn check_generator(g: &Generator, errors: &mut Vec<FieldError>) {
    if let Some(bad) = g
        .symbol_characters
        .chars()
        .find(|c| !c.is_ascii_punctuation())
    {
        errors.push(FieldError::new(
            "spec.generator.symbolCharacters",
            format!("`{bad}` is not ASCII punctuation"),
        ));
    }
    if let Err(e) = generator::check(g) {
        let path = match e {
            GeneratorError::InvalidLength(_) | GeneratorError::TooShort { .. } => {
                "spec.generator.length"
            }
            GeneratorError::EmptyClass(_) => "spec.generator.excludeCharacters",
            GeneratorError::NoClass | GeneratorError::InvalidMarker => "spec.generator",
        };
        errors.push(FieldError::new(path, e.to_string()));
    }
}

/// The variables a target provides to templates ([`Target::available_variables`]).
pub fn available_variables(target: &Target) -> Vec<Variable> {
    target.available_variables()
}

fn check_delivery(spec: &SecretRotationSpec, delivery: &Delivery, errors: &mut Vec<FieldError>) {
    if let Some(secret) = &delivery.secret {
        if let Backend::Kubernetes(k8s) = &spec.backend
            && (secret.name == k8s.secret_name
                || secret.name == k8s.effective_pending_secret_name())
        {
            errors.push(FieldError::new(
                "spec.delivery.secret.name",
                "must differ from the kubernetes backend's Secret and pending Secret",
            ));
        }
        let available = available_variables(&spec.target);
        for (key, text) in &secret.template {
            let path = format!("spec.delivery.secret.template[{key}]");
            if !is_secret_key(key) {
                errors.push(FieldError::new(
                    path.clone(),
                    "keys must be 1 to 253 characters of letters, digits, `-`, `_` and `.`",
                ));
            }
            match Template::parse(text) {
                Err(e) => errors.push(FieldError::new(path, e.to_string())),
                Ok(template) => {
                    for v in template.variables() {
                        if !available.contains(&v) {
                            errors.push(FieldError::new(
                                path.clone(),
                                format!(
                                    "variable `{}` is not available with the {} target",
                                    v.name(),
                                    spec.target.kind().as_str()
                                ),
                            ));
                        }
                    }
                }
            }
        }
    }
    for (i, rollout) in delivery.rollouts.iter().enumerate() {
        let path = format!("spec.delivery.rollouts[{i}]");
        match (&rollout.name, &rollout.selector) {
            (Some(_), None) => {}
            (None, Some(selector)) => {
                if let Err(message) = crate::delivery::rollout_selector(selector) {
                    errors.push(FieldError::new(
                        format!("{path}.selector"),
                        format!("{message}; name the workloads or fix the selector"),
                    ));
                }
            }
            _ => errors.push(FieldError::new(
                path,
                "exactly one of name or selector must be set",
            )),
        }
    }
    if !(1..=16).contains(&delivery.max_concurrent_rollouts) {
        errors.push(FieldError::new(
            "spec.delivery.maxConcurrentRollouts",
            "must be between 1 and 16",
        ));
    }
    if !delivery.ecs_services.is_empty() && spec.ecs_connection().is_none() {
        errors.push(FieldError::new(
            "spec.delivery.ecsConnectionRef",
            "delivery.ecsServices needs an AWS ClusterConnection: set delivery.ecsConnectionRef, or connectionRef",
        ));
    }
}

fn is_secret_key(key: &str) -> bool {
    (1..=253).contains(&key.len())
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::tests::example_spec;
    use crate::crd::{
        AlternatingUsersStrategy, ConnectionRef, EcsService, KubernetesBackend, MysqlTarget,
        RolloutTarget, RotationWindow, SecretDelivery, ValueOnlyTarget, WorkloadKind,
    };
    use crate::crd::{RolloutSelector as LabelSelector, SelectorRequirement};

    fn dur(s: &str) -> capstan_core::schedule::DurationString {
        capstan_core::schedule::DurationString::new(s).expect("valid duration")
    }

    fn paths(spec: &SecretRotationSpec) -> Vec<String> {
        match validate(spec) {
            Ok(()) => vec![],
            Err(errors) => errors.into_iter().map(|e| e.path).collect(),
        }
    }

    #[test]
    fn the_example_is_valid() {
        assert_eq!(validate(&example_spec()), Ok(()));
    }

    /// Each case breaks one thing and names the field the error must point at.
    #[test]
    fn invalid_specs_are_reported_at_the_right_field() {
        type Case = (&'static str, fn(&mut SecretRotationSpec), &'static str);
        let cases: Vec<Case> = vec![
            (
                "aws without connection",
                |s| s.connection_ref = None,
                "spec.connectionRef",
            ),
            (
                "kubernetes backend with connection",
                |s| {
                    s.backend = Backend::Kubernetes(KubernetesBackend {
                        secret_name: "db".into(),
                        key: "password".into(),
                        pending_secret_name: None,
                    });
                    s.delivery = None;
                },
                "spec.connectionRef",
            ),
            (
                "pending secret equals secret",
                |s| {
                    s.connection_ref = None;
                    s.backend = Backend::Kubernetes(KubernetesBackend {
                        secret_name: "db".into(),
                        key: "password".into(),
                        pending_secret_name: Some("db".into()),
                    });
                },
                "spec.backend.kubernetes.pendingSecretName",
            ),
            (
                "delivery secret is the backend secret",
                |s| {
                    s.connection_ref = None;
                    s.backend = Backend::Kubernetes(KubernetesBackend {
                        secret_name: "orders-db-app".into(),
                        key: "password".into(),
                        pending_secret_name: None,
                    });
                    s.delivery
                        .as_mut()
                        .expect("example delivers")
                        .ecs_services
                        .clear();
                },
                "spec.delivery.secret.name",
            ),
            (
                "alternating users with the none target",
                |s| {
                    s.target = Target::ValueOnly(ValueOnlyTarget {});
                    s.delivery = None;
                },
                "spec.strategy.alternatingUsers",
            ),
            (
                "secondary username equals the first",
                |s| {
                    s.strategy = Strategy::AlternatingUsers(AlternatingUsersStrategy {
                        secondary_username: Some("app".into()),
                    })
                },
                "spec.strategy.alternatingUsers.secondaryUsername",
            ),
            (
                "derived mysql secondary username too long",
                |s| {
                    s.target = Target::Mysql(MysqlTarget {
                        host: "db".into(),
                        port: 3306,
                        database: None,
                        username: "u".repeat(31),
                        user_host: "%".into(),
                        ssl_mode: Default::default(),
                        ca_secret_ref: None,
                        admin_secret_ref: match &s.target {
                            Target::Postgres(p) => p.admin_secret_ref.clone(),
                            _ => unreachable!(),
                        },
                    });
                    s.delivery = None;
                },
                "spec.strategy.alternatingUsers",
            ),
            (
                "single user with rollouts, unacknowledged",
                |s| s.strategy = Strategy::default(),
                "spec.strategy.singleUser.acceptLoginFailuresUntilRestart",
            ),
            (
                "interval and cron",
                |s| s.schedule.cron = Some("0 3 * * *".into()),
                "spec.schedule",
            ),
            (
                "neither interval nor cron",
                |s| s.schedule.interval = None,
                "spec.schedule",
            ),
            (
                "zero interval",
                |s| s.schedule.interval = Some(dur("0s")),
                "spec.schedule.interval",
            ),
            (
                "zero days",
                |s| s.schedule.interval = Some(dur("0d")),
                "spec.schedule.interval",
            ),
            (
                "sub-second interval",
                |s| s.schedule.interval = Some(dur("500ms")),
                "spec.schedule.interval",
            ),
            (
                "malformed interval stored before a schema change",
                |s| s.schedule.interval = Some(serde_json::from_str("\"1w\"").expect("a string")),
                "spec.schedule.interval",
            ),
            (
                "cron that never fires",
                |s| {
                    s.schedule.interval = None;
                    s.schedule.cron = Some("0 0 30 2 *".into());
                },
                "spec.schedule.cron",
            ),
            (
                "cron value out of range",
                |s| {
                    s.schedule.interval = None;
                    s.schedule.cron = Some("61 * * * *".into());
                },
                "spec.schedule.cron",
            ),
            (
                "cron with six fields",
                |s| {
                    s.schedule.interval = None;
                    s.schedule.cron = Some("0 0 3 * * *".into());
                },
                "spec.schedule.cron",
            ),
            (
                "unknown cron time zone",
                |s| {
                    s.schedule.interval = None;
                    s.schedule.cron = Some("0 3 * * 0".into());
                    s.schedule.time_zone = Some("Mars/Olympus".into());
                },
                "spec.schedule.timeZone",
            ),
            (
                "time zone with interval",
                |s| s.schedule.time_zone = Some("UTC".into()),
                "spec.schedule.timeZone",
            ),
            (
                "empty window",
                |s| {
                    s.schedule.window = Some(RotationWindow {
                        start: "02:00".into(),
                        end: "02:00".into(),
                        time_zone: None,
                    })
                },
                "spec.schedule.window.end",
            ),
            (
                "bad window time",
                |s| {
                    s.schedule.window = Some(RotationWindow {
                        start: "24:00".into(),
                        end: "02:00".into(),
                        time_zone: None,
                    })
                },
                "spec.schedule.window.start",
            ),
            (
                "exclusions empty the digits class",
                |s| s.generator.exclude_characters = Some("0123456789".into()),
                "spec.generator.excludeCharacters",
            ),
            (
                "no class enabled",
                |s| {
                    s.generator.lowercase = false;
                    s.generator.uppercase = false;
                    s.generator.digits = false;
                    s.generator.symbols = false;
                },
                "spec.generator",
            ),
            (
                "letters among symbols",
                |s| s.generator.symbol_characters = "-a".into(),
                "spec.generator.symbolCharacters",
            ),
            (
                "unknown template variable",
                |s| {
                    s.delivery
                        .as_mut()
                        .expect("delivery")
                        .secret
                        .as_mut()
                        .expect("secret")
                        .template
                        .insert("URL".into(), "{{ pasword }}".into());
                },
                "spec.delivery.secret.template[URL]",
            ),
            (
                "database variable without a mysql database",
                |s| {
                    s.target = Target::Mysql(MysqlTarget {
                        host: "db".into(),
                        port: 3306,
                        database: None,
                        username: "app".into(),
                        user_host: "%".into(),
                        ssl_mode: Default::default(),
                        ca_secret_ref: None,
                        admin_secret_ref: match &s.target {
                            Target::Postgres(p) => p.admin_secret_ref.clone(),
                            _ => unreachable!(),
                        },
                    });
                },
                "spec.delivery.secret.template[DATABASE_URL]",
            ),
            (
                "username with the none target",
                |s| {
                    s.target = Target::ValueOnly(ValueOnlyTarget {});
                    s.strategy = Strategy::SingleUser(crate::crd::SingleUserStrategy {
                        accept_login_failures_until_restart: true,
                    });
                },
                "spec.delivery.secret.template[DATABASE_URL]",
            ),
            (
                "bad secret key",
                |s| {
                    s.delivery
                        .as_mut()
                        .expect("delivery")
                        .secret
                        .as_mut()
                        .expect("secret")
                        .template
                        .insert("a/b".into(), "{{ password }}".into());
                },
                "spec.delivery.secret.template[a/b]",
            ),
            (
                "rollout with name and selector",
                |s| {
                    s.delivery
                        .as_mut()
                        .expect("delivery")
                        .rollouts
                        .push(RolloutTarget {
                            kind: WorkloadKind::Deployment,
                            name: Some("x".into()),
                            selector: Some(LabelSelector::default()),
                        })
                },
                "spec.delivery.rollouts[1]",
            ),
            (
                "empty selector",
                |s| {
                    s.delivery
                        .as_mut()
                        .expect("delivery")
                        .rollouts
                        .push(RolloutTarget {
                            kind: WorkloadKind::StatefulSet,
                            name: None,
                            selector: Some(LabelSelector::default()),
                        })
                },
                "spec.delivery.rollouts[1].selector",
            ),
            (
                "selector with a bad operator (as stored before the schema refused it)",
                |s| {
                    s.delivery
                        .as_mut()
                        .expect("delivery")
                        .rollouts
                        .push(RolloutTarget {
                            kind: WorkloadKind::Deployment,
                            name: None,
                            selector: Some(LabelSelector {
                                match_labels: Some([("app".into(), "web".into())].into()),
                                match_expressions: Some(vec![SelectorRequirement {
                                    key: "tier".into(),
                                    operator: "Equals".into(),
                                    values: Some(vec!["db".into()]),
                                }]),
                            }),
                        })
                },
                "spec.delivery.rollouts[1].selector",
            ),
            (
                "In without values",
                |s| {
                    s.delivery
                        .as_mut()
                        .expect("delivery")
                        .rollouts
                        .push(RolloutTarget {
                            kind: WorkloadKind::DaemonSet,
                            name: None,
                            selector: Some(LabelSelector {
                                match_labels: None,
                                match_expressions: Some(vec![SelectorRequirement {
                                    key: "tier".into(),
                                    operator: "In".into(),
                                    values: None,
                                }]),
                            }),
                        })
                },
                "spec.delivery.rollouts[1].selector",
            ),
            (
                "ecs without any connection",
                |s| {
                    s.connection_ref = None;
                    s.backend = Backend::Kubernetes(KubernetesBackend {
                        secret_name: "db".into(),
                        key: "password".into(),
                        pending_secret_name: None,
                    });
                },
                "spec.delivery.ecsConnectionRef",
            ),
        ];
        for (name, break_it, want) in cases {
            let mut spec = example_spec();
            break_it(&mut spec);
            let got = paths(&spec);
            assert!(
                got.iter().any(|p| p == want),
                "{name}: want {want}, got {got:?}"
            );
        }
    }

    #[test]
    fn ecs_with_its_own_connection_and_a_kubernetes_backend_is_valid() {
        let mut spec = example_spec();
        spec.connection_ref = None;
        spec.backend = Backend::Kubernetes(KubernetesBackend {
            secret_name: "db".into(),
            key: "password".into(),
            pending_secret_name: None,
        });
        let delivery = spec.delivery.as_mut().expect("delivery");
        delivery.ecs_connection_ref = Some(ConnectionRef {
            name: "aws-prod".into(),
        });
        delivery.ecs_services = vec![EcsService {
            cluster: "c".into(),
            service: "s".into(),
        }];
        assert_eq!(validate(&spec), Ok(()));
    }

    #[test]
    fn errors_are_all_reported_and_summarized() {
        let mut spec = example_spec();
        spec.connection_ref = None;
        spec.schedule.interval = Some(dur("0s"));
        spec.delivery = None;
        let errors = validate(&spec).expect_err("two problems");
        assert_eq!(errors.len(), 2, "{errors:?}");
        let text = summarize(&errors);
        assert!(
            text.contains("spec.connectionRef: ") && text.contains("; spec.schedule.interval: ")
        );
    }

    #[test]
    fn window_times_parse() {
        assert_eq!(parse_hh_mm("00:00"), Some(0));
        assert_eq!(parse_hh_mm("23:59"), Some(23 * 60 + 59));
        for bad in ["24:00", "1:00", "12:60", "12-00", ""] {
            assert_eq!(parse_hh_mm(bad), None, "{bad}");
        }
    }

    #[test]
    fn secret_delivery_without_template_is_valid() {
        let mut spec = example_spec();
        spec.delivery = Some(Delivery {
            secret: Some(SecretDelivery {
                name: "out".into(),
                template: Default::default(),
                deletion_policy: Default::default(),
            }),
            ..Delivery::default()
        });
        assert_eq!(validate(&spec), Ok(()));
    }
}
