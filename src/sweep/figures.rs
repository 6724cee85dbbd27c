//! The report's figures, as SVG text: the frames (axes, ticks, grid, axis titles) and the lines
//! are drawn by `plotters` (its SVG backend, no fonts needed: text is written as `<text>`), and
//! the marks a reader and a test must identify (points, error bars, the chosen learning rate,
//! flags, the legend) are written beside them as SVG groups with classes and `data-` attributes
//! (`class="point"`, `class="errorbar"`, ...), in the same pixel coordinates.
//!
//! Every figure is total: no input makes it panic, and a figure without anything to plot says
//! "no data yet" (an SVG with `class="no-data"`) instead of drawing empty or degenerate axes.
//! Non-finite values are left out, as are points without a parameter count.
//!
//! | stem | what |
//! |---|---|
//! | `fig2-perplexity` | Figure 2: test perplexity against parameters (log x), a series per mechanism over depth, coloured by class, ±1 sd over seeds |
//! | `fig4-cost` | Figure 4: training-step time (median, IQR over rounds) and planned memory relative to the reference, per depth |
//! | `lr-isolation` | per model, stage A's validation perplexity against the learning-rate scale (log x), the chosen scale ringed |
//! | `valid-curves` | validation perplexity (log y) against step of the chosen runs, a panel per depth (training perplexity where no run validated twice) |

use super::{MechClass, ModelKey, ReportInput};
use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::Range;

/// One figure of the report.
#[derive(Clone, Debug, PartialEq)]
pub struct Figure {
    /// The file stem (`fig2-perplexity`): `STEM.svg` and `STEM.png` beside the report.
    pub stem: String,
    pub title: String,
    /// What the figure shows, how to read it (plain text).
    pub caption: String,
    /// A standalone SVG document (with its `xmlns`).
    pub svg: String,
    /// False when the figure only says that there is no data yet.
    pub has_data: bool,
}

pub const FIG2: &str = "fig2-perplexity";
pub const FIG4: &str = "fig4-cost";
pub const LR: &str = "lr-isolation";
pub const CURVES: &str = "valid-curves";

/// Every figure of a report, in the report's order.
pub fn all(input: &ReportInput) -> Vec<Figure> {
    let pal = Palette::new(input);
    vec![
        figure2(input, &pal),
        figure4(input, &pal),
        lr_isolation(input),
        curves(input, &pal),
    ]
}

// ---------------------------------------------------------------------------------------------
// Colours and markers

/// The class's colour (matplotlib's first colours, which the paper's figures appear to use:
/// blue, orange, green; purple for the mechanisms outside the paper's three classes).
pub fn class_colour(c: MechClass) -> (u8, u8, u8) {
    match c {
        MechClass::LinearOnly => (0x1f, 0x77, 0xb4),
        MechClass::DotProductOnly => (0xff, 0x7f, 0x0e),
        MechClass::Both => (0x2c, 0xa0, 0x2c),
        MechClass::Other => (0x94, 0x67, 0xbd),
    }
}

/// How the report names a class.
pub fn class_name(c: MechClass) -> &'static str {
    match c {
        MechClass::LinearOnly => "linear only",
        MechClass::DotProductOnly => "dot-product only",
        MechClass::Both => "both",
        MechClass::Other => "other",
    }
}

const CLASSES: [MechClass; 4] = [
    MechClass::LinearOnly,
    MechClass::DotProductOnly,
    MechClass::Both,
    MechClass::Other,
];

fn class_rank(c: MechClass) -> usize {
    CLASSES.iter().position(|x| *x == c).unwrap_or(3)
}

/// The marks of a series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marker {
    Circle,
    Square,
    Triangle,
    Diamond,
    TriangleDown,
    Hexagon,
    Star,
    Cross,
}

const MARKERS: [Marker; 8] = [
    Marker::Circle,
    Marker::Square,
    Marker::Triangle,
    Marker::Diamond,
    Marker::TriangleDown,
    Marker::Hexagon,
    Marker::Star,
    Marker::Cross,
];

/// A series' look: its class's colour in a shade of its own, and a marker of its own within
/// its class.
#[derive(Clone, Debug, PartialEq)]
pub struct Style {
    pub label: String,
    pub class: MechClass,
    pub colour: (u8, u8, u8),
    pub marker: Marker,
}

/// A series of the figures: a mechanism with the model's other swept settings (one line over
/// depth in Figure 2).
pub fn series_key(model: &ModelKey) -> String {
    series_of(&model.mech, &model.swept)
}

fn series_of(mech: &str, swept: &[String]) -> String {
    let mut s = mech.to_string();
    for x in swept {
        s.push(' ');
        s.push_str(x);
    }
    s
}

/// The styles of every series that appears anywhere in a report, by class, then by name.
#[derive(Clone, Debug, Default)]
pub struct Palette {
    styles: Vec<Style>,
}

impl Palette {
    pub fn new(input: &ReportInput) -> Palette {
        let class_of_mech = |mech: &str| {
            input
                .mechanisms
                .iter()
                .find(|m| m.name == mech)
                .map(|m| m.class)
                .unwrap_or_else(|| super::compare::class_of(mech, None))
        };
        let mut keys: BTreeMap<String, MechClass> = BTreeMap::new();
        let mut add = |mech: &str, swept: &[String]| {
            keys.entry(series_of(mech, swept))
                .or_insert_with(|| class_of_mech(mech));
        };
        for r in &input.rows {
            add(&r.mech, &r.swept);
        }
        for a in &input.aggregate {
            add(&a.model.mech, &a.model.swept);
        }
        for c in &input.curves {
            add(&c.model.mech, &c.model.swept);
        }
        for t in &input.timing {
            add(&t.model.mech, &t.model.swept);
        }
        for c in &input.choices {
            add(&c.model.mech, &c.model.swept);
        }
        let mut entries: Vec<(String, MechClass)> = keys.into_iter().collect();
        entries.sort_by(|a, b| {
            class_rank(a.1)
                .cmp(&class_rank(b.1))
                .then_with(|| super::natural_cmp(&a.0, &b.0))
        });
        let mut styles = Vec::new();
        for class in CLASSES {
            let members: Vec<&(String, MechClass)> =
                entries.iter().filter(|e| e.1 == class).collect();
            let k = members.len();
            for (i, (label, _)) in members.into_iter().enumerate() {
                // From darker to lighter than the class's colour.
                let t = if k <= 1 {
                    0.0
                } else {
                    -0.45 + 0.75 * i as f64 / (k - 1) as f64
                };
                styles.push(Style {
                    label: label.clone(),
                    class,
                    colour: shade(class_colour(class), t),
                    marker: MARKERS[i % MARKERS.len()],
                });
            }
        }
        Palette { styles }
    }

