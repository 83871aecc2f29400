//! What an operator writes to define a prompt API (config file or admin API),
//! its lifecycle states, and the checked, compiled form the data plane runs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::template::{is_name, Template};

/// Chat parameters an API may fix. Everything else (messages, model, stream,
/// tools, `n`) is Tollgate's to set: an API returns one result.
pub const ALLOWED_PARAMETERS: &[&str] = &[
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "reasoning_effort",
];

/// Where an API is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Callable only by the owning team.
    #[default]
    Draft,
    /// In the catalog, callable by subscribers.
    Published,
    /// Still callable, with `Deprecation` and `Sunset` headers.
    Deprecated,
    /// Answers 410.
    Retired,
}

impl Status {
    /// `draft`, `published`, `deprecated` or `retired`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Draft => "draft",
            Status::Published => "published",
            Status::Deprecated => "deprecated",
            Status::Retired => "retired",
        }
    }

    /// The states an API may move to `to` from. Retired is final; a
    /// deprecation may be withdrawn (back to published); a draft may be
    /// dropped (retired) without ever being published.
    pub fn allowed_from(to: Status) -> &'static [Status] {
        match to {
            Status::Draft => &[],
            Status::Published => &[Status::Draft, Status::Deprecated],
            Status::Deprecated => &[Status::Published],
            Status::Retired => &[Status::Draft, Status::Published, Status::Deprecated],
        }
    }

    /// Whether the catalog lists it for teams other than the owner.
    pub fn listed(self) -> bool {
        matches!(self, Status::Published | Status::Deprecated)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "draft" => Ok(Status::Draft),
            "published" => Ok(Status::Published),
            "deprecated" => Ok(Status::Deprecated),
            "retired" => Ok(Status::Retired),
            other => Err(format!(
                "unknown status {other:?} (expected draft, published, deprecated or retired)"
            )),
        }
    }
}

/// A variable's JSON type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VarType {
    /// A JSON string, inserted as is.
    #[default]
    String,
    /// A JSON integer.
    Integer,
    /// Any JSON number.
    Number,
    /// `true` or `false`.
    Boolean,
    /// A JSON array, inserted as compact JSON.
    Array,
    /// A JSON object, inserted as compact JSON.
    Object,
}

impl VarType {
    /// The JSON Schema type name.
    pub fn as_str(self) -> &'static str {
        match self {
            VarType::String => "string",
            VarType::Integer => "integer",
            VarType::Number => "number",
            VarType::Boolean => "boolean",
            VarType::Array => "array",
            VarType::Object => "object",
        }
    }

    /// Whether `v` has this type.
    pub fn accepts(self, v: &Value) -> bool {
        match self {
            VarType::String => v.is_string(),
            VarType::Integer => v.is_i64() || v.is_u64(),
            VarType::Number => v.is_number(),
            VarType::Boolean => v.is_boolean(),
            VarType::Array => v.is_array(),
            VarType::Object => v.is_object(),
        }
    }
}

/// A typed template variable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variable {
    /// The name: the request body's field and the template's `{{name}}`.
    pub name: String,
    /// The JSON type the caller must send.
    #[serde(rename = "type", default)]
    pub kind: VarType,
    /// Free text for the catalog and the OpenAPI document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Whether the caller must send it; defaults to true unless a default is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    /// Used when the caller leaves it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// The only values accepted.
    #[serde(rename = "enum", default, skip_serializing_if = "Option::is_none")]
    pub choices: Option<Vec<Value>>,
    /// Longest accepted string, in characters (strings only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
}

impl Variable {
    /// Whether a call must carry it.
    pub fn is_required(&self) -> bool {
        self.required.unwrap_or(self.default.is_none())
    }
}

/// `text` returns the model's text; `json` parses it and validates it
/// against `schema`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputMode {
    /// The completion text.
    #[default]
    Text,
    /// A JSON value validated against the schema.
    Json,
}

/// How the model's answer becomes the API's `result`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    /// Text or JSON.
    #[serde(default)]
    pub mode: OutputMode,
    /// JSON Schema (2020-12) the result must satisfy (JSON mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
}

