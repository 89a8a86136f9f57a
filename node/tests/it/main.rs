//! End-to-end tests of the node, one binary: real pseudo-terminals, real sockets, real processes.

mod adapter;
mod chaos;
mod demo;
mod disk;
mod e2e;
mod filesystem;
mod inspect;
mod logs;
mod probe;
mod process;
mod race;
mod release;
mod run;
mod runtime;
mod simulate;
mod tech;
mod udev;
mod unit;
