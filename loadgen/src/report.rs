//! `report`: SVG charts from the JSON files the scenarios write.
//!
//! Each input is `FILE` or `LABEL=FILE`; its kind is recognised from its fields:
//!
//! - a `latency` result (or the direct and tunnel latency of a `demo` result): one line per
//!   input over the percentiles p50, p90, p99, p99.9 and max → `latency.svg`;
//! - `throughput` results: bytes per second against the stream count, one line per label →
//!   `throughput.svg`;
//! - a `tune` result: throughput against the shard count, one line per driver → `shards.svg`.
//!
//! Charts are SVG, drawn with plotters; their text is rendered by whatever displays them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use serde_json::Value;

/// Width and height of every chart, in pixels.
const SIZE: (u32, u32) = (900, 540);

/// One line of a chart: a label and its points.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Series {
    pub(crate) label: String,
    pub(crate) points: Vec<(f64, f64)>,
}

/// What the inputs hold, sorted by chart.
#[derive(Debug, Default)]
pub(crate) struct Charts {
    /// Per label: the percentiles in microseconds, in [`PERCENTILES`] order.
    pub(crate) latency: Vec<(String, [f64; 5])>,
    /// Per label: (streams, bytes per second).
    pub(crate) throughput: BTreeMap<String, Vec<(f64, f64)>>,
    /// Per driver: (shards, bytes per second).
    pub(crate) shards: BTreeMap<String, Vec<(f64, f64)>>,
}

/// The percentile columns of the latency chart.
pub(crate) const PERCENTILES: [&str; 5] = ["p50", "p90", "p99", "p99.9", "max"];

fn percentiles(v: &Value) -> Option<[f64; 5]> {
    let f = |k: &str| v.get(k)?.as_f64();
    Some([
        f("p50_us")?,
        f("p90_us")?,
        f("p99_us")?,
        f("p999_us")?,
        f("max_us")?,
    ])
}

/// Splits `LABEL=FILE`; a bare `FILE` is labelled by its name without the extension.
pub(crate) fn parse_input(arg: &str) -> (String, PathBuf) {
    match arg.split_once('=') {
        Some((label, path)) if !label.is_empty() => (label.to_owned(), PathBuf::from(path)),
        _ => {
            let path = PathBuf::from(arg);
            let label = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| arg.to_owned());
            (label, path)
        }
    }
}

impl Charts {
    /// Files the data of one JSON document under `label`; an error names what it is not.
    pub(crate) fn add(&mut self, label: &str, doc: &Value) -> Result<(), String> {
        if let Some(trials) = doc.get("trials").and_then(Value::as_array) {
            for t in trials {
                let (Some(driver), Some(shards), Some(bps)) = (
                    t.get("driver").and_then(Value::as_str),
                    t.get("shards").and_then(Value::as_f64),
                    t.get("throughput").and_then(Value::as_f64),
                ) else {
                    return Err("a tune trial lacks driver, shards or throughput".into());
                };
                self.shards
                    .entry(driver.to_owned())
                    .or_default()
                    .push((shards, bps));
            }
            return Ok(());
        }
        if let (Some(direct), Some(tunnel)) = (doc.get("direct"), doc.get("tunnel")) {
            // A demo: its two latency phases.
            for (side, set) in [("direct", direct), ("tunnel", tunnel)] {
                if let Some(p) = set.pointer("/latency/latency").and_then(percentiles) {
                    self.latency.push((format!("{label} {side}"), p));
                }
            }
            return Ok(());
        }
        if let Some(p) = doc.get("latency").and_then(percentiles) {
            self.latency.push((label.to_owned(), p));
            return Ok(());
        }
        if let (Some(streams), Some(bps)) = (
            doc.get("streams").and_then(Value::as_f64),
            doc.get("bytes_per_sec").and_then(Value::as_f64),
        ) {
            // Files of one system usually differ only in the stream count: group them by
            // the label's part before a trailing "-<number>", if any.
            let group = match label.rsplit_once('-') {
                Some((head, tail)) if tail.parse::<u32>().is_ok() => head.to_owned(),
                _ => label.to_owned(),
            };
            self.throughput
                .entry(group)
                .or_default()
                .push((streams, bps));
            return Ok(());
        }
        Err("not a latency, throughput, tune or demo result".into())
    }
}

