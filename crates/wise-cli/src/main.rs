//! `wise`: robust fine-tuning of CLIP (WiSE-FT). This binary only parses arguments and
//! calls the libraries; each subcommand lives in its own module.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod data;
mod embed;
mod eval;
mod info;
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
    /// Datasets: import public raw datasets as ImageFolder trees, inspect a dataset.
    Data(data::DataArgs),
    /// Image and text embeddings of a CLIP model, written to a safetensors file.
    Embed(embed::EmbedArgs),
    /// Accuracy of a classifier on datasets (reference and shifted), appended to a results file.
    Eval(eval::EvalArgs),
    /// A model's configuration and parameter counts.
    Info(info::InfoArgs),
    /// Fine-tunes a classifier end to end (wise-ft's recipe), resumable.
    Train(train::TrainArgs),
    /// Builds the zero-shot classifier (image tower + text-embedding head) for class names.
    Zeroshot(zeroshot::ZeroshotArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Data(args) => data::run(args),
        Command::Embed(args) => embed::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Info(args) => info::run(args),
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
