//! `tcptrace run --config FILE`: the flags of `run` in a TOML file.
//!
//! A key is a flag's long name without its dashes: `port`, `stale-after`,
//! `web.listen-address` (or `listen-address` in a `[web]` table). A string
//! or a number is the flag's value, an array gives the flag once per
//! element, and a switch such as `web.enable-api` takes `true` or `false`.
//!
//! The file turns into arguments placed right after `run`, leaving out every
//! flag the command line gives itself: flags win. Each key is checked by
//! the same parser as the flag, so a wrong value fails at start, with the
//! file, the line and the key.

use std::{
    ffi::OsString,
    fmt::{self, Write as _},
    ops::Range,
    path::{Path, PathBuf},
};

use clap::{ArgMatches, CommandFactory, parser::ValueSource};
use toml::de::{DeTable, DeValue};

use crate::{cli::Cli, support::files};

const RUN: &str = "run";
const CONFIG_FLAG: &str = "config";

/// A configuration file that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    /// 1-based; none when the file could not be read at all.
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The command line with the configuration file's flags added, if it is
/// `tcptrace run` with `--config`; otherwise the command line unchanged.
/// `matches` are those of the command line alone.
pub fn with_config_file(
    args: Vec<OsString>,
    matches: &ArgMatches,
) -> Result<Vec<OsString>, ConfigError> {
    let Some((RUN, run)) = matches.subcommand() else {
        return Ok(args);
    };
    let Some(path) = run.get_one::<PathBuf>(CONFIG_FLAG) else {
        return Ok(args);
    };
    let text = files::read_text(path, files::CONFIG_MAX_BYTES).map_err(|e| ConfigError {
        path: path.clone(),
        line: None,
        key: None,
        message: e.to_string(),
    })?;
    let command = run_command();
    let given_on_command_line = |key: &str| {
        let id = command
            .get_arguments()
            .find(|arg| is_named(arg, key))
            .map(|arg| arg.get_id().to_string())
            .unwrap_or_default();
        // Asking matches for an id they do not define panics in debug builds.
        [matches, run].iter().any(|m| {
            m.ids().any(|known| known == id.as_str())
                && m.value_source(&id) == Some(ValueSource::CommandLine)
        })
    };
    let from_file = arguments(path, &text)?
        .into_iter()
        .filter(|(key, _)| !given_on_command_line(key))
        .flat_map(|(_, args)| args);
    // Right after the subcommand: the first `run` that is not a flag's value.
    let at = args
        .iter()
        .skip(1)
        .position(|arg| arg == RUN)
        .map_or(args.len(), |i| i + 2);
    let mut merged = args;
    let tail = merged.split_off(at);
    merged.extend(from_file.map(OsString::from));
    merged.extend(tail);
    Ok(merged)
}

/// The arguments each key of `text` stands for, by key (sorted); every one
/// checked by the flag's own parser.
pub fn arguments(path: &Path, text: &str) -> Result<Vec<(String, Vec<String>)>, ConfigError> {
    let at = |span: Range<usize>, key: Option<&str>, message: String| ConfigError {
        path: path.to_owned(),
        line: Some(line_of(text, span.start)),
        key: key.map(str::to_owned),
        message,
    };
    let table = DeTable::parse(text).map_err(|e| {
        at(
            e.span().unwrap_or(0..0),
            None,
            e.message().trim().to_owned(),
        )
    })?;
    let mut entries = Vec::new();
    flatten("", table.get_ref(), &mut entries);
    let run = run_command();
    let mut out = Vec::new();
    for (key, value) in entries {
        let fail = |message: String| at(value.span(), Some(&key), message);
        let arg = run
            .get_arguments()
            .find(|arg| is_named(arg, &key) && key != CONFIG_FLAG)
            .ok_or_else(|| {
                fail("no such setting: the keys are the flags of `tcptrace run --help`, without their dashes".to_owned())
            })?;
        let flag = format!("--{key}");
        let args = if arg.get_action().takes_values() {
            let values = match value.get_ref() {
                DeValue::Array(items) => items.iter().map(|item| scalar(item.get_ref())).collect(),
                other => vec![scalar(other)],
            };
            let values: Option<Vec<String>> = values.into_iter().collect();
            let values = values.ok_or_else(|| {
                fail("expects a string or a number, or an array of them".to_owned())
            })?;
            values.into_iter().flat_map(|v| [flag.clone(), v]).collect()
        } else {
            match value.get_ref() {
                DeValue::Boolean(true) => vec![flag],
                DeValue::Boolean(false) => Vec::new(),
                _ => return Err(fail("is a switch: true or false".to_owned())),
            }
        };
        // The flag's own parser decides, as on the command line.
        let command_line = ["tcptrace", RUN]
            .into_iter()
            .map(str::to_owned)
            .chain(args.iter().cloned());
        if let Err(e) = Cli::command().try_get_matches_from(command_line) {
            let rendered = e.to_string();
            let first = rendered.lines().next().unwrap_or_default();
            return Err(fail(
                first.strip_prefix("error: ").unwrap_or(first).to_owned(),
            ));
        }
        out.push((key, args));
    }
    Ok(out)
}

