//! Running external commands with the command line echoed and failures named.

use std::process::{Command, Stdio};

/// Runs `cmd` with inherited stdio; an error names the command and its exit status.
pub fn run(cmd: &mut Command) -> Result<(), String> {
    let status = cmd
        .status()
        .map_err(|e| format!("cannot start `{}`: {e}", describe(cmd)))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{}` failed ({status})", describe(cmd)))
    }
}

/// Runs `cmd` quietly and returns its stdout, or `None` if it could not run or failed.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn describe(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Runs `cmd` with stderr shown and returns its stdout; an error names the
/// command and its exit status.
pub fn stdout(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot start `{}`: {e}", describe(cmd)))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("`{}` failed ({})", describe(cmd), out.status))
    }
}

/// The first string value of `"key"` in one line of JSON (cargo's
/// messages), with `\"` and `\\` unescaped; `None` if absent or not a
/// string.
pub fn json_string(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let mut value = String::new();
    let mut chars = line[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(value),
            '\\' => value.push(chars.next()?),
            c => value.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::json_string;

    #[test]
    fn json_strings_are_found_and_unescaped() {
        let line = r#"{"target":{"kind":["test"],"name":"signals"},"executable":"/a \"b\"/c","fresh":true}"#;
        assert_eq!(json_string(line, "name").as_deref(), Some("signals"));
        assert_eq!(
            json_string(line, "executable").as_deref(),
            Some("/a \"b\"/c")
        );
        assert_eq!(json_string(line, "fresh"), None);
        assert_eq!(json_string(r#"{"executable":null}"#, "executable"), None);
    }
}
