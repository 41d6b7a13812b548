//! PNG plots: plotters' bitmap backend drawing into a buffer, encoded by `png`, text in
//! DejaVu Sans embedded in the binary (the `dejavu` crate) through ab_glyph: no system
//! font, no fontconfig, nothing to install. Which plots a run gets depends on what its
//! series swept:
//!
//! | file | drawn when | x | y |
//! |---|---|---|---|
//! | `entropy-latency.png` | a series swept `mean_delay_ms` | mean latency | entropy |
//! | `entropy-cover.png` | always | pure-cover datagrams a second | message entropy |
//! | `delivery-loss.png` | a series swept `loss` | loss per link | delivery |
//! | `delivery-churn.png` | a series swept `churn` | churn per epoch | delivery |
//! | `classifier.png` | always | run | classifier accuracy, chance 0.5 |
//! | `entropy-<parameter>.png` | a series swept another parameter | its value | entropies |
//! | `watched.png` | a watched node's datagrams were followed | time | their origin's entropy (5 s means) |

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;

use crate::cli::Series;
use crate::report::Summary;

const WIDTH: u32 = 900;
const HEIGHT: u32 = 600;
const FONT: &str = "sans-serif";

/// Registers the embedded font once.
fn font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(anyhow!("the embedded font could not be loaded"))
    }
}

/// A line of points with its name.
pub type Line = (String, Vec<(f64, f64)>);

/// Draws `lines` into a PNG at `path`.
pub fn line_plot(path: &Path, title: &str, x: &str, y: &str, lines: &[Line]) -> Result<()> {
    font()?;
    let points: Vec<(f64, f64)> = lines
        .iter()
        .flat_map(|(_, p)| p.iter().copied())
        .filter(|(a, b)| a.is_finite() && b.is_finite())
        .collect();
    if points.is_empty() {
        return Ok(());
    }
    let range = |v: Vec<f64>| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let pad = ((hi - lo) * 0.08).max(1e-3 * hi.abs().max(1.0));
        (lo - pad)..(hi + pad)
    };
    let xr = range(points.iter().map(|p| p.0).collect());
    let yr = range(points.iter().map(|p| p.1).collect());
    let mut buf = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 22))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(xr, yr)
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc(x)
            .y_desc(y)
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        for (k, (name, pts)) in lines.iter().enumerate() {
            let color = Palette99::pick(k).to_rgba();
            let pts: Vec<(f64, f64)> = pts
                .iter()
                .copied()
                .filter(|(a, b)| a.is_finite() && b.is_finite())
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| anyhow!("{e}"))?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(|e| anyhow!("{e}"))?;
        }
        chart
            .configure_series_labels()
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    write_png(path, &buf)
}

fn write_png(path: &Path, rgb: &[u8]) -> Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("{}", path.display()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), WIDTH, HEIGHT);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::Best);
    enc.set_adaptive_filter(png::AdaptiveFilterType::Adaptive);
    let mut w = enc.write_header()?;
    w.write_image_data(rgb)?;
    Ok(())
}

fn line(name: String, runs: &[Summary], f: impl Fn(&Summary) -> (f64, f64)) -> Line {
    (name, runs.iter().map(f).collect())
}

