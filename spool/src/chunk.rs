//! The `events` table's chunk rows: many consecutive events in one value (layout 3 on).
//!
//! Up to layout 2 every event was a row of its own, keyed by its seq, whose value is the event's
//! [`StoredRecord`](crate::record::StoredRecord). A chunk row is keyed by the seq of its first
//! event and holds the events that follow it, one seq apart, each written against the one
//! before it: a field equal to the previous event's (the stream, the event type, the boot, the
//! time the spool recorded the group) is one bit of a flags byte instead of its bytes. A decoder
//! passing takes ~55 bytes there instead of ~120, and a batch of 1,000 is ~15 inserts into redb
//! instead of 1,000. The device writes every event twice (the journal, then the database's pages
//! at a checkpoint); with a row per event that second copy was 114 of the 237 bytes a passing
//! cost the disk at batches of 1,000, with chunks 42 of 165.
//!
//! The two kinds of row tell themselves apart by their first byte: a `StoredRecord` starts
//! with its version's index (0 for V1), a chunk with [`CHUNK_V1_TAG`]. Both are read wherever
//! they are, so a spool written before layout 3 needs no rewrite.
//!
//! Chunk V1, after the tag, is the number of events (`u16`, little-endian), then the events in
//! seq order, each:
//!
//! | field | present | encoding |
//! |---|---|---|
//! | flags | always | one byte, the `SAME_*` bits below |
//! | stream | unless `SAME_STREAM` | varint length, UTF-8 |
//! | version | unless `NEXT_VERSION` (the previous event's version + 1, same stream only) | varint |
//! | event type | unless `SAME_TYPE` | varint length, UTF-8 |
//! | schema version | unless `SAME_SCHEMA` | varint |
//! | recorded at (µs) | unless `SAME_RECORDED` | varint |
//! | captured at (µs) | always | zigzag varint of `captured - recorded`, wrapping |
//! | boot id | unless `SAME_BOOT` | varint length, UTF-8 |
//! | causation, correlation, user, idempotency key | if `HAS_OPTIONS` (else all none) | postcard `Option<&str>` each |
//! | payload | always | varint length, bytes |
//!
//! The first event's flags carry no `SAME_*` or `NEXT_VERSION` bit. Varints are postcard's
//! (LEB128). The row ends with its last event: a row with more bytes, or fewer events, than it
//! says is corrupt. `tests/it/format.rs` pins the bytes.

use crate::error::{Result, SpoolError};
use crate::record::{push_bytes_field, push_varint};
use crate::types::{Metadata, RecordedEvent, StreamId};

/// The first byte of a chunk row. Far above any `StoredRecord` version's index, so neither kind
/// of row is ever read as the other.
pub const CHUNK_V1_TAG: u8 = 0xC1;

/// A chunk is closed once its bytes reach this: a chunk and its key then fill one 4 KiB page of
/// redb's (a larger value would take a page of twice the size), and reading one event of it
/// decodes at most one page.
pub const CHUNK_BYTES_TARGET: usize = 3_900;

const SAME_STREAM: u8 = 0x01;
const NEXT_VERSION: u8 = 0x02;
const SAME_TYPE: u8 = 0x04;
const SAME_SCHEMA: u8 = 0x08;
const SAME_RECORDED: u8 = 0x10;
const SAME_BOOT: u8 = 0x20;
const HAS_OPTIONS: u8 = 0x40;
const KNOWN_FLAGS: u8 = 0x7F;
/// The tag and the event count.
const CHUNK_HEADER_BYTES: usize = 3;

/// One event's fields as a chunk encodes them.
#[derive(Clone, Copy)]
struct Fields<'a> {
    seq: u64,
    stream: &'a [u8],
    version: u64,
    event_type: &'a [u8],
    schema_version: u16,
    recorded_at_us: u64,
    captured_at_us: u64,
    boot_id: &'a [u8],
    options: [Option<&'a [u8]>; 4],
    payload: &'a [u8],
}

