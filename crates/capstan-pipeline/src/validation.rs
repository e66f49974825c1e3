//! Validation of a [`PipelineSpec`] beyond the CRD schema and its CEL rules: templates
//! (and that every `{{ stages.<name>.results.<key> }}` names a result an earlier Job
//! stage declares), timeouts and check intervals, two Deploy stages on one service. The
//! admission rules (unique names, stage shape, connection for Deploy, `dependsOn` on
//! earlier stages, and the chart's policy on result references) are checked again so the controller never acts on a spec an older CRD let through. The
//! controller reports failures as Ready=False/InvalidSpec and waits for a change.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use capstan_core::schedule::DurationString;

use crate::crd::{MAX_RESULTS, MAX_STAGES, PipelineSpec, Stage, StageAction};
use crate::template;

/// Longest timeout a stage may have.
pub const MAX_STAGE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

pub use capstan_core::validation::{FieldError, summarize};

/// Checks a spec. Returns every problem found.
pub fn validate(spec: &PipelineSpec) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    if spec.revision.is_empty() || spec.revision.chars().any(char::is_whitespace) {
        errors.push(FieldError::new(
            "spec.revision",
            "must be a tag, digest or sha without spaces",
        ));
    }
    if spec.stages.is_empty() || spec.stages.len() > MAX_STAGES {
        errors.push(FieldError::new(
            "spec.stages",
            format!("must have 1 to {MAX_STAGES} stages"),
        ));
    }
    let mut names = BTreeSet::new();
    // The results each earlier Job stage declares.
    let mut declared: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut deployed_services = BTreeSet::new();
    let mut needs_connection = false;
    // Per stage, the stages that finish before it starts (its dependencies, theirs...).
    let mut ancestors: Vec<BTreeSet<usize>> = Vec::new();
    for (i, stage) in spec.stages.iter().enumerate() {
        let path = format!("spec.stages[{i}]");
        if !names.insert(stage.name.as_str()) {
            errors.push(FieldError::new(
                format!("{path}.name"),
                format!("`{}` is used by an earlier stage", stage.name),
            ));
        }
        check_depends_on(spec, i, &mut errors);
        let mut before = BTreeSet::new();
        for d in Stage::dependencies(&spec.stages, i) {
            before.insert(d);
            before.extend(ancestors.get(d).into_iter().flatten().copied());
        }
        // Results reach a stage only from the stages that finish before it.
        let visible: BTreeMap<&str, BTreeSet<&str>> = declared
            .iter()
            .filter(|(name, _)| {
                before
                    .iter()
                    .any(|b| spec.stages.get(*b).is_some_and(|s| s.name == **name))
            })
            .map(|(n, k)| (*n, k.clone()))
            .collect();
        ancestors.push(before);
        let declared_earlier = &declared;
        let check_tpl = |path: &str, text: &str, errors: &mut Vec<FieldError>| {
            check_template(path, text, &visible, declared_earlier, errors);
        };
        for (c, check) in stage.checks().iter().enumerate() {
            let cpath = format!("{path}.http[{c}]");
            check_tpl(&format!("{cpath}.url"), &check.url, &mut errors);
            for (h, header) in check.headers.iter().enumerate() {
                check_tpl(
                    &format!("{cpath}.headers[{h}].value"),
                    &header.value,
                    &mut errors,
                );
            }
            if let Some(f) = &check.json_field {
                check_tpl(&format!("{cpath}.jsonField.equals"), &f.equals, &mut errors);
            }
            check_range(
                &format!("{cpath}.interval"),
                &check.interval,
                Duration::from_secs(3600),
                "1h",
                &mut errors,
            );
            check_range(
                &format!("{cpath}.timeout"),
                &check.timeout,
                Duration::from_secs(60),
                "60s",
                &mut errors,
            );
        }
        match stage.action() {
            None => errors.push(FieldError::new(
                path.clone(),
                "a Deploy stage needs deploy, an Approval stage approval, and Test, Build and SmokeTest stages job (and none of the others)",
            )),
            Some(StageAction::Checks(_)) => {}
            Some(StageAction::Approval(a)) => match a.timeout.duration() {
                Ok(d)
                    if d >= Duration::from_secs(1)
                        && d <= crate::approval::MAX_APPROVAL_TIMEOUT => {}
                Ok(_) => errors.push(FieldError::new(
                    format!("{path}.approval.timeout"),
                    "must be between 1s and 7 days",
                )),
                Err(e) => errors.push(FieldError::new(
                    format!("{path}.approval.timeout"),
                    e.to_string(),
                )),
            },
            Some(StageAction::Job(job)) => {
                let check = |field: String, text: &str, errors: &mut Vec<FieldError>| {
                    check_tpl(&field, text, errors);
                };
                check(format!("{path}.job.image"), &job.image, &mut errors);
                for (j, c) in job.command.iter().enumerate() {
                    check(format!("{path}.job.command[{j}]"), c, &mut errors);
                }
                for (j, a) in job.args.iter().enumerate() {
                    check(format!("{path}.job.args[{j}]"), a, &mut errors);
                }
                for (j, e) in job.env.iter().enumerate() {
                    if let Some(v) = &e.value {
                        check(format!("{path}.job.env[{j}].value"), v, &mut errors);
                    }
                }
                check_timeout(&format!("{path}.job.timeout"), &job.timeout, &mut errors);
                let mut keys = BTreeSet::new();
                for (j, key) in job.results.iter().enumerate() {
                    if !keys.insert(key.as_str()) {
                        errors.push(FieldError::new(
                            format!("{path}.job.results[{j}]"),
                            format!("`{key}` is declared twice"),
                        ));
                    }
                }
                if job.results.len() > MAX_RESULTS {
                    errors.push(FieldError::new(
                        format!("{path}.job.results"),
                        format!("at most {MAX_RESULTS} results"),
                    ));
                }
                declared.insert(stage.name.as_str(), keys);
            }
            Some(StageAction::Deploy(deploy)) => {
                needs_connection |= deploy.connection_ref.is_none();
                let mut containers = BTreeSet::new();
                for (c, ci) in deploy.containers.iter().enumerate() {
                    let cpath = format!("{path}.deploy.containers[{c}]");
                    check_tpl(&format!("{cpath}.image"), &ci.image, &mut errors);
                    if !containers.insert(ci.name.as_str()) {
                        errors.push(FieldError::new(
                            format!("{cpath}.name"),
                            format!("container `{}` is named twice", ci.name),
                        ));
                    }
                }
                if deploy.containers.is_empty() {
                    errors.push(FieldError::new(
                        format!("{path}.deploy.containers"),
                        "name at least one container",
                    ));
                }
                check_timeout(&format!("{path}.deploy.timeout"), &deploy.timeout, &mut errors);
                let connection = deploy
                    .connection_ref
                    .as_ref()
                    .or(spec.connection_ref.as_ref())
                    .map(|c| c.name.as_str());
                if !deployed_services.insert((
                    connection,
                    deploy.cluster.as_str(),
                    deploy.service.as_str(),
                )) {
                    errors.push(FieldError::new(
                        format!("{path}.deploy.service"),
                        "an earlier Deploy stage already deploys this service; rollbacks would undo each other",
                    ));
                }
            }
        }
    }
    if needs_connection && spec.connection_ref.is_none() {
        errors.push(FieldError::new(
            "spec.connectionRef",
            "required when a Deploy stage names no connectionRef of its own",
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Every name in stage `i`'s `dependsOn` is a stage listed before it, once.
fn check_depends_on(spec: &PipelineSpec, i: usize, errors: &mut Vec<FieldError>) {
    let Some(names) = spec.stages.get(i).and_then(|s| s.depends_on.as_ref()) else {
        return;
    };
    let mut seen = BTreeSet::new();
    for (j, name) in names.iter().enumerate() {
        let path = format!("spec.stages[{i}].dependsOn[{j}]");
        if !spec.stages[..i].iter().any(|s| &s.name == name) {
            errors.push(FieldError::new(
                path,
                format!("`{name}` is not a stage listed before this one"),
            ));
        } else if !seen.insert(name.as_str()) {
            errors.push(FieldError::new(path, format!("`{name}` is listed twice")));
        }
    }
}

/// The template's syntax, and that each result it uses is declared by a Job stage
/// that finishes before this one (`visible`; `declared` has every earlier one, for the
/// message).
fn check_template(
    path: &str,
    text: &str,
    visible: &BTreeMap<&str, BTreeSet<&str>>,
    declared: &BTreeMap<&str, BTreeSet<&str>>,
    errors: &mut Vec<FieldError>,
) {
    match template::variables(text) {
        Err(e) => errors.push(FieldError::new(path, e.to_string())),
        Ok(vars) => {
            for v in vars {
                if let template::Var::Result { stage, key } = v {
                    if declared.contains_key(stage) && !visible.contains_key(stage) {
                        errors.push(FieldError::new(
                            path,
                            format!("`{{{{ stages.{stage}.results.{key} }}}}`: stage `{stage}` does not finish before this one starts (dependsOn)"),
                        ));
                        continue;
                    }
                    match visible.get(stage) {
                        None => errors.push(FieldError::new(
                            path,
                            format!("`{{{{ stages.{stage}.results.{key} }}}}`: no Job stage `{stage}` comes before this one"),
                        )),
                        Some(keys) if !keys.contains(key) => errors.push(FieldError::new(
                            path,
                            format!("`{{{{ stages.{stage}.results.{key} }}}}`: stage `{stage}` declares no result `{key}` (job.results)"),
                        )),
                        Some(_) => {}
                    }
                }
            }
        }
    }
}

fn check_range(
    path: &str,
    d: &DurationString,
    max: Duration,
    max_text: &str,
    errors: &mut Vec<FieldError>,
) {
    match d.duration() {
        Ok(d) if d >= Duration::from_secs(1) && d <= max => {}
        Ok(_) => errors.push(FieldError::new(
            path,
            format!("must be between 1s and {max_text}"),
        )),
        Err(e) => errors.push(FieldError::new(path, e.to_string())),
    }
}

fn check_timeout(path: &str, timeout: &DurationString, errors: &mut Vec<FieldError>) {
    match timeout.duration() {
        Ok(d) if d >= Duration::from_secs(1) && d <= MAX_STAGE_TIMEOUT => {}
        Ok(_) => errors.push(FieldError::new(path, "must be between 1s and 24h")),
        Err(e) => errors.push(FieldError::new(path, e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::crd::tests::example_spec;
    use crate::crd::{Stage, StageType};

    fn dur(s: &str) -> DurationString {
        DurationString::new(s).expect("valid duration")
    }

    fn paths(spec: &PipelineSpec) -> Vec<String> {
        match validate(spec) {
            Ok(()) => vec![],
            Err(errors) => errors.into_iter().map(|e| e.path).collect(),
        }
    }

    fn job_stage(name: &str, type_: StageType) -> Stage {
        crate::crd::tests::job_stage(name, type_, &[])
    }

    #[test]
    fn the_example_is_valid() {
        assert_eq!(validate(&example_spec()), Ok(()));
    }

    /// Each case breaks one thing and names the field the error must point at.
    #[test]
    fn invalid_specs_are_reported_at_the_right_field() {
        type Case = (&'static str, fn(&mut PipelineSpec), &'static str);
        let cases: Vec<Case> = vec![
            ("no stages", |s| s.stages.clear(), "spec.stages"),
            (
                "duplicate name",
                |s| s.stages[1].name = s.stages[0].name.clone(),
                "spec.stages[1].name",
            ),
            (
                "deploy without connection",
                |s| s.connection_ref = None,
                "spec.connectionRef",
            ),
            (
                "deploy stage with a job",
                |s| s.stages[2].job = job_stage("x", StageType::Test).job,
                "spec.stages[2]",
            ),
            (
                "test stage without job",
                |s| s.stages[0].job = None,
                "spec.stages[0]",
            ),
            (
                "unknown template variable",
                |s| {
                    if let Some(d) = s.stages[2].deploy.as_mut() {
                        d.containers[0].image = "repo/app:{{ tag }}".into();
                    }
                },
                "spec.stages[2].deploy.containers[0].image",
            ),
            (
                "unclosed template in args",
                |s| {
                    if let Some(j) = s.stages[0].job.as_mut() {
                        j.args = vec!["--rev={{ revision".into()];
                    }
                },
                "spec.stages[0].job.args[0]",
            ),
            (
                "zero timeout",
                |s| {
                    if let Some(j) = s.stages[0].job.as_mut() {
                        j.timeout = dur("0s");
                    }
                },
                "spec.stages[0].job.timeout",
            ),
            (
                "timeout over a day",
                |s| {
                    if let Some(d) = s.stages[2].deploy.as_mut() {
                        d.timeout = dur("25h");
                    }
                },
                "spec.stages[2].deploy.timeout",
            ),
            (
                "same service deployed twice",
                |s| {
                    let mut again = s.stages[2].clone();
                    again.name = "again".into();
                    s.stages.push(again);
                },
                "spec.stages[7].deploy.service",
            ),
            (
                "revision with a space",
                |s| s.revision = "1 2".into(),
                "spec.revision",
            ),
            (
                "a result of a later stage",
                |s| {
                    if let Some(j) = s.stages[0].job.as_mut() {
                        j.args = vec!["{{ stages.build.results.imageDigest }}".into()];
                    }
                },
                "spec.stages[0].job.args[0]",
            ),
            (
                "an undeclared result",
                |s| {
                    if let Some(d) = s.stages[2].deploy.as_mut() {
                        d.containers[0].image = "repo/app@{{ stages.build.results.nope }}".into();
                    }
                },
                "spec.stages[2].deploy.containers[0].image",
            ),
            (
                "dependsOn a later stage",
                |s| s.stages[1].depends_on = Some(vec!["staging".into()]),
                "spec.stages[1].dependsOn[0]",
            ),
            (
                "dependsOn the same stage twice",
                |s| s.stages[2].depends_on = Some(vec!["build".into(), "build".into()]),
                "spec.stages[2].dependsOn[1]",
            ),
            (
                "a result of a stage running side by side",
                |s| {
                    // build no longer waits for unit-tests, and unit-tests does not
                    // wait for build: neither's results reach the other.
                    s.stages[1].depends_on = Some(vec![]);
                    s.stages[2].depends_on = Some(vec!["unit-tests".into()]);
                    if let Some(d) = s.stages[2].deploy.as_mut() {
                        d.containers[0].image =
                            "repo/app@{{ stages.build.results.imageDigest }}".into();
                    }
                },
                "spec.stages[2].deploy.containers[0].image",
            ),
            (
                "a result key declared twice",
                |s| {
                    if let Some(j) = s.stages[1].job.as_mut() {
                        j.results.push(j.results[0].clone());
                    }
                },
                "spec.stages[1].job.results[1]",
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
    fn errors_are_summarized() {
        let mut spec = example_spec();
        spec.connection_ref = None;
        spec.revision = "a b".into();
        let errors = validate(&spec).expect_err("two problems");
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(
            summarize(&errors),
            "spec.revision: must be a tag, digest or sha without spaces; spec.connectionRef: required when a Deploy stage names no connectionRef of its own"
        );
    }

    proptest! {
        /// Duplicates are reported exactly when a name repeats, once per repeat.
        #[test]
        fn duplicate_names_are_found(names in prop::collection::vec("[a-c]{1,2}", 1..=16)) {
            let mut spec = example_spec();
            spec.stages = names.iter().map(|n| job_stage(n, StageType::Test)).collect();
            let distinct: BTreeSet<&String> = names.iter().collect();
            let duplicates = paths(&spec).iter().filter(|p| p.ends_with(".name")).count();
            prop_assert_eq!(duplicates, names.len() - distinct.len());
        }

        /// Rendering replaces every placeholder and leaves no braces behind.
        #[test]
        fn revisions_render_into_templates(
            revision in "[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,40}",
            prefix in "[a-z0-9./:-]{0,20}",
        ) {
            let text = format!("{prefix}{{{{ revision }}}}@{{{{revision}}}}");
            let rendered = template::render(&text, &revision).expect("renders");
            prop_assert_eq!(rendered, format!("{prefix}{revision}@{revision}"));
        }
    }
}
