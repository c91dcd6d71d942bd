//! `blk completions bash|zsh|fish|elvish|powershell`: the shell completion script, generated from the clap
//! definition of the command line (clap_complete), on stdout.

use blk_core::Result;
use clap::Args;
use clap_complete::Shell;

/// Arguments of `blk completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Runs `blk completions`: prints the script (install it as the shell expects, e.g.
/// `blk completions bash > /etc/bash_completion.d/blk`).
pub fn run(args: CompletionsArgs) -> Result<u8> {
    let mut cmd = super::command();
    clap_complete::generate(args.shell, &mut cmd, "blk", &mut std::io::stdout());
    Ok(0)
}
