//! What a new operator meets first, through the `mixed` binary and the configuration
//! loaders: example configurations that parse as printed, keys to paste into
//! `[[authorities]]`, clear errors for bad URLs and a taken address, logs without colour
//! codes when they go to a file.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use node::NodeConfig;

fn mixed() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mixed"))
}

/// A test's scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(name: &str) -> Scratch {
    let d = std::env::temp_dir().join(format!("mixed-operator-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Scratch(d)
}

/// A passive node of one core listening on `listen`, with one authority at `url`, and the
/// directory its keys are kept in.
fn passive_node(name: &str, listen: std::net::SocketAddr, url: String) -> (Scratch, NodeConfig) {
    let d = dir(name);
    let key_dir = d.join("keys");
    (
        d,
        NodeConfig {
            key_dir,
            listen,
            advertise: vec![],
            bandwidth: 10.0,
            cores: 1,
            io: node::IoChoice::Portable,
            metrics: None,
            passive: true,
            on_loop_collapse: engine::AlertPolicy::Withdraw,
            api_socket: None,
            storage: None,
            offline: Default::default(),
            authorities: vec![pki_client::AuthorityEndpoint {
                identity: pki_client::IdentityKey([1; 32]),
                url,
            }],
        },
    )
}

fn stdout(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn an_authority_is_set_up_from_its_example_and_its_printed_key() {
    let d = dir("authority");
    let path = d.join("authority.toml");
    let example = stdout(mixed().args(["dirauth", "--example-config"]));
    std::fs::write(&path, &example).unwrap();
    // as printed it parses; only its own key is missing from [[authorities]]
    let err = dirauth::AuthorityConfig::load(&path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not in [[authorities]]"), "{err}");
    let key = stdout(
        mixed()
            .args(["dirauth", "--print-key", "--config"])
            .arg(&path),
    );
    let key = key.trim();
    assert_eq!(key.len(), 64, "{key:?}");
    assert!(err.contains(key), "the error names the key to add: {err}");
    std::fs::write(&path, example.replace(&"0".repeat(64), key)).unwrap();
    let config = dirauth::AuthorityConfig::load(&path).unwrap();
    assert_eq!(config.identity.public().to_hex(), key);
    // the same key again: the file was created once
    let again = stdout(
        mixed()
            .args(["dirauth", "--print-key", "--config"])
            .arg(&path),
    );
    assert_eq!(again.trim(), key);
}

#[test]
fn a_node_example_parses_as_printed_and_publishes_no_test_address() {
    let d = dir("node");
    let path = d.join("node.toml");
    std::fs::write(&path, stdout(mixed().args(["node", "--example-config"]))).unwrap();
    let config = NodeConfig::load(&path).unwrap();
    assert_eq!(
        config.advertise,
        Vec::<std::net::SocketAddr>::new(),
        "the example must not publish a test address"
    );
    let keys = stdout(mixed().args(["node", "--print-key", "--config"]).arg(&path));
    assert!(
        keys.starts_with("identity ") && keys.contains("\nnode_id  "),
        "{keys}"
    );
}

#[test]
fn an_authority_url_without_a_scheme_is_a_clear_error() {
    let d = dir("url");
    let path = d.join("node.toml");
    let example = stdout(mixed().args(["node", "--example-config"]));
    for bad in [
        "127.0.0.1:7001",
        "http://",
        "http://127.0.0.1:7001/v1/consensus",
    ] {
        let text = example.replace("\"http://127.0.0.1:7001\"", &format!("{bad:?}"));
        std::fs::write(&path, text).unwrap();
        let err = NodeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains(bad) && err.contains("http://"), "{bad}: {err}");
    }
}

#[test]
fn a_taken_address_is_named_in_the_error() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (_d, config) = passive_node("taken", addr, "http://127.0.0.1:9".into());
    let err = node::Node::start(config).unwrap_err().to_string();
    assert!(err.contains(&addr.to_string()), "{err}");
}

#[test]
fn logs_to_a_file_carry_no_colour_codes() {
    let d = dir("logs");
    let path = d.join("node.toml");
    let example = stdout(mixed().args(["node", "--example-config"]));
    let text = example
        .replace("listen = \"0.0.0.0:9000\"", "listen = \"127.0.0.1:0\"")
        .replace("metrics = \"127.0.0.1:9100\"", "metrics = \"off\"")
        .replace("passive = false", "passive = true");
    std::fs::write(&path, text).unwrap();
    let log = std::fs::File::create(d.join("node.log")).unwrap();
    let mut child = mixed()
        .args(["node", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut text = String::new();
    while std::time::Instant::now() < deadline && !text.contains("node running") {
        std::thread::sleep(Duration::from_millis(100));
        text = std::fs::read_to_string(d.join("node.log")).unwrap();
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.contains("node running"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a log file: {text:?}"
    );
}

#[test]
fn a_node_without_a_consensus_backs_off_instead_of_hammering_the_authorities() {
    // an authority that accepts and hangs up: every request fails at once
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    listener.set_nonblocking(true).unwrap();
    let (_d, config) = passive_node("backoff", "127.0.0.1:0".parse().unwrap(), url);
    let node = node::Node::start(config).unwrap();
    let start = std::time::Instant::now();
    let mut requests = 0;
    while start.elapsed() < Duration::from_secs(4) {
        match listener.accept() {
            Ok((s, _)) => {
                requests += 1;
                drop(s);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    node.stop();
    // every 100 ms, two requests a turn, was 80 in four seconds; with backoff (0.2, 0.4,
    // 0.8, then at most 2 s between tries, for the consensus and the epoch each) about 12
    assert!(requests <= 24, "{requests} requests in 4 s");
    assert!(requests >= 2, "the node asked nothing: {requests}");
}

/// An authority that answers only its status page (with `identity` and a clock `offset`
/// seconds from ours) and counts the registrations it is sent.
fn stub_authority(
    identity: String,
    offset: i64,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let posts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&posts);
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let mut reader = std::io::BufReader::new(s);
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            if line.starts_with("POST") {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let mut s = reader.into_inner();
            let now = node::runtime::unix_now() as i64 + offset;
            let (code, body) = if line.starts_with("GET /v1/status") {
                (
                    "200 OK",
                    format!("{{\"identity\":\"{identity}\",\"epoch\":3,\"now\":{now}}}"),
                )
            } else {
                ("404 Not Found", "no\n".to_string())
            };
            let _ = write!(
                s,
                "HTTP/1.1 {code}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, posts)
}

/// Runs `mixed node` (not passive) against one authority for a few seconds; its log.
fn run_against(name: &str, url: &str, identity: &str) -> String {
    let d = dir(name);
    let path = d.join("node.toml");
    std::fs::write(
        &path,
        format!(
            "key_dir = \"keys\"\nlisten = \"127.0.0.1:0\"\nbandwidth = 10\nmetrics = \"off\"\n\
             api_socket = \"off\"\n[[authorities]]\nidentity = \"{identity}\"\nurl = \"{url}\"\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(d.join("node.log")).unwrap();
    let mut child = mixed()
        .args(["node", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let _ = child.kill();
    let _ = child.wait();
    std::fs::read_to_string(d.join("node.log")).unwrap()
}

#[test]
fn a_wrong_authority_key_is_an_error_naming_the_fix_and_nothing_is_registered() {
    let real = "ab".repeat(32);
    let (url, posts) = stub_authority(real.clone(), 0);
    let log = run_against("wrong-key", &url, &"cd".repeat(32));
    assert!(log.contains("authority misconfigured"), "{log}");
    assert!(
        log.contains(&real),
        "the error names the key to copy: {log}"
    );
    assert!(log.contains("--print-key"), "{log}");
    assert_eq!(
        posts.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "registered with an authority it cannot verify"
    );
}

#[test]
fn a_clock_two_minutes_ahead_is_an_error_and_nothing_is_registered() {
    let key = "ab".repeat(32);
    let (url, posts) = stub_authority(key.clone(), -120);
    let log = run_against("skew", &url, &key);
    assert!(log.contains("120 s ahead of the authorities'"), "{log}");
    assert!(log.contains("NTP"), "{log}");
    assert_eq!(posts.load(std::sync::atomic::Ordering::Relaxed), 0);
}
