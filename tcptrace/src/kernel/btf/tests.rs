//! Tests of the BTF reader: hand-built type sections, garbage, and (as
//! ignored tests) the running kernel's BTF.

use super::*;
use crate::kernel::version::KernelVersion;

const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

fn kernel() -> Btf {
    Btf::from_file(Path::new(VMLINUX)).expect("the running kernel's BTF parses")
}

#[test]
#[ignore = "reads the running kernel's BTF (cargo xtask test runs it)"]
fn kernel_sock_layout_is_consistent() {
    let btf = kernel();
    assert_eq!(btf.member_offset("sock", &["__sk_common"]).unwrap(), 0);
    assert_eq!(
        btf.member_offset("sock", &["__sk_common", "skc_family"])
            .unwrap(),
        btf.member_offset("sock_common", &["skc_family"]).unwrap()
    );
    assert_eq!(btf.member_size("sock_common", &["skc_family"]).unwrap(), 2);
    assert_eq!(btf.member_size("sock_common", &["skc_dport"]).unwrap(), 2);
    assert_eq!(btf.member_size("sock_common", &["skc_daddr"]).unwrap(), 4);
    assert_eq!(
        btf.member_size("sock_common", &["skc_v6_daddr"]).unwrap(),
        16
    );
    assert_eq!(btf.member_size("sock_common", &["skc_net"]).unwrap(), 8);
    // skc_dport and skc_num share an anonymous struct inside an anonymous union.
    assert_eq!(
        btf.member_offset("sock_common", &["skc_num"]).unwrap(),
        btf.member_offset("sock_common", &["skc_dport"]).unwrap() + 2
    );
    assert_eq!(btf.member_offset("inet_sock", &["sk"]).unwrap(), 0);
    assert!(
        btf.member_offset("inet_sock", &["inet_sport"]).unwrap()
            >= btf.struct_size("sock").unwrap()
    );
    assert_eq!(
        btf.member_size("inet_sock", &["sk"]).unwrap(),
        btf.struct_size("sock").unwrap()
    );
    assert!(
        btf.member_offset("inet_timewait_sock", &["tw_timer"])
            .is_ok()
    );
    assert!(
        btf.member_offset("inet_timewait_sock", &["tw_substate"])
            .is_ok()
    );
    assert!(btf.member_offset("net", &["ns", "inum"]).is_ok());
    assert!(
        btf.member_offset("inet_connection_sock", &["icsk_probes_out"])
            .is_ok()
    );
    assert_eq!(btf.member_size("timer_list", &["function"]).unwrap(), 8);
    assert_eq!(
        btf.member_size("sock", &["sk_timer"]).unwrap(),
        btf.struct_size("timer_list").unwrap()
    );
    assert!(matches!(
        btf.member_offset("sock", &["no_such_member"]),
        Err(BtfError::MemberNotFound { .. })
    ));
    assert!(matches!(
        btf.struct_size("no_such_struct"),
        Err(BtfError::TypeNotFound { .. })
    ));
}

#[test]
#[ignore = "reads the running kernel's BTF (cargo xtask test runs it)"]
fn kernel_tracepoint_arguments() {
    let btf = kernel();
    assert_eq!(btf.tracepoint_args("inet_sock_set_state").ok(), Some(3));
    assert_eq!(btf.tracepoint_args("timer_cancel").ok(), Some(1));
    assert_eq!(btf.tracepoint_args("tcp_receive_reset").ok(), Some(1));
    // (sk, skb) before 6.10, (sk, skb, reason) since.
    assert!(matches!(btf.tracepoint_args("tcp_send_reset"), Ok(2 | 3)));
    assert!(matches!(
        btf.tracepoint_args("no_such_tracepoint"),
        Err(BtfError::TypeNotFound { .. })
    ));
}

