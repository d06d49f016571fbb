//! The OpenAI-compatible HTTP front end, plus `/metrics`, `/healthz` and `/readyz`.

#[cfg(test)]
mod fuzz_openai;
mod openai_request;
mod openai_response;
mod openai_unsupported;
mod routes;
mod server;

pub use openai_request::parse_constraint;
pub use routes::{HttpBody, HttpState, handle};
pub use server::{HttpListenerSettings, serve_http};
