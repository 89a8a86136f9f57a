//! The race engine's tests, one binary. Scenarios with known truth, worked out by hand in each test.

mod bmx;
mod bounds;
mod decisions;
mod determinism;
mod health;
mod incremental;
mod laps;
mod pins;
mod robust;
mod roster;
mod snapshot;
mod support;
