//! `wise`: robust fine-tuning of CLIP (WiSE-FT). This binary only parses arguments and
//! calls the libraries; each subcommand lives in its own module.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod data;
mod embed;
mod ensemble;
mod eval;
mod fisher;
mod info;
mod plot;
mod pretrain;
mod run;
mod shift;
mod soup;
mod train;
mod zeroshot;

#[derive(Parser)]
#[command(name = "wise", version, about = "Robust fine-tuning of CLIP (WiSE-FT)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Throughput of this machine: image-tower inference or fine-tuning steps, random weights.
    Bench(bench::BenchArgs),
    /// Datasets: import public raw datasets as ImageFolder trees, inspect a dataset.
    Data(data::DataArgs),
    /// Image and text embeddings of a CLIP model, written to a safetensors file.
    Embed(embed::EmbedArgs),
    /// WiSE-FT: (1−α)·zero-shot + α·fine-tuned weights per α (or N-way, Fisher-weighted),
    /// streamed to checkpoints; with --data, the α sweep evaluated in memory.
    Ensemble(ensemble::EnsembleArgs),
    /// Accuracy of a classifier on datasets (reference and shifted), appended to a results file.
    Eval(eval::EvalArgs),
    /// Diagonal Fisher information of a classifier on a dataset, for `ensemble --fisher`.
    Fisher(fisher::FisherArgs),
    /// A model's configuration and parameter counts.
    Info(info::InfoArgs),
    /// The WiSE-FT figure (reference vs. shifted top-1, logit axes, α curve) from a results file,
    /// and optionally a Markdown table.
    Plot(plot::PlotArgs),
    /// Trains a CLIP from scratch on captioned images (contrastive), as an HF model folder.
    Pretrain(pretrain::PretrainArgs),
    /// A whole experiment from a TOML file: pretrain, zero-shot, fine-tune, α sweep, report.
    Run(run::RunArgs),
    /// Shifted copies of a test set: CIFAR-10-C / ImageNet-C corruptions at severities 1..5.
    Shift(shift::ShiftArgs),
    /// Model soups: the uniform or greedy (held-out) average of several fine-tuned classifiers.
    Soup(soup::SoupArgs),
    /// Fine-tunes a classifier end to end (wise-ft's recipe), resumable.
    Train(train::TrainArgs),
    /// Builds the zero-shot classifier (image tower + text-embedding head) for class names.
    Zeroshot(zeroshot::ZeroshotArgs),
}

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(args) => bench::run(args),
        Command::Data(args) => data::run(args),
        Command::Embed(args) => embed::run(args),
        Command::Ensemble(args) => ensemble::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Fisher(args) => fisher::run(args),
        Command::Info(args) => info::run(args),
        Command::Plot(args) => plot::run(args),
        Command::Pretrain(args) => pretrain::run(args),
        Command::Run(args) => run::run(args),
        Command::Shift(args) => shift::run(args),
        Command::Soup(args) => soup::run(args),
        Command::Train(args) => train::run(args),
        Command::Zeroshot(args) => zeroshot::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Keeps freed tensor buffers in the process instead of handing them back to the kernel.
///
/// glibc serves the model's large activations (tens of MB each) with fresh `mmap`s and
/// unmaps them on free, so the next forward page-faults every byte in again, zeroed by the
/// kernel: on CPU that cost 15–25 % of a forward (BENCHMARKS.md). Serving blocks up to
/// glibc's maximum of 32 MiB from the heap and never trimming it makes the steady state
/// fault-free; memory stays at the peak of one step, which it reaches anyway.
///
/// The model runs on rayon's threads (`wise_clip::on_compute_threads`), and glibc gives
/// those threads their own arenas: heaps of at most 64 MiB, each unmapped as soon as it is
/// empty whatever the trim threshold, so tensors of tens of MB allocated there page-fault
/// in again on every step (~50k faults and TLB shootdowns per ViT-B/32 training step, 5 %
/// of it). glibc keeps an empty heap when the top pad is at least a heap's size, so the top
/// pad is 64 MiB (address space only: pages are touched when used). One arena for all
/// threads would do it too, but costs the parallel image decoding 10 % in lock contention.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
        const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
        const M_TOP_PAD: std::ffi::c_int = -2;
        extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        // SAFETY: mallopt only sets glibc malloc parameters; called before any threads.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, i32::MAX);
            mallopt(M_TOP_PAD, 64 << 20);
        }
    }
}
