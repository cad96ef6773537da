//! `dfp validate`: checks pipeline files without running them.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use dfp_core::Pipeline;

use super::VarArgs;

#[derive(Args)]
pub(crate) struct ValidateArgs {
    /// Pipeline YAML files.
    #[arg(required = true)]
    pipelines: Vec<PathBuf>,
    #[command(flatten)]
    vars: VarArgs,
}

pub(crate) fn validate(args: ValidateArgs) -> ExitCode {
    let mut failed = 0;
    for path in &args.pipelines {
        match Pipeline::from_file(path, &args.vars.vars) {
            Ok(p) => println!("{}: ok ({} stages)", path.display(), p.plan().stages.len()),
            Err(e) => {
                failed += 1;
                eprintln!("{e}");
            }
        }
    }
    if failed > 0 {
        eprintln!("error: {failed} of {} pipeline(s) invalid", args.pipelines.len());
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}
