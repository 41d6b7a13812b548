//! The messenger as people meet it: `mixed chat` processes on the local API sockets of a
//! loopback network, set up with the scriptable subcommands, then the terminal UI driven
//! in a real terminal (tmux send-keys, capture-pane): add a contact from a code, send, see
//! the message arrive on the other side and its state change from sending to delivered.
//! Skipped where tmux is missing, unless `MIXED_LAB_REQUIRED` is set (CI installs tmux).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr,
    clippy::disallowed_methods
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use node::IoChoice;
use node::demo::{LocalNetwork, LocalOptions};

const PASS: &str = "correct horse battery";

fn mixed() -> &'static str {
    env!("CARGO_BIN_EXE_mixed")
}

/// `mixed chat --socket S --profile P <args>`; its standard output.
fn chat(socket: &Path, profile: &Path, args: &[&str]) -> String {
    let out = Command::new(mixed())
        .arg("chat")
        .arg("--socket")
        .arg(socket)
        .arg("--profile")
        .arg(profile)
        .args(args)
        .env("MIXED_CHAT_PASSPHRASE", PASS)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mixed chat {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A tmux server of this test's own (killed on drop), and the folder its programs write
/// their standard error to (shown when a wait fails).
struct Tmux(String, PathBuf);

impl Tmux {
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.0)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn start(&self, session: &str, command: &str) {
        self.run(&[
            "new-session",
            "-d",
            "-s",
            session,
            "-x",
            "180",
            "-y",
            "40",
            command,
        ]);
    }

    fn pane(&self, session: &str) -> String {
        self.run(&["capture-pane", "-p", "-t", session])
    }

    fn type_line(&self, session: &str, text: &str) {
        self.run(&["send-keys", "-t", session, "-l", text]);
        self.run(&["send-keys", "-t", session, "Enter"]);
    }

    /// Waits until the pane shows `text`; the pane then.
    fn wait_for(&self, session: &str, text: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let pane = self.pane(session);
            if pane.contains(text) {
                return pane;
            }
            if Instant::now() >= deadline {
                let err = std::fs::read_to_string(self.1.join(format!("{session}.err")))
                    .unwrap_or_default();
                panic!(
                    "{session}: no {text:?} within {within:?}; the pane:\n{pane}\nits errors:\n{err}"
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.0, "kill-server"])
            .output();
    }
}

fn tmux_present() -> bool {
    let present = Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !present && std::env::var_os("MIXED_LAB_REQUIRED").is_some() {
        panic!("tmux is required here (MIXED_LAB_REQUIRED): .ci/run installs it");
    }
    present
}

#[test]
fn the_terminal_ui_adds_a_contact_from_a_code_sends_and_shows_the_state_change() {
    if !tmux_present() {
        eprintln!("skipped: no tmux");
        return;
    }
    let net = LocalNetwork::start(&LocalOptions {
        nodes: 5,
        epoch_seconds: 10,
        bandwidth: 60.0,
        cores: 1,
        io: IoChoice::Auto,
        mean_delay: Duration::from_millis(10),
        loop_rate: 1.0,
    })
    .unwrap();
    let dir = std::env::temp_dir().join(format!("mixed-chat-tui-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let sockets: Vec<PathBuf> = net.nodes[..2]
        .iter()
        .map(|n| n.api_socket().unwrap().to_path_buf())
        .collect();
    let (alice, bob) = (dir.join("alice"), dir.join("bob"));
    // scriptable setup: two users, and Bob's contact code
    chat(&sockets[0], &alice, &["init", "--name", "alice-phone"]);
    let out = chat(&sockets[1], &bob, &["init", "--name", "bob-phone"]);
    let code = out
        .lines()
        .find(|l| l.starts_with("mixed-contact-1:"))
        .expect("a contact code")
        .to_string();
    assert_eq!(chat(&sockets[1], &bob, &["code"]).trim(), code);

    let tmux = Tmux(
        format!("mixed-chat-test-{}", std::process::id()),
        dir.clone(),
    );
    let ui = |socket: &Path, profile: &Path, name: &str| {
        format!(
            "env MIXED_CHAT_PASSPHRASE='{PASS}' RUST_BACKTRACE=0 {} chat --socket {} --profile {} 2>{}",
            mixed(),
            socket.display(),
            profile.display(),
            dir.join(format!("{name}.err")).display()
        )
    };
    tmux.start("bob", &ui(&sockets[1], &bob, "bob"));
    tmux.start("alice", &ui(&sockets[0], &alice, "alice"));
    tmux.wait_for("alice", "no contacts yet", Duration::from_secs(20));
    tmux.wait_for("bob", "no contacts yet", Duration::from_secs(20));

    // Alice adds Bob from his code and writes to him
    tmux.type_line("alice", &format!("/add {code} bob"));
    tmux.wait_for("alice", "┌bob", Duration::from_secs(10));
    tmux.type_line("alice", "hello bob");
    let mut states = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pane = tmux.pane("alice");
        for s in ["sending", "delivered"] {
            if pane.contains(&format!("hello bob  ({s})")) && states.last() != Some(&s) {
                states.push(s);
            }
        }
        if states.last() == Some(&"delivered") {
            break;
        }
        assert!(Instant::now() < deadline, "not delivered in 60 s:\n{pane}");
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("alice saw the state go {states:?}");
    assert_eq!(states, ["sending", "delivered"]);
    // it arrives on Bob's screen, Alice introduced as a new contact
    let pane = tmux.wait_for("bob", "hello bob", Duration::from_secs(60));
    assert!(pane.contains("new-"), "{pane}");
    // and Bob's answer on Alice's
    tmux.type_line("bob", "hi alice");
    tmux.wait_for("alice", "hi alice", Duration::from_secs(60));
    tmux.wait_for("bob", "hi alice  (delivered)", Duration::from_secs(60));
    tmux.type_line("alice", "/quit");
    drop(tmux);
    drop(net);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs each (chat, transport) pair's pump until `done` or `within`.
fn pump_until(
    devices: &mut [(&mut chat::Chat, &mut node::chat::Embedded)],
    within: Duration,
    what: &str,
    done: impl Fn(&[(&mut chat::Chat, &mut node::chat::Embedded)]) -> bool,
) {
    let deadline = Instant::now() + within;
    while !done(devices) {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        for (c, t) in devices.iter_mut() {
            while c
                .pump(*t, Duration::from_millis(20), chat::cli::unix_now())
                .unwrap()
            {}
        }
    }
}

#[test]
fn a_passive_device_gets_its_messages_through_the_storage_providers() {
    let net = LocalNetwork::start(&LocalOptions {
        nodes: 4,
        epoch_seconds: 10,
        bandwidth: 60.0,
        cores: 1,
        io: IoChoice::Auto,
        mean_delay: Duration::from_millis(10),
        loop_rate: 1.0,
    })
    .unwrap();
    let dir = std::env::temp_dir().join(format!("mixed-chat-passive-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = |name: &str, storage: bool, passive: bool| node::NodeConfig {
        passive,
        offline: node::config::OfflineRates {
            store_rate: 5.0,
            fetch_rate: 5.0,
            idle_poll: 5.0,
        },
        ..node::demo::node_config(&net, &dir, name, 60.0, storage)
    };
    let provider = node::Node::start(config("provider", true, false)).unwrap();
    let first = net.nodes[0].epoch().unwrap_or(0);
    // Bob's device: a node of its own, passive (not listed, not forwarding)
    let mut tb = node::chat::Embedded::start(config("bob", false, true), false).unwrap();
    // Alice's device: one of the network's nodes (listed)
    let mut ta = node::chat::Embedded::open(&net.nodes[0]).unwrap();
    // until a consensus that lists the provider is installed everywhere (two epochs on)
    let deadline = Instant::now() + Duration::from_secs(60);
    while [&net.nodes[0], &provider]
        .iter()
        .any(|n| n.epoch().is_none_or(|e| e < first + 2))
    {
        assert!(Instant::now() < deadline, "the provider was not listed");
        std::thread::sleep(Duration::from_millis(200));
    }
    let kdf = chat::KdfParams::TESTS_ONLY;
    let now = chat::cli::unix_now();
    let mut alice =
        chat::Chat::init(&dir.join("alice-chat"), PASS, kdf, &mut ta, "phone", now).unwrap();
    let mut bob =
        chat::Chat::init(&dir.join("bob-chat"), PASS, kdf, &mut tb, "phone", now).unwrap();
    let (a_code, b_code) = (alice.contact_code().unwrap(), bob.contact_code().unwrap());
    let bob_key = alice.add_contact(&mut ta, &b_code, "bob").unwrap();
    let alice_key = bob.add_contact(&mut tb, &a_code, "alice").unwrap();
    let id = alice
        .send(&mut ta, &bob_key, "to a passive device", None, now)
        .unwrap();
    let start = Instant::now();
    pump_until(
        &mut [(&mut alice, &mut ta), (&mut bob, &mut tb)],
        Duration::from_secs(120),
        "stored and collected",
        |d| d[1].0.message(&id).is_some(),
    );
    eprintln!(
        "collected by the passive device after {:?}",
        start.elapsed()
    );
    let m = bob.message(&id).unwrap();
    assert!(m.stored, "through the providers");
    assert_eq!(
        alice.message(&id).unwrap().targets[0].1,
        chat::State::Stored,
        "stored at once, not failed after three attempts"
    );
    // and the passive device writes back directly
    let back = bob
        .send(
            &mut tb,
            &alice_key,
            "written from a passive node",
            None,
            now,
        )
        .unwrap();
    pump_until(
        &mut [(&mut alice, &mut ta), (&mut bob, &mut tb)],
        Duration::from_secs(60),
        "the answer",
        |d| {
            d[0].0.message(&back).is_some()
                && d[1]
                    .0
                    .message(&back)
                    .is_some_and(|m| m.state == chat::State::Delivered)
        },
    );
    drop((ta, tb));
    provider.stop();
    drop(net);
    let _ = std::fs::remove_dir_all(&dir);
}
