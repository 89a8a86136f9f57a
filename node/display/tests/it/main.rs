//! The display's integration tests: one binary, a module per concern.

mod api;
mod browser;
mod live;
mod rmonitor;
mod support;
mod tech;
