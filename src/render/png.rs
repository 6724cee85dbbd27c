//! Rasterising SVG to PNG with resvg (the renderer of the linebender project: pure Rust, no
//! system libraries, fonts found through fontdb).

use super::DrawError;
use resvg::{tiny_skia, usvg};

/// The longest side of a PNG, in pixels: larger pictures are scaled down to it.
pub const MAX_SIDE: f32 = 8192.0;

/// Renders `svg` at `scale` pixels per SVG unit (less if that would exceed [`MAX_SIDE`]).
///
/// Text needs a monospace font installed: the SVG asks for DejaVu Sans Mono, then any
/// monospace face the system has. Without one, boxes and wires are drawn and labels are not.
/// `sans-serif` text (the sweep report's figures) is drawn in DejaVu Sans when installed.
pub fn render(svg: &str, scale: f32) -> Result<Vec<u8>, DrawError> {
    let mut opt = usvg::Options::default();
    let db = opt.fontdb_mut();
    db.load_system_fonts();
    // The generic `monospace` family: a face the system really has, chosen deterministically.
    let mut mono: Vec<String> = db
        .faces()
        .filter(|f| f.monospaced)
        .filter_map(|f| f.families.first().map(|(name, _)| name.clone()))
        .collect();
    mono.sort();
    let preferred = mono
        .iter()
        .find(|n| n.as_str() == "DejaVu Sans Mono")
        .or(mono.first())
        .cloned();
    if let Some(family) = preferred {
        db.set_monospace_family(family);
    }
    // The generic `sans-serif` family (the figures of `diagc sweep report`): DejaVu Sans, else
    // any proportional face the system has.
    let mut sans: Vec<String> = db
        .faces()
        .filter(|f| !f.monospaced)
        .filter_map(|f| f.families.first().map(|(name, _)| name.clone()))
        .collect();
    sans.sort();
    let preferred = sans
        .iter()
        .find(|n| n.as_str() == "DejaVu Sans")
        .or(sans.first())
        .cloned();
    if let Some(family) = preferred {
        db.set_sans_serif_family(family);
    }
    let tree = usvg::Tree::from_str(svg, &opt).map_err(|e| DrawError::Png(e.to_string()))?;
    let size = tree.size();
    let longest = size.width().max(size.height()).max(1.0);
    let scale = scale.min(MAX_SIDE / longest).max(0.01);
    let (w, h) = (
        (size.width() * scale).ceil().max(1.0) as u32,
        (size.height() * scale).ceil().max(1.0) as u32,
    );
    let mut pixmap = tiny_skia::Pixmap::new(w, h)
        .ok_or_else(|| DrawError::Png(format!("cannot allocate a {w} x {h} image")))?;
    pixmap.fill(tiny_skia::Color::WHITE);
    resvg::render(
        &tree,
        tiny_skia::Transform::from_scale(scale, scale),
        &mut pixmap.as_mut(),
    );
    pixmap
        .encode_png()
        .map_err(|e| DrawError::Png(e.to_string()))
}
