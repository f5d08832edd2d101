//! `--plot FILE.svg` or `--plot FILE.png`: latency percentiles per second
//! and throughput (or open connections) over time, one row per scenario.
//!
//! Both formats are drawn by the same plotters code. SVG writes text as
//! `<text>` elements (the viewer picks the font); PNG is rasterised by
//! plotters' bitmap backend, which draws text with ab_glyph from a font
//! embedded in the binary (a Latin/Greek subset of DejaVu Sans, 29 KB, see
//! `assets/`), so a PNG never depends on system font files. The same font
//! also gives the SVG layout real text widths.

use anyhow::{Context, Result, anyhow, bail};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::OnceLock;

use crate::report::Report;

/// The output format, chosen by the file name's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Svg,
    Png,
}

/// Pick the format from `path`'s extension; anything else is refused
/// before the run starts, so a long run never ends in an unwritable plot.
pub fn format_of(path: &Path) -> Result<Format> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "svg" => Ok(Format::Svg),
        "png" => Ok(Format::Png),
        _ => bail!(
            "--plot {}: the file name must end in .svg or .png",
            path.display()
        ),
    }
}

/// Check `path` before the run starts.
pub fn check_path(path: &Path) -> Result<()> {
    format_of(path).map(|_| ())
}

/// The embedded font (see `assets/LICENSE-DejaVu.txt`).
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");

/// Register the embedded font under every generic family name plotters may
/// ask for (captions and axis labels use "sans-serif"), once per process.
/// With plotters' `ab_glyph` feature an unregistered family is an error, not
/// a fallback, so this must run before anything is drawn (SVG included: the
/// layout measures text with it).
fn fonts() -> Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        for family in ["sans-serif", "serif", "monospace"] {
            plotters::style::register_font(family, FontStyle::Normal, FONT)
                .map_err(|_| format!("the embedded font cannot be loaded ({family})"))?;
        }
        Ok(())
    })
    .clone()
    .map_err(|e| anyhow!("plot: {e}"))
}

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("plot: {e}")
}

/// Width of the picture and height of one scenario's row, pixels.
const WIDTH: u32 = 1400;
const ROW_HEIGHT: u32 = 420;

/// Draw `items` (name, report) into `path`, as SVG or PNG by its extension.
pub fn write(path: &Path, items: &[(String, &Report)]) -> Result<()> {
    let format = format_of(path)?;
    fonts()?;
    let size = (WIDTH, ROW_HEIGHT * items.len().max(1) as u32);
    match format {
        Format::Svg => {
            let root = SVGBackend::new(path, size).into_drawing_area();
            draw(&root, items)?;
            root.present()
                .map_err(err)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Format::Png => {
            // plotters-bitmap draws into an RGB8 buffer; its own file output
            // would pull in the `image` crate, so the buffer is encoded here.
            let mut rgb = vec![0u8; size.0 as usize * size.1 as usize * 3];
            {
                let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
                draw(&root, items)?;
                root.present().map_err(err)?;
            }
            write_png(path, size, &rgb).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}

/// Encode an RGB8 picture as PNG.
fn write_png(path: &Path, (w, h): (u32, u32), rgb: &[u8]) -> Result<()> {
    let file = std::fs::File::create(path)?;
    let mut out = BufWriter::new(file);
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    out.flush()?;
    Ok(())
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    items: &[(String, &Report)],
) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let rows = items.len().max(1);
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

/// The measured window as a lightly shaded band (with its own legend
/// entry): warm-up and drain are plotted too, and grey edge lines alone
/// were indistinguishable from the grid.
fn window_marks<DB: DrawingBackend, Y: Ranged<ValueType = f64>>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>,
    r: &Report,
    lo: f64,
    hi: f64,
) -> Result<()> {
    let (a, b) = window(r);
    if b <= a {
        return Ok(());
    }
    let shade = RGBColor(255, 200, 0).mix(0.15);
    chart
        .draw_series(std::iter::once(Rectangle::new(
            [(a, lo), (b, hi)],
            shade.filled(),
        )))
        .map_err(err)?
        .label("measured window")
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], shade.filled()));
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
        // Headroom on the log axis (about 0.7 decade) for the legend box.
        * 5.0;
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
        .x_label_formatter(&|v| si(*v))
        .y_desc("µs")
        // A log axis gets a fine line per sub-decade step, which packs into a
        // grey band near each decade: keep only the labelled lines.
        .light_line_style(TRANSPARENT)
        .y_label_formatter(&|v| si(*v))
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
            .draw_series(
                LineSeries::new(
                    pts.iter().map(|p| (p.t_s, (f(p) as f64).max(lo))),
                    color.stroke_width(2),
                )
                // A dot per second: a series of one second (all handshakes
                // of an idle run) would otherwise draw nothing.
                .point_size(2),
            )
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
        // Headroom for the legend box.
        * 1.35;
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
        .x_label_formatter(&|v| si(*v))
        .light_line_style(TRANSPARENT)
        .y_label_formatter(&|v| si(*v))
        .draw()
        .map_err(err)?;
    window_marks(&mut chart, r, 0.0, hi)?;
    for (label, color, f) in series {
        chart
            .draw_series(
                LineSeries::new(pts.iter().map(|s| (s.t_s, f(s))), color.stroke_width(2))
                    .point_size(2),
            )
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

/// Axis label: `950`, `12k`, `1.5M` (plotters' default prints `300000.0`).
fn si(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        trim(format!("{:.2}", v / 1e6)) + "M"
    } else if a >= 1e3 {
        trim(format!("{:.1}", v / 1e3)) + "k"
    } else if a >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        trim(format!("{v:.1}"))
    }
}

fn trim(s: String) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_by_extension() {
        assert_eq!(format_of(Path::new("x.svg")).unwrap(), Format::Svg);
        assert_eq!(format_of(Path::new("x.SVG")).unwrap(), Format::Svg);
        assert_eq!(format_of(Path::new("dir/x.png")).unwrap(), Format::Png);
        assert_eq!(format_of(Path::new("x.PNG")).unwrap(), Format::Png);
        assert!(check_path(Path::new("x.jpg")).is_err());
        assert!(check_path(Path::new("x")).is_err());
    }

    #[test]
    fn axis_labels() {
        assert_eq!(si(0.0), "0");
        assert_eq!(si(2.5), "2.5");
        assert_eq!(si(950.0), "950");
        assert_eq!(si(1000.0), "1k");
        assert_eq!(si(12_500.0), "12.5k");
        assert_eq!(si(300_000.0), "300k");
        assert_eq!(si(1_250_000.0), "1.25M");
    }

    #[test]
    fn embedded_font_loads() {
        fonts().unwrap();
        // Twice is fine (the registration runs once).
        fonts().unwrap();
    }
}
