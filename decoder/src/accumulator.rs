//! The push accumulator: feed it any chunk of bytes, get complete frames out.
//!
//! ```text
//!            byte != SOR                 SOR: start a frame
//!   ┌──────── Hunting ─────────────────────────────────┐
//!   │  (counted as junk)                               v
//!   │                       ┌─────────────────────  InFrame  ── ESC ─> escape pending
//!   │  EOR: validate, emit  │   SOR: emit Truncated,  │  bytes unescaped into the buffer
//!   └───────────────────────┘   start a new frame     │
//!                                                     │ buffer full
//!                                                     v
//!                       Discarding (emit Overflow once; skip to EOR, or restart on SOR)
//! ```
//!
//! The accumulator owns a fixed buffer of [`FRAME_BYTES_MAX`] unescaped bytes and never allocates. Each
//! call to [`Accumulator::feed`] consumes input up to and including the byte that completes the next
//! event, so a caller loops until it returns `None`:
//!
//! ```
//! use decoder::{Accumulator, Event};
//! let wire = [0x00, 0x8e, 0x02, 0x0b, 0x00, 0x69, 0x8c, 0x00, 0x00, 0x05, 0x00, 0x8f];
//! let mut acc = Accumulator::new();
//! let mut input = &wire[..];
//! let mut tors = Vec::new();
//! while let Some(event) = acc.feed(&mut input) {
//!     if let Event::Frame { frame, .. } = event {
//!         tors.push(frame.tor());
//!     }
//! }
//! assert_eq!(tors, [0x0005]);
//! assert_eq!(acc.stats().junk_bytes, 1);
//! ```

use crate::frame::{EOR, ESC, ESC_OFFSET, FRAME_BYTES_MAX, Frame, Reject, SOR};

/// The index of the first byte of `bytes` that is ESC, SOR or EOR (0x8D..=0x8F), if any.
///
/// Eight bytes a step (SWAR): a frame is mostly ordinary bytes, and this scan is the accumulator's
/// per-byte work.
#[inline]
fn find_special(bytes: &[u8]) -> Option<usize> {
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(LOW) & !v & HIGH;
    let mut chunks = bytes.chunks_exact(8);
    let mut base = 0;
    for c in &mut chunks {
        let v = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        let hit = has_zero(v ^ (LOW * u64::from(ESC)))
            | has_zero(v ^ (LOW * u64::from(SOR)))
            | has_zero(v ^ (LOW * u64::from(EOR)));
        if hit != 0 {
            // `has_zero` can flag a byte above a true hit, never below one: the lowest flag is exact.
            return Some(base + (hit.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| (ESC..=EOR).contains(&b))
        .map(|at| base + at)
}

/// What the accumulator found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A valid frame. `offset` is the stream offset of its SOR.
    Frame { frame: Frame<'a>, offset: u64 },
    /// A rejected frame. `offset` is the stream offset of its SOR; `bytes` are its unescaped bytes as far
    /// as they were kept (at most [`FRAME_BYTES_MAX`]), for forensics.
    Rejected {
        reason: Reject,
        offset: u64,
        bytes: &'a [u8],
    },
}

/// Running counts since the accumulator was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub frames: u64,
    /// Rejected frames, indexed like [`Reject::ALL`].
    pub rejected: [u64; Reject::ALL.len()],
    /// Bytes outside any frame that were skipped while hunting for SOR.
    pub junk_bytes: u64,
    /// Bytes read in all.
    pub bytes: u64,
}

impl Stats {
    pub fn rejected(&self, reason: Reject) -> u64 {
        self.rejected[reason.index()]
    }
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().sum()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Hunting,
    InFrame {
        escape: bool,
    },
    /// The frame overflowed and was reported; skip to its EOR.
    Discarding,
}

/// What `feed` must do before reading more input, because the last event still borrowed the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    None,
    /// Clear the buffer.
    Clear,
    /// Clear the buffer and start a frame whose SOR was at this offset (already consumed).
    StartAt(u64),
}

/// A fixed-capacity P3 stream reader. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Accumulator {
    buf: heapless::Vec<u8, FRAME_BYTES_MAX>,
    state: State,
    pending: Pending,
    /// Stream offset of the next byte to be consumed.
    offset: u64,
    /// Stream offset of the current frame's SOR.
    frame_offset: u64,
    stats: Stats,
}

