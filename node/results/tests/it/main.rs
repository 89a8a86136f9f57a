//! The race projection's tests, one binary: a real spool on disk, the real fold thread.

mod projection;
mod snapshot;
mod support;
