//! What a watcher of every link learns (issue 12, docs/privacy.md): on the deterministic
//! network, where every datagram is visible, a node's next hops and its incoming volume
//! must not depend on whether it sends, nor to whom, nor on whether it receives.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

use anon::SendOptions;
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use scheduler::Timestamp;
use stack::sim::{LinkModel, MessageNet, params};

fn at(seconds: f64) -> Timestamp {
    Timestamp::from_nanos((seconds * 1e9) as u64)
}

const NODES: usize = 8;
const X: usize = 0;
const R: usize = 3;
const Y: usize = 5;
const Z: usize = 6;
const WINDOW: f64 = 60.0;

/// What the watcher saw of node X in one window.
#[derive(Clone, Debug, Default)]
struct Window {
    /// Datagrams X sent to each node.
    next_hops: [u64; NODES],
    /// Datagrams X received.
    incoming: u64,
    /// X's engine: what it sent (own, forwards, loops, cover) and received (loops back,
    /// final hops, cover, messages).
    engine: [u64; 8],
}

fn engine_counts(net: &MessageNet) -> [u64; 8] {
    let c = net.nodes[X].engine().counters();
    [
        c.sent_own,
        c.sent_forward,
        c.sent_loop,
        c.sent_cover,
        c.loops_returned,
        c.final_hops,
        c.cover_received,
        c.delivered,
    ]
}

fn watch(net: &MessageNet, before: &[u64], engine: [u64; 8]) -> Window {
    let mut w = Window::default();
    let now = engine_counts(net);
    for i in 0..8 {
        w.engine[i] = now[i] - engine[i];
    }
    for j in 0..NODES {
        w.next_hops[j] = net.flows()[X * NODES + j] - before[X * NODES + j];
        w.incoming += net.flows()[j * NODES + X] - before[j * NODES + X];
    }
    w
}

/// Runs one window in which `from` sends a 12 KiB message to `to` every 2 seconds (or
/// nobody sends, when `None`).
fn window(
    net: &mut MessageNet,
    start: f64,
    traffic: Option<(usize, usize)>,
    rng: &mut ChaCha20Rng,
) -> Window {
    let before = net.flows().to_vec();
    let engine = engine_counts(net);
    let mut t = start;
    while t < start + WINDOW {
        if let Some((from, to)) = traffic {
            let mut data = vec![0u8; 12 * 1024];
            rng.fill_bytes(&mut data);
            let dest = net.node_id(to);
            let now = net.now();
            net.messenger(from)
                .send(now, dest, &data, SendOptions::default())
                .unwrap();
        }
        t += 2.0;
        net.run_until(at(t));
    }
    watch(net, &before, engine)
}

/// The p-value of Pearson's chi-square test that two rows of counts come from one law.
fn chi_square_p(a: &[u64], b: &[u64]) -> f64 {
    let (ta, tb) = (a.iter().sum::<u64>() as f64, b.iter().sum::<u64>() as f64);
    let mut stat = 0.0;
    let mut df = 0;
    for (&x, &y) in a.iter().zip(b) {
        let col = (x + y) as f64;
        if col == 0.0 {
            continue;
        }
        df += 1;
        let ea = col * ta / (ta + tb);
        let eb = col * tb / (ta + tb);
        stat += (x as f64 - ea).powi(2) / ea + (y as f64 - eb).powi(2) / eb;
    }
    upper_gamma_regularized((df - 1) as f64 / 2.0, stat / 2.0)
}

/// Q(s, x) = Gamma(s, x) / Gamma(s), by series below s + 1 and continued fraction above
/// (Numerical Recipes' gammq).
fn upper_gamma_regularized(s: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let ln_gamma_s = ln_gamma(s);
    if x < s + 1.0 {
        let (mut sum, mut term, mut a) = (1.0 / s, 1.0 / s, s);
        for _ in 0..1000 {
            a += 1.0;
            term *= x / a;
            sum += term;
            if term.abs() < sum.abs() * 1e-15 {
                break;
            }
        }
        1.0 - sum * (-x + s * x.ln() - ln_gamma_s).exp()
    } else {
        let tiny = 1e-300;
        let mut b = x + 1.0 - s;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..1000 {
            let an = -(i as f64) * (i as f64 - s);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let del = d * c;
            h *= del;
            if (del - 1.0).abs() < 1e-15 {
                break;
            }
        }
        (-x + s * x.ln() - ln_gamma_s).exp() * h
    }
}

