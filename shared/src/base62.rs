//! Fixed-width base62 over big-endian byte strings, the digit order DESIGN.md fixes (`0-9`, `A-Z`, `a-z`).
//!
//! The `base62` crate stops at `u128` and `base-x` encodes leading zero bytes as extra digits, so neither
//! gives the fixed-width, left-padded numbers of key format v1 for a 256-bit secret; this module does,
//! for any width, by long division. Decoding is needed only for the key id, which fits a `u128`.
//!
//! The alphabet is in ASCII order, so for two digit strings of the same width, comparing the strings
//! compares the numbers: range checks on the validation path are plain string comparisons.

/// The digits, in value order.
pub(crate) const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Marks a byte that is not a digit in [`DIGIT_VALUES`].
const NOT_A_DIGIT: u8 = 0xff;

/// Each byte's digit value, or [`NOT_A_DIGIT`]: one load per digit on the validation path.
const DIGIT_VALUES: [u8; 256] = {
    let mut table = [NOT_A_DIGIT; 256];
    let mut value = 0;
    while value < ALPHABET.len() {
        table[ALPHABET[value] as usize] = value as u8;
        value += 1;
    }
    table
};

/// The value of one base62 digit, or `None` for any other byte.
pub(crate) fn digit_value(byte: u8) -> Option<u8> {
    match DIGIT_VALUES[usize::from(byte)] {
        NOT_A_DIGIT => None,
        value => Some(value),
    }
}

/// The number that `digits` (at most 10 of them, all in the alphabet) encode: 62^10 < 2^64.
pub(crate) fn decode_u64(digits: &[u8]) -> u64 {
    digits.iter().fold(0u64, |value, digit| value * 62 + u64::from(DIGIT_VALUES[usize::from(*digit)] & 0x3f))
}

/// Writes `value` as exactly `out.len()` digits, left-padded; `false` if it needs more. For public numbers
/// (the checksum): no copy to wipe, and division by a constant is a multiply.
pub(crate) fn encode_u64_into(mut value: u64, out: &mut [u8]) -> bool {
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(value % 62) as usize];
        value /= 62;
    }
    value == 0
}

/// Writes the big-endian number in `number` as exactly `out.len()` base62 digits, left-padded with `0`.
///
/// Returns `false` (leaving `out` unspecified) when the number needs more digits than `out` holds.
pub(crate) fn encode_into(number: &[u8], out: &mut [u8]) -> bool {
    // Work on a copy in u32 limbs: the caller's bytes may be secret, so the copy is wiped at the end.
    let mut limbs = [0u32; 8];
    let limb_count = number.len().div_ceil(4);
    if limb_count > limbs.len() {
        return false;
    }
    for (i, byte) in number.iter().enumerate() {
        let from_right = number.len() - 1 - i;
        limbs[limb_count - 1 - from_right / 4] |= u32::from(*byte) << (8 * (from_right % 4));
    }
    let limbs_used = &mut limbs[..limb_count];
    for slot in out.iter_mut().rev() {
        let mut remainder = 0u64;
        for limb in limbs_used.iter_mut() {
            let value = (remainder << 32) | u64::from(*limb);
            *limb = (value / 62) as u32;
            remainder = value % 62;
        }
        *slot = ALPHABET[remainder as usize];
    }
    let fits = limbs_used.iter().all(|limb| *limb == 0);
    zeroize::Zeroize::zeroize(&mut limbs);
    fits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode<const W: usize>(number: &[u8]) -> [u8; W] {
        let mut out = [0u8; W];
        assert!(encode_into(number, &mut out));
        out
    }

    #[test]
    fn small_numbers_are_left_padded() {
        assert_eq!(&encode::<6>(&[0, 0, 0, 0]), b"000000");
        assert_eq!(&encode::<6>(&[0, 0, 0, 61]), b"00000z");
        assert_eq!(&encode::<6>(&[0, 0, 0, 62]), b"000010");
    }

    #[test]
    fn the_largest_u32_needs_six_digits() {
        // 2^32 - 1 = 4294967295 = "4gfFC3" in base62.
        assert_eq!(&encode::<6>(&u32::MAX.to_be_bytes()), b"4gfFC3");
        let mut five = [0u8; 5];
        assert!(!encode_into(&u32::MAX.to_be_bytes(), &mut five));
    }

    #[test]
    fn both_encoders_agree() {
        for value in [0u32, 1, 61, 62, 3_843, 0x753f_163e, u32::MAX] {
            let mut narrow = [0u8; 6];
            assert!(encode_u64_into(u64::from(value), &mut narrow));
            assert_eq!(narrow, encode::<6>(&value.to_be_bytes()));
        }
        assert!(!encode_u64_into(62u64.pow(6), &mut [0u8; 6]));
    }

    #[test]
    fn string_order_is_number_order() {
        let mut sorted = *ALPHABET;
        sorted.sort_unstable();
        assert_eq!(&sorted, ALPHABET);
    }
}
