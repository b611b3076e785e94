//! The shared key set's entries: records grouped into buckets by the leading bits of their
//! hash (README "Key sets over HTTP").
//!
//! Envoy never frees the name of a shared-data entry, only its value. An entry per hash
//! would grow Envoy by every hash ever published; an entry per bucket bounds the names by
//! the number of buckets, which follows the size of the set in force. A bucket holds about
//! [`KEYS_PER_BUCKET`] records, so a request copies a few hundred bytes, and a change to
//! one key rewrites one bucket.
//!
//! A bucket's value is its entries one after another, each
//! `[hash: 32 bytes][length: u32 LE][record]`, the record as [`crate::record_codec`]
//! writes it, ordered by hash.

use crate::record::KeyHash;

/// The mean number of records per bucket the layout aims at.
pub const KEYS_PER_BUCKET: usize = 8;
/// The fewest buckets: 64.
pub const MIN_BITS: u8 = 6;
/// The most buckets: 262,144 (2M keys at [`KEYS_PER_BUCKET`]); larger sets fill them more.
pub const MAX_BITS: u8 = 18;

/// How many leading hash bits name a bucket for a set of `keys` keys.
pub fn bits_for(keys: usize) -> u8 {
    let buckets = keys.div_ceil(KEYS_PER_BUCKET).max(1);
    let bits = usize::BITS - (buckets - 1).leading_zeros();
    u8::try_from(bits)
        .unwrap_or(MAX_BITS)
        .clamp(MIN_BITS, MAX_BITS)
}

/// Whether a set now `keys` keys strong is better served by another layout than `bits`:
/// only when it has grown or shrunk fourfold, so that a set hovering around a boundary
/// does not move every bucket back and forth.
pub fn relayout(bits: u8, keys: usize) -> Option<u8> {
    let ideal = bits_for(keys);
    (ideal.abs_diff(bits) >= 2).then_some(ideal)
}

/// The bucket of `hash` when buckets are named by `bits` leading bits. Hashes sorted in
/// byte order are sorted by bucket, whatever `bits`.
pub fn bucket_of(hash: &[u8; 32], bits: u8) -> u32 {
    let lead = u32::from_be_bytes([hash[0], hash[1], hash[2], hash[3]]);
    lead.checked_shr(32 - u32::from(bits.clamp(1, 32)))
        .unwrap_or(0)
}

/// Appends one entry.
pub fn push(out: &mut Vec<u8>, hash: &[u8; 32], record: &[u8]) {
    out.extend_from_slice(hash);
    let len = u32::try_from(record.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(record);
}

/// The entries of a bucket, in order. A malformed tail (truncated, overlong) ends the
/// walk: what follows it is never read as a record.
pub fn entries(bucket: &[u8]) -> Entries<'_> {
    Entries(bucket)
}

pub struct Entries<'a>(&'a [u8]);

impl<'a> Iterator for Entries<'a> {
    type Item = (&'a [u8; 32], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (hash, rest) = self.0.split_first_chunk::<32>()?;
        let (len, rest) = rest.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
        if rest.len() < len {
            self.0 = &[];
            return None;
        }
        let (record, rest) = rest.split_at(len);
        self.0 = rest;
        Some((hash, record))
    }
}

/// The record of `hash` in a bucket.
pub fn find<'a>(bucket: &'a [u8], hash: &KeyHash) -> Option<&'a [u8]> {
    entries(bucket).find_map(|(h, record)| (h == hash.bytes()).then_some(record))
}

/// `bucket` with `upsert` put in place and `delete` taken out, both sorted by hash and
/// disjoint, and how many keys that added (negative: removed).
pub fn apply(bucket: &[u8], upsert: &[(&[u8; 32], &[u8])], delete: &[[u8; 32]]) -> (Vec<u8>, i64) {
    let mut out =
        Vec::with_capacity(bucket.len() + upsert.iter().map(|u| 40 + u.1.len()).sum::<usize>());
    let mut added = 0i64;
    let mut new = upsert.iter().peekable();
    for (hash, record) in entries(bucket) {
        while let Some((h, r)) = new.next_if(|(h, _)| *h < hash) {
            push(&mut out, h, r);
            added += 1;
        }
        if let Some((h, r)) = new.next_if(|(h, _)| *h == hash) {
            push(&mut out, h, r);
        } else if delete.binary_search(hash).is_ok() {
            added -= 1;
        } else {
            push(&mut out, hash, record);
        }
    }
    for (h, r) in new {
        push(&mut out, h, r);
        added += 1;
    }
    (out, added)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(byte: u8) -> [u8; 32] {
        [byte; 32]
    }

    #[test]
    fn the_layout_follows_the_set_size() {
        assert_eq!(bits_for(0), MIN_BITS);
        assert_eq!(bits_for(10_000), 11);
        assert_eq!(bits_for(1_000_000), 17);
        assert_eq!(bits_for(100_000_000), MAX_BITS);
        assert_eq!(relayout(17, 1_000_000), None);
        assert_eq!(relayout(17, 600_000), None);
        assert_eq!(relayout(17, 100_000), Some(14));
        assert_eq!(relayout(11, 1_000_000), Some(17));
    }

    #[test]
    fn buckets_follow_the_hash_order() {
        let low = [0u8; 32];
        let high = [0xff; 32];
        for bits in MIN_BITS..=MAX_BITS {
            assert_eq!(bucket_of(&low, bits), 0);
            assert_eq!(bucket_of(&high, bits), (1 << bits) - 1);
        }
        let mut mid = [0u8; 32];
        mid[0] = 0x80;
        assert_eq!(bucket_of(&mid, 6), 32);
    }

    #[test]
    fn a_bucket_is_read_back_and_changed_in_place() {
        let mut bucket = Vec::new();
        push(&mut bucket, &h(1), b"one");
        push(&mut bucket, &h(3), b"three");
        assert_eq!(
            find(&bucket, &KeyHash::from_bytes(h(3))),
            Some(&b"three"[..])
        );
        assert_eq!(find(&bucket, &KeyHash::from_bytes(h(2))), None);

        let (changed, added) = apply(&bucket, &[(&h(2), b"two"), (&h(3), b"THREE")], &[h(1)]);
        assert_eq!(added, 0);
        let all: Vec<_> = entries(&changed).map(|(h, r)| (h[0], r.to_vec())).collect();
        assert_eq!(all, vec![(2, b"two".to_vec()), (3, b"THREE".to_vec())]);

        let (grown, added) = apply(&changed, &[(&h(9), b"nine")], &[h(7)]);
        assert_eq!(added, 1);
        assert_eq!(entries(&grown).count(), 3);
    }

    #[test]
    fn a_malformed_bucket_yields_no_record_past_the_damage() {
        let mut bucket = Vec::new();
        push(&mut bucket, &h(1), b"one");
        push(&mut bucket, &h(2), b"two");
        let cut = &bucket[..bucket.len() - 1];
        assert_eq!(entries(cut).count(), 1);
        let mut overlong = bucket.clone();
        overlong[32] = 0xff;
        assert_eq!(entries(&overlong).count(), 0);
        assert_eq!(entries(&[1, 2, 3]).count(), 0);
    }
}