/// ln Gamma(x) for x > 0 (Lanczos, g = 7).
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + 7.5;
    for (i, &c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

#[test]
fn the_chi_square_helper_matches_known_values() {
    // Q(3, 6.3) for df = 6 at chi2 = 12.59 (the 5% point): 0.05
    assert!((upper_gamma_regularized(3.0, 12.592 / 2.0) - 0.05).abs() < 1e-3);
    // df = 6 at 16.81 (the 1% point)
    assert!((upper_gamma_regularized(3.0, 16.812 / 2.0) - 0.01).abs() < 1e-4);
    assert!((upper_gamma_regularized(0.5, 3.841 / 2.0) - 0.05).abs() < 1e-3);
    assert!(chi_square_p(&[100, 200, 300], &[100, 200, 300]) > 0.99);
    assert!(chi_square_p(&[100, 200, 300], &[300, 200, 100]) < 1e-10);
}

struct Seen {
    idle: Window,
    sending: Window,
    other_sending: Window,
    receiving: Window,
    self_sends: u64,
    strays: u64,
}

fn run(seed: u64) -> Seen {
    let mut net = MessageNet::messengers(NODES, seed, params(3), 100.0, LinkModel::PERFECT);
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x5eed);
    // loops measure the network first
    let warmup = 10.0;
    net.run_until(at(warmup));
    let idle = window(&mut net, warmup, None, &mut rng);
    let sending = window(&mut net, warmup + WINDOW, Some((X, R)), &mut rng);
    // let the sending's tail (retries, ACKs) pass
    let mut t = warmup + 2.0 * WINDOW + 10.0;
    net.run_until(at(t));
    let other_sending = window(&mut net, t, Some((Z, R)), &mut rng);
    t += WINDOW + 10.0;
    net.run_until(at(t));
    let receiving = window(&mut net, t, Some((Y, X)), &mut rng);
    let self_sends = (0..NODES).map(|i| net.flow(i, i)).sum();
    Seen {
        idle,
        sending,
        other_sending,
        receiving,
        self_sends,
        strays: net.strays(),
    }
}

fn share(w: &Window, j: usize) -> f64 {
    w.next_hops[j] as f64 / w.next_hops.iter().sum::<u64>() as f64
}

