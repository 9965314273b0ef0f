//! `tcptrace generate DIR` (hidden): what a package installs besides the
//! binary, made from the clap definition itself so that it cannot drift
//! from the flags: man pages (`clap_mangen`), shell completions
//! (`clap_complete`) and `tcptrace.toml` with every setting commented out.

use std::{fs, path::Path};

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::{Cli, GenerateArgs, commands::Error, config};

/// The shells completions are written for, and the file each one reads.
const COMPLETIONS: [(Shell, &str); 3] = [
    (Shell::Bash, "tcptrace"),
    (Shell::Zsh, "_tcptrace"),
    (Shell::Fish, "tcptrace.fish"),
];

pub fn run(args: &GenerateArgs) -> Result<(), Error> {
    let out = &args.out;
    let man = out.join("man");
    let completions = out.join("completions");
    for dir in [&man, &completions] {
        fs::create_dir_all(dir).map_err(|e| in_dir(dir, &e))?;
    }
    // One page for tcptrace and one per visible subcommand (tcptrace-run.1 …).
    clap_mangen::generate_to(documented(), &man).map_err(|e| in_dir(&man, &e))?;
    for (shell, file) in COMPLETIONS {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut documented(), "tcptrace", &mut script);
        write(&completions.join(file), &script)?;
    }
    write(
        &out.join("tcptrace.toml"),
        config::commented_template().as_bytes(),
    )
}

/// The command line without its hidden subcommands (this one): the man
/// pages leave them out by themselves, the completions would not.
fn documented() -> clap::Command {
    let full = Cli::command();
    let mut command = clap::Command::new("tcptrace")
        .version(env!("CARGO_PKG_VERSION"))
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
        .subcommand_required(full.is_subcommand_required_set())
        .arg_required_else_help(full.is_arg_required_else_help_set());
    if let Some(about) = full.get_about() {
        command = command.about(about.clone());
    }
    command
}

fn write(path: &Path, contents: &[u8]) -> Result<(), Error> {
    fs::write(path, contents).map_err(|e| in_dir(path, &e))
}

fn in_dir(path: &Path, error: &std::io::Error) -> Error {
    Error::Io(std::io::Error::new(
        error.kind(),
        format!("{}: {error}", path.display()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_completions_and_configuration_are_written() {
        let out = std::env::temp_dir().join(format!("tcptrace-generate-{}", std::process::id()));
        run(&GenerateArgs { out: out.clone() }).expect("generated");
        let read = |path: &str| fs::read_to_string(out.join(path)).expect(path);
        let page = read("man/tcptrace.1");
        assert!(
            page.contains("doctor") && !page.contains("generate"),
            "{page}"
        );
        assert!(read("man/tcptrace-run.1").contains("stale\\-after"));
        for (_, file) in COMPLETIONS {
            let script = read(&format!("completions/{file}"));
            assert!(script.contains("sockets"), "{file}");
            assert!(
                !script.contains("generate"),
                "{file} offers the hidden subcommand"
            );
        }
        assert_eq!(read("tcptrace.toml"), config::commented_template());
        // Bad input: one error naming the path.
        let error = run(&GenerateArgs {
            out: out.join("man/tcptrace.1/x"),
        })
        .expect_err("a file");
        assert!(error.to_string().contains("tcptrace.1"), "{error}");
        fs::remove_dir_all(&out).expect("clean up");
    }
}
