//! Kernel symbol addresses from `/proc/kallsyms`.

use std::{fs, path::Path};

/// The address of the kernel function `name`, or why it is unknown.
pub fn address_of(kallsyms: &Path, name: &str) -> Result<u64, String> {
    let text = fs::read_to_string(kallsyms)
        .map_err(|e| format!("cannot read {}: {e}", kallsyms.display()))?;
    find(&text, name)
        .ok_or_else(|| format!("kernel symbol {name} not found in {}", kallsyms.display()))?
}

/// Whether `kallsyms` shows this process real addresses. The kernel shows
/// zeros unless the reader holds `CAP_SYSLOG` or `kernel.kptr_restrict` is 0
/// with `kernel.perf_event_paranoid` at most 1; at `kptr_restrict` 2, always.
pub fn addresses_visible(kallsyms: &Path) -> Result<bool, String> {
    let text = fs::read_to_string(kallsyms)
        .map_err(|e| format!("cannot read {}: {e}", kallsyms.display()))?;
    Ok(any_address(&text))
}

/// Some symbols (per-CPU ones) sit at 0 even when addresses are shown, so
/// one non-zero address is the sign.
fn any_address(text: &str) -> bool {
    text.lines().any(|line| {
        line.split_ascii_whitespace()
            .next()
            .and_then(|address| u64::from_str_radix(address, 16).ok())
            .is_some_and(|address| address != 0)
    })
}

/// Looks `name` up in kallsyms text: `None` if absent, an error if hidden.
fn find(text: &str, name: &str) -> Option<Result<u64, String>> {
    let address = text.lines().find_map(|line| {
        let mut fields = line.split_ascii_whitespace();
        let (address, _kind, symbol) = (fields.next()?, fields.next()?, fields.next()?);
        (symbol == name).then(|| u64::from_str_radix(address, 16).ok())?
    })?;
    Some(if address == 0 {
        Err(format!(
            "kernel addresses are hidden (kernel.kptr_restrict): run tcptrace as root or with CAP_SYSLOG to see {name}"
        ))
    } else {
        Ok(address)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_exact_names_only() {
        let text =
            "ffffffff81243c71 t tw_timer_handler.cold\nffffffff82006070 t tw_timer_handler\n";
        assert_eq!(
            find(text, "tw_timer_handler"),
            Some(Ok(0xffff_ffff_8200_6070))
        );
        assert_eq!(find(text, "tw_timer"), None);
    }

    #[test]
    fn hidden_addresses_are_an_error() {
        let found = find("0000000000000000 t tw_timer_handler\n", "tw_timer_handler");
        assert!(
            found
                .expect("listed")
                .unwrap_err()
                .contains("kptr_restrict")
        );
    }

    #[test]
    fn visibility_needs_one_real_address() {
        assert!(any_address(
            "0000000000000000 A fixed_percpu_data\nffffffff81000000 T _stext\n"
        ));
        assert!(!any_address(
            "0000000000000000 A fixed_percpu_data\n0000000000000000 T _stext\n"
        ));
        assert!(!any_address(""));
    }

    #[test]
    fn the_running_kernel_has_the_timewait_handler() {
        let path = Path::new("/proc/kallsyms");
        if !path.exists() {
            return;
        }
        assert!(address_of(path, "tw_timer_handler").is_ok());
    }
}
