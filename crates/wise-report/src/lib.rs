//! Reports on a WiSE-FT α sweep: reads the results file that `wise eval --results` appends
//! to and draws the paper's Figure 1 — accuracy on the reference dataset (the one fine-tuned
//! for) against mean accuracy under distribution shift, logit-scaled, with the α curve from
//! the zero-shot to the fine-tuned model — plus a Markdown table of the same numbers.
//!
//! The figure is how WiSE-FT's claim is checked: the curve should bulge above the straight
//! line between its two ends, i.e. some α beats both models under shift at little or no cost
//! on the reference.
//!
//! ```no_run
//! # fn main() -> Result<(), wise_report::ReportError> {
//! let results = wise_report::read_results("results.jsonl".as_ref())?;
//! wise_report::plot(&results, "ImageNet", None, "wiseft.png".as_ref())?;
//! println!("{}", wise_report::report_markdown(&results, "ImageNet", None)?);
//! # Ok(()) }
//! ```
//!
//! Everything renders with an embedded font ([`fonts`]), so no system fonts are needed.

mod crisp_text;
mod error;
pub mod fonts;
mod labels;
pub mod logit;
mod plot;
mod report;
mod results;
mod selection;
mod write;

pub use error::{ReportError, Result};
pub use plot::{plot, plot_with, render, PlotOptions};
pub use report::{render_markdown, report_markdown};
pub use results::{read_results, Record, Results, Score};
pub use selection::{format_alpha, Point, Selection, Skipped};
pub use write::write_atomic;