    /// The style of a series (a neutral grey for one the palette does not know).
    pub fn style(&self, key: &str) -> Style {
        self.styles
            .iter()
            .find(|s| s.label == key)
            .cloned()
            .unwrap_or(Style {
                label: key.to_string(),
                class: MechClass::Other,
                colour: (0x55, 0x55, 0x55),
                marker: Marker::Circle,
            })
    }

    pub fn styles(&self) -> &[Style] {
        &self.styles
    }
}

/// `t` < 0 mixes with black, `t` > 0 with white.
fn shade(c: (u8, u8, u8), t: f64) -> (u8, u8, u8) {
    let f = |v: u8| -> u8 {
        let v = f64::from(v);
        let r = if t < 0.0 {
            v * (1.0 + t)
        } else {
            v + (255.0 - v) * t
        };
        r.round().clamp(0.0, 255.0) as u8
    };
    (f(c.0), f(c.1), f(c.2))
}

fn hex(c: (u8, u8, u8)) -> String {
    format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2)
}

fn rgb(c: (u8, u8, u8)) -> RGBColor {
    RGBColor(c.0, c.1, c.2)
}

// ---------------------------------------------------------------------------------------------
// Axes: one coordinate type for linear and logarithmic axes, with ticks chosen here.

/// An axis: its range, linear or logarithmic, and its ticks.
#[derive(Clone, Debug)]
struct Scale {
    lo: f64,
    hi: f64,
    log: bool,
    ticks: Vec<f64>,
}

impl Scale {
    fn f(&self, v: f64) -> f64 {
        if self.log { v.max(1e-300).log10() } else { v }
    }

    /// Where `v` falls, 0 at `lo` and 1 at `hi`.
    fn frac(&self, v: f64) -> f64 {
        let (a, b) = (self.f(self.lo), self.f(self.hi));
        if (b - a).abs() < 1e-300 {
            0.5
        } else {
            (self.f(v) - a) / (b - a)
        }
    }

    /// A linear axis over the values (padded), with about `n` ticks.
    fn linear(values: &[f64], n: usize, pad: f64) -> Scale {
        let (mut lo, mut hi) = min_max(values);
        if hi - lo < 1e-9 * hi.abs().max(1.0) {
            let d = (hi.abs() * 0.05).max(0.5);
            lo -= d;
            hi += d;
        } else {
            let d = (hi - lo) * pad;
            lo -= d;
            hi += d;
        }
        let ticks = nice_ticks(lo, hi, n);
        Scale {
            lo,
            hi,
            log: false,
            ticks,
        }
    }

    /// A logarithmic axis over the (positive) values, padded by `pad` of its decades.
    fn log(values: &[f64], pad: f64) -> Scale {
        let (lo, hi) = min_max(values);
        let (mut a, mut b) = (lo.max(1e-300).log10(), hi.max(1e-300).log10());
        if b - a < 1e-9 {
            a -= 0.15;
            b += 0.15;
        } else {
            let d = ((b - a) * pad).max(0.04);
            a -= d;
            b += d;
        }
        let (lo, hi) = (10f64.powf(a), 10f64.powf(b));
        Scale {
            lo,
            hi,
            log: true,
            ticks: log_ticks(lo, hi),
        }
    }
}

fn min_max(values: &[f64]) -> (f64, f64) {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if lo.is_finite() && hi.is_finite() {
        (lo, hi)
    } else {
        (0.0, 1.0)
    }
}

/// Round ticks (1, 2, 2.5 or 5 times a power of ten) in `[lo, hi]`, about `n` of them.
fn nice_ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let span = hi - lo;
    if span.is_nan() || span <= 0.0 || !span.is_finite() {
        return vec![];
    }
    let raw = span / n.max(1) as f64;
    let p = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * p);
    let mut v = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while v <= hi + step * 1e-9 && out.len() < 50 {
        // Snap away the rounding noise of repeated sums (0.30000000000000004).
        out.push((v / step).round() * step);
        v += step;
    }
    out
}

/// Ticks of a logarithmic axis: powers of ten, then 1-2-5, 1-2-3-5-7, 1..9 times them, whichever
/// first gives four ticks in range; linear round ticks for a range shorter than that.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    if lo.is_nan() || hi.is_nan() || lo <= 0.0 || hi <= lo {
        return vec![];
    }
    let (a, b) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    for mantissas in [
        &[1.0][..],
        &[1.0, 2.0, 5.0][..],
        &[1.0, 2.0, 3.0, 5.0, 7.0][..],
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0][..],
    ] {
        let mut out = Vec::new();
        for e in a..=b {
            for m in mantissas {
                let v = m * 10f64.powi(e);
                if v >= lo * (1.0 - 1e-9) && v <= hi * (1.0 + 1e-9) {
                    out.push(v);
                }
            }
        }
        if out.len() >= 4 {
            // At most about ten labels: thin out every other one.
            while out.len() > 10 {
                out = out.into_iter().step_by(2).collect();
            }
            return out;
        }
    }
    nice_ticks(lo, hi, 5)
}

impl Ranged for Scale {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let t = self.frac(*v);
        let p = f64::from(limit.0) + t * f64::from(limit.1 - limit.0);
        p.clamp(-1e6, 1e6).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            vec![]
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.lo..self.hi
    }
}

/// Data coordinates to the SVG's pixels, for the marks written beside the chart.
#[derive(Clone, Debug)]
struct Map {
    x: Scale,
    y: Scale,
    /// Pixels of `lo` and `hi` on each axis.
    px: (f64, f64),
    py: (f64, f64),
}

impl Map {
    fn at(&self, x: f64, y: f64) -> (f64, f64) {
        (
            self.px.0 + self.x.frac(x) * (self.px.1 - self.px.0),
            self.py.0 + self.y.frac(y) * (self.py.1 - self.py.0),
        )
    }

    fn x_px(&self, x: f64) -> f64 {
        self.at(x, self.y.lo).0
    }

    fn y_px(&self, y: f64) -> f64 {
        self.at(self.x.lo, y).1
    }

    fn left(&self) -> f64 {
        self.px.0.min(self.px.1)
    }
    fn right(&self) -> f64 {
        self.px.0.max(self.px.1)
    }
    fn top(&self) -> f64 {
        self.py.0.min(self.py.1)
    }
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// A polyline of a chart, drawn by plotters.
struct Line {
    points: Vec<(f64, f64)>,
    colour: (u8, u8, u8),
    width: u32,
}

/// One chart's frame.
struct Frame<'f> {
    title: Option<&'f str>,
    title_size: f64,
    x: Scale,
    y: Scale,
    x_desc: &'f str,
    y_desc: &'f str,
    x_fmt: &'f dyn Fn(f64) -> String,
    y_fmt: &'f dyn Fn(f64) -> String,
    /// Pixels for the tick labels and axis titles, below and left of the plot.
    x_area: u32,
    y_area: u32,
    label_size: f64,
}

