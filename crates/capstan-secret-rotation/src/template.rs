//! The templates of `delivery.secret.template`: literal text with `{{ variable }}` or
//! `{{ variable | urlencode }}` placeholders, e.g.
//! `postgres://{{ username }}:{{ password | urlencode }}@{{ host }}:{{ port }}/{{ database }}`.
//!
//! Deliberately tiny (no conditionals, loops or escapes): parsing happens at validation
//! time, so a typo is reported as a condition before any rotation, and rendering returns a
//! [`SecretValue`] because the output contains the password.

use std::fmt;

use capstan_core::redact::SecretValue;

/// A variable a template may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Variable {
    /// The generated password or value (`password`, alias `value`).
    Password,
    /// The database username in use.
    Username,
    /// The database host.
    Host,
    /// The database port.
    Port,
    /// The database name.
    Database,
    /// A transit key's name (`key`).
    Key,
    /// A transit key's delivered version (`version`).
    Version,
    /// An IAM access key's id (`access_key_id`).
    AccessKeyId,
    /// An IAM access key's secret (`secret_access_key`).
    SecretAccessKey,
}

impl Variable {
    /// The variables of database targets.
    pub const ALL: [Variable; 5] = [
        Self::Password,
        Self::Username,
        Self::Host,
        Self::Port,
        Self::Database,
    ];

    /// Looks a variable up by the name written in templates.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "password" | "value" => Self::Password,
            "username" => Self::Username,
            "host" => Self::Host,
            "port" => Self::Port,
            "database" => Self::Database,
            "key" => Self::Key,
            "version" => Self::Version,
            "access_key_id" => Self::AccessKeyId,
            "secret_access_key" => Self::SecretAccessKey,
            _ => return None,
        })
    }

    /// The name written in templates (and the Secret key when no template is given).
    pub fn name(self) -> &'static str {
        match self {
            Self::Password => "password",
            Self::Username => "username",
            Self::Host => "host",
            Self::Port => "port",
            Self::Database => "database",
            Self::Key => "key",
            Self::Version => "version",
            Self::AccessKeyId => "access_key_id",
            Self::SecretAccessKey => "secret_access_key",
        }
    }
}

/// A transformation applied to a variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// Percent-encodes everything but RFC 3986 unreserved characters.
    UrlEncode,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Variable(Variable, Option<Filter>),
}

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// Why a template does not parse. Mentions placeholder names only, never values.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{{` without a matching `}}`.
    #[error("`{{{{` at byte {0} is not closed by `}}}}`")]
    Unclosed(usize),
    /// A placeholder naming no known variable.
    #[error(
        "unknown variable `{0}` (known: password, value, username, host, port, database, key, version, access_key_id, secret_access_key)"
    )]
    UnknownVariable(String),
    /// A filter other than `urlencode`.
    #[error("unknown filter `{0}` (known: urlencode)")]
    UnknownFilter(String),
    /// Rendering needs a variable this target does not provide.
    #[error("variable `{0}` is not available for this target")]
    Unavailable(&'static str),
}

impl Template {
    /// Parses a template.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = text;
        let mut offset = 0;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let after_open = &rest[open + 2..];
            let close = after_open
                .find("}}")
                .ok_or(TemplateError::Unclosed(offset + open))?;
            let inner = &after_open[..close];
            let (name, filter) = match inner.split_once('|') {
                Some((name, filter)) => (name.trim(), Some(filter.trim())),
                None => (inner.trim(), None),
            };
            let variable = Variable::from_name(name)
                .ok_or_else(|| TemplateError::UnknownVariable(name.to_owned()))?;
            let filter = match filter {
                None => None,
                Some("urlencode") => Some(Filter::UrlEncode),
                Some(other) => return Err(TemplateError::UnknownFilter(other.to_owned())),
            };
            parts.push(Part::Variable(variable, filter));
            let consumed = open + 2 + close + 2;
            offset += consumed;
            rest = &rest[consumed..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// The variables the template uses, in order of first use, without repeats.
    pub fn variables(&self) -> Vec<Variable> {
        let mut seen = Vec::new();
        for part in &self.parts {
            if let Part::Variable(v, _) = part
                && !seen.contains(v)
            {
                seen.push(*v);
            }
        }
        seen
    }

    /// Renders the template. Fails if it uses a variable `values` does not provide.
    pub fn render(&self, values: &TemplateValues<'_>) -> Result<SecretValue, TemplateError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Variable(variable, filter) => {
                    let port;
                    let value: &str = match variable {
                        Variable::Password | Variable::Version | Variable::SecretAccessKey => {
                            values.password.expose()
                        }
                        Variable::Key | Variable::AccessKeyId => {
                            values.username.ok_or(TemplateError::Unavailable("key"))?
                        }
                        Variable::Username => values
                            .username
                            .ok_or(TemplateError::Unavailable("username"))?,
                        Variable::Host => values.host.ok_or(TemplateError::Unavailable("host"))?,
                        Variable::Port => {
                            port = values
                                .port
                                .ok_or(TemplateError::Unavailable("port"))?
                                .to_string();
                            &port
                        }
                        Variable::Database => values
                            .database
                            .ok_or(TemplateError::Unavailable("database"))?,
                    };
                    match filter {
                        None => out.push_str(value),
                        Some(Filter::UrlEncode) => out.push_str(&percent_encode(value)),
                    }
                }
            }
        }
        Ok(SecretValue::new(out))
    }
}