/// One version of a prompt API, as written in `apis:` of the config file or
/// posted to the admin API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSpec {
    /// The path segment: `POST /apis/{name}`.
    pub name: String,
    /// `v1`, `v2`, … (`POST /apis/{name}/{version}`).
    #[serde(default = "v1")]
    pub version: String,
    /// The owning team.
    pub team: String,
    /// Free text for the catalog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The public model it calls.
    pub model: String,
    /// System prompt template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// User prompt template.
    pub prompt: String,
    /// The template's variables, in the order the catalog shows them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variables: Vec<Variable>,
    /// Chat parameters fixed by the API (see [`ALLOWED_PARAMETERS`]).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub parameters: Map<String, Value>,
    /// Text or schema-checked JSON.
    #[serde(default)]
    pub output: Output,
    /// Initial lifecycle state (config file and creation only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// Sunset date of a deprecated API: RFC 3339 or `YYYY-MM-DD` (UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sunset: Option<String>,
    /// When a deprecated API was deprecated (config file only; the admin API
    /// records the moment of the change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecated_at: Option<String>,
    /// Approve subscription requests without review.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_approve: Option<bool>,
    /// Teams subscribed by the config file (config file only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscribers: Vec<String>,
}

fn v1() -> String {
    "v1".to_string()
}

/// One problem in a definition, with its field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SpecError {
    /// Field path inside the definition (`variables[1].default`).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Every problem found in a definition.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(|e| format!("{}: {}", e.path, e.message)).collect::<Vec<_>>().join("; "))]
pub struct SpecErrors(pub Vec<SpecError>);

/// `v<N>` → N.
pub fn version_number(v: &str) -> Option<u32> {
    let n = v.strip_prefix('v')?;
    if n.is_empty() || n.starts_with('0') || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// Whether `s` is an API name: lower-case letters, digits, `-` and `_`,
/// starting with a letter, at most 64 characters.
pub fn is_api_name(s: &str) -> bool {
    s.len() <= 64
        && s.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Parses a sunset date into unix seconds: RFC 3339, or `YYYY-MM-DD` (midnight UTC).
pub fn parse_date(s: &str) -> Result<i64, String> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t.unix_timestamp());
    }
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s, &fmt)
        .map(|d| d.midnight().assume_utc().unix_timestamp())
        .map_err(|_| format!("{s:?} is not a date (RFC 3339 or YYYY-MM-DD)"))
}