impl Default for Accumulator {
    fn default() -> Self {
        Self::new()
    }
}

impl Accumulator {
    pub const fn new() -> Self {
        Self {
            buf: heapless::Vec::new(),
            state: State::Hunting,
            pending: Pending::None,
            offset: 0,
            frame_offset: 0,
            stats: Stats {
                frames: 0,
                rejected: [0; Reject::ALL.len()],
                junk_bytes: 0,
                bytes: 0,
            },
        }
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The stream offset of the next byte to be consumed.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Forgets any partial frame, as after a reconnect: the bytes that follow are a new stream. The
    /// partial frame is not reported (the connection that carried it is gone); counters are kept.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.state = State::Hunting;
        self.pending = Pending::None;
    }

    fn apply_pending(&mut self) {
        match self.pending {
            Pending::None => {}
            Pending::Clear => {
                self.buf.clear();
                self.state = State::Hunting;
            }
            Pending::StartAt(at) => {
                self.buf.clear();
                // Cannot fail: the buffer was just cleared.
                let _ = self.buf.push(SOR);
                self.frame_offset = at;
                self.state = State::InFrame { escape: false };
            }
        }
        self.pending = Pending::None;
    }

    fn consume(&mut self, input: &mut &[u8], n: usize) {
        *input = &input[n..];
        self.offset += n as u64;
        self.stats.bytes += n as u64;
    }

