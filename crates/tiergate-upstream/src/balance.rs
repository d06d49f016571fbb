//! Power of two choices over endpoints: pick two eligible endpoints at random and send to the
//! one with the lower load estimate, latency EWMA x (in-flight + 1). Cheaper than a full scan,
//! and unlike "always the least loaded" it does not stampede one endpoint between updates.

use std::time::Duration;

use rand::Rng;

/// The load estimate of an endpoint: expected latency scaled by the work queued on it.
/// An endpoint without a latency sample yet is given `fallback`.
pub fn load_estimate(latency_ewma: Option<Duration>, in_flight: usize, fallback: Duration) -> f64 {
    let latency = latency_ewma.unwrap_or(fallback).as_secs_f64();
    // A floor keeps (in-flight + 1) meaningful when latency rounds to zero.
    latency.max(1e-6) * (in_flight as f64 + 1.0)
}

/// Picks an index among `loads` (`None` marks an ineligible endpoint) by power of two choices.
/// `None` when nothing is eligible.
pub fn choose<R: Rng + ?Sized>(loads: &[Option<f64>], rng: &mut R) -> Option<usize> {
    let eligible: Vec<usize> = (0..loads.len()).filter(|&i| loads[i].is_some()).collect();
    match eligible.len() {
        0 => None,
        1 => Some(eligible[0]),
        n => {
            let a = rng.random_range(0..n);
            // A second, distinct pick: shift by 1..n.
            let b = (a + rng.random_range(1..n)) % n;
            let (a, b) = (eligible[a], eligible[b]);
            let load = |i: usize| loads[i].unwrap_or(f64::INFINITY);
            Some(if load(b) < load(a) { b } else { a })
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn load_grows_with_latency_and_in_flight() {
        let fallback = Duration::from_millis(10);
        let fast = load_estimate(Some(Duration::from_millis(5)), 0, fallback);
        let slow = load_estimate(Some(Duration::from_millis(50)), 0, fallback);
        let busy = load_estimate(Some(Duration::from_millis(5)), 20, fallback);
        assert!(fast < slow);
        assert!(slow < busy);
        assert_eq!(load_estimate(None, 1, fallback), 0.02);
    }

    #[test]
    fn nothing_eligible_gives_none_and_one_gives_it() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(choose(&[], &mut rng), None);
        assert_eq!(choose(&[None, None], &mut rng), None);
        for _ in 0..20 {
            assert_eq!(choose(&[None, Some(5.0), None], &mut rng), Some(1));
        }
    }

    #[test]
    fn the_lower_of_two_wins_so_the_worst_of_many_is_never_chosen() {
        let mut rng = StdRng::seed_from_u64(7);
        let loads = [Some(1.0), Some(2.0), Some(3.0), Some(100.0)];
        let mut counts = [0usize; 4];
        for _ in 0..4000 {
            counts[choose(&loads, &mut rng).unwrap()] += 1;
        }
        assert_eq!(counts[3], 0, "{counts:?}");
        // Index 0 wins every pair it is in: about half of all picks.
        assert!(counts[0] > counts[1] && counts[1] > counts[2], "{counts:?}");
    }

    #[test]
    fn equal_loads_spread_evenly() {
        let mut rng = StdRng::seed_from_u64(3);
        let loads = [Some(1.0), Some(1.0)];
        let mut counts = [0usize; 2];
        for _ in 0..2000 {
            counts[choose(&loads, &mut rng).unwrap()] += 1;
        }
        assert!(counts[0] > 800 && counts[1] > 800, "{counts:?}");
    }
}
