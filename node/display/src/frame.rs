//! The WebSocket frames (RFC 6455) the direct writer ([`crate::direct`]) sends and reads itself.
//!
//! A server's frames are not masked, so one envelope's frame is the same bytes for every client:
//! it is built once ([`text`]) and the same buffer is written to every socket.
//!
//! ```text
//!  server -> client:  [FIN|opcode] [len 0..=125 | 126 + u16 | 127 + u64] payload
//!  client -> server:  [FIN|opcode] [MASK|len ...] [mask key, 4 bytes] payload ^ key
//! ```
//!
//! [`Reader`] is the client side's parser, sans-IO: bytes are pushed in as the socket gives them
//! and whole messages come out. A client of the live stream sends only pings, pongs and a close,
//! so a message longer than [`crate::live::CLIENT_FRAME_BYTES_MAX`] is refused as soon as its
//! header says so, and the reader never holds more than one frame and one read.

use bytes::{BufMut, Bytes, BytesMut};

/// A frame's type (RFC 6455, 5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl Opcode {
    fn of(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    fn is_control(self) -> bool {
        self as u8 & 0x8 != 0
    }
}

/// A control frame's payload, at most (RFC 6455, 5.5).
pub const CONTROL_PAYLOAD_BYTES_MAX: usize = 125;

/// The longest header a frame can have: 2 bytes, a 64-bit length and a mask key.
pub const HEADER_BYTES_MAX: usize = 14;

/// The close code for a frame the stream does not take (RFC 6455, 7.4.1: policy violation).
pub const CLOSE_POLICY: u16 = 1008;

/// The close code for a server that cannot go on (RFC 6455, 7.4.1: internal error).
pub const CLOSE_SERVER_ERROR: u16 = 1011;

/// The close code a server sends when it stops (RFC 6455, 7.4.1: going away).
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// One unfragmented, unmasked frame: header and payload in one buffer, to be written as is.
pub fn server_frame(opcode: Opcode, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + HEADER_BYTES_MAX);
    put(&mut out, opcode, payload);
    out.freeze()
}

/// Appends one unfragmented, unmasked frame to `out`.
pub fn put(out: &mut BytesMut, opcode: Opcode, payload: &[u8]) {
    out.put_u8(0x80 | opcode as u8);
    match payload.len() {
        n @ 0..=125 => out.put_u8(n as u8),
        n @ 126..=0xFFFF => {
            out.put_u8(126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(127);
            out.put_u64(n as u64);
        }
    }
    out.put_slice(payload);
}

/// A text message's frame.
pub fn text(json: &str) -> Bytes {
    server_frame(Opcode::Text, json.as_bytes())
}

/// A close frame with its code and a reason (cut to fit a control frame).
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut payload = code.to_be_bytes().to_vec();
    let room = CONTROL_PAYLOAD_BYTES_MAX - payload.len();
    let mut end = reason.len().min(room);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    server_frame(Opcode::Close, &payload)
}

/// What a client sent, whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    /// The client closes, with its code if it gave one.
    Close(Option<u16>),
}

/// Why a client's bytes are not a WebSocket message the stream takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("a client's frame must be masked")]
    Unmasked,
    #[error("reserved bits set")]
    Reserved,
    #[error("unknown opcode {0:#x}")]
    Opcode(u8),
    #[error("a control frame must be whole and at most 125 bytes")]
    Control,
    #[error("a continuation with no message to continue, or a new message inside one")]
    Fragments,
    #[error("a message of {len} bytes is longer than the {max} this stream takes")]
    TooLong { len: u64, max: usize },
    #[error("a text message that is not UTF-8")]
    NotUtf8,
}

/// The client side's parser: push bytes, take messages.
#[derive(Debug)]
pub struct Reader {
    /// Bytes read and not yet parsed: at most one frame (bounded by `message_bytes_max`) and one
    /// read.
    buffer: BytesMut,
    /// A fragmented message being put together: its opcode and the payload so far.
    partial: Option<(Opcode, Vec<u8>)>,
    message_bytes_max: usize,
}

/// One frame's header, parsed.
struct Header {
    fin: bool,
    opcode: Opcode,
    mask: [u8; 4],
    header_len: usize,
    payload_len: usize,
}

