//! `wise`: robust fine-tuning of CLIP (WiSE-FT). This binary only parses arguments and
//! calls the libraries; each subcommand lives in its own module.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod embed;
mod info;

#[derive(Parser)]
#[command(name = "wise", version, about = "Robust fine-tuning of CLIP (WiSE-FT)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Image and text embeddings of a CLIP model, written to a safetensors file.
    Embed(embed::EmbedArgs),
    /// A model's configuration and parameter counts.
    Info(info::InfoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Embed(args) => embed::run(args),
        Command::Info(args) => info::run(args),
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
