//! Integration tests of the uplink, with real parts: real sockets on 127.0.0.1, real TLS with
//! certificates made here, a real spool on disk, a real `nats-server` with JetStream, and a fault
//! proxy between node and central.

mod central;
mod cluster;
mod common;
mod engine;
mod fanin;
mod faults;
mod hostile;
mod inflight;
mod jetstream;
mod nats;
mod outage;
mod restart;
mod strict;
mod tls;
mod window;
