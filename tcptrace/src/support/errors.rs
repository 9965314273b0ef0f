//! Errors worded for people: a chain of causes on one line.

/// An error and its causes on one line, each said once: a cause already part
/// of the message is not repeated, and multi-line details (verifier logs) are
/// left out.
pub fn one_line(error: &dyn std::error::Error) -> String {
    let first_line =
        |e: &dyn std::error::Error| e.to_string().lines().next().unwrap_or_default().to_owned();
    let mut text = first_line(error);
    let mut cause = error.source();
    while let Some(error) = cause {
        let line = first_line(error);
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        cause = error.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error with a message and an optional cause, as thiserror builds them.
    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn each_cause_is_said_once() {
        let io = Layer("Permission denied (os error 13)", None);
        let repeated = Layer(
            "cannot read /sys/kernel/btf/vmlinux: Permission denied (os error 13)",
            Some(Box::new(io)),
        );
        let outer = Layer("cannot load the probes", Some(Box::new(repeated)));
        assert_eq!(
            one_line(&outer),
            "cannot load the probes: cannot read /sys/kernel/btf/vmlinux: Permission denied (os error 13)"
        );
    }

    #[test]
    fn multi_line_details_are_left_out() {
        let verifier = Layer("0: R1=ctx\n1: invalid access", None);
        let rejected = Layer(
            "the kernel rejected BPF program timer_start",
            Some(Box::new(verifier)),
        );
        assert_eq!(
            one_line(&rejected),
            "the kernel rejected BPF program timer_start: 0: R1=ctx"
        );
    }
}
