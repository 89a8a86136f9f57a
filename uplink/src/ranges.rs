//! A set of `u64` kept as disjoint, non-adjacent inclusive ranges.
//!
//! Central remembers, per `(track_id, client_id)`, every spool `seq` it has stored. A node's seqs are
//! dense and arrive in order, so the set is almost always one range; a parked (rejected) event leaves a
//! hole that costs one more range until it is re-sent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    /// start → end, both inclusive. Invariant: ranges are disjoint and never touch (end + 1 < next start).
    ranges: BTreeMap<u64, u64>,
}

impl RangeSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn contains(&self, value: u64) -> bool {
        self.ranges
            .range(..=value)
            .next_back()
            .is_some_and(|(_, &end)| value <= end)
    }

    /// Adds `value`; returns false if it was already there.
    pub fn insert(&mut self, value: u64) -> bool {
        // A node's seqs arrive in order, so the common insert extends the last range by one:
        // one look-up instead of the four of the general case. No range starts after the last
        // one, so none can join.
        if let Some(mut last) = self.ranges.last_entry()
            && last.get().checked_add(1) == Some(value)
        {
            *last.get_mut() = value;
            return true;
        }
        if self.contains(value) {
            return false;
        }
        let joins_left = self
            .ranges
            .range(..value)
            .next_back()
            .filter(|(_, end)| end.checked_add(1) == Some(value))
            .map(|(&start, _)| start);
        let right_end = value
            .checked_add(1)
            .and_then(|next| self.ranges.get(&next).copied());
        if right_end.is_some() {
            self.ranges.remove(&(value + 1));
        }
        let start = joins_left.unwrap_or(value);
        let end = right_end.unwrap_or(value);
        self.ranges.insert(start, end);
        true
    }

    /// Adds every value of `start..=end`.
    pub fn insert_range(&mut self, start: u64, end: u64) {
        assert!(start <= end, "a range starts at or before its end");
        let (mut lo, mut hi) = (start, end);
        // A range that starts before `start` and reaches it (or touches it) joins.
        if let Some((&s, &e)) = self.ranges.range(..start).next_back()
            && e.saturating_add(1) >= start
        {
            lo = s;
            hi = hi.max(e);
        }
        // So does every range that starts inside `start..=end + 1`.
        let joined: Vec<(u64, u64)> = self
            .ranges
            .range(lo..=end.saturating_add(1))
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in joined {
            self.ranges.remove(&s);
            hi = hi.max(e);
        }
        self.ranges.insert(lo, hi);
    }

    /// Adds every value of `other`.
    pub fn union(&mut self, other: &RangeSet) {
        for (start, end) in other.iter_ranges() {
            self.insert_range(start, end);
        }
    }

    /// Number of ranges (not values).
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    /// Number of values.
    pub fn len(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s + 1).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn iter_ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(&s, &e)| (s, e))
    }
}

/// Stored form: a list of `[start, end]` pairs.
impl Serialize for RangeSet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter_ranges())
    }
}

impl<'de> Deserialize<'de> for RangeSet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let pairs = Vec::<(u64, u64)>::deserialize(deserializer)?;
        let mut set = RangeSet::new();
        for (start, end) in pairs {
            if start > end {
                return Err(serde::de::Error::custom("range start after its end"));
            }
            if let Some((_, &last_end)) = set.ranges.iter().next_back()
                && last_end.saturating_add(1) >= start
            {
                return Err(serde::de::Error::custom(
                    "ranges must be sorted, disjoint and not touching",
                ));
            }
            set.ranges.insert(start, end);
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn dense_in_order_is_one_range() {
        let mut set = RangeSet::new();
        for v in 1..=10_000 {
            assert!(set.insert(v));
        }
        assert_eq!(set.range_count(), 1);
        assert_eq!(set.len(), 10_000);
        assert!(!set.insert(5_000));
    }

    #[test]
    fn agrees_with_a_btreeset_model() {
        // A small deterministic pseudo-random walk over a narrow domain hits every merge case.
        let mut model = BTreeSet::new();
        let mut set = RangeSet::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = x % 300;
            assert_eq!(set.insert(v), model.insert(v), "insert {v}");
            let probe = (x >> 20) % 310;
            assert_eq!(
                set.contains(probe),
                model.contains(&probe),
                "contains {probe}"
            );
        }
        assert_eq!(set.len(), model.len() as u64);
        let pairs: Vec<_> = set.iter_ranges().collect();
        for w in pairs.windows(2) {
            assert!(w[0].1 + 1 < w[1].0, "ranges must not touch: {w:?}");
        }
        let json = serde_json::to_string(&set).unwrap();
        assert_eq!(serde_json::from_str::<RangeSet>(&json).unwrap(), set);
    }

    #[test]
    fn union_agrees_with_a_btreeset_model() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..500 {
            let (mut a, mut b) = (RangeSet::new(), RangeSet::new());
            let mut model = BTreeSet::new();
            for _ in 0..(next() % 8) {
                let s = next() % 100;
                let e = s + next() % 10;
                a.insert_range(s, e);
                model.extend(s..=e);
            }
            for _ in 0..(next() % 8) {
                let s = next() % 100;
                let e = s + next() % 10;
                b.insert_range(s, e);
                model.extend(s..=e);
            }
            a.union(&b);
            let values: BTreeSet<u64> = a.iter_ranges().flat_map(|(s, e)| s..=e).collect();
            assert_eq!(values, model);
            let pairs: Vec<_> = a.iter_ranges().collect();
            for w in pairs.windows(2) {
                assert!(w[0].1 + 1 < w[1].0, "ranges must not touch: {w:?}");
            }
        }
        let mut top = RangeSet::new();
        top.insert_range(u64::MAX - 3, u64::MAX);
        top.insert_range(0, u64::MAX - 4);
        assert_eq!(top.range_count(), 1);
    }

    #[test]
    fn edges_of_u64() {
        let mut set = RangeSet::new();
        assert!(set.insert(u64::MAX));
        assert!(set.insert(u64::MAX - 1));
        assert!(set.insert(0));
        assert_eq!(set.range_count(), 2);
        assert!(set.contains(u64::MAX));
    }

    #[test]
    fn rejects_overlapping_stored_ranges() {
        assert!(serde_json::from_str::<RangeSet>("[[1,5],[6,7]]").is_err());
        assert!(serde_json::from_str::<RangeSet>("[[5,1]]").is_err());
        assert!(serde_json::from_str::<RangeSet>("[[1,5],[7,9]]").is_ok());
    }
}