impl<'a> Fields<'a> {
    fn of_event(event: &'a RecordedEvent) -> Fields<'a> {
        Fields {
            seq: event.seq.0,
            stream: event.stream.as_str().as_bytes(),
            version: event.version,
            event_type: event.event_type.as_bytes(),
            schema_version: event.stored_schema_version,
            recorded_at_us: event.recorded_at_us,
            captured_at_us: event.meta.captured_at_us,
            boot_id: event.meta.boot_id.as_bytes(),
            options: [
                event.meta.causation_id.as_deref().map(str::as_bytes),
                event.meta.correlation_id.as_deref().map(str::as_bytes),
                event.meta.user.as_deref().map(str::as_bytes),
                event.meta.idempotency_key.as_deref().map(str::as_bytes),
            ],
            payload: &event.payload,
        }
    }

    /// The fields of a `StoredRecord::V1`'s bytes, read in place by hand: the writer hands the
    /// database its records encoded, and reading them back through serde cost the apply thread
    /// more than the rest of a chunk's work. Strings stay bytes: they were strings when encoded,
    /// and a chunk's reader checks them again.
    fn of_record(record: &'a [u8]) -> Result<Fields<'a>> {
        let corrupt = |what: &str| {
            SpoolError::corrupted(format!("a stored record handed to the database: {what}"))
        };
        let mut input = Input {
            rest: record,
            corrupt: &corrupt,
        };
        if input.byte()? != 0 {
            return Err(corrupt("not StoredRecord::V1"));
        }
        let seq = input.varint()?;
        let stream = input.bytes()?;
        let version = input.varint()?;
        let event_type = input.bytes()?;
        let schema_version =
            u16::try_from(input.varint()?).map_err(|_| corrupt("a schema version beyond u16"))?;
        let recorded_at_us = input.varint()?;
        let captured_at_us = input.varint()?;
        let boot_id = input.bytes()?;
        let mut options = [None; 4];
        for option in &mut options {
            *option = match input.byte()? {
                0 => None,
                1 => Some(input.bytes()?),
                _ => return Err(corrupt("an option that is neither none nor some")),
            };
        }
        let payload = input.bytes()?;
        if !input.rest.is_empty() {
            return Err(corrupt("bytes after its payload"));
        }
        Ok(Fields {
            seq,
            stream,
            version,
            event_type,
            schema_version,
            recorded_at_us,
            captured_at_us,
            boot_id,
            options,
            payload,
        })
    }
}

/// Chunk rows being built from events in seq order: [`Self::push_record`] each, then
/// [`Self::finish`]; every closed chunk is handed to `emit` with
/// its first seq as it closes.
pub(crate) struct ChunkBuilder<'a, F: FnMut(u64, &[u8]) -> Result<()>> {
    out: Vec<u8>,
    first_seq: u64,
    count: u16,
    previous: Option<Fields<'a>>,
    emit: F,
}

impl<'a, F: FnMut(u64, &[u8]) -> Result<()>> ChunkBuilder<'a, F> {
    pub(crate) fn new(emit: F) -> Self {
        ChunkBuilder {
            out: Vec::with_capacity(CHUNK_BYTES_TARGET + 512),
            first_seq: 0,
            count: 0,
            previous: None,
            emit,
        }
    }

    /// Add an event given as its `StoredRecord` bytes.
    pub(crate) fn push_record(&mut self, record: &'a [u8]) -> Result<()> {
        self.push(Fields::of_record(record)?)
    }

    fn push(&mut self, fields: Fields<'a>) -> Result<()> {
        let follows = self
            .previous
            .is_some_and(|p| p.seq.checked_add(1) == Some(fields.seq));
        if !follows || self.out.len() >= CHUNK_BYTES_TARGET || self.count == u16::MAX {
            self.close()?;
        }
        if self.previous.is_none() {
            self.first_seq = fields.seq;
            self.out.extend_from_slice(&[CHUNK_V1_TAG, 0, 0]);
        }
        encode_fields(&mut self.out, self.previous.as_ref(), &fields);
        self.count += 1;
        self.previous = Some(fields);
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        if self.previous.take().is_some() {
            self.out[1..CHUNK_HEADER_BYTES].copy_from_slice(&self.count.to_le_bytes());
            (self.emit)(self.first_seq, &self.out)?;
        }
        self.out.clear();
        self.count = 0;
        Ok(())
    }

    /// The seq of the event pushed last.
    pub(crate) fn last_seq(&self) -> Option<u64> {
        self.previous.map(|p| p.seq)
    }

