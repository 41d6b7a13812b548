//! The adversaries of the paper's section 5 each show their effect, on small networks.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mixed_sim::report::Summary;
use mixed_sim::scenario::Scenario;

fn run(text: &str, seed: u64) -> Vec<Summary> {
    let sc = Scenario::from_toml(text).unwrap();
    mixed_sim::run(&sc, seed, &mut |_, _, _| {}).unwrap()
}

const BASE: &str = r#"
seconds = 230
warmup = 60
[network]
nodes = 60
bandwidth = [{ share = 1.0, b = 30.0 }]
mean_delay_ms = 100
loops = 2
loop_rate = 1.0
loop_timeout = 3
epoch_seconds = 30
[workload]
senders = 1.0
rate = 0.5
[metrics]
targets = 4
wave_seconds = 15
sender_vectors = true
watch = 7
"#;

/// (n-1), section 5.0.2: node 7 hears only the attacker from 150 s to 200 s (the alarm
/// watches once 256 loops have ended: 128 s at L b_loop = 2). Its loops stop returning: its
/// alarm, and no other, goes off within loop_timeout + 64 / (L b_loop) (35 s); its
/// datagrams, which hid its sending among forwards, are then all its own.
#[test]
fn an_n_minus_one_attack_sets_off_the_targets_alarm_and_strips_its_cover() {
    let text = format!(
        "{BASE}\n[[adversary]]\nkind = \"n-minus-one\"\ntarget = 7\nattacker = 8\nstart = 150\nend = 200\n"
    );
    let s = &run(&text, 3)[0];
    let raised: Vec<_> = s.counts.alarms.iter().filter(|a| a.raised).collect();
    assert!(!raised.is_empty(), "no alarm");
    assert!(raised.iter().all(|a| a.node == 7), "{raised:?}");
    let t = raised[0].time;
    assert!(
        (150.0..=150.0 + 3.0 + 64.0 / 2.0).contains(&t),
        "alarm at {t}"
    );
    let [before, during, _] = s.watched_entropy(s.warmup);
    assert!(before > 0.5, "before {before}");
    assert!(during < 0.25 * before, "before {before}, during {during}");
}

/// The flooder, section 5.0.1: three times node 7's forward budget in known packets from
/// 150 s to 200 s pushes its honest forwards out, and with them the cover they gave its own
/// sending.
#[test]
fn a_flooder_over_the_forward_budget_lowers_the_targets_entropy() {
    let text = format!(
        "{BASE}\n[[adversary]]\nkind = \"flooder\"\ntarget = 7\nattacker = 8\nrate = 40\nstart = 150\nend = 200\n"
    );
    let s = &run(&text, 4)[0];
    let [before, during, _] = s.watched_entropy(s.warmup);
    assert!(during < 0.8 * before, "before {before}, during {during}");
    assert!(s.counts.dropped_budget > 0);
}

/// Delay-skipping nodes that tell the observer, section 5.0.3: the more of them, the less
/// sender and message entropy; when all are, the observer follows every message.
#[test]
fn delay_skipping_nodes_take_entropy_away_in_proportion() {
    let text = r#"
seconds = 60
warmup = 20
[network]
nodes = 60
bandwidth = [{ share = 1.0, b = 30.0 }]
mean_delay_ms = 100
[workload]
senders = 1.0
rate = 0.5
[metrics]
targets = 16
sender_vectors = true
[[adversary]]
kind = "skip-delays"
fraction = 0
[sweep]
parameter = "skip_fraction"
values = [0, 0.5, 1.0]
"#;
    let runs = run(text, 5);
    let h: Vec<f64> = runs.iter().map(|r| r.sender_entropy()).collect();
    let m: Vec<f64> = runs.iter().map(|r| r.message_entropy()).collect();
    assert!(h[0] > h[1] && h[1] > h[2], "sender entropy {h:?}");
    assert!(m[0] > m[1] && m[1] > m[2], "message entropy {m:?}");
    assert!(h[2] < 0.01 && m[2] < 0.01, "{h:?} {m:?}");
    assert!(runs[2].who_talks_to_whom() > 0.99);
}
