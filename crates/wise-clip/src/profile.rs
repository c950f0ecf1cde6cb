//! Opt-in timing of the model's parts on any device: `WISE_PROFILE=1`.
//!
//! A GPU runs kernels asynchronously, so a wall clock around a forward only measures the
//! queuing. With profiling on, each timed part waits for the device before and after
//! (`Device::synchronize`), so its time is its kernels' time; the waits themselves slow
//! the run down, so throughput is measured with profiling off. Off, a part costs one
//! check of a flag.
//!
//! ```
//! # use candle_core::{Device, Tensor};
//! let x = Tensor::ones(4, candle_core::DType::F32, &Device::Cpu)?;
//! let y = wise_clip::profile::time("double", &x, || x.affine(2.0, 0.0))?;
//! # assert_eq!(y.to_vec1::<f32>()?, [2.0; 4]);
//! for (part, calls, seconds) in wise_clip::profile::take() {
//!     println!("{part}: {calls} calls, {seconds:.3} s");
//! }
//! # Ok::<(), candle_core::Error>(())
//! ```

use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use candle_core::Tensor;

/// `(part, calls, seconds)` since the last [`take`].
static TIMES: Mutex<Vec<(&'static str, u64, f64)>> = Mutex::new(Vec::new());

/// Whether `WISE_PROFILE` is set (to anything but `0`).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("WISE_PROFILE").is_ok_and(|v| v != "0"))
}

/// Runs `f`, and when profiling adds its time (on `on`'s device) to `part`.
pub fn time<T>(
    part: &'static str,
    on: &Tensor,
    f: impl FnOnce() -> candle_core::Result<T>,
) -> candle_core::Result<T> {
    if !enabled() {
        return f();
    }
    on.device().synchronize()?;
    let start = Instant::now();
    let out = f()?;
    on.device().synchronize()?;
    let seconds = start.elapsed().as_secs_f64();
    let mut times = TIMES.lock().unwrap_or_else(|e| e.into_inner());
    match times.iter_mut().find(|(p, _, _)| *p == part) {
        Some((_, calls, total)) => {
            *calls += 1;
            *total += seconds;
        }
        None => times.push((part, 1, seconds)),
    }
    Ok(out)
}

/// The parts timed since the last call, in first-seen order, and a fresh start.
pub fn take() -> Vec<(&'static str, u64, f64)> {
    std::mem::take(&mut *TIMES.lock().unwrap_or_else(|e| e.into_inner()))
}