    /// Close the last chunk.
    pub(crate) fn finish(mut self) -> Result<()> {
        self.close()
    }
}

fn encode_fields(out: &mut Vec<u8>, previous: Option<&Fields<'_>>, this: &Fields<'_>) {
    let mut flags = 0;
    if let Some(p) = previous {
        if p.stream == this.stream {
            flags |= SAME_STREAM;
            if p.version.checked_add(1) == Some(this.version) {
                flags |= NEXT_VERSION;
            }
        }
        if p.event_type == this.event_type {
            flags |= SAME_TYPE;
        }
        if p.schema_version == this.schema_version {
            flags |= SAME_SCHEMA;
        }
        if p.recorded_at_us == this.recorded_at_us {
            flags |= SAME_RECORDED;
        }
        if p.boot_id == this.boot_id {
            flags |= SAME_BOOT;
        }
    }
    if this.options.iter().any(Option::is_some) {
        flags |= HAS_OPTIONS;
    }
    out.push(flags);
    if flags & SAME_STREAM == 0 {
        push_bytes_field(out, this.stream);
    }
    if flags & NEXT_VERSION == 0 {
        push_varint(out, this.version);
    }
    if flags & SAME_TYPE == 0 {
        push_bytes_field(out, this.event_type);
    }
    if flags & SAME_SCHEMA == 0 {
        push_varint(out, u64::from(this.schema_version));
    }
    if flags & SAME_RECORDED == 0 {
        push_varint(out, this.recorded_at_us);
    }
    push_varint(
        out,
        zigzag(this.captured_at_us.wrapping_sub(this.recorded_at_us)),
    );
    if flags & SAME_BOOT == 0 {
        push_bytes_field(out, this.boot_id);
    }
    if flags & HAS_OPTIONS != 0 {
        for option in this.options {
            match option {
                None => out.push(0),
                Some(text) => {
                    out.push(1);
                    push_bytes_field(out, text);
                }
            }
        }
    }
    push_bytes_field(out, this.payload);
}

/// A difference of two `u64`s taken with wrapping, as a signed number folded onto the unsigned
/// ones so that small differences either way are short varints.
fn zigzag(difference: u64) -> u64 {
    let signed = difference.cast_signed();
    ((signed << 1) ^ (signed >> 63)).cast_unsigned()
}

fn unzigzag(folded: u64) -> u64 {
    (folded >> 1) ^ (folded & 1).wrapping_neg()
}

/// The chunk V1 bytes (tag included) of `events`, which must be consecutive in seq. The format's
/// reference encoder, for the tests that pin it; the writer builds its chunks as it inserts.
pub fn encode_chunk(events: &[RecordedEvent]) -> Result<Vec<u8>> {
    let count = u16::try_from(events.len())
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| SpoolError::corrupted("a chunk holds 1 to 65,535 events"))?;
    let mut out = vec![CHUNK_V1_TAG];
    out.extend_from_slice(&count.to_le_bytes());
    let mut previous: Option<Fields<'_>> = None;
    for event in events {
        let fields = Fields::of_event(event);
        if let Some(p) = &previous
            && p.seq.checked_add(1) != Some(fields.seq)
        {
            return Err(SpoolError::corrupted(format!(
                "a chunk's events must be consecutive: seq {} after {}",
                fields.seq, p.seq
            )));
        }
        encode_fields(&mut out, previous.as_ref(), &fields);
        previous = Some(fields);
    }
    Ok(out)
}

