//! The two random processes of the paper: per-hop delays drawn from Exp(lambda), mean
//! 1/lambda (section 4), and the gaps of a Poisson emission clock of rate B (section 4.2).
//! Both take the RNG as an argument, so one seed reproduces a whole run.

use core::time::Duration;

use rand_core::Rng;
use rand_distr::{Distribution, Exp1};

/// The longest mean delay accepted: one day. Delays are meant to be seconds at most.
pub const MAX_MEAN_DELAY: Duration = Duration::from_secs(86_400);
/// The lowest rate accepted: one packet in a thousand seconds.
pub const MIN_RATE: f64 = 1e-3;
/// The highest rate accepted: ten million packets a second.
pub const MAX_RATE: f64 = 1e7;

/// Why a sampler could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SamplerError {
    /// The mean delay is longer than [`MAX_MEAN_DELAY`].
    #[error("mean delay longer than one day")]
    MeanTooLong,
    /// The rate is not a number, or outside [`MIN_RATE`]..=[`MAX_RATE`] packets a second.
    #[error("rate must be a number between 0.001 and 10,000,000 packets a second")]
    BadRate,
}

/// Exp(lambda) delays with mean 1/lambda. A zero mean gives zero delays.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ExpDelay {
    mean_nanos: f64,
}

impl ExpDelay {
    /// Always zero.
    pub const ZERO: ExpDelay = ExpDelay { mean_nanos: 0.0 };

    /// Delays with the given mean, 1/lambda.
    pub fn new(mean: Duration) -> Result<Self, SamplerError> {
        if mean > MAX_MEAN_DELAY {
            return Err(SamplerError::MeanTooLong);
        }
        Ok(ExpDelay {
            mean_nanos: mean.as_nanos() as f64,
        })
    }

    /// The mean, 1/lambda.
    pub fn mean(&self) -> Duration {
        Duration::from_nanos(self.mean_nanos as u64)
    }

    /// One delay, rounded to the nanosecond (saturating; a float-to-integer cast cannot
    /// panic).
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Duration {
        let x: f64 = Exp1.sample(rng);
        Duration::from_nanos((x * self.mean_nanos).round() as u64)
    }
}

/// The gaps of a Poisson process of `rate` events a second: Exp(rate), mean 1/rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PoissonClock {
    rate: f64,
    mean_gap_nanos: f64,
}

impl PoissonClock {
    /// A clock of `rate` events a second ([`MIN_RATE`]..=[`MAX_RATE`]).
    pub fn new(rate: f64) -> Result<Self, SamplerError> {
        if !rate.is_finite() || !(MIN_RATE..=MAX_RATE).contains(&rate) {
            return Err(SamplerError::BadRate);
        }
        Ok(PoissonClock {
            rate,
            mean_gap_nanos: 1e9 / rate,
        })
    }

    /// The rate, events a second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The time to the next event.
    pub fn next_gap<R: Rng + ?Sized>(&self, rng: &mut R) -> Duration {
        let x: f64 = Exp1.sample(rng);
        Duration::from_nanos((x * self.mean_gap_nanos).round() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_chacha::rand_core::SeedableRng;

    #[test]
    fn means_match_and_bad_parameters_are_refused() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let delay = ExpDelay::new(Duration::from_millis(50)).unwrap();
        let n = 200_000;
        let total: f64 = (0..n).map(|_| delay.sample(&mut rng).as_secs_f64()).sum();
        let mean = total / n as f64;
        // standard error of the mean: 50 ms / sqrt(200k) = 0.11 ms
        assert!((mean - 0.050).abs() < 0.0006, "mean {mean}");

        let clock = PoissonClock::new(1000.0).unwrap();
        let total: f64 = (0..n).map(|_| clock.next_gap(&mut rng).as_secs_f64()).sum();
        assert!((total / n as f64 - 0.001).abs() < 0.000_012);

        assert_eq!(
            ExpDelay::new(Duration::ZERO).unwrap().sample(&mut rng),
            Duration::ZERO
        );
        let tiny = ExpDelay::new(Duration::from_nanos(1)).unwrap();
        assert!(tiny.sample(&mut rng) < Duration::from_micros(1));
        assert_eq!(ExpDelay::new(Duration::MAX), Err(SamplerError::MeanTooLong));
        assert!(ExpDelay::new(MAX_MEAN_DELAY).is_ok());
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e-9, 1e12] {
            assert_eq!(PoissonClock::new(bad), Err(SamplerError::BadRate), "{bad}");
        }
        assert!(PoissonClock::new(MIN_RATE).is_ok());
        assert!(PoissonClock::new(MAX_RATE).is_ok());
    }
}
