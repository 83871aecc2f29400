//! OpenAPI 3.1 documents generated from the definitions: one per API version
//! and one for a whole catalog.

use serde_json::{json, Map, Value};

use crate::api::Api;
use crate::spec::{OutputMode, Status};

/// A document describing `apis` (and the catalog endpoints when `catalog`).
pub fn document(title: &str, apis: &[&Api], catalog: bool) -> Value {
    let mut paths = Map::new();
    for a in apis {
        paths.insert(a.path.clone(), json!({ "post": operation(a) }));
    }
    if catalog {
        paths.insert(
            "/catalog".into(),
            json!({"get": {
                "operationId": "catalog",
                "summary": "The APIs and models this key may use",
                "responses": {
                    "200": {"description": "The catalog", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Catalog"}}}},
                    "401": error_response("The key is missing or wrong"),
                }
            }}),
        );
    }
    let mut schemas = Map::new();
    schemas.insert("Error".into(), error_schema());
    schemas.insert("Usage".into(), usage_schema());
    if catalog {
        schemas.insert(
            "Catalog".into(),
            json!({
                "type": "object",
                "required": ["object", "apis", "models"],
                "properties": {
                    "object": {"const": "catalog"},
                    "apis": {"type": "array", "items": {"type": "object"}},
                    "models": {"type": "array", "items": {"type": "object"}}
                }
            }),
        );
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": "1",
            "description": "Prompt APIs served by Tollgate. Every call is authenticated with a client key (`Authorization: Bearer …`) and runs through the same limits, budgets, routing and usage ledger as `/v1/chat/completions`."
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas,
        }
    })
}

fn operation(a: &Api) -> Value {
    let mut props = Map::new();
    let mut required = Vec::new();
    for v in &a.spec.variables {
        let mut s = Map::new();
        s.insert("type".into(), json!(v.kind.as_str()));
        if let Some(d) = &v.description {
            s.insert("description".into(), json!(d));
        }
        if let Some(d) = &v.default {
            s.insert("default".into(), d.clone());
        }
        if let Some(c) = &v.choices {
            s.insert("enum".into(), json!(c));
        }
        if let Some(m) = v.max_length {
            s.insert("maxLength".into(), json!(m));
        }
        props.insert(v.name.clone(), Value::Object(s));
        if v.is_required() {
            required.push(json!(v.name));
        }
    }
    let input = json!({
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": false,
    });
    let result = match (a.spec.output.mode, &a.spec.output.schema) {
        (OutputMode::Json, Some(s)) => s.clone(),
        _ => json!({"type": "string"}),
    };
    let op_id = format!("{}_{}", a.spec.name.replace('-', "_"), a.spec.version);
    let mut description = a.spec.description.clone().unwrap_or_default();
    if a.state.status == Status::Deprecated {
        if let Some(s) = &a.sunset_header {
            description.push_str(&format!("\n\nDeprecated: answers until {s}."));
        }
    }
    let mut op = json!({
        "operationId": op_id,
        "summary": format!("{} ({}), team {}", a.spec.name, a.spec.version, a.spec.team),
        "description": description,
        "tags": [a.spec.name],
        "parameters": [{
            "name": "stream",
            "in": "query",
            "required": false,
            "description": "Stream the answer as server-sent events (`data: {\"delta\"}` …, then `data: {\"result\",\"usage\"}` and `data: [DONE]`).",
            "schema": {"type": "boolean", "default": false}
        }],
        "requestBody": {
            "required": required_body(&required),
            "content": {"application/json": {"schema": input}}
        },
        "responses": {
            "200": {
                "description": "The result",
                "content": {
                    "application/json": {"schema": {
                        "type": "object",
                        "required": ["id", "object", "api", "version", "result", "usage"],
                        "properties": {
                            "id": {"type": "string"},
                            "object": {"const": "api.result"},
                            "api": {"const": a.spec.name},
                            "version": {"const": a.spec.version},
                            "model": {"type": ["string", "null"]},
                            "result": result,
                            "finish_reason": {"type": ["string", "null"]},
                            "usage": {"$ref": "#/components/schemas/Usage"}
                        }
                    }},
                    "text/event-stream": {"schema": {"type": "string"}}
                }
            },
            "400": error_response("A variable is missing, unknown or of the wrong type (`param` names it)"),
            "401": error_response("The key is missing or wrong"),
            "403": error_response("No subscription, or a draft of another team"),
            "404": error_response("No such API or version"),
            "410": error_response("The API version is retired"),
            "413": error_response("The body is too large"),
            "429": error_response("A rate limit or budget of the caller is exhausted"),
            "502": error_response("The model failed, or its output does not match the output schema"),
            "503": error_response("No provider is available"),
            "504": error_response("The model did not answer in time")
        }
    });
    if a.state.status == Status::Deprecated {
        op["deprecated"] = json!(true);
    }
    op
}

fn required_body(required: &[Value]) -> bool {
    !required.is_empty()
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["error"],
        "properties": {"error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]}
            }
        }}
    })
}

fn usage_schema() -> Value {
    json!({
        "type": ["object", "null"],
        "properties": {
            "prompt_tokens": {"type": "integer"},
            "completion_tokens": {"type": "integer"},
            "total_tokens": {"type": "integer"}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Source, State};
    use crate::spec::ApiSpec;

    #[test]
    fn describes_variables_and_output() {
        let spec: ApiSpec = serde_json::from_value(json!({
            "name": "extract", "version": "v2", "team": "t", "model": "m",
            "description": "Pull fields out.",
            "prompt": "{{text}} {{n}}",
            "variables": [{"name": "text", "max_length": 10, "description": "input"},
                          {"name": "n", "type": "integer", "default": 3}],
            "output": {"mode": "json", "schema": {"type": "object", "required": ["a"]}}
        }))
        .unwrap();
        let a = Api::new(
            spec,
            State {
                status: Status::Deprecated,
                deprecated_at: Some(10),
                sunset_at: Some(1_801_353_600),
                auto_approve: false,
                source: Source::Store,
            },
        )
        .unwrap();
        let d = document("t", &[&a], true);
        let op = &d["paths"]["/apis/extract/v2"]["post"];
        let input = &op["requestBody"]["content"]["application/json"]["schema"];
        assert_eq!(input["required"], json!(["text"]));
        assert_eq!(input["properties"]["text"]["maxLength"], 10);
        assert_eq!(input["properties"]["n"]["default"], 3);
        assert_eq!(
            op["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["result"],
            json!({"type": "object", "required": ["a"]})
        );
        assert_eq!(op["deprecated"], true);
        assert!(d["paths"]["/catalog"]["get"].is_object());
    }
}