/// The events of the chunk row stored under `first_seq`, in seq order, as stored (before
/// upcasting). `stop_after` ends the decoding at that seq (a read of one event need not decode
/// the rest).
pub fn decode_chunk(
    first_seq: u64,
    bytes: &[u8],
    stop_after: Option<u64>,
) -> Result<Vec<RecordedEvent>> {
    let corrupt = |what: &str| SpoolError::corrupted(format!("chunk at seq {first_seq}: {what}"));
    let Some((&[CHUNK_V1_TAG, lo, hi], mut rest)) = bytes.split_first_chunk::<CHUNK_HEADER_BYTES>()
    else {
        return Err(corrupt("no chunk header"));
    };
    let count = u16::from_le_bytes([lo, hi]);
    if count == 0 {
        return Err(corrupt("no events"));
    }
    let mut out: Vec<RecordedEvent> = Vec::with_capacity(usize::from(count));
    let mut seq = first_seq;
    for _ in 0..count {
        if stop_after.is_some_and(|stop| seq > stop) {
            return Ok(out);
        }
        let mut input = Input {
            rest,
            corrupt: &corrupt,
        };
        let flags = input.byte()?;
        let previous = out.last();
        if flags & !KNOWN_FLAGS != 0 {
            return Err(corrupt("unknown flags"));
        }
        if previous.is_none() && flags & !HAS_OPTIONS != 0 {
            return Err(corrupt("the first event refers to one before it"));
        }
        if flags & NEXT_VERSION != 0 && flags & SAME_STREAM == 0 {
            return Err(corrupt("a next version in another stream"));
        }
        let stream = match previous {
            Some(p) if flags & SAME_STREAM != 0 => p.stream.clone(),
            _ => StreamId::new(input.string()?).map_err(|_| corrupt("an invalid stream id"))?,
        };
        let version = match previous {
            Some(p) if flags & NEXT_VERSION != 0 => p
                .version
                .checked_add(1)
                .ok_or_else(|| corrupt("version overflow"))?,
            _ => input.varint()?,
        };
        let event_type = match previous {
            Some(p) if flags & SAME_TYPE != 0 => p.event_type.clone(),
            _ => input.string()?,
        };
        let schema_version = match previous {
            Some(p) if flags & SAME_SCHEMA != 0 => p.stored_schema_version,
            _ => u16::try_from(input.varint()?)
                .map_err(|_| corrupt("a schema version beyond u16"))?,
        };
        let recorded_at_us = match previous {
            Some(p) if flags & SAME_RECORDED != 0 => p.recorded_at_us,
            _ => input.varint()?,
        };
        let captured_at_us = recorded_at_us.wrapping_add(unzigzag(input.varint()?));
        let boot_id = match previous {
            Some(p) if flags & SAME_BOOT != 0 => p.meta.boot_id.clone(),
            _ => input.string()?,
        };
        let mut options: [Option<String>; 4] = Default::default();
        if flags & HAS_OPTIONS != 0 {
            for option in &mut options {
                *option = match input.byte()? {
                    0 => None,
                    1 => Some(input.string()?),
                    _ => return Err(corrupt("an option that is neither none nor some")),
                };
            }
        }
        let payload = input.bytes()?.to_vec();
        rest = input.rest;
        let [causation_id, correlation_id, user, idempotency_key] = options;
        out.push(RecordedEvent {
            seq: crate::types::Seq(seq),
            stream,
            version,
            event_type,
            schema_version,
            stored_schema_version: schema_version,
            payload,
            recorded_at_us,
            meta: Metadata {
                captured_at_us,
                boot_id,
                causation_id,
                correlation_id,
                user,
                idempotency_key,
            },
        });
        seq = seq.checked_add(1).ok_or_else(|| corrupt("seq overflow"))?;
    }
    if !rest.is_empty() {
        return Err(corrupt("bytes after its last event"));
    }
    Ok(out)
}

/// The bytes of a chunk still to decode.
struct Input<'a, 'c> {
    rest: &'a [u8],
    corrupt: &'c dyn Fn(&str) -> SpoolError,
}

