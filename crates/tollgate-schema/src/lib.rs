//! The unified wire schema that clients speak: OpenAI's chat completions,
//! embeddings, models and error shapes, plus an incremental SSE decoder.
//!
//! This crate owns parsing of client requests (once, borrowing from the body
//! where it can) and the typed shapes every provider translation produces.
//! It knows nothing about Pingora or any provider.

pub mod chat;
pub mod embeddings;
pub mod error;
pub mod response;
pub mod sse;

pub use chat::{
    ChatRequest, Content, ContentPart, FunctionDef, JsonSchemaSpec, Message, ResponseFormat, Role,
    Stop, Tool, ToolCall, ToolChoice,
};
pub use embeddings::EmbeddingsRequest;
pub use error::{ApiError, ErrorType};
pub use response::{ChatCompletion, ChatCompletionChunk, Usage};
pub use sse::SseDecoder;
