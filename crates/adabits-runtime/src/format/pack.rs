//! Bit packing of the weight codes and the artifact's checksum.

/// The bytes `count` codes of `bits` bits take, packed.
pub fn packed_len(count: usize, bits: u8) -> usize {
    (count * usize::from(bits)).div_ceil(8)
}

/// Appends `codes` (each below `2^bits`) to `out`, packed least-significant bit first and padded
/// to a whole byte.
pub fn pack(codes: &[u8], bits: u8, out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + packed_len(codes.len(), bits), 0);
    let bytes = &mut out[start..];
    let b = usize::from(bits);
    let mask = (1u64 << b) - 1;
    // Eight codes fill `bits` whole bytes.
    let groups = codes.len() / 8;
    for (dst, src) in bytes.chunks_exact_mut(b).zip(codes.chunks_exact(8)) {
        let word = src
            .iter()
            .enumerate()
            .fold(0u64, |w, (i, &c)| w | (u64::from(c) & mask) << (i * b));
        dst.copy_from_slice(&word.to_le_bytes()[..b]);
    }
    let mut bit = groups * 8 * b;
    for &code in &codes[groups * 8..] {
        for j in 0..b {
            if code >> j & 1 == 1 {
                bytes[(bit + j) / 8] |= 1 << ((bit + j) % 8);
            }
        }
        bit += b;
    }
}

/// The inverse of [`pack`]: `count` codes of `bits` bits from `bytes`, each shifted right by
/// `shift` (the codes of `bits − shift` bits, by the bit-shift property).
///
/// # Panics
///
/// Panics if `bytes` holds fewer than `packed_len(count, bits)` bytes.
pub fn unpack_shifted(bytes: &[u8], count: usize, bits: u8, shift: u8) -> Vec<u8> {
    let bits = usize::from(bits);
    let mask = (1u32 << bits) - 1;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let bit = i * bits;
        let byte = bit / 8;
        // Two bytes hold any code of at most 8 bits.
        let lo = u32::from(bytes[byte]);
        let hi = bytes.get(byte + 1).map_or(0, |&b| u32::from(b));
        let code = ((lo | hi << 8) >> (bit % 8)) & mask;
        out.push((code >> shift) as u8);
    }
    out
}

/// CRC-32 (IEEE 802.3, reflected, as zlib and PNG compute it) of the chunks in turn.
pub fn crc32(chunks: &[&[u8]]) -> u32 {
    let mut table = [0u32; 256];
    for (i, slot) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *slot = c;
    }
    let mut crc = !0u32;
    for chunk in chunks {
        for &b in *chunk {
            crc = table[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_pack_and_unpack_at_every_width() {
        for bits in 1..=8u8 {
            let codes: Vec<u8> = (0..37u32)
                .map(|i| ((i * 5 + 3) % (1 << bits)) as u8)
                .collect();
            let mut bytes = vec![0xAA];
            pack(&codes, bits, &mut bytes);
            assert_eq!(bytes.len(), 1 + (37 * bits as usize).div_ceil(8));
            assert_eq!(
                unpack_shifted(&bytes[1..], 37, bits, 0),
                codes,
                "{bits} bits"
            );
            let shifted: Vec<u8> = codes.iter().map(|c| c >> 1).collect();
            assert_eq!(unpack_shifted(&bytes[1..], 37, bits, 1), shifted);
        }
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        // The CRC-32 check value of "123456789".
        assert_eq!(crc32(&[b"1234", b"56789"]), 0xCBF4_3926);
    }
}