/// Draws the plots that `all` has data for into `out`.
pub fn plots(out: &Path, all: &[Series]) -> Result<()> {
    fn swept<'a>(all: &'a [Series], p: &'a str) -> impl Iterator<Item = &'a Series> + 'a {
        all.iter()
            .filter(move |s| s.parameter.as_deref() == Some(p))
    }
    let mut lat = Vec::new();
    for s in swept(all, "mean_delay_ms") {
        lat.push(line(format!("{} message", s.name), &s.runs, |r| {
            (r.counts.latency.mean(), r.message_entropy())
        }));
        lat.push(line(format!("{} receiver", s.name), &s.runs, |r| {
            (r.counts.latency.mean(), r.receiver_entropy())
        }));
        if s.runs.iter().any(|r| !r.counts.sender_entropy.is_empty()) {
            lat.push(line(format!("{} sender", s.name), &s.runs, |r| {
                (r.counts.latency.mean(), r.sender_entropy())
            }));
        }
    }
    if !lat.is_empty() {
        line_plot(
            &out.join("entropy-latency.png"),
            "Entropy against mean end-to-end latency",
            "mean latency (s)",
            "entropy (bits)",
            &lat,
        )?;
    }
    let cover: Vec<Line> = all
        .iter()
        .map(|s| {
            line(s.name.clone(), &s.runs, |r| {
                (r.cover_per_second(), r.message_entropy())
            })
        })
        .collect();
    line_plot(
        &out.join("entropy-cover.png"),
        "Message entropy against pure cover (loops + drop cover, every hop)",
        "pure cover datagrams a second, whole network",
        "message entropy (bits)",
        &cover,
    )?;
    for (param, file, title, x) in [
        (
            "loss",
            "delivery-loss.png",
            "Delivery against loss",
            "loss per link",
        ),
        (
            "churn",
            "delivery-churn.png",
            "Delivery against churn",
            "share of the nodes leaving per epoch",
        ),
    ] {
        let lines: Vec<Line> = swept(all, param)
            .map(|s| line(s.name.clone(), &s.runs, |r| (r.value, r.delivery())))
            .collect();
        if !lines.is_empty() {
            line_plot(&out.join(file), title, x, "messages delivered", &lines)?;
        }
    }
    for param in [
        "skip_fraction",
        "drop_fraction",
        "flood_rate",
        "loss",
        "churn",
        "bandwidth",
        "loopix_cover",
        "senders",
    ] {
        let mut lines = Vec::new();
        for s in swept(all, param) {
            lines.push(line(format!("{} message", s.name), &s.runs, |r| {
                (r.value, r.message_entropy())
            }));
            lines.push(line(format!("{} receiver", s.name), &s.runs, |r| {
                (r.value, r.receiver_entropy())
            }));
            if s.runs.iter().any(|r| !r.counts.sender_entropy.is_empty()) {
                lines.push(line(format!("{} sender", s.name), &s.runs, |r| {
                    (r.value, r.sender_entropy())
                }));
            }
            if s.runs
                .iter()
                .any(|r| r.attack.is_some() && !r.watched.is_empty())
            {
                lines.push(line(
                    format!("{} watched node, during", s.name),
                    &s.runs,
                    |r| (r.value, r.watched_entropy(r.warmup)[1]),
                ));
            }
        }
        if !lines.is_empty() {
            line_plot(
                &out.join(format!("entropy-{param}.png")),
                &format!("Entropy against {param}"),
                param,
                "entropy (bits)",
                &lines,
            )?;
        }
    }
    let mut watched = Vec::new();
    for s in all {
        for r in &s.runs {
            if r.watched.is_empty() {
                continue;
            }
            let mut bins: std::collections::BTreeMap<i64, (f64, u32)> = Default::default();
            for &(t, h) in &r.watched {
                let e = bins.entry((t / 5.0).floor() as i64).or_insert((0.0, 0));
                e.0 += h;
                e.1 += 1;
            }
            let name = if r.value.is_nan() {
                s.name.clone()
            } else {
                format!("{} {}", s.name, r.value)
            };
            watched.push((
                name,
                bins.into_iter()
                    .map(|(k, (sum, c))| (k as f64 * 5.0 + 2.5, sum / f64::from(c)))
                    .collect(),
            ));
        }
    }
    if !watched.is_empty() {
        line_plot(
            &out.join("watched.png"),
            "Entropy of who originated the watched node's datagrams",
            "time (s)",
            "entropy (bits)",
            &watched,
        )?;
    }
    let mut class = Vec::new();
    for s in all {
        let x = |k: usize, r: &Summary| if r.value.is_nan() { k as f64 } else { r.value };
        let pts = |f: &dyn Fn(&Summary) -> Option<f64>| -> Vec<(f64, f64)> {
            s.runs
                .iter()
                .enumerate()
                .map(|(k, r)| (x(k, r), f(r).unwrap_or(f64::NAN)))
                .collect()
        };
        class.push((format!("{} idle/sending", s.name), pts(&|r| r.classifier.0)));
        class.push((
            format!("{} idle/receiving", s.name),
            pts(&|r| r.classifier.1),
        ));
        class.push((
            format!("{} who talks to whom", s.name),
            pts(&|r| Some(r.who_talks_to_whom())),
        ));
    }
    let mut xs: Vec<f64> = class
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.0))
        .filter(|x| x.is_finite())
        .collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    class.push((
        "chance (idle/sending)".into(),
        xs.into_iter().map(|x| (x, 0.5)).collect(),
    ));
    line_plot(
        &out.join("classifier.png"),
        "What the observer's classifiers get right",
        "sweep value (or run)",
        "balanced accuracy / share guessed",
        &class,
    )?;
    Ok(())
}
