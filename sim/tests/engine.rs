//! The engine fidelity on a small network: real Sphinx, the real messenger and storage
//! providers, churn; the observer fed from the network's tap.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mixed_sim::scenario::Scenario;

/// 24 nodes (two of them storage providers), a fifth of the users leaving each 10 s epoch
/// for an epoch: every message sent arrives (retries and storage counted), and the
/// observer measured it like the fast mode does.
#[test]
fn the_real_engine_delivers_under_churn_and_the_observer_measures_it() {
    let sc = Scenario::from_toml(
        r#"
name = "engine-churn"
fidelity = "engine"
seconds = 45
warmup = 10
[network]
nodes = 24
bandwidth = [{ share = 1.0, b = 50.0 }]
mean_delay_ms = 30
loop_rate = 0.5
epoch_seconds = 10
[workload]
senders = 0.5
rate = 0.3
[churn]
per_epoch = 0.2
[metrics]
targets = 8
sender_vectors = true
"#,
    )
    .unwrap();
    let s = mixed_sim::run(&sc, 9, &mut |_, _, _| {}).unwrap().remove(0);
    assert!(s.counts.messages >= 50, "{} messages", s.counts.messages);
    assert_eq!(s.counts.failed, 0, "{:?}", s.counts);
    assert_eq!(s.counts.delivered, s.counts.messages);
    assert!(s.counts.latency.mean() > 0.0);
    // the observer: targets followed, sender distributions over the 24 nodes
    assert!(s.targets.len() >= 8, "{} targets", s.targets.len());
    let h = s.sender_entropy();
    assert!(h > 1.0 && h <= (24f64).log2() + 1e-9, "{h}");
    assert!(s.message_entropy() > 1.0);
    assert!(s.counts.datagrams.iter().sum::<u64>() > 10_000);
}
