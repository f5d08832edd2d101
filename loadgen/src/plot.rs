//! `--plot FILE.svg`: latency percentiles per second and throughput (or
//! open connections) over time, one row per scenario. SVG only: the SVG
//! backend writes text as `<text>` elements, so no font files or font
//! rasteriser are needed (convert to PNG with e.g. `rsvg-convert` if needed).

use anyhow::{Result, anyhow, bail};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

use crate::report::Report;

/// Reject anything but `.svg` before the run starts.
pub fn check_path(path: &Path) -> Result<()> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "svg" => Ok(()),
        "png" => bail!(
            "--plot {}: PNG is not built in (it needs a font rasteriser); write .svg and \
             convert it, e.g. `rsvg-convert -o plot.png plot.svg`",
            path.display()
        ),
        _ => bail!("--plot {}: the file name must end in .svg", path.display()),
    }
}

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("plot: {e}")
}

/// Draw `items` (name, report) into `path`.
pub fn write(path: &Path, items: &[(String, &Report)]) -> Result<()> {
    check_path(path)?;
    let rows = items.len().max(1);
    let root = SVGBackend::new(path, (1400, 420 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let areas = root.split_evenly((rows, 2));
    for (i, (name, r)) in items.iter().enumerate() {
        let title = if name.is_empty() {
            r.scenario.to_string()
        } else {
            format!("{name} ({})", r.scenario)
        };
        latency_panel(&areas[2 * i], &title, r)?;
        traffic_panel(&areas[2 * i + 1], &title, r)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Seconds since the engine start of the first and last measured instant.
fn window(r: &Report) -> (f64, f64) {
    let t = &r.timing;
    let from = t.connect_s + t.warmup_s;
    (from, from + t.measured_s)
}

fn x_max(r: &Report) -> f64 {
    let a = r.per_second.last().map(|s| s.t_s).unwrap_or(0.0);
    let b = r.latency_per_second.last().map(|s| s.t_s).unwrap_or(0.0);
    a.max(b).max(r.timing.total_s).max(1.0).ceil()
}

/// Dashed-looking grey verticals at the measured window's edges.
fn window_marks<DB: DrawingBackend, Y: Ranged<ValueType = f64>>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>,
    r: &Report,
    lo: f64,
    hi: f64,
) -> Result<()> {
    let (a, b) = window(r);
    for x in [a, b] {
        chart
            .draw_series(LineSeries::new(
                vec![(x, lo), (x, hi)],
                BLACK.mix(0.3).stroke_width(1),
            ))
            .map_err(err)?;
    }
    Ok(())
}

fn latency_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    r: &Report,
) -> Result<()> {
    let what = if r.scenario == "ws-connect" {
        "handshake"
    } else {
        "round-trip"
    };
    let pts = &r.latency_per_second;
    let hi = pts
        .iter()
        .map(|p| p.p99.max(p.p50))
        .max()
        .unwrap_or(10)
        .max(10) as f64
        * 2.0;
    let lo = (pts.iter().map(|p| p.p50).min().unwrap_or(1).max(1) as f64 / 2.0).max(1.0);
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{title}: {what} latency per second (µs, log)"),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max(r), (lo..hi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("µs")
        .draw()
        .map_err(err)?;
    window_marks(&mut chart, r, lo, hi)?;
    type Pick = fn(&crate::report::SecondLatency) -> u64;
    let series: [(&str, RGBColor, Pick); 3] = [
        ("p50", BLUE, |p| p.p50),
        ("p90", GREEN, |p| p.p90),
        ("p99", RED, |p| p.p99),
    ];
    for (label, color, f) in series {
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.t_s, (f(p) as f64).max(lo))),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

fn traffic_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    r: &Report,
) -> Result<()> {
    type Pick = fn(&crate::engine::Sample) -> f64;
    let (caption, series): (&str, Vec<(&str, RGBColor, Pick)>) = if r.scenario == "ws-connect" {
        (
            "connections over time",
            vec![
                ("open connections", BLUE, |s| s.open_connections as f64),
                ("new connections/s", RED, |s| s.connects_per_s),
            ],
        )
    } else {
        (
            "throughput over time (msg/s)",
            vec![
                ("echoes received/s", BLUE, |s| s.msg_per_s),
                ("sent/s", RED, |s| s.sent_per_s),
            ],
        )
    };
    let pts = &r.per_second;
    let hi = pts
        .iter()
        .flat_map(|s| series.iter().map(move |(_, _, f)| f(s)))
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{title}: {caption}"), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..x_max(r), 0f64..hi)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .draw()
        .map_err(err)?;
    window_marks(&mut chart, r, 0.0, hi)?;
    for (label, color, f) in series {
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|s| (s.t_s, f(s))),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_svg() {
        assert!(check_path(Path::new("x.svg")).is_ok());
        assert!(check_path(Path::new("x.SVG")).is_ok());
        assert!(check_path(Path::new("x.png")).is_err());
        assert!(check_path(Path::new("x")).is_err());
    }
}
