//! Running the `wise` binary in tests, and reading what it said.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

pub fn wise(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wise")).args(args).output().expect("wise runs")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Asserts success; returns stdout.
pub fn ok(out: &Output) -> String {
    assert!(out.status.success(), "wise failed:\n{}", stderr(out));
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Asserts a clean failure (no panic) whose message contains every needle.
pub fn fails_with(out: &Output, needles: &[&str]) {
    let stderr = stderr(out);
    assert!(!out.status.success(), "expected failure");
    for n in needles {
        assert!(stderr.contains(n), "'{n}' not in:\n{stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}
