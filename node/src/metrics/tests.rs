//! The exposition and the scrape server of `super`.

use std::collections::HashMap;

use super::*;

/// Checks Prometheus text exposition line by line: HELP and TYPE before every family's
/// samples, valid names and labels, numeric values, histograms with `+Inf`, `_sum` and
/// `_count`, summaries with `_sum` and `_count`. Returns the samples by name.
fn parse(text: &str) -> HashMap<String, f64> {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helped = std::collections::HashSet::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            assert!(name_ok(name) && !help.is_empty(), "{line}");
            helped.insert(name.to_owned());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(helped.contains(name), "TYPE before HELP: {line}");
            assert!(
                ["counter", "gauge", "histogram", "summary"].contains(&kind),
                "{line}"
            );
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "{line}"
            );
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').unwrap();
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value of {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, Some(l.strip_suffix('}').unwrap())),
            None => (series, None),
        };
        assert!(name_ok(name), "{line}");
        for pair in labels.into_iter().flat_map(|l| l.split(',')) {
            let (k, v) = pair.split_once('=').unwrap();
            assert!(
                name_ok(k) && v.starts_with('"') && v.ends_with('"'),
                "{line}"
            );
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| types.contains_key(*f)))
            .unwrap_or(name);
        assert!(types.contains_key(family), "no TYPE for {line}");
        samples.insert(series.to_owned(), v);
    }
    for (family, kind) in &types {
        match kind.as_str() {
            "histogram" => {
                assert!(samples.contains_key(&format!("{family}_bucket{{le=\"+Inf\"}}")));
                assert!(samples.contains_key(&format!("{family}_sum")), "{family}");
                assert!(samples.contains_key(&format!("{family}_count")), "{family}");
            }
            "summary" => {
                assert!(samples.contains_key(&format!("{family}_sum")), "{family}");
                assert!(samples.contains_key(&format!("{family}_count")), "{family}");
            }
            _ => {}
        }
    }
    samples
}

#[test]
fn the_exposition_is_complete_and_parses_line_by_line() {
    let m = Metrics::new(2);
    let mut lateness = hdrhistogram::Histogram::<u64>::new(2).unwrap();
    lateness.record(1_000).unwrap();
    lateness.record(3_000).unwrap();
    for core in 0..2 {
        m.publish(
            core,
            CoreSnapshot {
                counters: Counters::default(),
                held: 3,
                own_queued: 1,
                lateness: lateness.clone(),
                io: "portable",
                socket_drops: 2,
            },
        );
    }
    m.count_undeliverable();
    m.count_send_failed(engine::OutCategory::Cover);
    m.count_send_failed(engine::OutCategory::Cover);
    let samples = parse(&m.render());
    assert_eq!(samples["mixed_held_packets"], 6.0);
    assert_eq!(samples["mixed_send_failed_total{category=\"cover\"}"], 2.0);
    assert_eq!(samples["mixed_departure_lateness_seconds_count"], 4.0);
    assert_eq!(samples["mixed_core_info{core=\"1\",io=\"portable\"}"], 1.0);
    assert_eq!(
        samples["mixed_drops_total{reason=\"socket_overflow\"}"],
        4.0
    );
}

#[test]
fn idle_connections_do_not_hold_up_a_scrape() {
    let stop = Arc::new(AtomicBool::new(false));
    let addr = serve(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(Metrics::new(1)),
        Arc::clone(&stop),
    )
    .unwrap();
    let idle: Vec<std::net::TcpStream> = (0..300)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    let start = std::time::Instant::now();
    let body = loop {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        if answer.starts_with("HTTP/1.1 200") {
            break answer;
        }
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no scrape in 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // one at a time, 300 idle connections of 500 ms each held a scrape for 150 s
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(body.contains("mixed_packets_received_total"));
    drop(idle);
    stop.store(true, Ordering::Relaxed);
}
