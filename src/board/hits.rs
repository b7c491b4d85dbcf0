//! Rule hits per hour for the analysts' page: the board samples the running
//! totals (the `rule_hits_total` counters) now and then and keeps what each
//! hour added, for the last day. Nothing on the screening path changes for it.
//!
//! Pure: the caller passes the time and the totals.

use crate::model::UnixSeconds;
use std::collections::{BTreeMap, HashMap};

/// Hours kept.
pub const HOURS: usize = 24;

/// Hits an hour added, active and shadow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HourHits {
    pub active: u64,
    pub shadow: u64,
}

#[derive(Debug, Default)]
pub struct HitHistory {
    /// The totals at the last sample, by (rule, shadow).
    last: HashMap<(String, bool), u64>,
    /// Hour (unix seconds / 3600) → rule → hits added in it.
    hours: BTreeMap<i64, HashMap<String, HourHits>>,
}

impl HitHistory {
    /// Takes the running totals now: what grew since the last sample is
    /// counted in this hour. Totals start at zero with the process, so the
    /// first sample counts everything hit so far.
    pub fn sample(&mut self, now: UnixSeconds, totals: impl IntoIterator<Item = (String, bool, u64)>) {
        let hour = now.div_euclid(3600);
        for (rule, shadow, total) in totals {
            let before = self.last.insert((rule.clone(), shadow), total).unwrap_or(0);
            // A total below the last one was reset: all of it is new.
            let added = if total >= before { total - before } else { total };
            if added == 0 {
                continue;
            }
            let hits = self.hours.entry(hour).or_default().entry(rule).or_default();
            if shadow {
                hits.shadow += added;
            } else {
                hits.active += added;
            }
        }
        let oldest = hour - HOURS as i64 + 1;
        self.hours.retain(|h, _| *h >= oldest);
    }

    /// The last [`HOURS`] hours up to `now`'s, oldest first: (hour start, all rules' hits).
    pub fn per_hour(&self, now: UnixSeconds) -> Vec<(UnixSeconds, HourHits)> {
        let hour = now.div_euclid(3600);
        (hour - HOURS as i64 + 1..=hour)
            .map(|h| {
                let sum = self.hours.get(&h).into_iter().flat_map(|rules| rules.values()).fold(
                    HourHits::default(),
                    |acc, x| HourHits { active: acc.active + x.active, shadow: acc.shadow + x.shadow },
                );
                (h * 3600, sum)
            })
            .collect()
    }

    /// Each rule's hits over the kept hours.
    pub fn per_rule(&self) -> HashMap<String, HourHits> {
        let mut out: HashMap<String, HourHits> = HashMap::new();
        for (rule, hits) in self.hours.values().flatten() {
            let e = out.entry(rule.clone()).or_default();
            e.active += hits.active;
            e.shadow += hits.shadow;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(v: &[(&str, bool, u64)]) -> Vec<(String, bool, u64)> {
        v.iter().map(|(r, s, n)| (r.to_string(), *s, *n)).collect()
    }

    #[test]
    fn counts_what_each_hour_added_and_forgets_after_a_day() {
        let mut h = HitHistory::default();
        let t0 = 1_000 * 3600;
        h.sample(t0 + 10, totals(&[("big", false, 3), ("romance", true, 1)]));
        h.sample(t0 + 20, totals(&[("big", false, 5), ("romance", true, 1)]));
        h.sample(t0 + 3600, totals(&[("big", false, 9), ("romance", true, 4)]));
        let hours = h.per_hour(t0 + 3600);
        assert_eq!(hours.len(), HOURS);
        assert_eq!(hours[HOURS - 2], (t0, HourHits { active: 5, shadow: 1 }));
        assert_eq!(hours[HOURS - 1], (t0 + 3600, HourHits { active: 4, shadow: 3 }));
        assert_eq!(h.per_rule()["big"], HourHits { active: 9, shadow: 0 });
        // A day later the first two hours are gone; nothing new was hit.
        h.sample(t0 + 25 * 3600, totals(&[("big", false, 9)]));
        assert!(h.per_hour(t0 + 25 * 3600).iter().all(|(_, x)| *x == HourHits::default()));
        assert!(h.per_rule().is_empty());
    }

    #[test]
    fn a_reset_total_counts_from_zero() {
        let mut h = HitHistory::default();
        h.sample(0, totals(&[("big", false, 10)]));
        h.sample(1, totals(&[("big", false, 2)]));
        assert_eq!(h.per_rule()["big"].active, 12);
    }
}
