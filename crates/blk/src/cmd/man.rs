//! `blk man [DIR]` (hidden): the manual page, generated from the clap definition of the command line
//! (clap_mangen): `blk.1` on stdout, or `blk.1` and one `blk-SUBCOMMAND.1` per subcommand written into `DIR`
//! (what `cargo xtask man` does).

use std::path::PathBuf;

use blk_core::{Error, Result};
use clap::Args;

/// Arguments of `blk man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write `blk.1` and the subcommands' pages into this directory instead of printing `blk.1`.
    pub dir: Option<PathBuf>,
}

fn render(cmd: clap::Command) -> Result<Vec<u8>> {
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut page)
        .map_err(|e| Error::from(e).with_path("blk.1"))?;
    Ok(page)
}

/// Runs `blk man`.
pub fn run(args: ManArgs) -> Result<u8> {
    let cmd = super::command();
    let Some(dir) = args.dir else {
        use std::io::Write;
        let page = render(cmd)?;
        std::io::stdout()
            .write_all(&page)
            .map_err(|e| Error::from(e).with_path("stdout"))?;
        return Ok(0);
    };
    std::fs::create_dir_all(&dir).map_err(|e| Error::from(e).with_path(&dir))?;
    let write = |name: &str, page: Vec<u8>| {
        let path = dir.join(name);
        std::fs::write(&path, page).map_err(|e| Error::from(e).with_path(&path))
    };
    let pages = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help");
    for sub in pages {
        let name = format!("blk-{}", sub.get_name());
        let page = sub
            .clone()
            .display_name(name.clone())
            .version(env!("CARGO_PKG_VERSION"))
            .bin_name(format!("blk {}", sub.get_name()));
        write(&format!("{name}.1"), render(page)?)?;
    }
    write("blk.1", render(cmd)?)?;
    Ok(0)
}
