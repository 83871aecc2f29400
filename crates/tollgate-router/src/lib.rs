//! From a public model to the target that serves this request.
//!
//! A model's targets form priority tiers (lower first); within a tier the
//! choice is weighted random. This crate owns only the choice: it is generic
//! over the target type and knows nothing of providers or connections.

/// A model's targets grouped into tiers, ready for picking.
#[derive(Debug, Clone)]
pub struct Route<T> {
    tiers: Vec<Tier<T>>,
}

#[derive(Debug, Clone)]
struct Tier<T> {
    targets: Vec<T>,
    /// Running sum of weights, for a binary search on a random draw.
    cumulative: Vec<u64>,
}

impl<T> Route<T> {
    /// Build from `(priority, weight, target)`; weights of 0 count as 1.
    pub fn new(mut targets: Vec<(u32, u32, T)>) -> Route<T> {
        targets.sort_by_key(|(p, _, _)| *p);
        let mut tiers: Vec<(u32, Tier<T>)> = Vec::new();
        for (priority, weight, t) in targets {
            let w = u64::from(weight.max(1));
            match tiers.last_mut() {
                Some((p, tier)) if *p == priority => {
                    let last = tier.cumulative.last().copied().unwrap_or(0);
                    tier.cumulative.push(last + w);
                    tier.targets.push(t);
                }
                _ => tiers.push((
                    priority,
                    Tier {
                        targets: vec![t],
                        cumulative: vec![w],
                    },
                )),
            }
        }
        Route {
            tiers: tiers.into_iter().map(|(_, t)| t).collect(),
        }
    }

    /// Pick a target from the first tier that has one for which `usable` holds.
    pub fn pick(&self, usable: impl Fn(&T) -> bool) -> Option<&T> {
        self.pick_with(rand::random::<u64>(), usable)
    }

    /// As [`Route::pick`], with the random draw given (for tests).
    pub fn pick_with(&self, draw: u64, usable: impl Fn(&T) -> bool) -> Option<&T> {
        for tier in &self.tiers {
            let total = tier.cumulative.last().copied().unwrap_or(0);
            if total == 0 {
                continue;
            }
            let x = draw % total;
            let start = tier.cumulative.partition_point(|&c| c <= x);
            // Walk from the drawn target so an unusable one hands its share to the next.
            let n = tier.targets.len();
            for i in 0..n {
                let t = &tier.targets[(start + i) % n];
                if usable(t) {
                    return Some(t);
                }
            }
        }
        None
    }

    /// Every target, tier by tier.
    pub fn targets(&self) -> impl Iterator<Item = &T> {
        self.tiers.iter().flat_map(|t| t.targets.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_and_tiers() {
        let r = Route::new(vec![(1, 1, "backup"), (0, 3, "a"), (0, 1, "b")]);
        let mut counts = [0; 2];
        for draw in 0..4000u64 {
            match *r.pick_with(draw, |_| true).unwrap() {
                "a" => counts[0] += 1,
                "b" => counts[1] += 1,
                other => panic!("{other}"),
            }
        }
        assert_eq!(counts, [3000, 1000]);
        assert_eq!(r.pick_with(0, |t| *t != "a"), Some(&"b"));
        assert_eq!(r.pick_with(0, |t| *t == "backup"), Some(&"backup"));
        assert_eq!(r.pick_with(0, |_| false), None);
        assert_eq!(r.targets().count(), 3);
    }
}
