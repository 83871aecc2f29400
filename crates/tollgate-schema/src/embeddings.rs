//! `POST /v1/embeddings` request.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::chat::{BorrowedStr, RawObject};
use crate::error::ApiError;

/// `input`: one string, several, or pre-tokenized input.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingInput<'a> {
    /// One string.
    One(#[serde(borrow)] Cow<'a, str>),
    /// Several strings.
    Many(#[serde(borrow)] Vec<Cow<'a, str>>),
    /// One token array.
    Tokens(Vec<u32>),
    /// Several token arrays.
    ManyTokens(Vec<Vec<u32>>),
}

impl<'a> EmbeddingInput<'a> {
    /// Number of inputs.
    pub fn len(&self) -> usize {
        match self {
            EmbeddingInput::One(_) | EmbeddingInput::Tokens(_) => 1,
            EmbeddingInput::Many(v) => v.len(),
            EmbeddingInput::ManyTokens(v) => v.len(),
        }
    }

    /// Whether there is no input at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Token estimate for limits.
    pub fn estimate_tokens(&self) -> u64 {
        match self {
            EmbeddingInput::One(s) => (s.len() as u64).div_ceil(4),
            EmbeddingInput::Many(v) => v.iter().map(|s| (s.len() as u64).div_ceil(4)).sum(),
            EmbeddingInput::Tokens(t) => t.len() as u64,
            EmbeddingInput::ManyTokens(v) => v.iter().map(|t| t.len() as u64).sum(),
        }
    }
}

/// A parsed embeddings request.
#[derive(Debug)]
pub struct EmbeddingsRequest<'a> {
    /// Public model name.
    pub model: Cow<'a, str>,
    /// The input.
    pub input: EmbeddingInput<'a>,
    /// `dimensions`, if given.
    pub dimensions: Option<u32>,
    /// `encoding_format`: `float` or `base64`.
    pub encoding_format: Option<Cow<'a, str>>,
    /// Every top-level field, raw and in order.
    pub raw: RawObject<'a>,
}

impl<'a> EmbeddingsRequest<'a> {
    /// Parse and validate a request body.
    pub fn parse(body: &'a [u8]) -> Result<Self, ApiError> {
        let raw = RawObject::parse(body)?;
        let model: BorrowedStr<'a> = raw.typed("model")?.ok_or_else(|| {
            ApiError::invalid_request("You must provide a model parameter.").with_param("model")
        })?;
        let input: EmbeddingInput<'a> = raw
            .typed::<&'a RawValue>("input")?
            .ok_or_else(|| {
                ApiError::invalid_request("Missing required parameter: 'input'.")
                    .with_param("input")
            })
            .and_then(|r| {
                serde_json::from_str(r.get()).map_err(|_| {
                    ApiError::invalid_request(
                        "Invalid 'input': expected a string, an array of strings, or token arrays.",
                    )
                    .with_param("input")
                })
            })?;
        if input.is_empty() {
            return Err(
                ApiError::invalid_request("Invalid 'input': must not be empty.")
                    .with_param("input"),
            );
        }
        let encoding_format: Option<BorrowedStr<'a>> = raw.typed("encoding_format")?;
        if let Some(f) = &encoding_format {
            if f.0 != "float" && f.0 != "base64" {
                return Err(ApiError::invalid_request(format!(
                    "Invalid 'encoding_format': '{}'. Expected 'float' or 'base64'.",
                    f.0
                ))
                .with_param("encoding_format"));
            }
        }
        Ok(EmbeddingsRequest {
            model: model.0,
            input,
            dimensions: raw.typed("dimensions")?,
            encoding_format: encoding_format.map(|f| f.0),
            raw,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_inputs() {
        let r = EmbeddingsRequest::parse(br#"{"model":"e","input":["a","bb"]}"#).unwrap();
        assert_eq!(r.input.len(), 2);
        let r = EmbeddingsRequest::parse(br#"{"model":"e","input":[1,2,3]}"#).unwrap();
        assert_eq!(r.input.estimate_tokens(), 3);
        let e = EmbeddingsRequest::parse(br#"{"model":"e","input":{}}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input"));
        let e = EmbeddingsRequest::parse(br#"{"model":"e","input":"x","encoding_format":"hex"}"#)
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("encoding_format"));
    }
}