/// The configuration file a package installs: every key `run` reads, each
/// with its flag's help and its default, commented out, so that the file
/// changes nothing until a line is uncommented.
pub fn commented_template() -> String {
    let mut out = String::from(
        "# tcptrace run --config /etc/tcptrace/tcptrace.toml\n\
         #\n\
         # Every setting is a flag of `tcptrace run` (see tcptrace-run(1)) under\n\
         # its long name without the dashes; flags given on the command line win\n\
         # over this file. Each line below shows the default: remove its `#` to\n\
         # change it. A wrong key or value stops tcptrace at start, naming the\n\
         # line.\n",
    );
    for arg in run_command().get_arguments() {
        let Some(key) = arg.get_long() else { continue };
        if arg.is_hide_set() || matches!(key, CONFIG_FLAG | "help" | "version") {
            continue;
        }
        out.push('\n');
        let help = arg
            .get_long_help()
            .or_else(|| arg.get_help())
            .map(ToString::to_string)
            .unwrap_or_default();
        let mut help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        // clap drops the full stop of a one-sentence help.
        if !help.is_empty() && !help.ends_with('.') {
            help.push('.');
        }
        let choices: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|value| !value.is_hide_set())
            .map(|value| value.get_name().to_owned())
            .collect();
        if !choices.is_empty() {
            let _ = write!(help, " One of: {}.", choices.join(", "));
        }
        for line in wrapped(&help, 76) {
            let _ = writeln!(out, "# {line}");
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|value| toml_value(&value.to_string_lossy()))
            .collect();
        let value = if !arg.get_action().takes_values() {
            "false".to_owned()
        } else if matches!(arg.get_action(), clap::ArgAction::Append) {
            format!("[{}]", defaults.join(", "))
        } else if let Some(default) = defaults.first() {
            default.clone()
        } else {
            out.push_str("# Not set by default.\n");
            let name = arg
                .get_value_names()
                .and_then(|names| names.first())
                .map_or("VALUE".to_owned(), ToString::to_string);
            toml_value(&name)
        };
        let _ = writeln!(out, "#{key} = {value}");
    }
    out
}