/// Plotters' sizes are divided by 1.24 in its SVG; this gives a size in SVG pixels.
fn font(px: f64) -> f64 {
    px * 1.24
}

/// Draws the frame and the lines; returns the map of data to pixels.
fn frame(area: &Area, f: &Frame, lines: &[Line]) -> Result<Map, String> {
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    let mut b = ChartBuilder::on(area);
    b.margin(8)
        .margin_right(16)
        .x_label_area_size(f.x_area)
        .y_label_area_size(f.y_area);
    if let Some(t) = f.title {
        b.caption(t, ("sans-serif", font(f.title_size)).into_font());
    }
    let mut chart = b.build_cartesian_2d(f.x.clone(), f.y.clone()).map_err(e)?;
    let xf = |v: &f64| (f.x_fmt)(*v);
    let yf = |v: &f64| (f.y_fmt)(*v);
    chart
        .configure_mesh()
        .bold_line_style(RGBColor(0xdd, 0xdd, 0xdd))
        .axis_style(RGBColor(0x44, 0x44, 0x44))
        .label_style(("sans-serif", font(f.label_size)))
        .axis_desc_style(("sans-serif", font(f.label_size + 1.0)))
        .x_desc(f.x_desc)
        .y_desc(f.y_desc)
        .x_label_formatter(&xf)
        .y_label_formatter(&yf)
        .draw()
        .map_err(e)?;
    for l in lines {
        if l.points.len() < 2 {
            continue;
        }
        chart
            .draw_series(LineSeries::new(
                l.points.iter().copied(),
                rgb(l.colour).stroke_width(l.width),
            ))
            .map_err(e)?;
    }
    let (x0, y0) = chart.backend_coord(&(f.x.lo, f.y.lo));
    let (x1, y1) = chart.backend_coord(&(f.x.hi, f.y.hi));
    Ok(Map {
        x: f.x.clone(),
        y: f.y.clone(),
        px: (f64::from(x0), f64::from(x1)),
        py: (f64::from(y0), f64::from(y1)),
    })
}

// ---------------------------------------------------------------------------------------------
// The marks written beside plotters' output.

/// SVG elements appended to a plotters document.
#[derive(Default)]
struct Marks(String);

impl Marks {
    fn open(&mut self, class: &str, attrs: &[(&str, String)]) {
        let _ = write!(self.0, "<g class=\"{}\"", esc(class));
        for (k, v) in attrs {
            let _ = write!(self.0, " {k}=\"{}\"", esc(v));
        }
        self.0.push('>');
    }

    fn close(&mut self) {
        self.0.push_str("</g>");
    }

    #[allow(clippy::too_many_arguments)]
    fn line(
        &mut self,
        class: &str,
        (x1, y1): (f64, f64),
        (x2, y2): (f64, f64),
        colour: (u8, u8, u8),
        width: f64,
        dash: Option<&str>,
    ) {
        let _ = write!(
            self.0,
            "<line class=\"{class}\" x1=\"{x1:.1}\" y1=\"{y1:.1}\" x2=\"{x2:.1}\" y2=\"{y2:.1}\" \
             stroke=\"{}\" stroke-width=\"{width}\"",
            hex(colour)
        );
        if let Some(d) = dash {
            let _ = write!(self.0, " stroke-dasharray=\"{d}\"");
        }
        self.0.push_str("/>");
    }

    /// A vertical error bar from `y1` to `y2` at `x`, with caps.
    fn error_bar(
        &mut self,
        class: &str,
        attrs: &[(&str, String)],
        x: f64,
        y1: f64,
        y2: f64,
        c: (u8, u8, u8),
    ) {
        self.open(class, attrs);
        self.line("bar", (x, y1), (x, y2), c, 1.4, None);
        self.line("cap", (x - 4.0, y1), (x + 4.0, y1), c, 1.4, None);
        self.line("cap", (x - 4.0, y2), (x + 4.0, y2), c, 1.4, None);
        self.close();
    }

    #[allow(clippy::too_many_arguments)]
    fn text(
        &mut self,
        class: &str,
        (x, y): (f64, f64),
        anchor: &str,
        size: f64,
        colour: (u8, u8, u8),
        bold: bool,
        text: &str,
    ) {
        let _ = write!(
            self.0,
            "<text class=\"{class}\" x=\"{x:.1}\" y=\"{y:.1}\" text-anchor=\"{anchor}\" \
             font-family=\"sans-serif\" font-size=\"{size}\" fill=\"{}\"{}>{}</text>",
            hex(colour),
            if bold { " font-weight=\"bold\"" } else { "" },
            esc(text)
        );
    }

    /// A marker centred at (x, y): a group translated there (so that its position is its
    /// `transform`), holding the shape.
    #[allow(clippy::too_many_arguments)]
    fn marker(
        &mut self,
        class: &str,
        attrs: &[(&str, String)],
        m: Marker,
        (x, y): (f64, f64),
        r: f64,
        colour: (u8, u8, u8),
        hollow: bool,
    ) {
        let _ = write!(
            self.0,
            "<g class=\"{class}\" transform=\"translate({x:.2} {y:.2})\""
        );
        for (k, v) in attrs {
            let _ = write!(self.0, " {k}=\"{}\"", esc(v));
        }
        let (fill, stroke, sw) = if hollow {
            ("#ffffff".to_string(), hex(colour), 1.8)
        } else {
            (hex(colour), "#ffffff".to_string(), 0.8)
        };
        let _ = write!(
            self.0,
            "><path d=\"{}\" fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"{sw}\"/></g>",
            marker_path(m, r)
        );
    }
}

