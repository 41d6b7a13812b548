//! The command line: `mixed sim --scenario F --seed S` (the `mixed` binary's subcommand,
//! and `mixed-sim`). Reads the scenarios, runs them, writes every series as CSV and the
//! plots as PNG into the output folder, prints the summary, and draws a progress bar on
//! stderr (virtual time, events a second). The bar is the only use of the wall clock, and
//! nothing it reads reaches the output: one seed gives the same bytes.

// the command line prints its answers and its progress
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::report::{self, Summary};
use crate::scenario::Scenario;

/// `mixed sim`'s arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// A scenario file (TOML; see sim/scenarios/). Repeat it to put several series in one
    /// set of CSV files and plots (each scenario is a series).
    #[arg(long, required = true)]
    pub scenario: Vec<PathBuf>,
    /// The seed: everything random comes from it.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where the CSV files and plots go (created).
    #[arg(long, default_value = "sim-out")]
    pub out: PathBuf,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// One scenario's runs, with its name.
#[derive(Debug)]
pub struct Series {
    /// The scenario's name.
    pub name: String,
    /// Its design and fidelity, as words.
    pub design: &'static str,
    /// Its fidelity.
    pub fidelity: &'static str,
    /// One summary per value of its sweep (one without a sweep).
    pub runs: Vec<Summary>,
    /// The sweep's parameter, if any.
    pub parameter: Option<String>,
}

/// Runs `mixed sim`.
pub fn main(args: &SimArgs) -> Result<()> {
    let mut all = Vec::new();
    for path in &args.scenario {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the scenario {}", path.display()))?;
        let sc = Scenario::from_toml(&text).with_context(|| format!("in {}", path.display()))?;
        let name = if sc.name.is_empty() {
            path.file_stem()
                .map_or("scenario".into(), |s| s.to_string_lossy().into_owned())
        } else {
            sc.name.clone()
        };
        let mut bar = Bar::new(&name, &sc, args.quiet);
        let runs = crate::run(&sc, args.seed, &mut |run, t, events| {
            bar.show(run, t, events)
        })
        .with_context(|| format!("running {}", path.display()))?;
        bar.done();
        all.push(Series {
            name,
            design: crate::design_name(&sc),
            fidelity: crate::fidelity_name(&sc),
            runs,
            parameter: sc.sweep.as_ref().map(|s| s.parameter.clone()),
        });
    }
    write_outputs(&args.out, args.seed, &all)?;
    print!("{}", table(&all));
    println!("wrote {}", args.out.display());
    Ok(())
}

