//! Prompt templates: `{{name}}` placeholders, parsed once when the API is
//! defined.
//!
//! Rendering walks the parsed segments and copies each variable's value in as
//! data: a value is never scanned for placeholders, so a caller who sends
//! `"{{secret}}"` gets those nine characters in the prompt, nothing more.

use std::fmt;

/// One piece of a parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Text(String),
    /// Index into the API's variables.
    Var(usize),
}

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    segments: Vec<Segment>,
    /// Length of the literal text, to size the output once.
    literal_len: usize,
}

/// Why a template does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{{` without a closing `}}`.
    #[error("unclosed placeholder at byte {0}: `{{{{` needs a matching `}}}}`")]
    Unclosed(usize),
    /// `{{ }}` or a name with characters other than letters, digits and `_`.
    #[error("invalid placeholder `{{{{{0}}}}}`: a placeholder is a variable name of letters, digits and `_`")]
    BadName(String),
    /// A placeholder names no declared variable.
    #[error("the template uses `{{{{{0}}}}}` but no variable `{0}` is declared")]
    Undeclared(String),
}

/// Whether `s` is a variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Template {
    /// Parses `src`, resolving each placeholder to its index in `names`.
    pub fn parse(src: &str, names: &[&str]) -> Result<Template, TemplateError> {
        let mut segments = Vec::new();
        let mut literal_len = 0;
        let mut rest = src;
        let mut offset = 0;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                segments.push(Segment::Text(rest[..open].to_string()));
                literal_len += open;
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or(TemplateError::Unclosed(offset + open))?;
            let name = after[..close].trim();
            if !is_name(name) {
                return Err(TemplateError::BadName(after[..close].to_string()));
            }
            let idx = names
                .iter()
                .position(|n| *n == name)
                .ok_or_else(|| TemplateError::Undeclared(name.to_string()))?;
            segments.push(Segment::Var(idx));
            let consumed = open + 2 + close + 2;
            offset += consumed;
            rest = &rest[consumed..];
        }
        if !rest.is_empty() {
            literal_len += rest.len();
            segments.push(Segment::Text(rest.to_string()));
        }
        Ok(Template {
            segments,
            literal_len,
        })
    }

    /// The template with each placeholder replaced by `values[index]`, verbatim.
    pub fn render(&self, values: &[String]) -> String {
        let vars: usize = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Var(i) => values.get(*i).map_or(0, String::len),
                Segment::Text(_) => 0,
            })
            .sum();
        let mut out = String::with_capacity(self.literal_len + vars);
        for s in &self.segments {
            match s {
                Segment::Text(t) => out.push_str(t),
                Segment::Var(i) => {
                    if let Some(v) = values.get(*i) {
                        out.push_str(v);
                    }
                }
            }
        }
        out
    }

    /// Indices of the variables the template uses.
    pub fn uses(&self) -> impl Iterator<Item = usize> + '_ {
        self.segments.iter().filter_map(|s| match s {
            Segment::Var(i) => Some(*i),
            Segment::Text(_) => None,
        })
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.segments {
            match s {
                Segment::Text(t) => f.write_str(t)?,
                Segment::Var(i) => write!(f, "{{{{#{i}}}}}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_placeholders_with_and_without_spaces() {
        let t = Template::parse("Say {{ a }} to {{b}}.", &["a", "b"]).unwrap();
        assert_eq!(t.render(&["hi".into(), "Bo".into()]), "Say hi to Bo.");
        assert_eq!(t.uses().collect::<Vec<_>>(), vec![0, 1]);
    }

    #[test]
    fn values_are_never_reparsed() {
        let t = Template::parse("A={{a}} B={{b}}", &["a", "b"]).unwrap();
        let out = t.render(&["{{b}}".into(), "secret".into()]);
        assert_eq!(out, "A={{b}} B=secret");
        let out = t.render(&["{{".into(), "}}".into()]);
        assert_eq!(out, "A={{ B=}}");
    }

    #[test]
    fn refuses_bad_templates() {
        assert_eq!(
            Template::parse("x {{a", &["a"]),
            Err(TemplateError::Unclosed(2))
        );
        assert_eq!(
            Template::parse("{{a b}}", &["a"]),
            Err(TemplateError::BadName("a b".into()))
        );
        assert_eq!(
            Template::parse("{{}}", &["a"]),
            Err(TemplateError::BadName("".into()))
        );
        assert_eq!(
            Template::parse("{{c}}", &["a"]),
            Err(TemplateError::Undeclared("c".into()))
        );
    }

    #[test]
    fn plain_text_and_unicode() {
        let t = Template::parse("héllo {{x}} ✓", &["x"]).unwrap();
        assert_eq!(t.render(&["wörld".into()]), "héllo wörld ✓");
        let t = Template::parse("no placeholders } { }", &[]).unwrap();
        assert_eq!(t.render(&[]), "no placeholders } { }");
    }
}
