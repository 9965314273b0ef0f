//! tracefs, where the kernel numbers its classic tracepoints: the syscall
//! hooks attach through it. Hosts with systemd mount it at boot; others may
//! not, and then tcptrace mounts it where the kernel documents it.

use std::{ffi::CString, path::Path, sync::OnceLock};

/// Where the kernel's documentation puts tracefs.
const TRACEFS: &str = "/sys/kernel/tracing";
/// The older place, under debugfs.
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// Makes sure tracefs is mounted; mounts it at [`TRACEFS`] if it is not.
/// Decided once per process; the error is one line that says what to do.
pub fn mount_if_needed() -> Result<(), String> {
    static MOUNTED: OnceLock<Result<(), String>> = OnceLock::new();
    MOUNTED.get_or_init(mount).clone()
}

fn mount() -> Result<(), String> {
    let mounted = |dir: &str| Path::new(dir).join("events").is_dir();
    if mounted(TRACEFS) || mounted(DEBUGFS_TRACING) {
        return Ok(());
    }
    let c = |s: &str| CString::new(s).expect("no NUL in a constant");
    let (source, target, fstype) = (c("tracefs"), c(TRACEFS), c("tracefs"));
    // SAFETY: NUL-terminated strings that outlive the call; no data argument.
    let result = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if result != 0 {
        let error = std::io::Error::last_os_error();
        return Err(format!(
            "tracefs is not mounted and mounting it at {TRACEFS} failed ({error}): \
             mount it (`mount -t tracefs tracefs {TRACEFS}`) or give tcptrace CAP_SYS_ADMIN"
        ));
    }
    tracing::info!("mounted tracefs at {TRACEFS} for the system call hooks");
    Ok(())
}