    fn reject(&mut self, reason: Reject, pending: Pending) -> Event<'_> {
        self.stats.rejected[reason.index()] += 1;
        self.pending = pending;
        Event::Rejected {
            reason,
            offset: self.frame_offset,
            bytes: &self.buf,
        }
    }

    /// Consumes bytes from `input` until an event completes, and returns it; returns `None` once `input`
    /// is used up with no event. A frame may span any number of calls.
    ///
    /// A frame that arrives whole in one chunk, without escapes (the common case), is validated where it
    /// lies in `input`, without a copy; the event then borrows `input` rather than the accumulator.
    pub fn feed<'s, 'i: 's>(&'s mut self, input: &mut &'i [u8]) -> Option<Event<'s>> {
        self.apply_pending();
        loop {
            match self.state {
                State::Hunting => {
                    let found = input.iter().position(|&b| b == SOR);
                    let skipped = found.unwrap_or(input.len());
                    self.stats.junk_bytes += skipped as u64;
                    self.consume(input, skipped);
                    found?;
                    self.frame_offset = self.offset;
                    // Fast path: the whole frame is here, with no escape and no second SOR in it.
                    let whole: &'i [u8] = input;
                    let end = find_special(&whole[1..]).map(|at| at + 1);
                    if let Some(end) = end
                        && whole[end] == EOR
                        && end < FRAME_BYTES_MAX
                    {
                        let bytes = &whole[..=end];
                        self.consume(input, end + 1);
                        return Some(match Frame::parse(bytes) {
                            Ok(frame) => {
                                self.stats.frames += 1;
                                Event::Frame {
                                    frame,
                                    offset: self.frame_offset,
                                }
                            }
                            Err(reason) => {
                                self.stats.rejected[reason.index()] += 1;
                                Event::Rejected {
                                    reason,
                                    offset: self.frame_offset,
                                    bytes,
                                }
                            }
                        });
                    }
                    self.consume(input, 1);
                    self.buf.clear();
                    let _ = self.buf.push(SOR);
                    self.state = State::InFrame { escape: false };
                }
                State::Discarding => {
                    let Some(at) = input.iter().position(|&b| b == SOR || b == EOR) else {
                        let n = input.len();
                        self.consume(input, n);
                        return None;
                    };
                    let b = input[at];
                    self.consume(input, at);
                    if b == EOR {
                        self.consume(input, 1);
                        self.state = State::Hunting;
                    } else {
                        // A new SOR: it starts the next frame, handled by Hunting.
                        self.state = State::Hunting;
                    }
                }
                State::InFrame { mut escape } => {
                    if input.is_empty() {
                        return None;
                    }
                    // Copy runs of ordinary bytes in one go; stop at the next SOR or EOR.
                    let mut i = 0;
                    let mut overflow = false;
                    while i < input.len() {
                        if escape {
                            escape = false;
                            let b = input[i];
                            if b == SOR || b == EOR {
                                break;
                            }
                            i += 1;
                            if self.buf.len() + 1 >= FRAME_BYTES_MAX {
                                overflow = true;
                                break;
                            }
                            let _ = self.buf.push(b.wrapping_sub(ESC_OFFSET));
                            continue;
                        }
                        let rest = &input[i..];
                        let run = find_special(rest).unwrap_or(rest.len());
                        // Leave room for the EOR.
                        let room = FRAME_BYTES_MAX - 1 - self.buf.len();
                        if run > room {
                            let _ = self.buf.extend_from_slice(&rest[..room]);
                            i += room + 1;
                            overflow = true;
                            break;
                        }
                        let _ = self.buf.extend_from_slice(&rest[..run]);
                        i += run;
                        match input.get(i) {
                            Some(&ESC) => {
                                escape = true;
                                i += 1;
                            }
                            _ => break,
                        }
                    }
                    self.consume(input, i);
                    if overflow {
                        self.state = State::Discarding;
                        // The buffer is cleared when the next frame starts.
                        return Some(self.reject(Reject::Overflow, Pending::None));
                    }
                    self.state = State::InFrame { escape };
                    let &b = input.first()?;
                    let at = self.offset;
                    self.consume(input, 1);
                    if b == SOR {
                        // The frame was cut off: report it, then start the new one.
                        return Some(self.reject(Reject::Truncated, Pending::StartAt(at)));
                    }
                    // EOR. A dangling escape just before it is dropped; LEN or the CRC will tell.
                    let _ = self.buf.push(EOR);
                    self.pending = Pending::Clear;
                    return match Frame::parse(&self.buf).err() {
                        None => {
                            self.stats.frames += 1;
                            Some(Event::Frame {
                                frame: Frame::validated(&self.buf),
                                offset: self.frame_offset,
                            })
                        }
                        Some(reason) => Some(self.reject(reason, Pending::Clear)),
                    };
                }
            }
        }
    }

    /// Ends the stream: a frame still open is reported as truncated.
    pub fn finish(&mut self) -> Option<Event<'_>> {
        self.apply_pending();
        match self.state {
            State::InFrame { .. } => Some(self.reject(Reject::Truncated, Pending::Clear)),
            State::Hunting | State::Discarding => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::find_special;

    #[test]
    fn find_special_agrees_with_a_plain_scan() {
        let mut x = 0x9e37_79b9u32;
        for len in 0..100 {
            for _ in 0..50 {
                let bytes: std::vec::Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        // Mostly bytes near the special ones, to catch carries between lanes.
                        [0x8c, 0x8d, 0x8e, 0x8f, 0x90, 0x00, 0xff, 0x0d][(x % 8) as usize]
                            ^ ((x >> 8) as u8 & 0x01)
                    })
                    .collect();
                let plain = bytes.iter().position(|&b| (0x8d..=0x8f).contains(&b));
                assert_eq!(find_special(&bytes), plain, "{bytes:02x?}");
            }
        }
    }
}
