//! The latency a path adds: a packet through h hops is held by the h - 1 mixes before its
//! recipient, each for an exponential delay of mean 1/mu (section 4.2), so the sum is
//! Erlang(h - 1, mu). Its quantiles bound the messenger's timeouts and are the theory the
//! latency benchmark is compared with.

use std::time::Duration;

/// Pr[S <= x] for S the sum of `m` exponentials of mean `mean` (Erlang(m, 1/mean)).
pub fn erlang_cdf(m: usize, mean: Duration, x: Duration) -> f64 {
    if m == 0 {
        return 1.0;
    }
    let mean = mean.as_secs_f64();
    if mean <= 0.0 {
        return 1.0;
    }
    let y = x.as_secs_f64() / mean;
    // 1 - sum_{i<m} e^-y y^i / i!
    let mut term = (-y).exp();
    let mut sum = term;
    for i in 1..m {
        term *= y / i as f64;
        sum += term;
    }
    (1.0 - sum).clamp(0.0, 1.0)
}

/// The `p` quantile of the sum of `m` exponentials of mean `mean`.
pub fn erlang_quantile(m: usize, mean: Duration, p: f64) -> Duration {
    if m == 0 || mean.is_zero() {
        return Duration::ZERO;
    }
    let p = p.clamp(0.0, 1.0 - 1e-12);
    let (mut lo, mut hi) = (0.0f64, mean.as_secs_f64() * (m as f64 + 10.0));
    while erlang_cdf(m, mean, Duration::from_secs_f64(hi)) < p {
        hi *= 2.0;
    }
    for _ in 0..100 {
        let mid = (lo + hi) / 2.0;
        if erlang_cdf(m, mean, Duration::from_secs_f64(mid)) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Duration::from_secs_f64(hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_exponential_and_the_median_of_two() {
        let mean = Duration::from_millis(100);
        // Exp: the median is mean * ln 2
        let med = erlang_quantile(1, mean, 0.5).as_secs_f64();
        assert!((med - 0.1 * 2f64.ln()).abs() < 1e-9);
        // Erlang(2): cdf(x) = 1 - e^-y (1 + y)
        let x = Duration::from_millis(250);
        let y = 2.5f64;
        assert!((erlang_cdf(2, mean, x) - (1.0 - (-y).exp() * (1.0 + y))).abs() < 1e-12);
        assert_eq!(erlang_quantile(0, mean, 0.99), Duration::ZERO);
        let q999 = erlang_quantile(2, mean, 0.999);
        assert!((erlang_cdf(2, mean, q999) - 0.999).abs() < 1e-9);
    }
}
