//! Statistics for the scheduler's tests: the two-sample Kolmogorov-Smirnov test and
//! Pearson's chi-square test.

#![allow(dead_code, unreachable_pub)]

/// The two-sample Kolmogorov-Smirnov statistic D and its asymptotic p-value (Numerical
/// Recipes' `kstwo`/`probks`: Q_KS((sqrt(n) + 0.12 + 0.11 / sqrt(n)) D) with n = n1 n2 / (n1 + n2)).
pub fn ks_two_sample(a: &mut [f64], b: &mut [f64]) -> (f64, f64) {
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (n1, n2) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j, mut d) = (0usize, 0usize, 0f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / n1 - j as f64 / n2).abs());
    }
    let en = (n1 * n2 / (n1 + n2)).sqrt();
    (d, q_ks((en + 0.12 + 0.11 / en) * d))
}

/// Q_KS(lambda) = 2 sum_{j>=1} (-1)^(j-1) exp(-2 j^2 lambda^2).
fn q_ks(lambda: f64) -> f64 {
    let mut sum = 0.0;
    let mut sign = 1.0;
    for j in 1..=100 {
        let term = sign * 2.0 * (-2.0 * (j as f64).powi(2) * lambda * lambda).exp();
        sum += term;
        if term.abs() < 1e-12 {
            return sum.clamp(0.0, 1.0);
        }
        sign = -sign;
    }
    1.0
}

/// Pearson's chi-square statistic of `observed` counts against equal expected counts.
pub fn chi_square_uniform(observed: &[u64]) -> f64 {
    let total: u64 = observed.iter().sum();
    let expected = total as f64 / observed.len() as f64;
    observed
        .iter()
        .map(|&o| (o as f64 - expected).powi(2) / expected)
        .sum()
}

/// The chi-square critical value at p = 0.01 for 1 to 10 degrees of freedom (standard
/// tables, e.g. NIST/SEMATECH e-Handbook 1.3.6.7.4).
pub const CHI_SQUARE_CRITICAL_001: [f64; 10] = [
    6.635, 9.210, 11.345, 13.277, 15.086, 16.812, 18.475, 20.090, 21.666, 23.209,
];

#[test]
fn ks_and_chi_square_behave() {
    // identical samples: D = 0, p = 1
    let mut a: Vec<f64> = (0..1000).map(|i| i as f64).collect();
    let mut b = a.clone();
    let (d, p) = ks_two_sample(&mut a, &mut b);
    assert_eq!(d, 0.0);
    assert!(p > 0.99);
    // shifted samples: rejected
    let mut c: Vec<f64> = (0..1000).map(|i| i as f64 + 200.0).collect();
    let (d, p) = ks_two_sample(&mut a, &mut c);
    assert!((d - 0.2).abs() < 1e-9);
    assert!(p < 1e-6);
    assert_eq!(chi_square_uniform(&[10, 10, 10]), 0.0);
    assert!(chi_square_uniform(&[100, 10, 10]) > CHI_SQUARE_CRITICAL_001[1]);
}
