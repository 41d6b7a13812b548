//! The observer's classifiers of what each node does from what it sends and receives
//! (idle vs sending, idle vs receiving), against chance.

use std::collections::VecDeque;

/// A running window classifier of what each node does, from what the observer counts:
/// per node and window, the datagrams it sent and received, against whether it sent or
/// received a message. At the end it guesses "sending" for a window whose emitted count is
/// above the node's own mean (and "receiving" likewise from its arrivals), and reports the
/// balanced accuracy: 0.5 is chance.
#[derive(Debug)]
pub struct Classifier {
    window: f64,
    next: f64,
    current: Vec<[u32; 2]>,
    label: Vec<[bool; 2]>,
    /// The node was down for part of the window: not a window of an up node's behaviour.
    absent: Vec<bool>,
    /// Per node: the windows so far (emitted, arrived, sent, received).
    history: Vec<VecDeque<(u32, u32, bool, bool)>>,
}

/// Windows kept per node, at most (the oldest forgotten).
const MAX_WINDOWS: usize = 4096;

impl Classifier {
    /// Over `n` nodes, windows of `window` seconds from `start`.
    pub fn new(n: usize, window: f64, start: f64) -> Self {
        Classifier {
            window,
            next: start + window,
            current: vec![[0; 2]; n],
            label: vec![[false; 2]; n],
            absent: vec![false; n],
            history: vec![VecDeque::new(); n],
        }
    }

    /// Counts a datagram sent by `x` (`out`) or received by it.
    pub fn datagram(&mut self, x: usize, out: bool) {
        self.current[x][usize::from(!out)] += 1;
    }

    /// Node `x` sent (`sent`) or received a message in this window.
    pub fn message(&mut self, x: usize, sent: bool) {
        self.label[x][usize::from(!sent)] = true;
    }

    /// Node `x` went down or came up in this window: the window is left out (that a node
    /// is offline shows anyway; the question is what an online node's traffic tells).
    pub fn absent(&mut self, x: usize) {
        self.absent[x] = true;
    }

    /// Closes the windows that ended by `now`.
    pub fn tick(&mut self, now: f64) {
        while now >= self.next {
            self.next += self.window;
            for (((c, l), h), a) in self
                .current
                .iter_mut()
                .zip(self.label.iter_mut())
                .zip(self.history.iter_mut())
                .zip(self.absent.iter_mut())
            {
                if !*a && c[0] > 0 {
                    if h.len() == MAX_WINDOWS {
                        h.pop_front();
                    }
                    h.push_back((c[0], c[1], l[0], l[1]));
                }
                *c = [0; 2];
                *l = [false; 2];
                *a = false;
            }
        }
    }

    /// Balanced accuracy of (sending, receiving), each `None` when no window had both
    /// labels.
    pub fn accuracy(&self) -> (Option<f64>, Option<f64>) {
        let mut score = [[0u64; 4]; 2]; // per kind: tp, positives, tn, negatives
        for h in &self.history {
            if h.len() < 2 {
                continue;
            }
            let mean_out = h.iter().map(|w| f64::from(w.0)).sum::<f64>() / h.len() as f64;
            let mean_in = h.iter().map(|w| f64::from(w.1)).sum::<f64>() / h.len() as f64;
            for &(out, inn, sent, received) in h {
                for (k, (value, mean, label)) in [(out, mean_out, sent), (inn, mean_in, received)]
                    .into_iter()
                    .enumerate()
                {
                    let guess = f64::from(value) > mean;
                    if label {
                        score[k][1] += 1;
                        score[k][0] += u64::from(guess);
                    } else {
                        score[k][3] += 1;
                        score[k][2] += u64::from(!guess);
                    }
                }
            }
        }
        let balanced = |s: [u64; 4]| {
            (s[1] > 0 && s[3] > 0)
                .then(|| 0.5 * (s[0] as f64 / s[1] as f64 + s[2] as f64 / s[3] as f64))
        };
        (balanced(score[0]), balanced(score[1]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classifier_sees_a_count_that_follows_the_label_and_not_one_that_does_not() {
        let mut c = Classifier::new(2, 1.0, 0.0);
        for w in 0..100 {
            let sending = w % 2 == 0;
            // node 0 sends more datagrams when it sends; node 1 always the same
            for _ in 0..(10 + if sending { 5 } else { 0 }) {
                c.datagram(0, true);
            }
            for _ in 0..10 {
                c.datagram(1, true);
            }
            if sending {
                c.message(0, true);
                c.message(1, true);
            }
            c.tick(f64::from(w + 1));
        }
        let (send, _) = c.accuracy();
        // node 0 is read perfectly, node 1 never (all at the mean: "idle"): (1 + 0.5) / 2
        assert!((send.unwrap() - 0.75).abs() < 1e-9, "{send:?}");
    }
}
