//! The domain of the notifications context: pure rules with no tonic or sqlx.

pub mod alerts;
pub mod audit;
pub mod rules;
