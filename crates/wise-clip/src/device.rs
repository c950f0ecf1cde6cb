//! Choosing the device (`cpu`, `cuda[:N]`, `metal`) and the compute dtype that goes with it.

use candle_core::{DType, Device};

use crate::{Error, Result};

/// `cpu`, `cuda`, `cuda:N` or `metal`. An accelerator this build was not compiled for is
/// an error that says which cargo feature to enable.
pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = spec.trim().to_ascii_lowercase();
    let (kind, ordinal) = match spec.split_once(':') {
        Some((k, n)) => {
            let n = n
                .parse::<usize>()
                .map_err(|_| Error::Invalid(format!("device '{spec}': '{n}' is not a device number")))?;
            (k.to_string(), n)
        }
        None => (spec.clone(), 0),
    };
    match kind.as_str() {
        "cpu" => Ok(Device::Cpu),
        "cuda" if cfg!(feature = "cuda") => cuda_device(ordinal),
        "metal" if cfg!(feature = "metal") => Ok(Device::new_metal(ordinal)?),
        "cuda" | "metal" => Err(Error::Invalid(format!(
            "device '{spec}': this wise was built without the `{kind}` feature \
             (cargo build --release --features {kind})"
        ))),
        _ => Err(Error::Invalid(format!("device '{spec}': expected cpu, cuda[:N] or metal"))),
    }
}

/// A CUDA device set up for wise's one stream of work:
/// - its memory pool keeps what is freed (release threshold `u64::MAX`). At the default, 0,
///   the pool hands all free memory back to the driver at every synchronisation (each
///   loss read back, each timed step), so every step allocates its activations from the
///   driver again; PyTorch's caching allocator keeps them.
/// - no cross-stream event tracking: candle queues all work on one stream, and with
///   tracking on cudarc creates two events per allocation and records and waits on them
///   for every kernel argument.
///
/// `WISE_CUDA_ALLOCATOR=candle` keeps candle's settings (to measure the difference).
#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize) -> Result<Device> {
    use candle_core::cuda_backend::cudarc::driver::{result, sys};
    let device = Device::new_cuda(ordinal)?;
    if std::env::var("WISE_CUDA_ALLOCATOR").is_ok_and(|v| v == "candle") {
        return Ok(device);
    }
    let Device::Cuda(cuda) = &device else { unreachable!("Device::new_cuda gives a CUDA device") };
    // SAFETY: before any tensor of this device exists (the setting applies to those created
    // after it), and wise uses no stream but the device's own: no use of a tensor needs
    // ordering against another stream.
    unsafe { cuda.disable_event_tracking() };
    let cu_device = cuda.cuda_stream().context().cu_device();
    // SAFETY: `cu_device` is this context's device, and the release threshold is a u64.
    let kept = unsafe {
        result::device::get_mem_pool(cu_device).and_then(|pool| {
            let mut threshold = u64::MAX;
            let attr = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD;
            result::mem_pool::set_attribute(pool, attr, (&mut threshold as *mut u64).cast())
        })
    };
    if let Err(e) = kept {
        eprintln!("warning: cuda:{ordinal}: the memory pool will hand freed memory back to the driver ({e})");
    }
    Ok(device)
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(ordinal: usize) -> Result<Device> {
    Ok(Device::new_cuda(ordinal)?)
}

/// An accelerator's memory as this process sees it, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    /// What new tensors can still take: the driver's free memory, and what the memory
    /// pool keeps from freed tensors (it hands nothing back, see `cuda_device`).
    pub free: u64,
    pub total: u64,
    /// The most this process's tensors have held at once (the pool's high-water mark).
    pub peak: u64,
}

/// The memory of `device` now; `None` on the CPU and Metal, and where the driver does not
/// say.
pub fn device_memory(device: &Device) -> Option<DeviceMemory> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = device {
        use candle_core::cuda_backend::cudarc::driver::{result, sys::CUmemPool_attribute as Attr};
        let stream = cuda.cuda_stream();
        let context = stream.context();
        context.bind_to_thread().ok()?;
        let (free, total) = result::mem_get_info().ok()?;
        let pool_attribute = |attr: Attr| {
            let mut value = 0u64;
            // SAFETY: the pool is this context's device's, and these attributes are u64s.
            unsafe {
                result::device::get_mem_pool(context.cu_device()).and_then(|pool| {
                    result::mem_pool::get_attribute(pool, attr, (&mut value as *mut u64).cast())
                })
            }
            .ok()
            .map(|_| value)
        };
        let reserved = pool_attribute(Attr::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT)?;
        let used = pool_attribute(Attr::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)?;
        let peak = pool_attribute(Attr::CU_MEMPOOL_ATTR_USED_MEM_HIGH)?;
        return Some(DeviceMemory {
            free: free as u64 + reserved.saturating_sub(used),
            total: total as u64,
            peak,
        });
    }
    let _ = device;
    None
}

/// f32 on CPU (exact parity with PyTorch fp32); bf16 activations on accelerators, with
/// the parameters kept in f32 as master weights.
///
/// `WISE_COMPUTE_DTYPE=f32|bf16|f16` overrides the choice, e.g. f32 on a GPU to check it
/// against the CPU (`scripts/gpu-check.sh`); any other value is ignored with a warning.
pub fn compute_dtype(device: &Device) -> DType {
    if let Ok(name) = std::env::var("WISE_COMPUTE_DTYPE") {
        match parse_dtype(&name) {
            Some(dtype) => return dtype,
            None => eprintln!("warning: WISE_COMPUTE_DTYPE={name} is not f32, bf16 or f16; ignored"),
        }
    }
    match device {
        Device::Cpu => DType::F32,
        _ => DType::BF16,
    }
}

fn parse_dtype(name: &str) -> Option<DType> {
    match name.trim().to_ascii_lowercase().as_str() {
        "f32" | "fp32" | "float32" => Some(DType::F32),
        "bf16" | "bfloat16" => Some(DType::BF16),
        "f16" | "fp16" | "float16" => Some(DType::F16),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert!(matches!(parse_device("cpu"), Ok(Device::Cpu)));
        assert!(matches!(parse_device(" CPU "), Ok(Device::Cpu)));
        let err = parse_device("tpu").unwrap_err().to_string();
        assert!(err.contains("tpu"), "{err}");
        let err = parse_device("cuda:x").unwrap_err().to_string();
        assert!(err.contains("'x'"), "{err}");
        assert_eq!(parse_dtype(" BF16"), Some(DType::BF16));
        assert_eq!(parse_dtype("fp32"), Some(DType::F32));
        assert_eq!(parse_dtype("int8"), None);
        if !cfg!(feature = "cuda") {
            let err = parse_device("cuda:1").unwrap_err().to_string();
            assert!(err.contains("--features cuda"), "{err}");
        }
    }
}