/// Reads every input and writes the charts it has data for into `out`; returns their paths.
pub(crate) fn run(inputs: &[String], out: &Path) -> Result<Vec<PathBuf>, String> {
    let mut charts = Charts::default();
    for arg in inputs {
        let (label, path) = parse_input(arg);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let doc: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
        charts
            .add(&label, &doc)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    std::fs::create_dir_all(out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let mut written = Vec::new();
    if !charts.latency.is_empty() {
        let path = out.join("latency.svg");
        let series: Vec<Series> = charts
            .latency
            .iter()
            .map(|(label, p)| Series {
                label: label.clone(),
                points: p.iter().enumerate().map(|(i, v)| (i as f64, *v)).collect(),
            })
            .collect();
        draw(
            &path,
            "Latency percentiles (corrected for coordinated omission)",
            "percentile",
            "microseconds (log scale)",
            &series,
            Axis::Percentiles,
        )?;
        written.push(path);
    }
    for (name, title, x_label, data) in [
        (
            "throughput.svg",
            "Throughput against concurrent streams",
            "streams",
            &charts.throughput,
        ),
        (
            "shards.svg",
            "Throughput against hub shards",
            "shards",
            &charts.shards,
        ),
    ] {
        if data.is_empty() {
            continue;
        }
        let path = out.join(name);
        let series: Vec<Series> = data
            .iter()
            .map(|(label, points)| {
                let mut points: Vec<(f64, f64)> =
                    points.iter().map(|(x, bps)| (*x, bps / 1e6)).collect();
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                Series {
                    label: label.clone(),
                    points,
                }
            })
            .collect();
        draw(&path, title, x_label, "MB/s", &series, Axis::Linear)?;
        written.push(path);
    }
    if written.is_empty() {
        return Err("no input had anything to chart".into());
    }
    Ok(written)
}

/// How the x axis is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Axis {
    /// The five percentile columns, y on a log scale.
    Percentiles,
    /// Numbers, y linear from zero.
    Linear,
}

fn draw(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    axis: Axis,
) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| format!("drawing {}: {e}", path.display());
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let all = series.iter().flat_map(|s| s.points.iter());
    let x_max = all.clone().map(|p| p.0).fold(0.0, f64::max);
    let y_max = all.clone().map(|p| p.1).fold(0.0, f64::max).max(1e-9);
    let y_min = all.map(|p| p.1).fold(f64::INFINITY, f64::min);
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72);
    match axis {
        Axis::Percentiles => {
            let lo = (y_min.max(1.0) / 2.0).max(0.5);
            let mut chart = builder
                .build_cartesian_2d(-0.3f64..4.3f64, (lo..y_max * 2.0).log_scale())
                .map_err(|e| fail(&e))?;
            chart
                .configure_mesh()
                .x_desc(x_label)
                .y_desc(y_label)
                .x_labels(5)
                .x_label_formatter(&|x| {
                    let i = x.round();
                    if (x - i).abs() < 0.01 && (0.0..=4.0).contains(&i) {
                        PERCENTILES[i as usize].to_owned()
                    } else {
                        String::new()
                    }
                })
                .draw()
                .map_err(|e| fail(&e))?;
            plot_series(&mut chart, series).map_err(|e| fail(&e))?;
        }
        Axis::Linear => {
            let mut chart = builder
                .build_cartesian_2d(0f64..(x_max * 1.1).max(1.0), 0f64..y_max * 1.15)
                .map_err(|e| fail(&e))?;
            chart
                .configure_mesh()
                .x_desc(x_label)
                .y_desc(y_label)
                .draw()
                .map_err(|e| fail(&e))?;
            plot_series(&mut chart, series).map_err(|e| fail(&e))?;
        }
    }
    root.present().map_err(|e| fail(&e))
}