/// Issue 12's measure: 10 seeds, 60-second windows of node X idle, sending to R, another
/// node sending to R, and X receiving from Y. A watcher of every link must not tell them
/// apart by X's next hops (chi-square, per seed), by X's share of datagrams to R, or by X's
/// incoming count (pooled over the seeds: one 60-second window of B = 100 counts ~6,000
/// datagrams, whose own noise is ~1.3%), and no datagram goes from a node to itself.
#[test]
fn next_hops_and_incoming_volume_do_not_depend_on_activity() {
    let seeds: Vec<u64> = (1..=10).collect();
    let runs: Vec<(u64, Seen)> = std::thread::scope(|scope| {
        let handles: Vec<_> = seeds
            .iter()
            .map(|&seed| scope.spawn(move || (seed, run(seed))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut rejected = (0, 0);
    let pooled = |pick: &dyn Fn(&Seen) -> &Window| {
        let mut total = Window::default();
        for (_, s) in &runs {
            let w = pick(s);
            for j in 0..NODES {
                total.next_hops[j] += w.next_hops[j];
            }
            total.incoming += w.incoming;
        }
        total
    };
    for (seed, s) in &runs {
        let p_send = chi_square_p(&s.idle.next_hops[1..], &s.sending.next_hops[1..]);
        let p_recv = chi_square_p(&s.idle.next_hops[1..], &s.receiving.next_hops[1..]);
        rejected.0 += usize::from(p_send < 0.01);
        rejected.1 += usize::from(p_recv < 0.01);
        eprintln!(
            "seed {seed}: p idle/sending {p_send:.3}, idle/receiving {p_recv:.3}; share to R idle {:.4} sending {:.4} other sending {:.4}; incoming idle {} sending {} ({:+.2}%) receiving {} ({:+.2}%); self-sends {}, strays {}; next hops idle {:?} sending {:?}",
            share(&s.idle, R),
            share(&s.sending, R),
            share(&s.other_sending, R),
            s.idle.incoming,
            s.sending.incoming,
            (s.sending.incoming as f64 / s.idle.incoming as f64 - 1.0) * 100.0,
            s.receiving.incoming,
            (s.receiving.incoming as f64 / s.idle.incoming as f64 - 1.0) * 100.0,
            s.self_sends,
            s.strays,
            s.idle.next_hops,
            s.sending.next_hops,
        );
        eprintln!(
            "  engine [own fwd loop cover | loops back, finals, cover in]: idle {:?} sending {:?} receiving {:?}",
            s.idle.engine, s.sending.engine, s.receiving.engine
        );
        assert_eq!(
            s.self_sends, 0,
            "seed {seed}: datagrams from a node to itself"
        );
        assert_eq!(s.strays, 0, "seed {seed}: datagrams to no node");
        assert!(s.sending.engine[0] > 300, "seed {seed}: X hardly sent");
        assert!(
            s.receiving.engine[7] > 300,
            "seed {seed}: X hardly received"
        );
    }
    let (idle, sending, other, receiving) = (
        pooled(&|s| &s.idle),
        pooled(&|s| &s.sending),
        pooled(&|s| &s.other_sending),
        pooled(&|s| &s.receiving),
    );
    let shares = (share(&idle, R), share(&sending, R), share(&other, R));
    let incoming = (
        sending.incoming as f64 / idle.incoming as f64 - 1.0,
        receiving.incoming as f64 / idle.incoming as f64 - 1.0,
    );
    eprintln!(
        "pooled: chi-square rejections at 0.01 {rejected:?} of 10; X's share to R idle {:.4}, sending {:.4}, another node sending {:.4}; X's incoming sending {:+.2}%, receiving {:+.2}%",
        shares.0,
        shares.1,
        shares.2,
        incoming.0 * 100.0,
        incoming.1 * 100.0
    );
    assert!(rejected.0 <= 1 && rejected.1 <= 1, "{rejected:?}");
    assert!((shares.1 - shares.0).abs() <= 0.01, "{shares:?}");
    assert!((shares.1 - shares.2).abs() <= 0.01, "{shares:?}");
    assert!(
        incoming.0.abs() <= 0.02 && incoming.1.abs() <= 0.02,
        "{incoming:?}"
    );
}

/// Own data always waiting at node 0 for `seconds`: the own packets it sent a second, and
/// r = rho * B / h.
fn saturated_own_rate(rate: f64, seconds: f64) -> (f64, f64) {
    let mut sim = stack::sim::Sim::new(5, 9, params(3), rate, LinkModel::PERFECT);
    let dest = sim.node_id(3);
    let warmup = 2.0;
    let mut t = 0.0;
    let mut at_warmup = 0;
    while t < warmup + seconds {
        while sim.nodes[0].engine().own_queued() < 64 {
            sim.nodes[0]
                .stack
                .engine_mut()
                .send_message(dest, b"saturating")
                .unwrap();
        }
        t += 0.05;
        sim.run_until(at(t));
        if (t - warmup).abs() < 1e-9 {
            at_warmup = sim.nodes[0].engine().counters().sent_own;
        }
    }
    let sent = sim.nodes[0].engine().counters().sent_own - at_warmup;
    (sent as f64 / seconds, 1.5 * rate / 3.0)
}

/// Issue 12: an application that always has data gets its share rho * B / h, up to what the
/// bound of r * w over every window of w >= 1 s allows with free slots on a Poisson clock
/// (the scheduler's module documentation): at least 95% from r = 200.
#[test]
fn a_saturating_application_gets_its_own_data_share() {
    let (got, r) = saturated_own_rate(400.0, 30.0);
    let (got_small, r_small) = saturated_own_rate(100.0, 30.0);
    eprintln!(
        "B = 400: {got:.1} own packets/s of r = {r} ({:.1}%); B = 100: {got_small:.1} of r = {r_small} ({:.1}%)",
        got / r * 100.0,
        got_small / r_small * 100.0
    );
    assert!(got >= 0.95 * r && got <= r, "{got} of {r}");
    // the token bucket this replaced gave 55% here; the exact bound costs more at small r
    assert!(
        got_small >= 0.8 * r_small && got_small <= r_small,
        "{got_small} of {r_small}"
    );
}

/// Runs 8 engines for 150 s; with `attack`, from 40 s to 80 s every datagram to node X is
/// dropped but those of node A (the attacker's own node, section 5.0.2's (n-1) attack).
/// Returns X's counters at 40, 80 and 150 s and the times of X's alert events.
fn n_minus_one(attack: bool) -> (Vec<engine::Counters>, Vec<(f64, bool)>, bool) {
    const A: usize = 4;
    let mut sim = stack::sim::Sim::new(NODES, 21, params(3), 100.0, LinkModel::PERFECT);
    let mut snapshots = Vec::new();
    let mut alert_during = false;
    for (until, cut) in [(40.0, None), (80.0, Some(Some(A))), (150.0, None)] {
        if attack {
            sim.cut(X, cut);
        }
        let mut t = sim.now().as_nanos() as f64 / 1e9;
        while t < until {
            t += 0.5;
            sim.run_until(at(t));
            if until == 80.0 && t >= 79.0 {
                alert_during |= sim.nodes[X].engine().in_alert();
            }
        }
        snapshots.push(sim.nodes[X].engine().counters().clone());
    }
    let alerts = sim.nodes[X]
        .events
        .iter()
        .filter_map(|(t, e)| match e {
            engine::Event::LoopCollapse { .. } => Some((t.as_nanos() as f64 / 1e9, true)),
            engine::Event::LoopsRecovered { .. } => Some((t.as_nanos() as f64 / 1e9, false)),
            _ => None,
        })
        .collect();
    (snapshots, alerts, alert_during)
}

/// Issue 12, section 5.0.2: an (n-1) attacker drops every packet to X but its own. X's loops
/// stop returning; within the bound docs/privacy.md states (the loop timeout plus a window of
/// 64 loops at L * b_loop: 2 + 6.4 s here) X raises the alarm, stops forwarding (the attacker's
/// packets through it are dropped, counted), keeps emitting every slot of its constant rate
/// (the same seed without the attack emits the same count to 1%), and forwards again once
/// the attack ends and loops return.
#[test]
fn an_n_minus_one_attack_sets_off_high_alert_and_the_node_comes_back() {
    let (quiet, quiet_alerts, _) = n_minus_one(false);
    let (attacked, alerts, alert_during) = n_minus_one(true);
    eprintln!("alerts: {alerts:?} (none without the attack: {quiet_alerts:?})");
    assert!(quiet_alerts.is_empty(), "{quiet_alerts:?}");
    let raised = alerts.iter().find(|a| a.1).expect("no alarm").0;
    assert!((40.0..=40.0 + 8.4).contains(&raised), "alarm at {raised} s");
    let cleared = alerts.iter().find(|a| !a.1).expect("never cleared").0;
    assert!(
        (80.0..=80.0 + 15.0).contains(&cleared),
        "cleared at {cleared} s"
    );
    assert!(alert_during, "not in high alert at the end of the attack");
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    // forwards: none from a second after the alarm to the end of the attack (checked with
    // the counter of forwards refused), some again after it
    let refused = attacked[1].drops(engine::DropReason::HighAlert);
    assert!(
        refused > 0,
        "the attacker's packets through X were not refused"
    );
    assert!(attacked[2].sent_forward > attacked[1].sent_forward + 100);
    // the constant rate held: the same slots as without the attack
    for (i, (a, q)) in attacked.iter().zip(&quiet).enumerate() {
        let ratio = a.total_sent() as f64 / q.total_sent() as f64;
        assert!(
            (ratio - 1.0).abs() < 0.01,
            "snapshot {i}: attacked {} vs quiet {}",
            a.total_sent(),
            q.total_sent()
        );
    }
    let during = |c: &[engine::Counters]| c[1].total_sent() - c[0].total_sent();
    eprintln!(
        "during the attack X sent {} packets ({} forwards, {} refused), without it {}",
        during(&attacked),
        attacked[1].sent_forward - attacked[0].sent_forward,
        refused,
        during(&quiet)
    );
}