impl Reader {
    /// A reader of messages of at most `message_bytes_max` bytes.
    pub fn new(message_bytes_max: usize) -> Reader {
        Reader {
            buffer: BytesMut::new(),
            partial: None,
            message_bytes_max,
        }
    }

    /// Takes bytes read from the socket.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole message, `None` until its last byte is pushed, or why the bytes are not one.
    /// After an error the connection is to be closed: the reader does not resynchronise.
    pub fn message(&mut self) -> Result<Option<ClientMessage>, FrameError> {
        loop {
            let Some(h) = self.header()? else {
                return Ok(None);
            };
            let end = h.header_len + h.payload_len;
            if self.buffer.len() < end {
                return Ok(None);
            }
            let frame = self.buffer.split_to(end);
            let mut payload = frame[h.header_len..].to_vec();
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= h.mask[i % 4];
            }
            if let Some(message) = self.assemble(&h, payload)? {
                return Ok(Some(message));
            }
        }
    }

    /// The header at the buffer's front, once all of it is there, checked.
    fn header(&self) -> Result<Option<Header>, FrameError> {
        let b = &self.buffer[..];
        if b.len() < 2 {
            return Ok(None);
        }
        if b[0] & 0x70 != 0 {
            return Err(FrameError::Reserved);
        }
        let opcode = Opcode::of(b[0] & 0x0F).ok_or(FrameError::Opcode(b[0] & 0x0F))?;
        if b[1] & 0x80 == 0 {
            return Err(FrameError::Unmasked);
        }
        let fin = b[0] & 0x80 != 0;
        let (len, len_bytes) = match b[1] & 0x7F {
            126 if b.len() >= 4 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 2),
            127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().unwrap()), 8),
            126 | 127 => return Ok(None),
            n => (u64::from(n), 0),
        };
        if opcode.is_control() && (!fin || len > CONTROL_PAYLOAD_BYTES_MAX as u64) {
            return Err(FrameError::Control);
        }
        let so_far = self.partial.as_ref().map_or(0, |(_, p)| p.len() as u64);
        if len + so_far > self.message_bytes_max as u64 {
            return Err(FrameError::TooLong {
                len: len + so_far,
                max: self.message_bytes_max,
            });
        }
        let header_len = 2 + len_bytes + 4;
        if b.len() < header_len {
            return Ok(None);
        }
        Ok(Some(Header {
            fin,
            opcode,
            mask: b[header_len - 4..header_len].try_into().unwrap(),
            header_len,
            // At most `message_bytes_max`, checked above.
            payload_len: len as usize,
        }))
    }

    /// One frame's payload into a message: control frames stand alone, data frames may come in
    /// fragments.
    fn assemble(
        &mut self,
        h: &Header,
        payload: Vec<u8>,
    ) -> Result<Option<ClientMessage>, FrameError> {
        let (opcode, payload) = match h.opcode {
            Opcode::Close => {
                let code =
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                return Ok(Some(ClientMessage::Close(code)));
            }
            Opcode::Ping => return Ok(Some(ClientMessage::Ping(payload))),
            Opcode::Pong => return Ok(Some(ClientMessage::Pong)),
            Opcode::Continuation => {
                let (opcode, mut so_far) = self.partial.take().ok_or(FrameError::Fragments)?;
                so_far.extend_from_slice(&payload);
                (opcode, so_far)
            }
            opcode @ (Opcode::Text | Opcode::Binary) => {
                if self.partial.is_some() {
                    return Err(FrameError::Fragments);
                }
                (opcode, payload)
            }
        };
        if !h.fin {
            self.partial = Some((opcode, payload));
            return Ok(None);
        }
        Ok(Some(match opcode {
            Opcode::Text => {
                ClientMessage::Text(String::from_utf8(payload).map_err(|_| FrameError::NotUtf8)?)
            }
            _ => ClientMessage::Binary(payload),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's frame as a browser sends it: masked with `key`.
    fn client_frame(first: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
        let mut out = vec![first];
        match payload.len() {
            n @ 0..=125 => out.push(0x80 | n as u8),
            n @ 126..=0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        out
    }

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    #[test]
    fn server_frames_carry_the_length_in_the_shortest_form() {
        assert_eq!(&server_frame(Opcode::Text, b"Hello")[..], b"\x81\x05Hello");
        let mid = server_frame(Opcode::Text, &[b'a'; 300]);
        assert_eq!(&mid[..4], &[0x81, 126, 0x01, 0x2C]);
        assert_eq!(mid.len(), 4 + 300);
        let big = server_frame(Opcode::Binary, &vec![0u8; 70_000]);
        assert_eq!(&big[..10], &[0x82, 127, 0, 0, 0, 0, 0, 0x01, 0x11, 0x70]);
        assert_eq!(&close(1008, "bad frame")[..], b"\x88\x0b\x03\xf0bad frame");
        let long = "é".repeat(100);
        assert_eq!(
            close(1001, &long).len(),
            2 + 2 + 122,
            "a reason is cut to fit, at a character boundary"
        );
    }

    /// RFC 6455 5.7's masked "Hello", fed whole, byte by byte and split at every point: one
    /// message each way.
    #[test]
    fn a_masked_text_frame_reads_the_same_however_it_is_split() {
        let rfc = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        for split in 0..=rfc.len() {
            let mut r = Reader::new(1024);
            r.push(&rfc[..split]);
            let early = r.message().unwrap();
            r.push(&rfc[split..]);
            let got = early.or_else(|| r.message().unwrap());
            assert_eq!(
                got,
                Some(ClientMessage::Text("Hello".into())),
                "split at {split}"
            );
            assert_eq!(r.message().unwrap(), None);
        }
        let mut r = Reader::new(1024);
        for b in rfc {
            assert_eq!(r.message().unwrap(), None);
            r.push(&[b]);
        }
        assert_eq!(
            r.message().unwrap(),
            Some(ClientMessage::Text("Hello".into()))
        );
    }

    #[test]
    fn fragments_control_frames_and_a_close_come_out_in_order() {
        let mut r = Reader::new(1024);
        r.push(&client_frame(0x01, br#"{"type":"#, KEY));
        r.push(&client_frame(0x89, b"hi", KEY));
        r.push(&client_frame(0x80, br#""ping"}"#, KEY));
        r.push(&client_frame(0x8A, b"", KEY));
        r.push(&client_frame(0x88, &1000u16.to_be_bytes(), KEY));
        assert_eq!(
            r.message().unwrap(),
            Some(ClientMessage::Ping(b"hi".to_vec()))
        );
        assert_eq!(
            r.message().unwrap(),
            Some(ClientMessage::Text(r#"{"type":"ping"}"#.into()))
        );
        assert_eq!(r.message().unwrap(), Some(ClientMessage::Pong));
        assert_eq!(r.message().unwrap(), Some(ClientMessage::Close(Some(1000))));
        assert_eq!(r.message().unwrap(), None);
    }

    #[test]
    fn what_the_stream_does_not_take_is_a_clear_error() {
        let cases: [(Vec<u8>, FrameError); 7] = [
            (b"\x81\x05Hello".to_vec(), FrameError::Unmasked),
            (client_frame(0xC1, b"x", KEY), FrameError::Reserved),
            (client_frame(0x83, b"x", KEY), FrameError::Opcode(3)),
            (client_frame(0x09, b"x", KEY), FrameError::Control),
            (client_frame(0x80, b"x", KEY), FrameError::Fragments),
            (client_frame(0x81, &[0xff, 0xfe], KEY), FrameError::NotUtf8),
            // Refused on the header, before the payload arrives.
            (
                client_frame(0x81, &[b'a'; 2000], KEY)[..8].to_vec(),
                FrameError::TooLong {
                    len: 2000,
                    max: 1024,
                },
            ),
        ];
        for (bytes, want) in cases {
            let mut r = Reader::new(1024);
            r.push(&bytes);
            assert_eq!(r.message(), Err(want), "{bytes:x?}");
        }
        // Fragments add up against the limit too.
        let mut r = Reader::new(1024);
        r.push(&client_frame(0x01, &[b'a'; 1000], KEY));
        r.push(&client_frame(0x80, &[b'a'; 100], KEY));
        assert_eq!(
            r.message(),
            Err(FrameError::TooLong {
                len: 1100,
                max: 1024
            })
        );
    }
}