impl ApiSpec {
    /// Checks the definition and compiles its templates and schema.
    pub fn compile(&self) -> Result<Compiled, SpecErrors> {
        let mut errs = Vec::new();
        let mut err = |path: &str, message: String| {
            errs.push(SpecError {
                path: path.to_string(),
                message,
            })
        };
        if !is_api_name(&self.name) {
            err(
                "name",
                format!(
                    "{:?} is not an API name: lower-case letters, digits, `-` and `_`, starting with a letter, at most 64 characters",
                    self.name
                ),
            );
        }
        if version_number(&self.version).is_none() {
            err(
                "version",
                format!(
                    "{:?} is not a version: `v` and a number (v1, v2, …)",
                    self.version
                ),
            );
        }
        if self.team.is_empty() {
            err("team", "an API belongs to a team".into());
        }
        if self.model.is_empty() {
            err("model", "name the model the API calls".into());
        }
        let mut names: Vec<&str> = Vec::with_capacity(self.variables.len());
        for (i, v) in self.variables.iter().enumerate() {
            let p = format!("variables[{i}]");
            if !is_name(&v.name) {
                err(
                    &format!("{p}.name"),
                    format!("{:?} is not a variable name (letters, digits, `_`)", v.name),
                );
            } else if names.contains(&v.name.as_str()) {
                err(
                    &format!("{p}.name"),
                    format!("`{}` is declared twice", v.name),
                );
            }
            names.push(&v.name);
            if let Some(d) = &v.default {
                if !v.kind.accepts(d) {
                    err(
                        &format!("{p}.default"),
                        format!("the default is not of type {}", v.kind.as_str()),
                    );
                }
                if v.required == Some(true) {
                    err(
                        &format!("{p}.required"),
                        "a required variable cannot have a default".into(),
                    );
                }
            }
            if let Some(c) = &v.choices {
                if c.is_empty() {
                    err(
                        &format!("{p}.enum"),
                        "an enum lists at least one value".into(),
                    );
                }
                if let Some(bad) = c.iter().find(|x| !v.kind.accepts(x)) {
                    err(
                        &format!("{p}.enum"),
                        format!("{bad} is not of type {}", v.kind.as_str()),
                    );
                }
                if let Some(d) = &v.default {
                    if !c.contains(d) {
                        err(
                            &format!("{p}.default"),
                            "the default is not one of enum".into(),
                        );
                    }
                }
            }
            if v.max_length.is_some() && v.kind != VarType::String {
                err(
                    &format!("{p}.max_length"),
                    "max_length applies to strings only".into(),
                );
            }
        }
        let prompt = Template::parse(&self.prompt, &names)
            .map_err(|e| err("prompt", e.to_string()))
            .ok();
        let system = match &self.system {
            Some(s) => Template::parse(s, &names)
                .map_err(|e| err("system", e.to_string()))
                .ok()
                .map(Some),
            None => Some(None),
        };
        if let (Some(p), Some(s)) = (&prompt, &system) {
            let mut used = vec![false; names.len()];
            for i in p.uses().chain(s.iter().flat_map(|t| t.uses())) {
                used[i] = true;
            }
            for (i, u) in used.iter().enumerate() {
                if !u {
                    err(
                        &format!("variables[{i}]"),
                        format!("`{}` is declared but no template uses it", names[i]),
                    );
                }
            }
        }
        for (k, v) in &self.parameters {
            if !ALLOWED_PARAMETERS.contains(&k.as_str()) {
                err(
                    &format!("parameters.{k}"),
                    format!(
                        "`{k}` cannot be set by an API (allowed: {})",
                        ALLOWED_PARAMETERS.join(", ")
                    ),
                );
            } else if v.is_null() {
                err(&format!("parameters.{k}"), "null is not a value".into());
            }
        }
        let validator = match (self.output.mode, &self.output.schema) {
            (OutputMode::Json, None) => {
                err(
                    "output.schema",
                    "JSON output needs a JSON Schema to validate against".into(),
                );
                None
            }
            (OutputMode::Text, Some(_)) => {
                err(
                    "output.schema",
                    "a schema applies to `mode: json` only".into(),
                );
                None
            }
            (OutputMode::Json, Some(schema)) => {
                if !schema.is_object() {
                    err("output.schema", "a JSON Schema is an object".into());
                    None
                } else {
                    match jsonschema::validator_for(schema) {
                        Ok(v) => Some(v),
                        Err(e) => {
                            err("output.schema", format!("not a valid JSON Schema: {e}"));
                            None
                        }
                    }
                }
            }
            (OutputMode::Text, None) => None,
        };
        let sunset = match &self.sunset {
            Some(s) => match parse_date(s) {
                Ok(t) => Some(t),
                Err(e) => {
                    err("sunset", e);
                    None
                }
            },
            None => None,
        };
        let deprecated_at = match &self.deprecated_at {
            Some(s) => match parse_date(s) {
                Ok(t) => Some(t),
                Err(e) => {
                    err("deprecated_at", e);
                    None
                }
            },
            None => None,
        };
        if !errs.is_empty() {
            return Err(SpecErrors(errs));
        }
        match (prompt, system) {
            (Some(prompt), Some(system)) => Ok(Compiled {
                prompt,
                system,
                validator,
                version_number: version_number(&self.version).unwrap_or(1),
                sunset,
                deprecated_at,
            }),
            _ => Err(SpecErrors(vec![SpecError {
                path: "prompt".into(),
                message: "template did not compile".into(),
            }])),
        }
    }

