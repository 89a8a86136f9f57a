//! The P3 checksum.
//!
//! A 16-bit CRC with the CCITT polynomial 0x1021 and initial value 0xFFFF, in the "augmented" (direct)
//! form that AMB's own decoder firmware uses: the table step comes first and the data byte is XORed into
//! the *bottom* of the register afterwards:
//!
//! ```text
//! crc = T[crc >> 8] ^ (crc << 8) ^ byte
//! ```
//!
//! This is **not** CRC-16/CCITT-FALSE, which XORs the byte into the top of the register before the table
//! step (check value 0x29B1 where this one gives 0xA69D). It covers the whole *unescaped* frame, SOR to
//! EOR inclusive, with the two CRC bytes at offsets 4..6 read as zero.

/// The MSB-first table for polynomial 0x1021, built at compile time.
const TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// Slicing-by-8 tables for the standard (non-augmented) form: `SLICES[k][i]` is the CRC register after
/// byte `i` followed by `k` zero bytes. They let [`frame_crc`] take 8 bytes per step instead of one.
const SLICES: [[u16; 256]; 8] = {
    let mut t = [[0u16; 256]; 8];
    t[0] = TABLE;
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[k - 1][i];
            t[k][i] = (prev << 8) ^ TABLE[(prev >> 8) as usize];
            i += 1;
        }
        k += 1;
    }
    t
};

/// The register's value before the first byte.
pub const CRC_INIT: u16 = 0xFFFF;

/// The standard-form register value equivalent to [`CRC_INIT`]: the P3 checksum of `M` equals the
/// standard MSB-first CRC (poly 0x1021, init 0x1D0F, i.e. CRC-16/AUG-CCITT) of `M` without its last two
/// bytes, XORed with those two bytes read big-endian.
const STANDARD_INIT: u16 = 0x1D0F;

/// The standard MSB-first CRC update (the byte goes into the top of the register), 8 bytes a step.
#[inline]
fn standard_update(mut crc: u16, bytes: &[u8]) -> u16 {
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let x0 = c[0] ^ (crc >> 8) as u8;
        let x1 = c[1] ^ crc as u8;
        crc = SLICES[7][usize::from(x0)]
            ^ SLICES[6][usize::from(x1)]
            ^ SLICES[5][usize::from(c[2])]
            ^ SLICES[4][usize::from(c[3])]
            ^ SLICES[3][usize::from(c[4])]
            ^ SLICES[2][usize::from(c[5])]
            ^ SLICES[1][usize::from(c[6])]
            ^ SLICES[0][usize::from(c[7])];
    }
    for &b in chunks.remainder() {
        crc = (crc << 8) ^ TABLE[usize::from((crc >> 8) as u8 ^ b)];
    }
    crc
}

/// Feeds `bytes` into a running checksum, one byte at a time: the reference form, exactly as the
/// decoder firmware writes it. [`frame_crc`] computes the same value faster.
#[inline]
pub fn update(mut crc: u16, bytes: &[u8]) -> u16 {
    for &b in bytes {
        crc = TABLE[usize::from(crc >> 8)] ^ (crc << 8) ^ u16::from(b);
    }
    crc
}

/// The checksum of a whole unescaped frame, with its stored CRC bytes (offsets 4 and 5) taken as zero.
///
/// `frame` must be at least 6 bytes long; shorter input is checksummed as it is.
pub fn frame_crc(frame: &[u8]) -> u16 {
    let n = frame.len();
    if n < 10 {
        let mut zeroed = [0u8; 10];
        zeroed[..n].copy_from_slice(frame);
        if n >= 6 {
            zeroed[4] = 0;
            zeroed[5] = 0;
        }
        return update(CRC_INIT, &zeroed[..n]);
    }
    // Standard form over everything but the last two bytes, CRC field as zero; then the last two.
    // The first 8 bytes (SOR, VER, LEN, zeroed CRC, FLAGS) go in as one slicing step.
    let head = [
        frame[0], frame[1], frame[2], frame[3], 0, 0, frame[6], frame[7],
    ];
    let crc = standard_update(STANDARD_INIT, &head);
    let crc = standard_update(crc, &frame[8..n - 2]);
    crc ^ u16::from_be_bytes([frame[n - 2], frame[n - 1]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_value_differs_from_ccitt_false() {
        // The standard check input. CCITT-FALSE would give 0x29B1.
        assert_eq!(update(CRC_INIT, b"123456789"), 0xA69D);
    }

    /// The fast form equals the byte-wise reference on every length and content.
    #[test]
    fn fast_form_equals_reference() {
        let mut x = 0x1234_5678u32;
        for len in 0..300 {
            let mut data = std::vec::Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                data.push(x as u8);
            }
            let mut zeroed = data.clone();
            if len >= 6 {
                zeroed[4] = 0;
                zeroed[5] = 0;
            }
            assert_eq!(frame_crc(&data), update(CRC_INIT, &zeroed), "length {len}");
        }
    }

    #[test]
    fn worked_example_from_the_protocol_notes() {
        let frame: [u8; 31] = [
            0x8e, 0x02, 0x1f, 0x00, 0xf3, 0x89, 0x00, 0x00, 0x02, 0x00, 0x01, 0x02, 0x28, 0x00,
            0x07, 0x02, 0x16, 0x00, 0x0c, 0x01, 0x76, 0x06, 0x01, 0x00, 0x81, 0x04, 0x13, 0x18,
            0x04, 0x00, 0x8f,
        ];
        assert_eq!(frame_crc(&frame), 0x89F3);
    }
}
