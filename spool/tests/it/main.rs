//! The spool's integration tests: one binary, one module per concern.

mod basic;
mod common;
mod concurrency;