#[test]
#[ignore = "reads the running kernel's BTF (cargo xtask test runs it)"]
fn kernel_enums() {
    let btf = kernel();
    // The reset reasons arrived in 6.10 (the enum and the argument of
    // tcp_send_reset together).
    let kernel = KernelVersion::running().expect("kernel version");
    match btf.enum_values("sk_rst_reason") {
        Ok(reasons) => {
            assert!(kernel >= KernelVersion::new(6, 10), "{kernel} has them");
            assert!(reasons.contains(&("SK_RST_REASON_NOT_SPECIFIED".to_owned(), 0)));
            assert!(reasons.iter().any(|(n, _)| n == "SK_RST_REASON_NO_SOCKET"));
        }
        Err(error) => {
            assert!(kernel < KernelVersion::new(6, 10), "{kernel}: {error}");
            assert!(matches!(error, BtfError::TypeNotFound { .. }), "{error}");
        }
    }
    let drops = btf.enum_values("skb_drop_reason").unwrap();
    let names: Vec<&str> = drops.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"SKB_DROP_REASON_NOT_SPECIFIED"));
    assert!(names.contains(&"SKB_DROP_REASON_NO_SOCKET"));
    // Declaration order: the generated enums count up from 0.
    assert_eq!(drops.first().map(|(_, v)| *v), Some(0));
}

#[test]
fn missing_file_says_what_to_do() {
    let err = Btf::from_file(Path::new("/nonexistent/btf/vmlinux")).unwrap_err();
    assert!(matches!(err, BtfError::NotFound { .. }));
    assert!(err.to_string().contains("CONFIG_DEBUG_INFO_BTF=y"));
}

/// Emits header + type records + string table.
struct Builder {
    types: Vec<u8>,
    strings: Vec<u8>,
    next_id: u32,
}

impl Builder {
    fn new() -> Self {
        Self {
            types: Vec::new(),
            strings: vec![0],
            next_id: 1,
        }
    }

    fn str(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        let off = u32::try_from(self.strings.len()).unwrap();
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        off
    }

    /// Appends a type record and returns its id.
    fn add(
        &mut self,
        name: &str,
        kind: u32,
        kind_flag: bool,
        vlen: u32,
        size_or_type: u32,
        extra: &[u32],
    ) -> u32 {
        let info = (u32::from(kind_flag) << 31) | (kind << 24) | vlen;
        let name_off = self.str(name);
        for word in [name_off, info, size_or_type].iter().chain(extra) {
            self.types.extend_from_slice(&word.to_le_bytes());
        }
        self.next_id += 1;
        self.next_id - 1
    }

    /// Member / enumerator words: `(name, a, b)` -> `[name_off, a, b]`.
    fn entries(&mut self, list: &[(&str, u32, u32)]) -> Vec<u32> {
        list.iter()
            .flat_map(|&(n, a, b)| [self.str(n), a, b])
            .collect()
    }

