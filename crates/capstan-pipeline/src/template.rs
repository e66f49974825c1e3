//! `{{ revision }}` substitution in images, commands, arguments and environment values.
//!
//! The only variable is `revision`; anything else between `{{` and `}}` is an error found
//! at validation time, before a run starts.

/// Why a template does not render.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{{` without a matching `}}`.
    #[error("`{{{{` at byte {0} is not closed by `}}}}`")]
    Unclosed(usize),
    /// A placeholder other than `revision`.
    #[error("unknown variable `{0}` (the only one is `revision`)")]
    UnknownVariable(String),
}

/// Replaces every `{{ revision }}` (spaces inside the braces optional) with `revision`.
pub fn render(text: &str, revision: &str) -> Result<String, TemplateError> {
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
        if name != "revision" {
            return Err(TemplateError::UnknownVariable(name.to_owned()));
        }
        out.push_str(revision);
        let consumed = open + 2 + close + 2;
        offset += consumed;
        rest = &rest[consumed..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Checks a template without rendering it.
pub fn check(text: &str) -> Result<(), TemplateError> {
    render(text, "").map(|_| ())
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
    }
}