/// The outline of a marker of radius about `r` around the origin.
fn marker_path(m: Marker, r: f64) -> String {
    let poly = |pts: &[(f64, f64)]| -> String {
        let mut s = String::new();
        for (i, (x, y)) in pts.iter().enumerate() {
            let _ = write!(s, "{}{:.2} {:.2} ", if i == 0 { "M" } else { "L" }, x, y);
        }
        s.push('Z');
        s
    };
    let regular = |n: usize, rr: f64, rot: f64| -> Vec<(f64, f64)> {
        (0..n)
            .map(|i| {
                let a = rot + std::f64::consts::TAU * i as f64 / n as f64;
                (rr * a.cos(), rr * a.sin())
            })
            .collect()
    };
    use std::f64::consts::FRAC_PI_2;
    match m {
        Marker::Circle => format!(
            "M{:.2} 0 A{r:.2} {r:.2} 0 1 0 {r:.2} 0 A{r:.2} {r:.2} 0 1 0 {:.2} 0 Z",
            -r, -r
        ),
        Marker::Square => {
            let s = r * 0.85;
            poly(&[(-s, -s), (s, -s), (s, s), (-s, s)])
        }
        Marker::Triangle => poly(&regular(3, r * 1.2, -FRAC_PI_2)),
        Marker::TriangleDown => poly(&regular(3, r * 1.2, FRAC_PI_2)),
        Marker::Diamond => poly(&regular(4, r * 1.2, 0.0)),
        Marker::Hexagon => poly(&regular(6, r * 1.05, 0.0)),
        Marker::Star => {
            let outer = regular(5, r * 1.35, -FRAC_PI_2);
            let inner = regular(5, r * 0.6, -FRAC_PI_2 + std::f64::consts::PI / 5.0);
            let pts: Vec<(f64, f64)> = outer
                .iter()
                .zip(&inner)
                .flat_map(|(a, b)| [*a, *b])
                .collect();
            poly(&pts)
        }
        Marker::Cross => {
            let (a, b) = (r * 1.1, r * 0.35);
            poly(&[
                (-b, -a),
                (b, -a),
                (b, -b),
                (a, -b),
                (a, b),
                (b, b),
                (b, a),
                (-b, a),
                (-b, b),
                (-a, b),
                (-a, -b),
                (-b, -b),
            ])
        }
    }
}

/// XML escaping of text and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            // Control characters are not allowed in XML 1.0.
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t' | '\r') => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

/// The height of the band at the top of every figure that holds its title (which the page
/// crops away, since it titles the figure itself: [`untitled`]).
pub const HEAD: u32 = 40;