    fn build(&self) -> Vec<u8> {
        let type_len = u32::try_from(self.types.len()).unwrap();
        let str_len = u32::try_from(self.strings.len()).unwrap();
        let mut out = vec![0x9f, 0xeb, 1, 0];
        for word in [HEADER_LEN, 0, type_len, type_len, str_len] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// One of every kind, the id-sensitive ones first, then the structs/enums under test.
fn sample() -> Builder {
    let mut b = Builder::new();
    b.add("outer", 7, false, 0, 0, &[]); // FWD: must not shadow the struct
    let int = b.add("int", INT, false, 0, 4, &[(1 << 24) | 32]);
    let ushort = b.add("unsigned short", INT, false, 0, 2, &[16]);
    let c = b.add("", CONST, false, 0, ushort, &[]);
    let v = b.add("", VOLATILE, false, 0, c, &[]);
    let u16_t = b.add("u16_t", TYPEDEF, false, 0, v, &[]);
    let ptr = b.add("", PTR, false, 0, int, &[]);
    let restrict = b.add("", RESTRICT, false, 0, ptr, &[]);
    let tagged = b.add("user", TYPE_TAG, false, 0, restrict, &[]);
    let proto = b.add("", FUNC_PROTO, false, 2, int, &[0, int, 0, ushort]);
    b.add("f", 12, false, 1, proto, &[]);
    let var = b.add("v", VAR, false, 0, int, &[1]);
    b.add(".data", DATASEC, false, 1, 4, &[var, 0, 4]);
    b.add("double", FLOAT, false, 0, 8, &[]);
    b.add("tag", DECL_TAG, false, 0, int, &[u32::MAX]);
    let arr = b.add("", ARRAY, false, 0, 0, &[u16_t, int, 3]);
    let m = b.entries(&[("x", int, 0), ("y", arr, 0)]);
    let anon = b.add("", UNION, false, 2, 8, &m);
    // kind_flag: offsets are (bitfield_size << 24) | bit_offset.
    let m = b.entries(&[
        ("a", int, 0),
        ("", anon, 32),
        ("c", u16_t, 96),
        ("flags", int, (3 << 24) | 0x70),
        ("p", tagged, 128),
    ]);
    let outer = b.add("outer", STRUCT, true, 5, 24, &m);
    let outer_t = b.add("outer_t", TYPEDEF, false, 0, outer, &[]);
    let m = b.entries(&[("n", int, 0), ("o", outer_t, 64)]);
    b.add("wrap", STRUCT, false, 2, 32, &m);
    let m = b.entries(&[("BIG_NEG", u32::MAX, u32::MAX), ("BIG_HUGE", 0, 1)]);
    b.add("big", ENUM64, true, 2, 8, &m);
    let (neg, one, max) = (b.str("SMALL_NEG"), b.str("SMALL_ONE"), b.str("U_MAX"));
    b.add(
        "small",
        ENUM,
        true,
        2,
        4,
        &[neg, (-5i32).cast_unsigned(), one, 1],
    );
    b.add("uns", ENUM, false, 1, 4, &[max, u32::MAX]);
    b
}

#[test]
fn offsets_through_anonymous_unions_and_typedefs() {
    let btf = Btf::parse(&sample().build()).unwrap();
    assert_eq!(btf.struct_size("outer").unwrap(), 24);
    assert_eq!(btf.struct_size("wrap").unwrap(), 32);
    assert_eq!(btf.member_offset("outer", &[]).unwrap(), 0);
    assert_eq!(btf.member_offset("outer", &["a"]).unwrap(), 0);
    assert_eq!(btf.member_offset("outer", &["x"]).unwrap(), 4);
    assert_eq!(btf.member_offset("outer", &["y"]).unwrap(), 4);
    assert_eq!(btf.member_offset("outer", &["c"]).unwrap(), 12);
    assert_eq!(btf.member_offset("outer", &["p"]).unwrap(), 16);
    assert_eq!(btf.member_size("outer", &["x"]).unwrap(), 4);
    assert_eq!(btf.member_size("outer", &["y"]).unwrap(), 6);
    assert_eq!(btf.member_size("outer", &["c"]).unwrap(), 2);
    assert_eq!(btf.member_size("outer", &["p"]).unwrap(), 8);
    assert_eq!(btf.member_offset("wrap", &["o", "y"]).unwrap(), 12);
    assert_eq!(btf.member_size("wrap", &["o"]).unwrap(), 24);
}

#[test]
fn lookup_errors() {
    let btf = Btf::parse(&sample().build()).unwrap();
    let err = btf.member_offset("outer", &["flags"]).unwrap_err();
    assert!(
        matches!(&err, BtfError::Bitfield { ty, member } if ty == "outer" && member == "flags"),
        "{err}"
    );
    assert!(matches!(
        btf.member_size("outer", &["flags"]),
        Err(BtfError::Bitfield { .. })
    ));
    let err = btf.member_offset("wrap", &["o", "nope"]).unwrap_err();
    assert!(
        matches!(&err, BtfError::MemberNotFound { ty, member } if ty == "wrap.o" && member == "nope"),
        "{err}"
    );
    assert!(matches!(
        btf.member_offset("outer", &[""]),
        Err(BtfError::MemberNotFound { .. })
    ));
    assert!(matches!(
        btf.member_offset("outer", &["a", "b"]),
        Err(BtfError::NotComposite { .. })
    ));
    assert!(matches!(
        btf.struct_size("u16_t"),
        Err(BtfError::TypeNotFound { .. })
    ));
    assert!(matches!(
        btf.enum_values("outer"),
        Err(BtfError::TypeNotFound { .. })
    ));
    for err in [
        btf.member_offset("outer", &["a", "b"]).unwrap_err(),
        btf.struct_size("nope").unwrap_err(),
    ] {
        let msg = err.to_string();
        assert!(
            !msg.contains('\n') && msg.starts_with(|c: char| c.is_lowercase() || c == '`'),
            "{msg}"
        );
    }
}

#[test]
fn enum_values_keep_order_and_sign() {
    let btf = Btf::parse(&sample().build()).unwrap();
    assert_eq!(
        btf.enum_values("big").unwrap(),
        [("BIG_NEG".into(), -1), ("BIG_HUGE".into(), 1 << 32)]
    );
    assert_eq!(
        btf.enum_values("small").unwrap(),
        [("SMALL_NEG".into(), -5), ("SMALL_ONE".into(), 1)]
    );
    assert_eq!(
        btf.enum_values("uns").unwrap(),
        [("U_MAX".to_owned(), i64::from(u32::MAX))]
    );
}

#[test]
fn every_truncation_is_an_error() {
    let blob = sample().build();
    for len in 0..blob.len() {
        let prefix = blob.get(..len).unwrap();
        assert!(
            matches!(Btf::parse(prefix), Err(BtfError::Malformed(_))),
            "prefix of {len} bytes"
        );
    }
}

#[test]
fn malformed_headers_and_sections() {
    let blob = sample().build();
    let patched = |at: usize, bytes: &[u8]| {
        let mut b = blob.clone();
        b.splice(at..at + bytes.len(), bytes.iter().copied());
        Btf::parse(&b).unwrap_err().to_string()
    };
    assert!(patched(0, &[0xeb, 0x9f]).contains("big-endian"));
    assert!(patched(0, &[0x12, 0x34]).contains("bad magic"));
    assert!(patched(2, &[2]).contains("version"));
    assert!(patched(4, &8u32.to_le_bytes()).contains("header length"));
    assert!(patched(12, &u32::MAX.to_le_bytes()).contains("type section"));
    assert!(patched(20, &(u32::MAX - 30).to_le_bytes()).contains("string section"));

    // Section lengths agree with the header but the last record is cut short.
    let mut b = sample();
    b.types.truncate(b.types.len() - 4);
    assert!(
        Btf::parse(&b.build())
            .unwrap_err()
            .to_string()
            .contains("runs past the end of the type section")
    );

    let mut b = sample();
    b.add("", 31, false, 0, 0, &[]);
    assert!(
        Btf::parse(&b.build())
            .unwrap_err()
            .to_string()
            .contains("unknown kind 31")
    );

    // A name offset beyond the string table.
    let mut b = Builder::new();
    b.types
        .extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0]);
    assert!(matches!(
        Btf::parse(&b.build()),
        Err(BtfError::Malformed(_))
    ));
}