    /// The definition without its lifecycle fields: what is stored as a
    /// version's immutable contract.
    pub fn contract(&self) -> ApiSpec {
        ApiSpec {
            status: None,
            sunset: None,
            deprecated_at: None,
            auto_approve: None,
            subscribers: Vec::new(),
            ..self.clone()
        }
    }
}

/// The parts of a definition compiled once.
pub struct Compiled {
    pub(crate) prompt: Template,
    pub(crate) system: Option<Template>,
    pub(crate) validator: Option<jsonschema::Validator>,
    /// The number in `v<N>`.
    pub version_number: u32,
    /// `sunset:` as unix seconds.
    pub sunset: Option<i64>,
    /// `deprecated_at:` as unix seconds.
    pub deprecated_at: Option<i64>,
}

impl fmt::Debug for Compiled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Compiled")
            .field("prompt", &self.prompt)
            .field("system", &self.system)
            .field("version_number", &self.version_number)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: serde_json::Value) -> ApiSpec {
        serde_json::from_value(yaml).unwrap()
    }

    #[test]
    fn a_good_definition_compiles() {
        let s = spec(serde_json::json!({
            "name": "sentiment", "team": "t", "model": "m",
            "system": "Answer in {{lang}}.",
            "prompt": "Classify: {{text}}",
            "variables": [
                {"name": "text", "description": "input"},
                {"name": "lang", "default": "en", "enum": ["en", "de"]}
            ],
            "parameters": {"temperature": 0},
            "output": {"mode": "json", "schema": {"type": "object"}}
        }));
        let c = s.compile().unwrap();
        assert_eq!(c.version_number, 1);
        assert!(s.variables[0].is_required());
        assert!(!s.variables[1].is_required());
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let s = spec(serde_json::json!({
            "name": "Bad Name", "version": "1", "team": "", "model": "m",
            "prompt": "{{missing}} {{x}}",
            "variables": [
                {"name": "x", "type": "integer", "default": "seven"},
                {"name": "x"},
                {"name": "s", "type": "integer", "max_length": 3}
            ],
            "parameters": {"messages": []},
            "output": {"mode": "json"},
            "sunset": "soon"
        }));
        let errs = s.compile().unwrap_err().0;
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        for p in [
            "name",
            "version",
            "team",
            "variables[0].default",
            "variables[1].name",
            "variables[2].max_length",
            "prompt",
            "parameters.messages",
            "output.schema",
            "sunset",
        ] {
            assert!(paths.contains(&p), "{p} missing from {paths:?}");
        }
    }

    #[test]
    fn unused_variables_and_bad_schemas_are_refused() {
        let s = spec(serde_json::json!({
            "name": "a", "team": "t", "model": "m", "prompt": "hi",
            "variables": [{"name": "x"}],
            "output": {"mode": "json", "schema": {"type": 12}}
        }));
        let errs = s.compile().unwrap_err().0;
        assert!(errs.iter().any(|e| e.path == "variables[0]"));
        assert!(errs.iter().any(|e| e.path == "output.schema"));
    }

    #[test]
    fn versions_and_dates() {
        assert_eq!(version_number("v1"), Some(1));
        assert_eq!(version_number("v12"), Some(12));
        for bad in ["1", "v", "v01", "v1a", "V1"] {
            assert_eq!(version_number(bad), None, "{bad}");
        }
        assert_eq!(parse_date("2027-01-31"), Ok(1_801_353_600));
        assert_eq!(parse_date("2027-01-31T00:00:00Z"), Ok(1_801_353_600));
        assert!(parse_date("31/01/2027").is_err());
    }

    #[test]
    fn transitions() {
        assert!(Status::allowed_from(Status::Published).contains(&Status::Draft));
        assert!(Status::allowed_from(Status::Deprecated).contains(&Status::Published));
        assert!(!Status::allowed_from(Status::Published).contains(&Status::Retired));
        assert!(Status::allowed_from(Status::Draft).is_empty());
    }
}