/// Draws each series as a line with its points, in its own colour, and the legend.
fn plot_series<'a, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<RangedCoordf64, Y>>,
    series: &[Series],
) -> Result<(), DrawingAreaErrorKind<std::io::Error>>
where
    Y: Ranged<ValueType = f64>,
{
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(s.points.clone(), color.stroke_width(2)))?
            .label(s.label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(PointSeries::of_element(
            s.points.clone(),
            4,
            color.filled(),
            &|c, r, st| Circle::new(c, r, st),
        ))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn latency_doc(p50: f64) -> Value {
        json!({ "latency": { "count": 10, "mean_us": p50, "p50_us": p50, "p90_us": p50 * 2.0,
            "p99_us": p50 * 3.0, "p999_us": p50 * 4.0, "max_us": p50 * 5.0 } })
    }

    #[test]
    fn inputs_are_labelled() {
        assert_eq!(
            parse_input("tunnel=/tmp/x.json"),
            ("tunnel".into(), "/tmp/x.json".into())
        );
        assert_eq!(
            parse_input("/tmp/direct-8.json"),
            ("direct-8".into(), "/tmp/direct-8.json".into())
        );
    }

    #[test]
    fn documents_are_recognised_by_their_fields() {
        let mut c = Charts::default();
        c.add("direct", &latency_doc(20.0)).unwrap();
        c.add("nc-1", &json!({ "streams": 1, "bytes_per_sec": 1e8 }))
            .unwrap();
        c.add("nc-8", &json!({ "streams": 8, "bytes_per_sec": 3e8 }))
            .unwrap();
        c.add(
            "tune",
            &json!({ "trials": [
                { "driver": "io_uring", "shards": 1, "throughput": 1e8 },
                { "driver": "epoll", "shards": 1, "throughput": 2e8 },
            ] }),
        )
        .unwrap();
        assert_eq!(c.latency.len(), 1);
        assert_eq!(c.latency[0].1[2], 60.0);
        assert_eq!(c.throughput["nc"], vec![(1.0, 1e8), (8.0, 3e8)]);
        assert_eq!(c.shards.len(), 2);
        assert!(c.add("x", &json!({ "hello": 1 })).is_err());
    }

    #[test]
    fn charts_are_written_as_svg() {
        let dir = std::env::temp_dir().join(format!("loadgen-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let lat = dir.join("direct.json");
        std::fs::write(&lat, latency_doc(20.0).to_string()).unwrap();
        let t1 = dir.join("nc-1.json");
        std::fs::write(
            &t1,
            json!({ "streams": 1, "bytes_per_sec": 1e8 }).to_string(),
        )
        .unwrap();
        let t8 = dir.join("nc-8.json");
        std::fs::write(
            &t8,
            json!({ "streams": 8, "bytes_per_sec": 3e8 }).to_string(),
        )
        .unwrap();
        let inputs: Vec<String> = [&lat, &t1, &t8]
            .iter()
            .map(|p| p.display().to_string())
            .chain(std::iter::once(format!("tunnel={}", lat.display())))
            .collect();
        let out = dir.join("charts");
        let written = run(&inputs, &out).unwrap();
        assert_eq!(written.len(), 2);
        let svg = std::fs::read_to_string(out.join("latency.svg")).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..60.min(svg.len())]);
        assert!(svg.contains("tunnel") && svg.contains("p99.9"));
        let svg = std::fs::read_to_string(out.join("throughput.svg")).unwrap();
        assert!(svg.contains("<polyline") || svg.contains("<path"));
        assert!(run(&[dir.join("missing.json").display().to_string()], &out).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