impl<'a> Input<'a, '_> {
    fn byte(&mut self) -> Result<u8> {
        let (&byte, rest) = self
            .rest
            .split_first()
            .ok_or_else(|| (self.corrupt)("cut short"))?;
        self.rest = rest;
        Ok(byte)
    }

    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            let bits = u64::from(byte & 0x7F);
            if shift == 63 && bits > 1 {
                return Err((self.corrupt)("a varint beyond u64"));
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err((self.corrupt)("a varint beyond u64"))
    }

    fn bytes(&mut self) -> Result<&'a [u8]> {
        let len = usize::try_from(self.varint()?).map_err(|_| (self.corrupt)("a length"))?;
        if len > self.rest.len() {
            return Err((self.corrupt)("a length beyond the row"));
        }
        let (bytes, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(bytes)
    }

    fn string(&mut self) -> Result<String> {
        let bytes = self.bytes()?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| (self.corrupt)("a string that is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::EncodedRecords;

    /// Recorded at `recorded`, captured 700 µs before.
    fn event(seq: u64, stream: &str, version: u64, recorded: u64) -> RecordedEvent {
        let mut event = RecordedEvent::fixture(seq, stream, version);
        event.recorded_at_us = recorded;
        event.meta.captured_at_us = recorded - 700;
        event
    }

    fn built(events: &[RecordedEvent]) -> Vec<(u64, Vec<u8>)> {
        let mut records = EncodedRecords::default();
        for e in events {
            records.push_event(e).unwrap();
        }
        let mut rows = Vec::new();
        let mut builder = ChunkBuilder::new(|seq, bytes: &[u8]| {
            rows.push((seq, bytes.to_vec()));
            Ok(())
        });
        for record in records.iter() {
            builder.push_record(record).unwrap();
        }
        builder.finish().unwrap();
        rows
    }

    #[test]
    fn every_field_round_trips_through_records_and_events_alike() {
        let mut events: Vec<RecordedEvent> = (1..=6)
            .map(|i| event(100 + i, "decoder/D0000C00", 40 + i, 1_761_855_822_438_911))
            .collect();
        // Each field in turn differs from the event before it.
        events[1].recorded_at_us += 5;
        events[2].stream = StreamId::new("node").unwrap();
        events[3].event_type = "system.note".into();
        events[3].stored_schema_version = 3;
        events[3].schema_version = 3;
        events[4].meta.boot_id = "b-000043".into();
        events[4].meta.user = Some("judge-1".into());
        events[4].meta.idempotency_key = Some("k-1".into());
        events[5].meta.captured_at_us = u64::MAX;
        events[5].version = 7;
        let rows = built(&events);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].0, 101);
        assert_eq!(rows[0].1, encode_chunk(&events).unwrap());
        assert_eq!(decode_chunk(101, &rows[0].1, None).unwrap(), events);
        assert_eq!(
            decode_chunk(101, &rows[0].1, Some(103)).unwrap(),
            events[..3]
        );
    }

    #[test]
    fn a_gap_in_seqs_or_a_full_chunk_starts_the_next_row() {
        let mut events: Vec<RecordedEvent> = (1..=200)
            .map(|i| event(i, "decoder/D0000C00", i, 1_000_000))
            .collect();
        for e in &mut events {
            e.payload = vec![e.seq.0 as u8; 40];
        }
        for e in &mut events[150..] {
            e.seq.0 += 10;
        }
        let rows = built(&events);
        assert!(rows.len() > 2, "{} rows", rows.len());
        let mut back = Vec::new();
        for (seq, bytes) in &rows {
            assert!(bytes.len() < CHUNK_BYTES_TARGET + 200);
            back.extend(decode_chunk(*seq, bytes, None).unwrap());
        }
        assert_eq!(back, events);
        assert!(rows.iter().any(|(seq, _)| *seq == 161));
    }

    #[test]
    fn a_passing_costs_well_under_half_its_record() {
        let events: Vec<RecordedEvent> = (1..=50)
            .map(|i| event(i, "decoder/D0000C00", i, 1_000_000))
            .collect();
        let record = crate::record::encode_event(&events[10]).unwrap().len();
        let chunk = encode_chunk(&events).unwrap().len();
        assert!(
            chunk * 2 < record * 50,
            "{chunk} bytes for 50 records of {record}"
        );
    }

    #[test]
    fn damaged_chunks_are_errors_never_panics() {
        let events: Vec<RecordedEvent> = (1..=5)
            .map(|i| event(i, "decoder/D0000C00", i, 1_000_000))
            .collect();
        let good = encode_chunk(&events).unwrap();
        for cut in 0..good.len() {
            assert!(decode_chunk(1, &good[..cut], None).is_err(), "cut at {cut}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(decode_chunk(1, &longer, None).is_err());
        for at in 0..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[at] ^= 1 << bit;
                drop(decode_chunk(1, &bad, None));
            }
        }
        assert!(decode_chunk(1, &[], None).is_err());
        assert!(decode_chunk(1, &[CHUNK_V1_TAG], None).is_err());
        assert!(decode_chunk(1, &[CHUNK_V1_TAG, 0, 0], None).is_err());
        assert!(decode_chunk(1, &[CHUNK_V1_TAG, 1, 0, SAME_STREAM], None).is_err());
        assert!(decode_chunk(1, &[0], None).is_err());
    }

    #[test]
    fn zigzag_round_trips_at_the_edges() {
        for d in [
            0u64,
            1,
            2,
            700,
            u64::MAX,
            u64::MAX - 699,
            1 << 63,
            (1 << 63) - 1,
        ] {
            assert_eq!(unzigzag(zigzag(d)), d);
        }
        assert_eq!(zigzag(0u64.wrapping_sub(700)), 1399);
    }
}
