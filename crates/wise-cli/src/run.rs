//! `wise run`: a whole experiment from a TOML file (see `configs/digits.toml`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use wise_experiment::{plan, Experiment};

#[derive(Args)]
pub struct RunArgs {
    /// The experiment file.
    config: PathBuf,
    /// Print the stages and whether each is done, then stop.
    #[arg(long)]
    dry_run: bool,
    /// Redo a stage (and, through its outputs, what follows): import, shift, pretrain,
    /// zeroshot, finetune, sweep, report. Repeatable.
    #[arg(long)]
    force: Vec<String>,
    /// cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let exp = Experiment::from_file(&args.config)?;
    if args.dry_run {
        let out = exp.out();
        for stage in plan(&exp) {
            let status = if stage.is_done(&out) { "done " } else { "to do" };
            println!("[{status}] {:<24} {}", stage.name, stage.description);
        }
        return Ok(());
    }
    let device = wise_clip::parse_device(&args.device)?;
    let mut bars = crate::train::Bars::default();
    let started = std::time::Instant::now();
    let outcomes =
        wise_experiment::run(&exp, &args.force, &device, &mut bars, &mut |line| eprintln!("{line}"))
            .with_context(|| format!("running {}", args.config.display()))?;
    bars.finish();
    let ran = outcomes.iter().filter(|(_, o)| *o == wise_experiment::Outcome::Ran).count();
    println!(
        "{} stages ({} run, {} already done) in {:.1}s; results in {}",
        outcomes.len(),
        ran,
        outcomes.len() - ran,
        started.elapsed().as_secs_f64(),
        exp.out().display()
    );
    Ok(())
}
