//! A batch's rows summed into the buckets of each granularity, in key order, before anything is
//! written: one upsert per bucket, and every transaction takes its row locks in the same order, so
//! concurrent batches wait for each other instead of deadlocking.

use std::collections::BTreeMap;

use keygate_shared::usage::UsageRow;

use super::{Granularity, Outcomes};

/// One granularity's sums: by (key id, bucket start), and admitted requests by (key id, start, name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Level {
    /// The granularity.
    pub granularity: Granularity,
    /// Outcome counts per key and bucket.
    pub counts: BTreeMap<(String, i64), Outcomes>,
    /// Admitted requests per key, bucket and operation name.
    pub operations: BTreeMap<(String, i64, String), i64>,
}

/// Everything one batch adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollups {
    /// Finest first.
    pub levels: Vec<Level>,
    /// Per key, the start of its latest minute with an admitted request.
    pub last_used: BTreeMap<String, i64>,
}

/// A count as stored (the wire limits keep it far below `i64::MAX`).
fn stored(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// Sums `rows` at every granularity, leaving out buckets already past their retention at `now`.
pub fn aggregate<'a>(rows: impl IntoIterator<Item = &'a UsageRow>, now: i64) -> Rollups {
    let mut levels: Vec<Level> = Granularity::ALL
        .into_iter()
        .map(|granularity| Level { granularity, counts: BTreeMap::new(), operations: BTreeMap::new() })
        .collect();
    let mut last_used = BTreeMap::new();
    for row in rows {
        let key = row.key_id.to_string();
        let counts = Outcomes {
            admitted: stored(row.admitted),
            forbidden: stored(row.forbidden),
            rate_limited: stored(row.rate_limited),
            refused: stored(row.refused),
        };
        if row.admitted > 0 {
            let latest = last_used.entry(key.clone()).or_insert(row.minute);
            *latest = (*latest).max(row.minute);
        }
        for level in &mut levels {
            let start = level.granularity.bucket(row.minute);
            if start < level.granularity.keep_from(now) {
                continue;
            }
            level.counts.entry((key.clone(), start)).or_default().add(counts);
            for op in row.operations.iter().filter(|op| op.count > 0) {
                *level.operations.entry((key.clone(), start, op.name.clone())).or_default() += stored(op.count);
            }
        }
    }
    Rollups { levels, last_used }
}

#[cfg(test)]
mod tests {
    use keygate_shared::usage::OperationCount;
    use keygate_shared::KeyId;

    use super::*;

    const NOW: i64 = 1_800_000_000 - 1_800_000_000 % 86_400 + 7_200;

    fn row(key: u128, minute: i64, admitted: u64, ops: &[(&str, u64)]) -> UsageRow {
        UsageRow {
            key_id: KeyId::from(key),
            minute,
            admitted,
            forbidden: 1,
            rate_limited: 0,
            refused: 0,
            operations: ops
                .iter()
                .map(|(name, count)| OperationCount { name: (*name).into(), count: *count })
                .collect(),
        }
    }

    #[test]
    fn rows_sum_into_each_granularity() {
        let rows = [
            row(1, NOW - 60, 2, &[("A", 2)]),
            row(1, NOW - 120, 3, &[("A", 1), ("B", 2)]),
            row(1, NOW - 3_600, 0, &[]),
            row(2, NOW, 1, &[("A", 1)]),
        ];
        let rollups = aggregate(&rows, NOW);
        let key1 = KeyId::from(1).to_string();
        let [minute, hour, day] = &rollups.levels[..] else { panic!("three levels") };
        assert_eq!(minute.counts.len(), 4);
        assert_eq!(hour.counts[&(key1.clone(), NOW - 3_600)].admitted, 5);
        assert_eq!(hour.counts[&(key1.clone(), NOW - 3_600)].forbidden, 3);
        assert_eq!(day.counts[&(key1.clone(), NOW - 7_200)].forbidden, 3);
        assert_eq!(day.operations[&(key1.clone(), NOW - 7_200, "A".into())], 3);
        assert_eq!(rollups.last_used[&key1], NOW - 60, "the latest minute with an admitted request");
    }

    #[test]
    fn buckets_past_retention_are_left_out() {
        let old = NOW - 3 * 86_400;
        let rollups = aggregate(&[row(1, old, 1, &[("A", 1)])], NOW);
        assert!(rollups.levels[0].counts.is_empty() && rollups.levels[0].operations.is_empty());
        assert_eq!(rollups.levels[1].counts.len(), 1);
        assert_eq!(rollups.levels[2].counts.len(), 1);
    }
}
