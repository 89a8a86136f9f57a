//! The spool's integration tests: one binary, one module per concern.

mod basic;
mod big;
mod common;
mod concurrency;
mod crash;
mod cursors;
mod disk;
mod format;
mod model;
mod page_cache;
mod projections;
mod ring;
mod sim;
mod subscribe;
mod upcast;
