//! Google Gemini API — translation not written yet; every entry point refuses clearly.
#![allow(missing_docs, unused_variables)]

use bytes::Bytes;
use tollgate_schema::{ApiError, ChatRequest, EmbeddingsRequest, Usage};

use crate::{unsupported, ErrorOut, ProviderKind, ResponseCtx, StreamError, TargetCtx, Translated, UpstreamRequest};

const KIND: ProviderKind = ProviderKind::Gemini;

pub fn chat_request(req: &ChatRequest<'_>, t: &TargetCtx<'_>) -> Result<UpstreamRequest, ApiError> {
    Err(unsupported(KIND, "chat completions"))
}
pub fn chat_response(body: Bytes, ctx: &ResponseCtx<'_>) -> Result<Translated, ApiError> {
    Err(unsupported(KIND, "chat completions"))
}
pub fn embeddings_request(req: &EmbeddingsRequest<'_>, t: &TargetCtx<'_>) -> Result<UpstreamRequest, ApiError> {
    Err(unsupported(KIND, "embeddings"))
}
pub fn embeddings_response(body: Bytes, ctx: &ResponseCtx<'_>) -> Result<Translated, ApiError> {
    Err(unsupported(KIND, "embeddings"))
}
pub fn error_response(status: u16, body: Bytes) -> ErrorOut {
    crate::openai::error_response(status, body)
}
#[derive(Debug)]
pub struct GeminiStream;
impl GeminiStream {
    pub fn new(ctx: &ResponseCtx<'_>) -> Self {
        GeminiStream
    }
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError> {
        Err(StreamError::Malformed("not implemented".into()))
    }
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), StreamError> {
        Err(StreamError::Malformed("not implemented".into()))
    }
    pub fn usage(&self) -> Option<Usage> {
        None
    }
    pub fn first_token_seen(&self) -> bool {
        false
    }
}
