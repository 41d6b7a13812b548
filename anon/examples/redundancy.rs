//! Prints the first attempt's n for message sizes and delivery probabilities q: the
//! binomial model of section 4.5 with RaptorQ's decoding failures, P_succ >= 0.999.
//! `cargo run --release -p anon --example redundancy`

#![allow(clippy::print_stdout)]

use anon::Messenger;
use anon::coding::{source_symbols, symbols_for};

fn main() {
    let t = 1056;
    println!(
        "{:>10} {:>6} {:>14} {:>14} {:>14}",
        "bytes", "k", "n (q=0.95)", "n (q=0.857)", "n (q=0.729)"
    );
    for len in [100usize, 2_000, 4_096, 65_536, 1 << 20] {
        let k = source_symbols(len + Messenger::object_overhead(0), t);
        let n = |q: f64| symbols_for(k, q, 0.999, 4 * k + 64);
        println!(
            "{len:>10} {k:>6} {:>8} ({:.2}) {:>8} ({:.2}) {:>8} ({:.2})",
            n(0.95),
            n(0.95) as f64 / k as f64,
            n(0.857),
            n(0.857) as f64 / k as f64,
            n(0.729),
            n(0.729) as f64 / k as f64
        );
    }
}
