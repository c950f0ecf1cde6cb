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
pub fn compute_dtype(device: &Device) -> DType {
    match device {
        Device::Cpu => DType::F32,
        _ => DType::BF16,
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
        if !cfg!(feature = "cuda") {
            let err = parse_device("cuda:1").unwrap_err().to_string();
            assert!(err.contains("--features cuda"), "{err}");
        }
    }
}
