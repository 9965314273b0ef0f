//! Failed `bind()`, `listen()` and `connect()` calls on TCP sockets: the
//! moments a service cannot take its port or a client cannot open a
//! connection, which no socket state shows.
//!
//! The syscall tracepoints fire only for these calls. The entry saves the
//! file descriptor and the address asked for (user memory, readable only
//! then) by thread; the exit looks at the result and, for a failure, finds
//! the socket behind the descriptor to tell a TCP socket from any other.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, generated::bpf_get_current_task},
    macros::{map, tracepoint},
    maps::{HashMap, LruHashMap},
    programs::TracePointContext,
};
use tcptrace_common::{
    AF_INET, AF_INET6, Event, FLAG_REPORTED, FLAG_REUSEADDR, FLAG_REUSEPORT, KernelLayout, kind,
};

use crate::{
    maps,
    socket::{self, read},
};

/// A system call in progress, by thread (`pid_tgid`). A plain hash (an LRU
/// one costs about twice as much per insert): every call that enters also
/// leaves through the exit tracepoint, a thread killed inside it too (the
/// call returns before the signal is delivered), so no entry is left behind.
#[map]
static CALLS: HashMap<u64, Call> = HashMap::with_max_entries(16_384, 0);

/// The last error each socket reported, by cookie, so that a `connect()`
/// failing with it is known to be counted as a socket error already.
#[map]
static REPORTED: LruHashMap<u64, u32> = LruHashMap::with_max_entries(4096, 0);

/// What the exit needs of the entry. The address is read only when the
/// call failed: the caller's memory is still there after the call.
#[repr(C)]
#[derive(Clone, Copy)]
struct Call {
    fd: u64,
    /// The `struct sockaddr` asked for (bind, connect); 0 for listen.
    address: u64,
}

/// An IPv4 or IPv6 address and port read from the caller's memory.
struct Address {
    family: u16,
    port: u16,
    addr: [u8; 16],
}

/// Syscall tracepoint records: the arguments from byte 16, 8 bytes each;
/// the return value at 16 on exit.
const FIRST_ARG: usize = 16;
const SECOND_ARG: usize = 24;
const RETURN_VALUE: usize = 16;

const EINTR: u32 = 4;
const EISCONN: u32 = 106;
const EALREADY: u32 = 114;
const EINPROGRESS: u32 = 115;

const S_IFMT: u16 = 0o170_000;
const S_IFSOCK: u16 = 0o140_000;