/// Writes the CSV files and the plots of `all` into `out`.
pub fn write_outputs(out: &Path, seed: u64, all: &[Series]) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut summary = String::from(report::SUMMARY_HEADER);
    for s in all {
        for r in &s.runs {
            summary.push_str(&report::summary_row(r, &s.name, s.design, s.fidelity, seed));
        }
    }
    std::fs::write(out.join("summary.csv"), summary)?;
    for s in all {
        let stem = sanitize(&s.name);
        std::fs::write(
            out.join(format!("{stem}-targets.csv")),
            report::targets_csv(&s.runs),
        )?;
        if s.runs.iter().any(|r| !r.counts.sender_entropy.is_empty()) {
            std::fs::write(
                out.join(format!("{stem}-senders.csv")),
                report::senders_csv(&s.runs),
            )?;
        }
        if s.runs.iter().any(|r| !r.watched.is_empty()) {
            std::fs::write(
                out.join(format!("{stem}-watch.csv")),
                report::watched_csv(&s.runs),
            )?;
        }
        if s.runs.iter().any(|r| !r.counts.undelivered.is_empty()) {
            std::fs::write(
                out.join(format!("{stem}-undelivered.csv")),
                report::undelivered_csv(&s.runs),
            )?;
        }
        if s.runs.iter().any(|r| !r.counts.alarms.is_empty()) {
            std::fs::write(
                out.join(format!("{stem}-alarms.csv")),
                report::alarms_csv(&s.runs),
            )?;
        }
    }
    crate::plot::plots(out, all)?;
    Ok(())
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The summary as a text table.
pub fn table(all: &[Series]) -> String {
    let mut out = String::from(
        "scenario             design  value      latency_s  delivery  H_msg   H_recv  H_send  who    cover  cover/s    classif\n",
    );
    for s in all {
        for r in &s.runs {
            let num = |x: f64, w: usize, p: usize| {
                if x.is_nan() {
                    format!("{:>w$}", "-")
                } else {
                    format!("{x:>w$.p$}")
                }
            };
            out.push_str(&format!(
                "{:<20} {:<7} {} {} {} {} {} {} {} {} {} {}\n",
                s.name.chars().take(20).collect::<String>(),
                s.design,
                num(r.value, 10, 3),
                num(r.counts.latency.mean(), 10, 3),
                num(r.delivery(), 9, 5),
                num(r.message_entropy(), 7, 2),
                num(r.receiver_entropy(), 7, 2),
                num(r.sender_entropy(), 7, 2),
                num(r.who_talks_to_whom(), 6, 3),
                num(r.cover_share(), 6, 3),
                num(r.cover_per_second(), 10, 0),
                num(r.classifier.0.unwrap_or(f64::NAN), 7, 3),
            ));
        }
    }
    out
}

/// The progress bar: virtual time against the scenario's, and events a second.
struct Bar {
    name: String,
    seconds: f64,
    runs: usize,
    quiet: bool,
    tty: bool,
    #[allow(clippy::disallowed_methods)] // the bar's wall clock, never in the output
    started: std::time::Instant,
    last_print: f64,
    run: usize,
    base: u64,
    last_events: u64,
}

impl Bar {
    #[allow(clippy::disallowed_methods)] // the bar's wall clock, never in the output
    fn new(name: &str, sc: &Scenario, quiet: bool) -> Self {
        Bar {
            name: name.to_string(),
            seconds: sc.seconds,
            runs: sc.sweep.as_ref().map_or(1, |s| s.values.len()),
            quiet,
            tty: std::io::stderr().is_terminal(),
            started: std::time::Instant::now(),
            last_print: -1.0,
            run: 0,
            base: 0,
            last_events: 0,
        }
    }

    fn show(&mut self, run: usize, t: f64, events: u64) {
        if self.quiet {
            return;
        }
        if run != self.run {
            self.base += self.last_events;
            self.run = run;
        }
        self.last_events = events;
        let events = self.base + events;
        let wall = self.started.elapsed().as_secs_f64();
        // a terminal gets a bar redrawn in place; a log a line every 10 s of wall time
        let every = if self.tty { 0.2 } else { 10.0 };
        if wall - self.last_print < every {
            return;
        }
        self.last_print = wall;
        let done = (t / self.seconds).clamp(0.0, 1.0);
        let width = 30;
        let filled = (done * width as f64) as usize;
        let bar: String = (0..width)
            .map(|i| if i < filled { '#' } else { '.' })
            .collect();
        let line = format!(
            "{} run {}/{} [{bar}] {:.0}/{:.0} s virtual, {:.2} M events/s, {:.0} s wall",
            self.name,
            run + 1,
            self.runs,
            t,
            self.seconds,
            events as f64 / wall.max(1e-9) / 1e6,
            wall
        );
        let mut err = std::io::stderr();
        if self.tty {
            let _ = write!(err, "\r{line}\x1b[K");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    fn done(&mut self) {
        if self.quiet {
            return;
        }
        let wall = self.started.elapsed().as_secs_f64();
        let mut err = std::io::stderr();
        if self.tty {
            let _ = write!(err, "\r\x1b[K");
        }
        let _ = writeln!(
            err,
            "{}: {} run(s) in {:.1} s wall",
            self.name, self.runs, wall
        );
    }
}
