//! What every Tenure context stands on: configuration, telemetry, the error vocabulary,
//! storage, the clock, identity, the event log with its live stream, and the event
//! consumer.

pub mod auth;
pub mod backoff;
pub mod clock;
pub mod config;
pub mod consumer;
pub mod db;
pub mod error;
pub mod events;
pub mod grpc;
pub mod idempotency;
pub mod limits;
pub mod telemetry;
pub mod testing;
pub mod trace;

pub use error::{ApiError, ApiResult, FieldViolation, Violations};
