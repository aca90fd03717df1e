//! `medgemmad man --out DIR` and `medgemmad completions SHELL`: the man pages
//! and shell completions, generated from the same clap definition that
//! parses the arguments, so they cannot drift from it. The .deb ships them
//! (`scripts/build-deb.sh`), as `medgemmactl man` / `completions` do for the
//! admin tool.
//!
//! Owns: rendering documentation. Must never: touch anything but `DIR`
//! (man) or standard output (completions).

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Command};

/// Man page section of a system daemon (man-pages(7): section 8, system
/// administration commands and daemons).
const SECTION: &str = "8";

/// Arguments of `medgemmad man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// The directory to write `medgemmad.8` and one page per subcommand into
    /// (created if missing).
    #[arg(long)]
    out: PathBuf,
}

/// Arguments of `medgemmad completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    shell: clap_complete::Shell,
}

/// Why documentation could not be written.
#[derive(Debug, thiserror::Error)]
pub enum DocsError {
    /// Writing a page or the script failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file (`-` for standard output).
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Writes `medgemmad.8` and `medgemmad-<subcommand>.8` into `args.out`;
/// `cmd` is the whole CLI. Returns the files written.
pub fn man(cmd: &Command, args: &ManArgs) -> Result<Vec<PathBuf>, DocsError> {
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| DocsError::Write { path, source }
    };
    std::fs::create_dir_all(&args.out).map_err(err(&args.out))?;
    let mut pages = vec![(cmd.get_name().to_owned(), cmd.clone())];
    for sub in cmd.get_subcommands() {
        let name = format!("{}-{}", cmd.get_name(), sub.get_name());
        pages.push((
            name.clone(),
            sub.clone()
                .display_name(name.clone())
                .bin_name(name.replace('-', " ")),
        ));
    }
    let mut written = Vec::new();
    for (name, page) in pages {
        let mut buf = Vec::new();
        let path = args.out.join(format!("{name}.{SECTION}"));
        clap_mangen::Man::new(page)
            .section(SECTION)
            .render(&mut buf)
            .map_err(err(&path))?;
        std::fs::write(&path, buf).map_err(err(&path))?;
        written.push(path);
    }
    Ok(written)
}

/// Prints the completion script for `args.shell` on standard output; a
/// closed pipe is not an error.
pub fn completions(mut cmd: Command, args: &CompletionsArgs) -> Result<(), DocsError> {
    let mut buf = Vec::new();
    let name = cmd.get_name().to_owned();
    clap_complete::generate(args.shell, &mut cmd, name, &mut buf);
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(&buf).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(DocsError::Write {
            path: PathBuf::from("-"),
            source: e,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli() -> Command {
        Command::new("medgemmad")
            .about("The daemon.")
            .subcommand(Command::new("serve").about("Serve."))
            .subcommand(Command::new("bench").about("Bench."))
    }

    #[test]
    fn one_page_per_subcommand_in_section_8() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("man");
        let files = man(&cli(), &ManArgs { out: out.clone() }).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["medgemmad.8", "medgemmad-serve.8", "medgemmad-bench.8"]
        );
        let page = std::fs::read_to_string(out.join("medgemmad-serve.8")).unwrap();
        assert!(page.contains(".TH medgemmad-serve 8"), "{page}");
    }
}
