//! OpenAI's error shape: `{"error":{"message","type","param","code"}}`.

use std::borrow::Cow;
use std::fmt;

/// The `type` field of an OpenAI error object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorType {
    /// The request is malformed or names something that does not exist.
    InvalidRequest,
    /// The credentials are missing or wrong.
    Authentication,
    /// The credentials are valid but may not do this.
    Permission,
    /// Too many requests or tokens.
    RateLimit,
    /// Budget exhausted.
    InsufficientQuota,
    /// Something failed on the gateway or upstream.
    Api,
    /// The upstream is overloaded or unavailable.
    Overloaded,
    /// The upstream did not answer in time.
    Timeout,
}

impl ErrorType {
    /// The string OpenAI clients see in `error.type`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::InvalidRequest => "invalid_request_error",
            ErrorType::Authentication => "authentication_error",
            ErrorType::Permission => "permission_error",
            ErrorType::RateLimit => "rate_limit_error",
            ErrorType::InsufficientQuota => "insufficient_quota",
            ErrorType::Api => "api_error",
            ErrorType::Overloaded => "overloaded_error",
            ErrorType::Timeout => "timeout_error",
        }
    }
}

/// An error as the client will see it: HTTP status plus OpenAI's error body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status code.
    pub status: u16,
    /// Human-readable message.
    pub message: Cow<'static, str>,
    /// `error.type`.
    pub kind: ErrorType,
    /// `error.param`: the offending request parameter, if any.
    pub param: Option<Cow<'static, str>>,
    /// `error.code`: a machine-readable code, if any.
    pub code: Option<Cow<'static, str>>,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status,
            self.kind.as_str(),
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    /// A new error with no param and no code.
    pub fn new(status: u16, kind: ErrorType, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    /// Set `error.param`.
    pub fn with_param(mut self, param: impl Into<Cow<'static, str>>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// Set `error.code`.
    pub fn with_code(mut self, code: impl Into<Cow<'static, str>>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// 400 for a request the gateway cannot accept.
    pub fn invalid_request(message: impl Into<Cow<'static, str>>) -> Self {
        ApiError::new(400, ErrorType::InvalidRequest, message)
    }

    /// 401: no key, unknown key, disabled or expired key.
    pub fn unauthorized(message: impl Into<Cow<'static, str>>) -> Self {
        ApiError::new(401, ErrorType::Authentication, message).with_code("invalid_api_key")
    }

    /// 403: the key may not use this model.
    pub fn model_forbidden(model: &str) -> Self {
        ApiError::new(
            403,
            ErrorType::Permission,
            format!("This API key is not allowed to use the model `{model}`."),
        )
        .with_param("model")
        .with_code("model_not_allowed")
    }

    /// 404: the model is not configured.
    pub fn model_not_found(model: &str) -> Self {
        ApiError::new(
            404,
            ErrorType::InvalidRequest,
            format!("The model `{model}` does not exist or you do not have access to it."),
        )
        .with_param("model")
        .with_code("model_not_found")
    }

    /// 404 for an unknown path.
    pub fn unknown_path(method: &str, path: &str) -> Self {
        ApiError::new(
            404,
            ErrorType::InvalidRequest,
            format!("Unknown request URL: {method} {path}."),
        )
        .with_code("unknown_url")
    }

    /// 405 for a known path with the wrong method.
    pub fn method_not_allowed(method: &str, path: &str, allowed: &str) -> Self {
        ApiError::new(
            405,
            ErrorType::InvalidRequest,
            format!("Method {method} is not allowed on {path}; use {allowed}."),
        )
        .with_code("method_not_allowed")
    }

    /// 413 for a body over the configured limit.
    pub fn body_too_large(limit: usize) -> Self {
        ApiError::new(
            413,
            ErrorType::InvalidRequest,
            format!("Request body exceeds the limit of {limit} bytes."),
        )
        .with_code("request_too_large")
    }

    /// 502: the upstream could not be reached or answered garbage.
    pub fn bad_gateway(message: impl Into<Cow<'static, str>>) -> Self {
        ApiError::new(502, ErrorType::Api, message).with_code("upstream_error")
    }

    /// 504: the upstream did not answer in time.
    pub fn gateway_timeout(message: impl Into<Cow<'static, str>>) -> Self {
        ApiError::new(504, ErrorType::Timeout, message).with_code("upstream_timeout")
    }

    /// 500 for a gateway bug that must not take the process down.
    pub fn internal(message: impl Into<Cow<'static, str>>) -> Self {
        ApiError::new(500, ErrorType::Api, message).with_code("internal_error")
    }

    /// The JSON body, `{"error":{...}}`.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96 + self.message.len());
        self.write_json(&mut out);
        out
    }

    /// Append the JSON body to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"error\":{\"message\":");
        write_json_str(out, &self.message);
        out.extend_from_slice(b",\"type\":");
        write_json_str(out, self.kind.as_str());
        out.extend_from_slice(b",\"param\":");
        match &self.param {
            Some(p) => write_json_str(out, p),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"code\":");
        match &self.code {
            Some(c) => write_json_str(out, c),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b"}}");
    }
}

/// Append `s` as a JSON string literal.
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // serde_json's escaping is correct for every code point; writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_is_openai() {
        let e = ApiError::model_not_found("g\"pt");
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "model");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert!(v["error"]["message"].as_str().unwrap().contains("g\"pt"));
        let e = ApiError::invalid_request("x");
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert!(v["error"]["param"].is_null());
        assert!(v["error"]["code"].is_null());
    }
}