#[tracepoint(category = "syscalls", name = "sys_enter_bind")]
pub fn sys_enter_bind(ctx: TracePointContext) -> u32 {
    enter_with_address(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_bind")]
pub fn sys_exit_bind(ctx: TracePointContext) -> u32 {
    exit::<{ kind::BIND_ERROR }>(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    enter_with_address(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    exit::<{ kind::CONNECT_ERROR }>(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_listen")]
pub fn sys_enter_listen(ctx: TracePointContext) -> u32 {
    // SAFETY: in bounds of the listen tracepoint record.
    let fd: u64 = unsafe { ctx.read_at(FIRST_ARG) }.unwrap_or(u64::MAX);
    let _ = CALLS.insert(&bpf_get_current_pid_tgid(), &Call { fd, address: 0 }, 0);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_listen")]
pub fn sys_exit_listen(ctx: TracePointContext) -> u32 {
    exit::<{ kind::LISTEN_ERROR }>(&ctx);
    0
}

/// Notes that the socket `cookie` reported `errno` (`inet_sk_error_report`).
#[inline(always)]
pub fn reported(cookie: u64, errno: u32) {
    let _ = REPORTED.insert(&cookie, &errno, 0);
}

/// Saves the descriptor and the address argument of `bind()` or
/// `connect()`.
#[inline(always)]
fn enter_with_address(ctx: &TracePointContext) {
    // SAFETY: in bounds of the bind and connect tracepoint records.
    let call = unsafe {
        Call {
            fd: ctx.read_at::<u64>(FIRST_ARG).unwrap_or(u64::MAX),
            address: ctx.read_at::<u64>(SECOND_ARG).unwrap_or(0),
        }
    };
    let _ = CALLS.insert(&bpf_get_current_pid_tgid(), &call, 0);
}

/// The IPv4 or IPv6 address at `address` in the caller's memory; `None`
/// for other families (Unix sockets, `AF_UNSPEC` disconnects).
#[inline(always)]
fn read_address(address: u64) -> Option<Address> {
    let address = address as *const u8;
    let family: u16 = read_user(address, 0);
    // `sin_port` and `sin6_port` both follow the family.
    let port = u16::from_be(read_user(address, 2));
    let mut addr = [0u8; 16];
    if family == AF_INET {
        let v4: [u8; 4] = read_user(address, 4); // sin_addr
        addr[..4].copy_from_slice(&v4);
    } else if family == AF_INET6 {
        addr = read_user(address, 8); // sin6_addr
    } else {
        return None;
    }
    Some(Address { family, port, addr })
}

/// Generic over the kind so that each program gets its own copy of the code
/// that fills the event: shared, the compiler makes it a function of its
/// own, whose frame on top of the program's exceeds the 512-byte stack
/// older verifiers (6.1) allow for the two together.
#[inline(always)]
fn exit<const KIND: u8>(ctx: &TracePointContext) {
    let kind = KIND;
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    let Some(call) = (unsafe { CALLS.get(&pid_tgid) }).copied() else {
        return;
    };
    let _ = CALLS.remove(&pid_tgid);
    // SAFETY: in bounds of every syscall exit record.
    let ret: i64 = unsafe { ctx.read_at(RETURN_VALUE) }.unwrap_or(0);
    if ret >= 0 {
        return;
    }
    let errno = u32::try_from(ret.unsigned_abs()).unwrap_or(u32::MAX);
    // The connection goes on without the caller, or is already made.
    if kind == kind::CONNECT_ERROR && matches!(errno, EINPROGRESS | EALREADY | EISCONN | EINTR) {
        return;
    }
    let layout = maps::layout();
    let sk = socket_of(u32::try_from(call.fd).unwrap_or(u32::MAX), &layout);
    if sk.is_null() || read::<u16>(sk, layout.sock_protocol) != socket::IPPROTO_TCP {
        return;
    }
    let asked = if kind == kind::LISTEN_ERROR {
        None
    } else {
        let Some(address) = read_address(call.address) else {
            return;
        };
        Some(address)
    };
    maps::emit(kind, |event| {
        socket::derived_socket(event, sk, &layout);
        event.arg = errno;
        if let Some(asked) = &asked {
            event.family = asked.family;
        }
        if kind == kind::CONNECT_ERROR {
            if let Some(asked) = &asked {
                (event.daddr, event.dport) = (asked.addr, asked.port);
            }
            if event.cookie != 0
                // SAFETY: a copy is read; entries are only ever whole.
                && unsafe { REPORTED.get(&event.cookie) }.is_some_and(|&e| e == errno)
            {
                event.flags |= FLAG_REPORTED;
                let _ = REPORTED.remove(&event.cookie);
            }
        } else {
            if let Some(asked) = &asked {
                (event.saddr, event.sport) = (asked.addr, asked.port);
            }
            reuse_flags(event, sk, &layout);
        }
        socket::record_task(event);
    });
}

/// Reads a `T` at `base + offset` in the calling process's memory; zero if
/// it cannot be read.
#[inline(always)]
fn read_user<T: Copy + Default>(base: *const u8, offset: usize) -> T {
    // SAFETY: bpf_probe_read_user checks the user address and fails cleanly.
    unsafe { bpf_probe_read_user(base.wrapping_add(offset).cast::<T>()) }.unwrap_or_default()
}

/// The socket behind the calling thread's descriptor `fd`; NULL if it is
/// not a socket (or the descriptor is no longer open).
#[inline(always)]
fn socket_of(fd: u32, layout: &KernelLayout) -> *const u8 {
    // SAFETY: helper without arguments; the pointer is only probe-read.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let files = read::<usize>(task, layout.task_files) as *const u8;
    let fdt = read::<usize>(files, layout.files_fdt) as *const u8;
    if fd >= read::<u32>(fdt, layout.fdtable_max_fds) {
        return core::ptr::null();
    }
    let fds = read::<usize>(fdt, layout.fdtable_fd) as *const u8;
    let file = read::<usize>(fds, fd.wrapping_mul(8)) as *const u8;
    let inode = read::<usize>(file, layout.file_inode) as *const u8;
    if read::<u16>(inode, layout.inode_mode) & S_IFMT != S_IFSOCK {
        return core::ptr::null();
    }
    let socket = read::<usize>(file, layout.file_private_data) as *const u8;
    read::<usize>(socket, layout.socket_sk) as *const u8
}

/// `SO_REUSEADDR` (`skc_reuse`, 4 bits) and `SO_REUSEPORT` (`skc_reuseport`).
#[inline(always)]
fn reuse_flags(event: &mut Event, sk: *const u8, layout: &KernelLayout) {
    let reuse: u8 = read(sk, layout.common_reuse_byte);
    if (reuse >> layout.common_reuse_bit) & 0xf != 0 {
        event.flags |= FLAG_REUSEADDR;
    }
    let reuseport: u8 = read(sk, layout.common_reuseport_byte);
    if (reuseport >> layout.common_reuseport_bit) & 1 != 0 {
        event.flags |= FLAG_REUSEPORT;
    }
}
