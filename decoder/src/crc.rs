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
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// The register's value before the first byte.
pub const CRC_INIT: u16 = 0xFFFF;

/// Feeds `bytes` into a running checksum.
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
    if frame.len() < 6 {
        return update(CRC_INIT, frame);
    }
    let crc = update(CRC_INIT, &frame[..4]);
    let crc = update(crc, &[0, 0]);
    update(crc, &frame[6..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_value_differs_from_ccitt_false() {
        // The standard check input. CCITT-FALSE would give 0x29B1.
        assert_eq!(update(CRC_INIT, b"123456789"), 0xA69D);
    }

    #[test]
    fn worked_example_from_the_protocol_notes() {
        let frame: [u8; 31] = [
            0x8e, 0x02, 0x1f, 0x00, 0xf3, 0x89, 0x00, 0x00, 0x02, 0x00, 0x01, 0x02, 0x28, 0x00, 0x07,
            0x02, 0x16, 0x00, 0x0c, 0x01, 0x76, 0x06, 0x01, 0x00, 0x81, 0x04, 0x13, 0x18, 0x04, 0x00,
            0x8f,
        ];
        assert_eq!(frame_crc(&frame), 0x89F3);
    }
}
