//! The payload's error-correcting code: 64 bits become a Reed–Solomon codeword of 20 bytes (8 data, 12
//! parity) over GF(256), 160 coded bits. Up to 6 wrong bytes are corrected, or 5 wrong bytes plus 2 that the
//! detector marks as unreliable (erasures).

use reed_solomon::{Decoder, Encoder};

/// Payload bytes.
pub const DATA_BYTES: usize = 8;
/// Parity bytes.
pub const PARITY_BYTES: usize = 12;
/// Bytes in a codeword.
pub const CODED_BYTES: usize = DATA_BYTES + PARITY_BYTES;
/// Bits in a codeword: what the pattern carries.
pub const CODED_BITS: usize = CODED_BYTES * 8;
/// The largest number of bytes the decoder may be told to treat as erasures. Each erasure widens what a
/// random word can decode to (see [`false_positive_bound`]), so the detector stops at 2.
pub const MAX_ERASURES: usize = 2;

/// The 160 coded bits of `payload`, most significant bit of each byte first.
pub fn encode(payload: u64) -> [bool; CODED_BITS] {
    let coded = Encoder::new(PARITY_BYTES).encode(&payload.to_be_bytes());
    let mut bits = [false; CODED_BITS];
    for (i, b) in coded.iter().enumerate() {
        for j in 0..8 {
            bits[i * 8 + j] = (b >> (7 - j)) & 1 == 1;
        }
    }
    bits
}

/// Decodes soft bits (positive means 1, the magnitude is the confidence). Tries hard decisions first, then
/// with the least reliable bytes erased. Returns the payload, or `None` when no codeword is near enough.
pub fn decode(soft: &[f64; CODED_BITS]) -> Option<u64> {
    let mut bytes = [0u8; CODED_BYTES];
    let mut reliability = [(0.0f64, 0u8); CODED_BYTES];
    for (i, byte) in bytes.iter_mut().enumerate() {
        let bits = &soft[i * 8..i * 8 + 8];
        *byte = bits
            .iter()
            .fold(0u8, |acc, &s| (acc << 1) | u8::from(s > 0.0));
        let weakest = bits.iter().map(|s| s.abs()).fold(f64::INFINITY, f64::min);
        reliability[i] = (weakest, i as u8);
    }
    reliability.sort_by(|a, b| a.0.total_cmp(&b.0));
    let decoder = Decoder::new(PARITY_BYTES);
    for erased in [0, MAX_ERASURES] {
        let erase: Vec<u8> = reliability[..erased].iter().map(|r| r.1).collect();
        if let Ok(fixed) = decoder.correct(&bytes, Some(&erase)) {
            let data: [u8; DATA_BYTES] = fixed.data().try_into().ok()?;
            return Some(u64::from_be_bytes(data));
        }
    }
    None
}

/// An upper bound on the chance that noise (coded bits that are independent fair coins) decodes to some
/// payload in one call of [`decode`]: the codewords' share of the space, times the number of words within
/// the correction radius of each, summed over the two attempts (no erasures: radius 6 of 20 bytes; two
/// erasures: radius 5 of the other 18).
pub fn false_positive_bound() -> f64 {
    let attempt = |erased: usize| {
        let n = CODED_BYTES - erased;
        let t = (PARITY_BYTES - erased) / 2;
        // q^k * V(n, t) / q^n with q = 256, k = 8: the chance a uniform word of n bytes lies within
        // Hamming distance t of one of the q^k codewords.
        let volume: f64 = (0..=t)
            .map(|e| binomial(n, e) * 255f64.powi(e as i32))
            .sum();
        volume * 256f64.powi(DATA_BYTES as i32 - n as i32)
    };
    attempt(0) + attempt(MAX_ERASURES)
}

fn binomial(n: usize, k: usize) -> f64 {
    (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn soft_of(bits: &[bool; CODED_BITS]) -> [f64; CODED_BITS] {
        let mut s = [0.0; CODED_BITS];
        for (s, &b) in s.iter_mut().zip(bits) {
            *s = if b { 1.0 } else { -1.0 };
        }
        s
    }

    #[test]
    fn corrects_six_wrong_bytes_and_no_more() {
        let payload = 0x0123_4567_89ab_cdef;
        let bits = encode(payload);
        let mut soft = soft_of(&bits);
        for byte in [0, 3, 7, 9, 14, 19] {
            soft[byte * 8 + 2] = -soft[byte * 8 + 2];
        }
        assert_eq!(decode(&soft), Some(payload));
        soft[11 * 8] = -soft[11 * 8];
        soft[12 * 8] = -soft[12 * 8];
        // Eight wrong bytes with full confidence: beyond the code, must not come back as the payload.
        assert_ne!(decode(&soft), Some(payload));
    }

    #[test]
    fn erasures_rescue_weak_bytes() {
        let payload = 42;
        let bits = encode(payload);
        let mut soft = soft_of(&bits);
        // Seven wrong bytes: too many for errors alone, but two of them are weak and get erased.
        for byte in [1, 2, 5, 8, 10] {
            soft[byte * 8] = -soft[byte * 8];
        }
        for byte in [15, 18] {
            soft[byte * 8 + 4] *= -0.01;
        }
        assert_eq!(decode(&soft), Some(payload));
    }

    #[test]
    fn noise_rarely_decodes_and_never_panics() {
        // SplitMix64 coin flips: 20,000 random words; the bound says about 1e-4 of one should decode.
        let mut state = 7u64;
        let mut decoded = 0;
        for _ in 0..20_000 {
            let mut soft = [0.0; CODED_BITS];
            for s in soft.iter_mut() {
                state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                *s = (z >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
            }
            decoded += usize::from(decode(&soft).is_some());
        }
        assert_eq!(decoded, 0);
        let bound = false_positive_bound();
        assert!(bound > 1e-10 && bound < 1e-7, "{bound}");
    }
}