#[test]
fn cyclic_or_dangling_types_are_errors_not_hangs() {
    let mut b = Builder::new();
    let int = b.add("int", INT, false, 0, 4, &[32]);
    // Typedefs 2 -> 3 -> 2, and a struct that contains itself anonymously.
    b.add("loop_a", TYPEDEF, false, 0, 3, &[]);
    b.add("loop_b", TYPEDEF, false, 0, 2, &[]);
    let m = b.entries(&[
        ("l", 2, 0),
        ("d", 999, 32),
        ("i", int, 96),
        ("", 4, 64),
        ("fw", 5, 128),
    ]);
    b.add("s", STRUCT, false, 5, 24, &m);
    b.add("opaque", 7, false, 0, 0, &[]);
    let btf = Btf::parse(&b.build()).unwrap();
    assert!(matches!(
        btf.member_size("s", &["fw"]),
        Err(BtfError::Unsized { .. })
    ));
    assert!(matches!(
        btf.member_size("s", &["l"]),
        Err(BtfError::Malformed(_))
    ));
    assert!(matches!(
        btf.member_size("s", &["d"]),
        Err(BtfError::Malformed(_))
    ));
    assert!(matches!(
        btf.member_offset("s", &["missing"]),
        Err(BtfError::MemberNotFound { .. })
    ));
    assert_eq!(btf.member_offset("s", &["i"]).unwrap(), 12);
}