/// A whole number as itself, anything else as a TOML basic string.
fn toml_value(text: &str) -> String {
    if text.parse::<i64>().is_ok() {
        return text.to_owned();
    }
    let mut quoted = String::from('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// `text` in lines of at most `width` characters, broken between words.
fn wrapped(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// `tcptrace run`, with the global flags it inherits.
/// Whether `key` is the long name of `arg`, or one of its old spellings
/// (`log-level` for `log.level`).
fn is_named(arg: &clap::Arg, key: &str) -> bool {
    arg.get_long() == Some(key)
        || arg
            .get_all_aliases()
            .is_some_and(|aliases| aliases.contains(&key))
}

fn run_command() -> clap::Command {
    let mut command = Cli::command();
    command.build();
    command
        .find_subcommand(RUN)
        .expect("the run subcommand")
        .clone()
}

/// Leaf values with their dotted keys; tables are walked, arrays are values.
fn flatten<'a, 'i>(
    prefix: &str,
    table: &'a DeTable<'i>,
    out: &mut Vec<(String, &'a toml::Spanned<DeValue<'i>>)>,
) {
    for (key, value) in table {
        let key = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        match value.get_ref() {
            DeValue::Table(inner) => flatten(&key, inner, out),
            _ => out.push((key, value)),
        }
    }
}

fn scalar(value: &DeValue<'_>) -> Option<String> {
    match value {
        DeValue::String(text) => Some(text.to_string()),
        DeValue::Integer(number) => Some(number.to_string()),
        DeValue::Float(number) => Some(number.to_string()),
        _ => None,
    }
}

/// The 1-based line of a byte offset.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).unwrap_or(text).matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<(String, Vec<String>)>, ConfigError> {
        arguments(Path::new("tcptrace.toml"), text)
    }

    fn error(text: &str) -> String {
        parse(text).expect_err("a bad file").to_string()
    }

    #[test]
    fn keys_are_flags_and_values_their_arguments() {
        let text = "\
# comment
port = [443, 8080]
stale-after = \"90s\"
max-sockets = 1000

[web]
enable-api = true
listen-address = \"127.0.0.1:10091\"
";
        let args = parse(text).expect("valid");
        let flat: Vec<String> = args.into_iter().flat_map(|(_, a)| a).collect();
        assert_eq!(
            flat,
            [
                "--max-sockets",
                "1000",
                "--port",
                "443",
                "--port",
                "8080",
                "--stale-after",
                "90s",
                "--web.enable-api",
                "--web.listen-address",
                "127.0.0.1:10091",
            ]
        );
    }

    #[test]
    fn a_false_switch_adds_nothing() {
        let args = parse("web.enable-api = false").expect("valid");
        assert_eq!(args, [("web.enable-api".to_owned(), Vec::new())]);
    }

    /// Files written for the old flag names still work.
    #[test]
    fn old_spellings_are_keys_too() {
        let args = parse("log-level = \"warn\"\nlog.format = \"json\"\n").expect("parses");
        assert_eq!(
            args,
            [
                (
                    "log.format".to_owned(),
                    vec!["--log.format".to_owned(), "json".to_owned()]
                ),
                (
                    "log-level".to_owned(),
                    vec!["--log-level".to_owned(), "warn".to_owned()]
                ),
            ]
        );
    }

    #[test]
    fn errors_name_the_file_the_line_and_the_key() {
        assert!(
            error("port = 443\nstale-after = \"soon\"\n")
                .starts_with("tcptrace.toml:2: stale-after: invalid value 'soon'"),
            "{}",
            error("port = 443\nstale-after = \"soon\"\n")
        );
        assert!(error("\n\nmax-sockets = \"many\"").starts_with("tcptrace.toml:3: max-sockets: "));
        assert_eq!(
            error("[web]\nlisten-adress = \"x\""),
            "tcptrace.toml:2: web.listen-adress: no such setting: the keys are the flags of \
             `tcptrace run --help`, without their dashes"
        );
        assert_eq!(
            error("web.enable-api = \"yes\""),
            "tcptrace.toml:1: web.enable-api: is a switch: true or false"
        );
        assert_eq!(
            error("port = true"),
            "tcptrace.toml:1: port: expects a string or a number, or an array of them"
        );
        assert!(error("config = \"other.toml\"").contains("no such setting"));
    }

    #[test]
    fn the_commented_template_is_the_defaults() {
        let template = commented_template();
        // As installed, it sets nothing.
        assert_eq!(parse(&template).expect("valid"), []);
        // Every key `run` reads is in it, and with the `#` removed from
        // the lines that show a default, each parses as the flag's own
        // parser wants.
        let uncommented: String = template
            .lines()
            .filter_map(|line| line.strip_prefix('#'))
            .filter(|line| line.contains(" = ") && !line.starts_with(' '))
            .filter(|line| !line.starts_with("web.config.file"))
            .fold(String::new(), |mut text, line| {
                text.push_str(line);
                text.push('\n');
                text
            });
        let keys: Vec<String> = parse(&uncommented)
            .expect("the defaults parse")
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        for key in [
            "log.level",
            "port",
            "stale-after",
            "web.listen-address",
            "web.enable-api",
            "btf",
        ] {
            assert!(
                keys.iter().any(|k| k == key),
                "{key} missing from\n{template}"
            );
        }
        assert!(
            template.contains("#stale-after = [\"60s\"]\n"),
            "{template}"
        );
        assert!(template.contains("#max-ports = 128\n"), "{template}");
        assert!(!template.contains("#config ="), "{template}");
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let message = error("port = 443\nstale-after = \n");
        assert!(message.starts_with("tcptrace.toml:2: "), "{message}");
    }

    #[test]
    fn command_line_flags_win_over_the_file() {
        let dir = std::env::temp_dir().join(format!("tcptrace-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("tcptrace.toml");
        std::fs::write(&path, "port = [1, 2]\nmax-ports = 5\n").expect("write");
        let path = path.to_string_lossy().into_owned();
        let args: Vec<OsString> = ["tcptrace", "--log-level", "warn", "run", "--config", &path]
            .into_iter()
            .chain(["--port", "3"])
            .map(OsString::from)
            .collect();
        let matches = Cli::command().get_matches_from(args.clone());
        let merged = with_config_file(args, &matches).expect("merged");
        let merged: Vec<String> = merged
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            merged,
            [
                "tcptrace",
                "--log-level",
                "warn",
                "run",
                "--max-ports",
                "5",
                "--config",
                &path,
                "--port",
                "3"
            ]
        );
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
