//! Handing freed memory back to the system, so that the resident size
//! falls again after a burst of clients (glibc's allocator keeps freed
//! memory by default).

/// Buffers at least this large get pages of their own, returned when freed.
#[cfg(target_env = "gnu")]
const OWN_PAGES_FROM: libc::c_int = 128 << 10;

/// Fixes glibc's threshold for giving a buffer its own pages. By default
/// it grows with each large buffer freed, after which encoded bodies and
/// their like come from the heap and stay resident once freed.
pub fn return_large_buffers() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; it is called before
    // other threads allocate.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, OWN_PAGES_FROM);
    }
}

/// Returns the free pages of every heap to the system.
pub fn release_freed() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes the allocator's own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}
