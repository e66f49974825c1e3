//! Substitution in images, commands, arguments and environment values:
//! `{{ revision }}` (the run's revision) and `{{ stages.<name>.results.<key> }}` (a
//! result an earlier Job stage reported, e.g. the digest a Build pushed).
//!
//! Anything else between `{{` and `}}` is an error found at validation time, before a
//! run starts; so is a reference to a result that no earlier stage declares
//! ([`crate::validation`]).

/// Why a template does not render.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{{` without a matching `}}`.
    #[error("`{{{{` at byte {0} is not closed by `}}}}`")]
    Unclosed(usize),
    /// A placeholder other than `revision` or `stages.<name>.results.<key>`.
    #[error(
        "unknown variable `{0}` (the variables are `revision` and `stages.<name>.results.<key>`)"
    )]
    UnknownVariable(String),
    /// A result the stage has not reported (the run has not reached it, or the Job did
    /// not write it).
    #[error("stage `{stage}` has no result `{key}`")]
    MissingResult {
        /// The stage named.
        stage: String,
        /// The result's key.
        key: String,
    },
}

/// A placeholder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Var<'a> {
    /// `{{ revision }}`.
    Revision,
    /// `{{ stages.<stage>.results.<key> }}`.
    Result {
        /// The stage that reports it.
        stage: &'a str,
        /// The result's key.
        key: &'a str,
    },
}

fn parse_var(name: &str) -> Option<Var<'_>> {
    if name == "revision" {
        return Some(Var::Revision);
    }
    let rest = name.strip_prefix("stages.")?;
    let (stage, key) = rest.split_once(".results.")?;
    let ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    (ok(stage) && ok(key)).then_some(Var::Result { stage, key })
}

/// Every placeholder of `text`, in order.
pub fn variables(text: &str) -> Result<Vec<Var<'_>>, TemplateError> {
    let mut vars = Vec::new();
    let mut rest = text;
    let mut offset = 0;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or(TemplateError::Unclosed(offset + open))?;
        let name = after[..close].trim();
        vars.push(parse_var(name).ok_or_else(|| TemplateError::UnknownVariable(name.to_owned()))?);
        let consumed = open + 2 + close + 2;
        offset += consumed;
        rest = &rest[consumed..];
    }
    Ok(vars)
}

/// Replaces every placeholder: `{{ revision }}` with `revision`, a result with what
/// `result(stage, key)` gives.
pub fn render_with<'r>(
    text: &str,
    revision: &str,
    result: impl Fn(&str, &str) -> Option<&'r str>,
) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut offset = 0;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or(TemplateError::Unclosed(offset + open))?;
        let name = after[..close].trim();
        match parse_var(name) {
            Some(Var::Revision) => out.push_str(revision),
            Some(Var::Result { stage, key }) => {
                out.push_str(
                    result(stage, key).ok_or_else(|| TemplateError::MissingResult {
                        stage: stage.to_owned(),
                        key: key.to_owned(),
                    })?,
                );
            }
            None => return Err(TemplateError::UnknownVariable(name.to_owned())),
        }
        let consumed = open + 2 + close + 2;
        offset += consumed;
        rest = &rest[consumed..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Replaces every `{{ revision }}` (spaces inside the braces optional) with `revision`;
/// a result placeholder is an error here (where no results exist).
pub fn render(text: &str, revision: &str) -> Result<String, TemplateError> {
    render_with(text, revision, |_, _| None)
}

/// Checks a template's syntax and variable names without rendering it.
pub fn check(text: &str) -> Result<(), TemplateError> {
    variables(text).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_every_revision() {
        assert_eq!(
            render("repo/app:{{ revision }}", "1.4.2").as_deref(),
            Ok("repo/app:1.4.2")
        );
        assert_eq!(
            render("{{revision}}-{{ revision }}", "a").as_deref(),
            Ok("a-a")
        );
        assert_eq!(
            render("no placeholders }}", "a").as_deref(),
            Ok("no placeholders }}")
        );
    }

    #[test]
    fn refuses_unknown_and_unclosed_placeholders() {
        assert_eq!(
            render("app:{{ tag }}", "x"),
            Err(TemplateError::UnknownVariable("tag".into()))
        );
        assert_eq!(check("app:{{ revision"), Err(TemplateError::Unclosed(4)));
        for bad in [
            "{{ stages.build.results. }}",
            "{{ stages..results.digest }}",
            "{{ stages.build.digest }}",
            "{{ stages.b uild.results.digest }}",
        ] {
            assert!(
                matches!(check(bad), Err(TemplateError::UnknownVariable(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn results_of_earlier_stages_render() {
        let text = "repo/app@{{ stages.build.results.imageDigest }}:{{ revision }}";
        assert_eq!(
            variables(text),
            Ok(vec![
                Var::Result {
                    stage: "build",
                    key: "imageDigest"
                },
                Var::Revision
            ])
        );
        let digest = "sha256:abc".to_owned();
        let got = render_with(text, "1.2", |stage, key| {
            (stage == "build" && key == "imageDigest").then_some(digest.as_str())
        });
        assert_eq!(got.as_deref(), Ok("repo/app@sha256:abc:1.2"));
        assert_eq!(
            render(text, "1.2"),
            Err(TemplateError::MissingResult {
                stage: "build".into(),
                key: "imageDigest".into()
            })
        );
    }
}
