//! End-to-end tests of the node, one binary: real pseudo-terminals, real sockets, real processes.

mod runtime;
mod inspect;
mod sim;