/// The values a template is rendered with.
#[derive(Clone, Copy)]
pub struct TemplateValues<'a> {
    /// The credential.
    pub password: &'a SecretValue,
    /// The database username in use, for database targets.
    pub username: Option<&'a str>,
    /// The database host, for database targets.
    pub host: Option<&'a str>,
    /// The database port, for database targets.
    pub port: Option<u16>,
    /// The database name, where the target has one.
    pub database: Option<&'a str>,
}

impl fmt::Debug for TemplateValues<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TemplateValues")
            .field("password", self.password)
            .field("username", &self.username)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .finish()
    }
}

/// Percent-encodes every byte outside RFC 3986's unreserved set (`A-Z a-z 0-9 - . _ ~`).
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(password: &SecretValue) -> TemplateValues<'_> {
        TemplateValues {
            password,
            username: Some("app"),
            host: Some("db.example.com"),
            port: Some(5432),
            database: Some("orders"),
        }
    }

    #[test]
    fn renders_a_database_url() {
        let t = Template::parse(
            "postgres://{{ username }}:{{password}}@{{ host }}:{{ port }}/{{ database }}",
        )
        .expect("parses");
        let pw = SecretValue::new("s3cr3t-._~");
        assert_eq!(
            t.render(&values(&pw)).expect("renders").expose(),
            "postgres://app:s3cr3t-._~@db.example.com:5432/orders"
        );
        assert_eq!(
            t.variables(),
            vec![
                Variable::Username,
                Variable::Password,
                Variable::Host,
                Variable::Port,
                Variable::Database
            ]
        );
    }

    #[test]
    fn urlencode_escapes_reserved_characters() {
        let t = Template::parse("{{ value | urlencode }}").expect("parses");
        let pw = SecretValue::new("a@b:c/d%");
        assert_eq!(
            t.render(&values(&pw)).expect("renders").expose(),
            "a%40b%3Ac%2Fd%25"
        );
    }

    #[test]
    fn literal_only_and_stray_closing_braces_are_literal() {
        let t = Template::parse("plain }} text").expect("parses");
        assert!(t.variables().is_empty());
        let pw = SecretValue::new("x");
        assert_eq!(
            t.render(&values(&pw)).expect("renders").expose(),
            "plain }} text"
        );
    }

    #[test]
    fn parse_errors_name_the_problem() {
        assert_eq!(
            Template::parse("a {{ password"),
            Err(TemplateError::Unclosed(2))
        );
        assert_eq!(
            Template::parse("{{ pasword }}"),
            Err(TemplateError::UnknownVariable("pasword".into()))
        );
        assert_eq!(
            Template::parse("{{ password | base64 }}"),
            Err(TemplateError::UnknownFilter("base64".into()))
        );
    }

    #[test]
    fn rendering_a_missing_variable_fails_without_the_value() {
        let t = Template::parse("{{ password }}@{{ host }}").expect("parses");
        let pw = SecretValue::new("canary-value");
        let v = TemplateValues {
            host: None,
            ..values(&pw)
        };
        let err = t.render(&v).expect_err("host missing");
        assert_eq!(err, TemplateError::Unavailable("host"));
        assert!(!format!("{err} {v:?}").contains("canary-value"));
    }
}
