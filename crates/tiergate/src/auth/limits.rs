//! A tenant's token buckets (`governor`, GCRA): one for requests per second (with a burst),
//! one for tokens per minute. Each tenant has its own buckets, so one at its limit never
//! slows another; a refusal says how long to wait, in whole seconds.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Why a tenant's request may not go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// Over the limit now; it may go after this long (whole seconds, at least 1).
    RetryAfter(Duration),
    /// Larger than the bucket can ever hold: waiting does not help.
    NeverFits { asked: u32, capacity: u32 },
}

/// A token bucket: `capacity` cells, refilled at one per `period`.
pub struct Bucket {
    limiter: DefaultDirectRateLimiter,
    capacity: NonZeroU32,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl Bucket {
    /// `per_second` cells a second (fractions allowed: 0.5 is one every 2 s), up to `burst` at
    /// once. `None` when the rate is not a positive, finite number.
    pub fn per_second(per_second: f64, burst: NonZeroU32) -> Option<Bucket> {
        if !(per_second.is_finite() && per_second > 0.0) {
            return None;
        }
        let period = Duration::try_from_secs_f64(1.0 / per_second).ok()?;
        let quota = Quota::with_period(period)?.allow_burst(burst);
        Some(Bucket {
            limiter: RateLimiter::direct(quota),
            capacity: burst,
        })
    }

    /// `per_minute` cells a minute, all of them available at once when the bucket is full.
    pub fn per_minute(per_minute: NonZeroU32) -> Bucket {
        Bucket {
            limiter: RateLimiter::direct(Quota::per_minute(per_minute)),
            capacity: per_minute,
        }
    }

    /// Takes `n` cells, all or none.
    pub fn take(&self, n: u32) -> Result<(), Limited> {
        let Some(n) = NonZeroU32::new(n) else {
            return Ok(());
        };
        match self.limiter.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(Limited::RetryAfter(whole_seconds(
                not_until.wait_time_from(self.limiter.clock().now()),
            ))),
            Err(_) => Err(Limited::NeverFits {
                asked: n.get(),
                capacity: self.capacity.get(),
            }),
        }
    }
}

/// `Retry-After` speaks whole seconds; rounded up, and never 0 (which invites a tight loop).
fn whole_seconds(wait: Duration) -> Duration {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    Duration::from_secs(seconds.max(1))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn a_burst_goes_then_the_rest_waits_whole_seconds() {
        // One a minute: the test cannot be slow enough for a refill.
        let bucket = Bucket::per_second(1.0 / 60.0, nz(2)).unwrap();
        assert_eq!(bucket.take(1), Ok(()));
        assert_eq!(bucket.take(1), Ok(()));
        let Err(Limited::RetryAfter(wait)) = bucket.take(1) else {
            panic!("the third request passed a burst of 2");
        };
        assert!(wait >= Duration::from_secs(1) && wait <= Duration::from_secs(60));
        assert_eq!(wait.subsec_nanos(), 0);
    }

    #[test]
    fn buckets_are_separate() {
        let a = Bucket::per_second(1.0 / 60.0, nz(1)).unwrap();
        let b = Bucket::per_second(1.0 / 60.0, nz(1)).unwrap();
        assert_eq!(a.take(1), Ok(()));
        assert!(a.take(1).is_err());
        assert_eq!(b.take(1), Ok(()));
    }

    #[test]
    fn tokens_are_taken_all_or_none_and_an_oversized_ask_never_fits() {
        let bucket = Bucket::per_minute(nz(100));
        assert_eq!(bucket.take(60), Ok(()));
        // 40 left: 50 does not go, and takes nothing.
        assert!(matches!(bucket.take(50), Err(Limited::RetryAfter(_))));
        assert_eq!(bucket.take(40), Ok(()));
        assert_eq!(
            bucket.take(101),
            Err(Limited::NeverFits {
                asked: 101,
                capacity: 100
            })
        );
        assert_eq!(bucket.take(0), Ok(()));
    }

    #[test]
    fn odd_rates_are_refused() {
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e-30] {
            assert!(Bucket::per_second(rate, nz(1)).is_none(), "{rate}");
        }
    }
}
