//! The embedded font.
//!
//! plotters (with its `ab_glyph` feature) draws text only with fonts registered from bytes,
//! never with the system's, so the figure renders the same on a bare CI machine as on a
//! desktop. DejaVu Sans covers Latin, Greek (α) and Cyrillic; its licence (Bitstream Vera
//! terms, DejaVu changes public domain) is in `assets/LICENSE_DEJAVU`.

use std::sync::OnceLock;

use ab_glyph::FontRef;
use plotters::style::FontStyle;

/// DejaVu Sans 2.35 as shipped in matplotlib's wheel (`mpl-data/fonts/ttf/DejaVuSans.ttf`).
static DEJAVU_SANS: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Registers DejaVu Sans as plotters' "sans-serif" (all styles fall back to it); once per
/// process, safe to call from anywhere before drawing.
pub fn register() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font("sans-serif", FontStyle::Normal, DEJAVU_SANS)
                .map_err(|_| "the embedded DejaVu Sans font could not be parsed".to_string())
        })
        .clone()
}

/// The same font for [`crate::crisp_text::CrispText`], which draws bitmap text itself.
pub(crate) fn font_ref() -> Result<FontRef<'static>, String> {
    FontRef::try_from_slice(DEJAVU_SANS).map_err(|e| format!("the embedded DejaVu Sans font: {e}"))
}
