//! The live stream's envelope (the seed ADR's subscription contract), version [`ENVELOPE_VERSION`].
//!
//! ```text
//! {"v":1,"kind":"event","channel":"race","track_id":"bmx-main","event_id":null,"seq":42,
//!  "ts_us":1764590000000000,"payload":{"type":"decoder.passing","stream":"decoder/D0000C00","data":{..}}}
//! ```
//!
//! - `kind`: `snapshot` (the scope's current state; the events that follow are those after its
//!   `seq`), `event` (one spool event, `seq` its spool seq), `heartbeat` (`seq`: resume after it
//!   loses nothing), `error` (`payload.code`, `payload.message`, and `payload.resume_from` for a
//!   client closed for lagging).
//! - `seq` never goes back within a connection; resuming with `from=<the highest seq seen>` is
//!   gapless and has no duplicate.
//!
//! A field is never renamed or removed within a version; `tests/it/contract.rs` pins the bytes.

use serde::{Deserialize, Serialize};

/// The envelope's version; a client checks `v` and refuses what it does not know.
pub const ENVELOPE_VERSION: u32 = 1;

/// What an envelope carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Snapshot,
    Event,
    Heartbeat,
    Error,
}

/// The channels a client subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// Passings and race-control events; snapshots carry the sessions and their boards.
    Race,
    /// The decoders' own events (status, connections, clock, gaps).
    Decoder,
    /// The box: node events; snapshots carry the node's status.
    Status,
}

impl Channel {
    pub const ALL: [Channel; 3] = [Channel::Race, Channel::Decoder, Channel::Status];

    pub fn parse(s: &str) -> Option<Channel> {
        match s {
            "race" => Some(Channel::Race),
            "decoder" => Some(Channel::Decoder),
            "status" => Some(Channel::Status),
            _ => None,
        }
    }

    /// A bit of a [`Channels`] set.
    fn bit(self) -> u8 {
        1 << self as u8
    }

    /// The channel a stored event belongs to, by its type and stream.
    pub fn of(event_type: &str, stream: &str) -> Channel {
        if event_type == "decoder.passing"
            || event_type.starts_with("race")
            || stream.starts_with("race")
        {
            Channel::Race
        } else if event_type.starts_with("decoder.") || stream.starts_with("input/") {
            Channel::Decoder
        } else {
            Channel::Status
        }
    }
}

/// A set of channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Channels(u8);

impl Channels {
    pub fn insert(&mut self, c: Channel) {
        self.0 |= c.bit();
    }
    pub fn contains(self, c: Channel) -> bool {
        self.0 & c.bit() != 0
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// One message of the live stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    pub kind: Kind,
    /// `None` for heartbeats and errors, which concern the whole connection.
    pub channel: Option<Channel>,
    pub track_id: String,
    /// The race session an event or snapshot is about, when it is about one.
    pub event_id: Option<u32>,
    pub seq: u64,
    pub ts_us: u64,
    pub payload: serde_json::Value,
}

impl Envelope {
    /// The envelope as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an envelope of JSON values always serializes")
    }
}
