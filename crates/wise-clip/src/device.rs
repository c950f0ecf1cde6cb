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
        "cuda" if cfg!(feature = "cuda") => Ok(Device::new_cuda(ordinal)?),
        "metal" if cfg!(feature = "metal") => Ok(Device::new_metal(ordinal)?),
        "cuda" | "metal" => Err(Error::Invalid(format!(
            "device '{spec}': this wise was built without the `{kind}` feature \
             (cargo build --release --features {kind})"
        ))),
        _ => Err(Error::Invalid(format!("device '{spec}': expected cpu, cuda[:N] or metal"))),
    }
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
