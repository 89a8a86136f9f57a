//! The display's integration tests: one binary, a module per concern.

mod api;
mod live;
mod support;
