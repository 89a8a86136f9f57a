//! venue-node: the software of a timing box at a race track.
//!
//! The binary (`venue-node`) reads MyLaps/AMB P3 decoders, spools every event durably and drains the
//! spool to the central store. This library holds everything the
//! binary does, so tests drive it without a process; `main.rs` only parses the command line.

#![forbid(unsafe_code)]

pub mod adapter;
pub mod cli;
pub mod config;
pub mod decode;
pub mod demo;
pub mod doctor;
pub mod inspect;
pub mod race;
pub mod run;
pub mod runtime;
pub mod signal;
pub mod simulate;
mod usage;

pub use usage::UsageError;
