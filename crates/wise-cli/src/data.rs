//! `wise data`: getting public datasets into the ImageFolder layout wise reads
//! (`wise data import`), and checking what a dataset folder or manifest holds
//! (`wise data info`). The work is done by the wise-data crate.

use std::path::PathBuf;

use anyhow::Context;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Subcommand};
use wise_data::import::ImportOptions;
use wise_data::{Dataset, Source};

#[derive(Args)]
pub struct DataArgs {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(Subcommand)]
enum DataCommand {
    /// Convert a public raw dataset into ImageFolder trees (train/, test/) with classnames.txt.
    Import(ImportArgs),
    /// Classes, readable names and image counts of an ImageFolder folder or CSV manifest.
    Info(InfoArgs),
}

#[derive(Args)]
struct ImportArgs {
    /// Which dataset.
    #[arg(value_parser = PossibleValuesParser::new(Source::names()).try_map(|s| s.parse::<Source>()))]
    dataset: Source,
    /// The raw data: its folder (e.g. ../shared/datasets/digits/usps), a folder above it
    /// laid out the same way, or the raw file itself.
    #[arg(long)]
    from: PathBuf,
    /// Output folder; it must be absent or empty unless --overwrite.
    #[arg(long)]
    out: PathBuf,
    /// Replace a non-empty --out (only once the new tree is complete).
    #[arg(long)]
    overwrite: bool,
    /// Keep only the first N images of each class in every split (by file name, i.e. by
    /// position in the source): a smaller, balanced subset.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    limit_per_class: Option<u64>,
}

#[derive(Args)]
struct InfoArgs {
    /// An ImageFolder folder or a .csv manifest (path,label).
    path: PathBuf,
    /// A class-names file (one name per line, or key, a tab, name) overriding the dataset's own.
    #[arg(long)]
    classnames: Option<PathBuf>,
}

pub fn run(args: DataArgs) -> anyhow::Result<()> {
    match args.command {
        DataCommand::Import(args) => import(args),
        DataCommand::Info(args) => info(args),
    }
}

fn import(args: ImportArgs) -> anyhow::Result<()> {
    let opts = ImportOptions {
        overwrite: args.overwrite,
        limit_per_class: args.limit_per_class.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
    };
    let summary = wise_data::import::import_with(args.dataset, &args.from, &args.out, &opts)
        .with_context(|| format!("importing {} from {}", args.dataset, args.from.display()))?;
    eprintln!("{summary}");
    Ok(())
}

fn info(args: InfoArgs) -> anyhow::Result<()> {
    let ds = Dataset::open(&args.path, args.classnames.as_deref())?;
    println!("{}: {} classes, {} images", args.path.display(), ds.num_classes(), ds.len());
    let width = ds.classes.iter().map(String::len).max().unwrap_or(0);
    for ((key, name), count) in ds.classes.iter().zip(&ds.class_names).zip(ds.class_counts()) {
        let name = if name == key { String::new() } else { name.clone() };
        println!("  {key:<width$}  {count:>7}  {name}");
    }
    Ok(())
}