/// Draws with plotters on a `w` x `h` document whose top [`HEAD`] pixels hold `title`; `draw`
/// gets the area below. Then appends the marks.
fn document(
    w: u32,
    h: u32,
    title: &str,
    draw: impl FnOnce(&Area, &mut Marks) -> Result<(), String>,
) -> Result<String, String> {
    let mut buf = String::new();
    let mut marks = Marks::default();
    marks.text(
        "figure-title",
        (14.0, 27.0),
        "start",
        18.0,
        (0x1d, 0x20, 0x26),
        true,
        title,
    );
    {
        let root = SVGBackend::with_string(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (_, body) = root.split_vertically(HEAD);
        draw(&body, &mut marks)?;
        root.present().map_err(|e| e.to_string())?;
    }
    match buf.rfind("</svg>") {
        Some(i) => {
            buf.insert_str(i, &marks.0);
            Ok(buf)
        }
        None => Err("the SVG backend wrote no document".into()),
    }
}

/// `svg` (a figure) without its title band: its `viewBox` starts below [`HEAD`].
pub fn untitled(svg: &str) -> String {
    let Some(i) = svg.find("viewBox=\"0 0 ") else {
        return svg.to_string();
    };
    let start = i + "viewBox=\"".len();
    let Some(len) = svg[start..].find('"') else {
        return svg.to_string();
    };
    let v: Vec<f64> = svg[start..start + len]
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() != 4 || v[3] <= f64::from(HEAD) {
        return svg.to_string();
    }
    let mut out = svg.to_string();
    out.replace_range(
        start..start + len,
        &format!("0 {HEAD} {} {}", v[2], v[3] - f64::from(HEAD)),
    );
    out
}

/// A figure that only says why it has nothing to show.
fn no_data(stem: &str, title: &str, caption: &str, why: &str) -> Figure {
    let (w, h) = (1000u32, 150u32);
    let svg = format!(
        "<svg width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" xmlns=\"http://www.w3.org/2000/svg\">\
         <rect x=\"0.5\" y=\"0.5\" width=\"{}\" height=\"{}\" fill=\"#fafafa\" stroke=\"#cccccc\"/>\
         <text class=\"figure-title\" x=\"14\" y=\"27\" font-family=\"sans-serif\" font-size=\"18\" font-weight=\"bold\" fill=\"#1d2026\">{}</text>\
         <g class=\"no-data\"><text x=\"{}\" y=\"100\" text-anchor=\"middle\" font-family=\"sans-serif\" font-size=\"16\" fill=\"#777777\">no data yet: {}</text></g></svg>",
        w - 1,
        h - 1,
        esc(title),
        w / 2,
        esc(why)
    );
    Figure {
        stem: stem.into(),
        title: title.into(),
        caption: caption.into(),
        svg,
        has_data: false,
    }
}

/// A figure whose drawing failed (a plotters error): it says so rather than failing the report.
fn failed(stem: &str, title: &str, caption: &str, why: String) -> Figure {
    let mut f = no_data(stem, title, caption, "");
    f.svg = f.svg.replace(
        "no data yet: </text>",
        &format!("could not be drawn: {}</text>", esc(&why)),
    );
    f
}

// ---------------------------------------------------------------------------------------------
// Number formats

/// `13.4M`, `850k`, `512`.
pub fn fmt_count(v: f64) -> String {
    let a = v.abs();
    let (x, unit) = if a >= 1e9 {
        (v / 1e9, "G")
    } else if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    format!("{}{unit}", trim_num(x, 3))
}

/// Up to `sig` significant digits, without trailing zeros: `0.25`, `1`, `13.4`.
pub fn trim_num(v: f64, sig: usize) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    if v == 0.0 {
        return "0".into();
    }
    let mag = v.abs().log10().floor() as i32;
    let decimals = (sig as i32 - 1 - mag).clamp(0, 8) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

// ---------------------------------------------------------------------------------------------
// The legend

/// Writes the legend of `keys` (in palette order, grouped by class) from (x, y) down.
fn legend(marks: &mut Marks, pal: &Palette, keys: &[String], x: f64, mut y: f64, notes: &[&str]) {
    marks.open("legend", &[]);
    for class in CLASSES {
        let members: Vec<Style> = pal
            .styles()
            .iter()
            .filter(|s| s.class == class && keys.contains(&s.label))
            .cloned()
            .collect();
        if members.is_empty() {
            continue;
        }
        marks.text(
            "legend-class",
            (x, y),
            "start",
            13.0,
            shade(class_colour(class), -0.25),
            true,
            class_name(class),
        );
        y += 17.0;
        for s in members {
            marks.open("legend-entry", &[("data-series", s.label.clone())]);
            marks.line(
                "",
                (x + 2.0, y - 4.0),
                (x + 24.0, y - 4.0),
                s.colour,
                2.0,
                None,
            );
            marks.marker("", &[], s.marker, (x + 13.0, y - 4.0), 4.5, s.colour, false);
            marks.text(
                "",
                (x + 32.0, y),
                "start",
                12.0,
                (0x22, 0x22, 0x22),
                false,
                &ellipsis(&s.label, 30),
            );
            marks.close();
            y += 16.0;
        }
        y += 6.0;
    }
    for n in notes {
        marks.text(
            "legend-note",
            (x, y + 4.0),
            "start",
            11.0,
            (0x55, 0x55, 0x55),
            false,
            n,
        );
        y += 15.0;
    }
    marks.close();
}

/// The height the legend of `n` series in `classes` classes takes, with `notes` lines.
fn legend_height(n: usize, classes: usize, notes: usize) -> f64 {
    classes as f64 * 23.0 + n as f64 * 16.0 + notes as f64 * 15.0 + 10.0
}

fn ellipsis(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

fn classes_of(pal: &Palette, keys: &[String]) -> usize {
    CLASSES
        .iter()
        .filter(|c| {
            pal.styles()
                .iter()
                .any(|s| s.class == **c && keys.contains(&s.label))
        })
        .count()
}

// ---------------------------------------------------------------------------------------------
// Figure 2

struct Point2 {
    key: String,
    label: String,
    layers: usize,
    params: f64,
    mean: f64,
    sd: f64,
    n: usize,
    expected: usize,
}

/// Figure 2: test perplexity against trainable parameters (log x), one series per mechanism
/// (and other swept settings) over depth, ±1 sd over seeds where more than one run counts.
pub fn figure2(input: &ReportInput, pal: &Palette) -> Figure {
    let title = "Figure 2: test perplexity against parameter count";
    let caption = "Test perplexity of the best-validation checkpoint against the number of \
                   trainable parameters (logarithmic axis), one line per mechanism through its \
                   depths (the number beside a point is its number of layers), coloured by class \
                   as in the paper (linear only, dot-product only, both) and purple for other \
                   mechanisms. A point is the mean over the model's finished seeds; its error bar \
                   is ±1 sample standard deviation, drawn where more than one seed finished. A \
                   hollow point has fewer finished seeds than planned.";
    let points: Vec<Point2> = input
        .aggregate
        .iter()
        .filter_map(|a| {
            let p = a.parameters? as f64;
            let s = a.test_ppl?;
            (p > 0.0 && s.mean.is_finite()).then(|| Point2 {
                key: series_key(&a.model),
                label: a.model.label(),
                layers: a.model.layers,
                params: p,
                mean: s.mean,
                sd: if s.sd.is_finite() { s.sd } else { 0.0 },
                n: s.n,
                expected: a.expected,
            })
        })
        .collect();
    if points.is_empty() {
        let why = if input.aggregate.is_empty() {
            "no model has a finished run"
        } else {
            "no model has both a parameter count and a test perplexity"
        };
        return no_data(FIG2, title, caption, why);
    }
    let mut series: BTreeMap<String, Vec<&Point2>> = BTreeMap::new();
    for p in &points {
        series.entry(p.key.clone()).or_default().push(p);
    }
    for v in series.values_mut() {
        v.sort_by(|a, b| a.layers.cmp(&b.layers).then(a.params.total_cmp(&b.params)));
    }
    let keys: Vec<String> = pal
        .styles()
        .iter()
        .map(|s| s.label.clone())
        .filter(|k| series.contains_key(k))
        .collect();
    let notes = [
        "number beside a point: layers",
        "error bar: ±1 sd over seeds (n > 1)",
        "hollow: fewer seeds than planned",
        "same size: spread a few pixels apart",
    ];
    let legend_h = legend_height(keys.len(), classes_of(pal, &keys), notes.len());
    let (w, h) = (1000u32, HEAD + (legend_h + 30.0).max(580.0).ceil() as u32);
    let xs: Vec<f64> = points.iter().map(|p| p.params).collect();
    let ys: Vec<f64> = points
        .iter()
        .flat_map(|p| [p.mean - p.sd, p.mean + p.sd])
        .collect();
    let x = Scale::log(&xs, 0.06);
    let y = Scale::linear(&ys, 6, 0.08);
    // Points of one depth with (almost) the same parameter count are spread sideways, a few
    // pixels apart in the palette's order, so that their error bars do not hide each other.
    let order = |k: &str| pal.styles().iter().position(|s| s.label == k).unwrap_or(0);
    let mut dodge: BTreeMap<(String, usize), f64> = BTreeMap::new();
    for p in &points {
        let mut cluster: Vec<&Point2> = points
            .iter()
            .filter(|q| q.layers == p.layers && (q.params / p.params).log10().abs() < 0.002)
            .collect();
        cluster.sort_by_key(|q| order(&q.key));
        let i = cluster.iter().position(|q| q.key == p.key).unwrap_or(0);
        let dx = (i as f64 - (cluster.len() - 1) as f64 / 2.0) * 7.0;
        dodge.insert((p.key.clone(), p.layers), dx);
    }
    let svg = document(w, h, title, |root, marks| {
        let (plot, _) = root.split_horizontally(740);
        let fr = Frame {
            title: None,
            title_size: 17.0,
            x,
            y,
            x_desc: "trainable parameters (log scale)",
            y_desc: "test perplexity",
            x_fmt: &fmt_count,
            y_fmt: &|v| trim_num(v, 4),
            x_area: 48,
            y_area: 64,
            label_size: 12.0,
        };
        let map = frame(&plot, &fr, &[])?;
        let at = |p: &Point2| {
            let (x, y) = map.at(p.params, p.mean);
            (
                x + dodge
                    .get(&(p.key.clone(), p.layers))
                    .copied()
                    .unwrap_or(0.0),
                y,
            )
        };
        marks.open("lines", &[]);
        for (k, pts) in &series {
            if pts.len() < 2 {
                continue;
            }
            let d: Vec<String> = pts
                .iter()
                .map(|p| {
                    let (x, y) = at(p);
                    format!("{x:.2},{y:.2}")
                })
                .collect();
            let _ = write!(
                marks.0,
                "<polyline class=\"series-line\" data-series=\"{}\" points=\"{}\" fill=\"none\" \
                 stroke=\"{}\" stroke-width=\"2\" stroke-linejoin=\"round\"/>",
                esc(k),
                d.join(" "),
                hex(pal.style(k).colour)
            );
        }
        marks.close();
        marks.open("points", &[]);
        for (k, pts) in &series {
            let st = pal.style(k);
            marks.open("series", &[("data-series", k.clone())]);
            for p in pts {
                let (px, py) = at(p);
                let attrs = [
                    ("data-model", p.label.clone()),
                    ("data-layers", p.layers.to_string()),
                    ("data-params", format!("{}", p.params)),
                    ("data-ppl", format!("{}", p.mean)),
                    ("data-n", p.n.to_string()),
                    ("data-dx", format!("{:.2}", px - map.at(p.params, p.mean).0)),
                ];
                if p.n > 1 {
                    let (_, y1) = map.at(p.params, p.mean - p.sd);
                    let (_, y2) = map.at(p.params, p.mean + p.sd);
                    marks.error_bar("errorbar", &attrs, px, y1, y2, st.colour);
                }
                marks.marker(
                    "point",
                    &attrs,
                    st.marker,
                    (px, py),
                    5.0,
                    st.colour,
                    p.n < p.expected,
                );
                marks.text(
                    "depth",
                    (px + 7.0, py - 6.0),
                    "start",
                    10.0,
                    shade(st.colour, -0.3),
                    false,
                    &p.layers.to_string(),
                );
            }
            marks.close();
        }
        marks.close();
        legend(marks, pal, &keys, 752.0, f64::from(HEAD) + 24.0, &notes);
        Ok(())
    });
    match svg {
        Ok(svg) => Figure {
            stem: FIG2.into(),
            title: title.into(),
            caption: caption.into(),
            svg,
            has_data: true,
        },
        Err(e) => failed(FIG2, title, caption, e),
    }
}

// ---------------------------------------------------------------------------------------------
// Figure 4

/// Figure 4: the training step's time (median over rounds, IQR bars) and planned memory of
/// each model relative to the reference mechanism at the same depth.
pub fn figure4(input: &ReportInput, pal: &Palette) -> Figure {
    let reference = input.reference.clone().unwrap_or_else(|| {
        input
            .timing
            .first()
            .map(|t| t.reference.clone())
            .unwrap_or_else(|| "the reference".into())
    });
    let title = format!("Figure 4: training-step time and memory relative to {reference}");
    let caption = format!(
        "Each model's training step (forward, backward, clipping, Adam) against {reference}'s at \
         the same depth, measured alternately in one process. Top: time ratio, the median over \
         rounds with its interquartile range as the error bar. Bottom: ratio of the planned \
         memory (workspace, parameters, gradients, Adam state). The dashed line is {reference} = \
         1. Points are spread sideways within a depth, one position per mechanism."
    );
    let recs: Vec<&super::TimingRecord> = input
        .timing
        .iter()
        .filter(|t| t.time_ratio.median.is_finite() || t.memory_ratio.is_finite())
        .collect();
    if recs.is_empty() {
        return no_data(FIG4, &title, &caption, "no timing record");
    }
    let mut depths: Vec<usize> = recs.iter().map(|t| t.model.layers).collect();
    depths.sort();
    depths.dedup();
    let present: Vec<String> = recs.iter().map(|t| series_key(&t.model)).collect();
    let keys: Vec<String> = pal
        .styles()
        .iter()
        .map(|s| s.label.clone())
        .filter(|k| present.contains(k))
        .collect();
    let k = keys.len().max(1);
    let width = (0.72 / k as f64).min(0.16);
    let xpos = |t: &super::TimingRecord| -> f64 {
        let j = depths
            .iter()
            .position(|d| *d == t.model.layers)
            .unwrap_or(0);
        let i = keys
            .iter()
            .position(|x| *x == series_key(&t.model))
            .unwrap_or(0);
        (j + 1) as f64 + (i as f64 - (k - 1) as f64 / 2.0) * width
    };
    let notes = ["dashed: reference = 1", "bar: interquartile range"];
    let legend_h = legend_height(keys.len(), classes_of(pal, &keys), notes.len());
    let (w, h) = (1000u32, HEAD + (legend_h + 30.0).max(700.0).ceil() as u32);
    let xs: Vec<f64> = (0..depths.len()).map(|j| (j + 1) as f64).collect();
    let x = Scale {
        lo: 0.5,
        hi: depths.len() as f64 + 0.5,
        log: false,
        ticks: xs,
    };
    let depth_fmt = |v: f64| -> String {
        let j = v.round() as usize;
        match depths.get(j.wrapping_sub(1)) {
            Some(d) if (v - j as f64).abs() < 1e-6 => {
                format!("{d} layer{}", if *d == 1 { "" } else { "s" })
            }
            _ => String::new(),
        }
    };
    let mut time_y: Vec<f64> = vec![1.0];
    let mut mem_y: Vec<f64> = vec![1.0];
    for t in &recs {
        for v in [t.time_ratio.median, t.time_ratio.q1, t.time_ratio.q3] {
            if v.is_finite() {
                time_y.push(v);
            }
        }
        if t.memory_ratio.is_finite() {
            mem_y.push(t.memory_ratio);
        }
    }
    let svg = document(w, h, &title, |body, marks| {
        let (left, _) = body.split_horizontally(740);
        let (top, bottom) = left.split_vertically((h - HEAD) / 2);
        for (panel, area, ys) in [(0, &top, &time_y), (1, &bottom, &mem_y)] {
            let y = Scale::linear(ys, 6, 0.1);
            let (ptitle, ydesc) = if panel == 0 {
                ("training-step time", "time / reference")
            } else {
                ("planned memory", "memory / reference")
            };
            let fr = Frame {
                title: Some(ptitle),
                title_size: 15.0,
                x: x.clone(),
                y,
                x_desc: "",
                y_desc: ydesc,
                x_fmt: &depth_fmt,
                y_fmt: &|v| trim_num(v, 3),
                x_area: 30,
                y_area: 64,
                label_size: 12.0,
            };
            let map = frame(area, &fr, &[])?;
            let (l, r) = (map.left(), map.right());
            let y1 = map.y_px(1.0);
            marks.line(
                "reference",
                (l, y1),
                (r, y1),
                (0x44, 0x44, 0x44),
                1.2,
                Some("6 4"),
            );
            marks.text(
                "reference-label",
                (r - 4.0, y1 - 5.0),
                "end",
                11.0,
                (0x44, 0x44, 0x44),
                false,
                &format!("{reference} = 1"),
            );
            marks.open(if panel == 0 { "time" } else { "memory" }, &[]);
            for t in &recs {
                let key = series_key(&t.model);
                let st = pal.style(&key);
                let xv = xpos(t);
                let attrs = [
                    ("data-model", t.model.label()),
                    ("data-layers", t.model.layers.to_string()),
                ];
                if panel == 0 {
                    let q = t.time_ratio;
                    if !q.median.is_finite() {
                        continue;
                    }
                    if q.q1.is_finite() && q.q3.is_finite() {
                        let (px, y1) = map.at(xv, q.q1);
                        let (_, y2) = map.at(xv, q.q3);
                        marks.error_bar("iqr", &attrs, px, y1, y2, st.colour);
                    }
                    marks.marker(
                        "point",
                        &attrs,
                        st.marker,
                        map.at(xv, q.median),
                        4.5,
                        st.colour,
                        false,
                    );
                } else {
                    if !t.memory_ratio.is_finite() {
                        continue;
                    }
                    marks.marker(
                        "point",
                        &attrs,
                        st.marker,
                        map.at(xv, t.memory_ratio),
                        4.5,
                        st.colour,
                        false,
                    );
                }
            }
            marks.close();
        }
        legend(marks, pal, &keys, 752.0, f64::from(HEAD) + 24.0, &notes);
        Ok(())
    });
    match svg {
        Ok(svg) => Figure {
            stem: FIG4.into(),
            title,
            caption,
            svg,
            has_data: true,
        },
        Err(e) => failed(FIG4, &title, &caption, e),
    }
}

// ---------------------------------------------------------------------------------------------
// Learning-rate isolation

/// Stage A of each tuned model: validation perplexity against the learning-rate scale (log x),
/// the chosen scale ringed, a failed or diverged scale marked on the top edge, a choice at the
/// edge of the grid flagged.
pub fn lr_isolation(input: &ReportInput) -> Figure {
    let title = "Learning-rate isolation (stage A)";
    let caption = "For each tuned model, the best validation perplexity of each learning-rate \
                   scale of the grid (logarithmic axis); the chosen scale is ringed. × on the top \
                   edge: the run at that scale failed or diverged. \"chosen at the edge\" (red): \
                   the best scale is the smallest or the largest of the grid, so the grid should \
                   be widened.";
    if input.choices.is_empty() {
        return no_data(
            LR,
            title,
            caption,
            "no model has finished its learning-rate tuning",
        );
    }
    let cols = input.choices.len().clamp(1, 4);
    let rows = input.choices.len().div_ceil(cols);
    let (pw, ph) = (250u32, 230u32);
    let (w, h) = (1000u32, HEAD + rows as u32 * ph + 10);
    let svg = document(w, h, title, |root, marks| {
        let area = root.margin(5, 5, 0, 0);
        let panels = area.split_evenly((rows, 4));
        let _ = pw;
        for (c, panel) in input.choices.iter().zip(panels.iter()) {
            let ok: Vec<(f64, f64)> = c
                .candidates
                .iter()
                .filter_map(|(s, v)| {
                    let v = (*v)?;
                    (s.is_finite() && *s > 0.0 && v.is_finite()).then_some((*s, v))
                })
                .collect();
            let scales: Vec<f64> = c
                .candidates
                .iter()
                .map(|(s, _)| *s)
                .chain(std::iter::once(c.lr_scale))
                .filter(|s| s.is_finite() && *s > 0.0)
                .collect();
            let label = c.model.label();
            marks.open(
                "lr-panel",
                &[
                    ("data-model", label.clone()),
                    ("data-at-edge", c.at_edge.to_string()),
                ],
            );
            if ok.is_empty() || scales.is_empty() {
                let (x0, y0) = panel.get_base_pixel();
                let (pw, ph) = panel.dim_in_pixel();
                let cx = f64::from(x0) + f64::from(pw) / 2.0;
                let cy = f64::from(y0) + f64::from(ph) / 2.0;
                marks.text(
                    "",
                    (cx, cy - 12.0),
                    "middle",
                    13.0,
                    (0x22, 0x22, 0x22),
                    true,
                    &ellipsis(&label, 34),
                );
                marks.text(
                    "no-data",
                    (cx, cy + 10.0),
                    "middle",
                    12.0,
                    (0x77, 0x77, 0x77),
                    false,
                    "no finished candidate yet",
                );
                marks.close();
                continue;
            }
            let mut x = Scale::log(&scales, 0.12);
            let mut distinct = scales.clone();
            distinct.sort_by(f64::total_cmp);
            distinct.dedup_by(|a, b| (*a - *b).abs() <= 1e-12 * b.abs());
            if distinct.len() <= 7 {
                x.ticks = distinct;
            }
            let ys: Vec<f64> = ok.iter().map(|p| p.1).collect();
            let y = Scale::linear(&ys, 4, 0.12);
            let mut line = ok.clone();
            line.sort_by(|a, b| a.0.total_cmp(&b.0));
            let colour = (0x33, 0x55, 0x88);
            let ptitle = ellipsis(&label, 30);
            let fr = Frame {
                title: Some(&ptitle),
                title_size: 13.0,
                x,
                y,
                x_desc: "LR scale",
                y_desc: "valid ppl",
                x_fmt: &|v| trim_num(v, 3),
                y_fmt: &|v| trim_num(v, 4),
                x_area: 36,
                y_area: 48,
                label_size: 10.5,
            };
            let map = frame(
                panel,
                &fr,
                &[Line {
                    points: line.clone(),
                    colour,
                    width: 1,
                }],
            )?;
            for (s, v) in &line {
                marks.marker(
                    "candidate",
                    &[("data-lr", format!("{s}")), ("data-ppl", format!("{v}"))],
                    Marker::Circle,
                    map.at(*s, *v),
                    3.0,
                    colour,
                    false,
                );
            }
            for (s, v) in &c.candidates {
                if v.is_none_or(|v| !v.is_finite()) && s.is_finite() && *s > 0.0 {
                    let px = map.x_px(*s);
                    let top = map.top() + 8.0;
                    marks.text(
                        "failed-candidate",
                        (px, top + 4.0),
                        "middle",
                        13.0,
                        (0xc0, 0x39, 0x2b),
                        true,
                        "×",
                    );
                }
            }
            if let Some((s, v)) = line
                .iter()
                .find(|(s, _)| (s - c.lr_scale).abs() <= 1e-9 * c.lr_scale.abs())
            {
                let (px, py) = map.at(*s, *v);
                let _ = write!(
                    marks.0,
                    "<circle class=\"chosen\" data-lr=\"{s}\" cx=\"{px:.2}\" cy=\"{py:.2}\" r=\"7\" \
                     fill=\"none\" stroke=\"{}\" stroke-width=\"2\"/>",
                    if c.at_edge { "#c0392b" } else { "#222222" }
                );
            }
            if c.at_edge {
                marks.text(
                    "edge-flag",
                    // Top centre: with the choice at one end of the grid, the worst scale (the
                    // highest point) is usually at the other end, not in the middle.
                    ((map.left() + map.right()) / 2.0, map.top() + 12.0),
                    "middle",
                    11.0,
                    (0xc0, 0x39, 0x2b),
                    true,
                    "chosen at the edge",
                );
            }
            marks.close();
        }
        Ok(())
    });
    match svg {
        Ok(svg) => Figure {
            stem: LR.into(),
            title: title.into(),
            caption: caption.into(),
            svg,
            has_data: true,
        },
        Err(e) => failed(LR, title, caption, e),
    }
}

// ---------------------------------------------------------------------------------------------
// Validation curves

/// Validation perplexity (log y) against the training step of every chosen run, one panel per
/// depth, a line per run in its series' style, the series' marker on its last point.
///
/// Where no run validated twice (a short budget validates only at the end), a curve of single
/// points says nothing: the lines are then the training perplexity (`exp` of the loss averaged
/// over [`super::TRAIN_WINDOW`] steps) and the marker is each run's last validation, and the
/// title and caption say so.
pub fn curves(input: &ReportInput, pal: &Palette) -> Figure {
    let validated = input.curves.iter().any(|c| {
        c.points
            .iter()
            .filter(|(_, v)| v.is_finite() && *v > 0.0)
            .count()
            > 1
    });
    let (title, caption, y_desc) = if validated {
        (
            "Validation curves of the chosen runs".to_string(),
            "Validation perplexity (logarithmic axis) against the training step for every run \
             counted in the results, one panel per depth; a line per run (seeds of a model share \
             its colour), the model's marker on its last validation."
                .to_string(),
            "validation perplexity",
        )
    } else {
        (
            "Training curves of the chosen runs".to_string(),
            format!(
                "The runs validated at most once (at the end), so the lines are the training \
                 perplexity (logarithmic axis): exp of the training loss averaged over the last \
                 {} steps, against the step, for every run counted in the results, one panel per \
                 depth (seeds of a model share its colour). The model's marker is the run's final \
                 validation perplexity, at its step. Training perplexity includes dropout, so it \
                 lies above the validation figure.",
                super::TRAIN_WINDOW
            ),
            "perplexity",
        )
    };
    let (title, caption) = (title.as_str(), caption.as_str());
    // (curve, line points, the marker's point)
    type Drawn<'a> = (&'a super::Curve, Vec<(f64, f64)>, Option<(f64, f64)>);
    let curves: Vec<Drawn> = input
        .curves
        .iter()
        .map(|c| {
            let valid: Vec<(f64, f64)> = c
                .points
                .iter()
                .filter(|(_, v)| v.is_finite() && *v > 0.0)
                .map(|(s, v)| (*s as f64, *v))
                .collect();
            if validated {
                let last = valid.last().copied();
                (c, valid, last)
            } else {
                let train: Vec<(f64, f64)> = c
                    .train
                    .iter()
                    .filter(|(_, v)| v.is_finite() && *v > 0.0)
                    .map(|(s, v)| (*s as f64, *v))
                    .collect();
                (c, train, valid.last().copied())
            }
        })
        .filter(|(_, p, m)| !p.is_empty() || m.is_some())
        .collect();
    if curves.is_empty() {
        return no_data(CURVES, title, caption, "no validation recorded");
    }
    let mut depths: Vec<usize> = curves.iter().map(|(c, _, _)| c.model.layers).collect();
    depths.sort();
    depths.dedup();
    let present: Vec<String> = curves
        .iter()
        .map(|(c, _, _)| series_key(&c.model))
        .collect();
    let keys: Vec<String> = pal
        .styles()
        .iter()
        .map(|s| s.label.clone())
        .filter(|k| present.contains(k))
        .collect();
    let cols = if depths.len() > 1 { 2 } else { 1 };
    let rows = depths.len().div_ceil(cols);
    let legend_h = legend_height(keys.len(), classes_of(pal, &keys), 0);
    let (w, h) = (
        1000u32,
        HEAD + ((rows as u32 * 320) as f64).max(legend_h + 20.0).ceil() as u32,
    );
    let svg = document(w, h, title, |root, marks| {
        let (left, _) = root.split_horizontally(740);
        let panels = left.split_evenly((rows, cols));
        for (d, panel) in depths.iter().zip(panels.iter()) {
            let mine: Vec<&Drawn> = curves
                .iter()
                .filter(|(c, _, _)| c.model.layers == *d)
                .collect();
            let xs: Vec<f64> = mine
                .iter()
                .flat_map(|(_, p, m)| p.iter().chain(m.iter()).map(|q| q.0))
                .collect();
            let ys: Vec<f64> = mine
                .iter()
                .flat_map(|(_, p, m)| p.iter().chain(m.iter()).map(|q| q.1))
                .collect();
            let (xlo, xhi) = min_max(&xs);
            let x = if xhi > xlo {
                Scale {
                    lo: xlo.min(0.0),
                    hi: xhi * 1.03,
                    log: false,
                    ticks: nice_ticks(xlo.min(0.0), xhi * 1.03, 5),
                }
            } else {
                Scale::linear(&xs, 4, 0.1)
            };
            let y = Scale::log(&ys, 0.05);
            let lines: Vec<Line> = mine
                .iter()
                .map(|(c, p, _)| Line {
                    points: p.clone(),
                    colour: pal.style(&series_key(&c.model)).colour,
                    width: 1,
                })
                .collect();
            let ptitle = format!("{d} layer{}", if *d == 1 { "" } else { "s" });
            let fr = Frame {
                title: Some(&ptitle),
                title_size: 14.0,
                x,
                y,
                x_desc: "step",
                y_desc,
                x_fmt: &fmt_count,
                y_fmt: &|v| trim_num(v, 3),
                x_area: 40,
                y_area: 60,
                label_size: 11.0,
            };
            let map = frame(panel, &fr, &lines)?;
            marks.open("curves", &[("data-layers", d.to_string())]);
            for (c, _, m) in &mine {
                let st = pal.style(&series_key(&c.model));
                if let Some(last) = m {
                    marks.marker(
                        "curve-end",
                        &[
                            ("data-run", c.name.clone()),
                            ("data-seed", c.seed.to_string()),
                        ],
                        st.marker,
                        map.at(last.0, last.1),
                        4.0,
                        st.colour,
                        false,
                    );
                }
            }
            marks.close();
        }
        legend(marks, pal, &keys, 752.0, f64::from(HEAD) + 24.0, &[]);
        Ok(())
    });
    match svg {
        Ok(svg) => Figure {
            stem: CURVES.into(),
            title: title.into(),
            caption: caption.into(),
            svg,
            has_data: true,
        },
        Err(e) => failed(CURVES, title, caption, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks() {
        assert_eq!(
            nice_ticks(0.0, 10.0, 5),
            vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
        );
        assert_eq!(log_ticks(1e5, 1e8), vec![1e5, 1e6, 1e7, 1e8]);
        assert_eq!(
            log_ticks(0.1, 10.0),
            vec![0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0]
        );
        // Within less than a decade: round linear ticks.
        let t = log_ticks(12e6, 28e6);
        assert!(
            t.len() >= 3 && t.iter().all(|v| *v >= 12e6 && *v <= 28e6),
            "{t:?}"
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(fmt_count(13_400_000.0), "13.4M");
        assert_eq!(fmt_count(600.0), "600");
        assert_eq!(trim_num(0.25, 3), "0.25");
        assert_eq!(trim_num(1.0, 3), "1");
        assert_eq!(trim_num(123.456, 4), "123.5");
    }
}
