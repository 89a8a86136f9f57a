//! The display's integration tests: one binary, a module per concern.

mod live;
mod support;
