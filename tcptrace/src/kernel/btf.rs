//! Minimal read-only parser for the kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! tcptrace only needs struct member offsets/sizes and enum values of the
//! running kernel, so each type is decoded just far enough to answer those
//! questions. Every record is still walked, because a type's id is its
//! position in the type section and one mis-sized record shifts all later ids.
//! Format reference: the kernel's `Documentation/bpf/btf.rst`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::support::files::{self, ReadError};

const MAGIC: u32 = 0xeb9f;
/// The magic as it reads from a big-endian file.
const MAGIC_SWAPPED: u32 = 0x9feb;
const HEADER_LEN: u32 = 24;
/// Limit on modifier chains and nesting, so cyclic (malformed) type graphs
/// produce an error instead of an endless loop or a stack overflow.
const MAX_DEPTH: u32 = 64;

const INT: u32 = 1;
const PTR: u32 = 2;
const ARRAY: u32 = 3;
const STRUCT: u32 = 4;
const UNION: u32 = 5;
const ENUM: u32 = 6;
// 7 = FWD and 12 = FUNC carry no trailing data and are never sized or entered.
const TYPEDEF: u32 = 8;
const VOLATILE: u32 = 9;
const CONST: u32 = 10;
const RESTRICT: u32 = 11;
const FUNC_PROTO: u32 = 13;
const VAR: u32 = 14;
const DATASEC: u32 = 15;
const FLOAT: u32 = 16;
const DECL_TAG: u32 = 17;
const TYPE_TAG: u32 = 18;
const ENUM64: u32 = 19;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("kernel BTF not found at {}: tcptrace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y", .path.display())]
    NotFound { path: PathBuf },
    /// The cause is left to `source()` (not repeated here) so error chains print it once.
    #[error("cannot read kernel BTF at {}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not a file tcptrace reads as BTF (a device, a FIFO, too large): a
    /// usage error.
    #[error("cannot use {} as kernel BTF: it {reason}", .path.display())]
    Unsuitable { path: PathBuf, reason: ReadError },
    #[error("malformed BTF: {0}")]
    Malformed(String),
    #[error("type `{name}` not found in kernel BTF: this kernel is not supported by tcptrace")]
    TypeNotFound { name: String },
    #[error(
        "member `{member}` not found in `{ty}` in kernel BTF: this kernel is not supported by tcptrace"
    )]
    MemberNotFound { ty: String, member: String },
    #[error("member `{member}` of `{ty}` is a bitfield, so it has no byte offset or size")]
    Bitfield { ty: String, member: String },
    #[error(
        "`{ty}` is not a struct or union, so member `{member}` cannot be looked up in it (pointers are not followed)"
    )]
    NotComposite { ty: String, member: String },
    #[error("member `{member}` of `{ty}` has no size (void, function or incomplete type)")]
    Unsized { ty: String, member: String },
}

fn malformed(msg: impl Into<String>) -> BtfError {
    BtfError::Malformed(msg.into())
}

fn type_not_found(name: &str) -> BtfError {
    BtfError::TypeNotFound {
        name: name.to_owned(),
    }
}

fn to_u32(value: u64, what: &str) -> Result<u32, BtfError> {
    u32::try_from(value).map_err(|_| malformed(format!("{what} {value} overflows u32")))
}

/// The parts of a BTF type that tcptrace's queries need.
#[derive(Debug)]
enum Type {
    /// Void (id 0), FWD, FUNC, VAR, `DECL_TAG`: never sized or entered.
    Opaque,
    /// `FUNC_PROTO`: only its parameter count is kept.
    FuncProto {
        params: u32,
    },
    Int {
        size: u32,
        bits: u32,
        bit_offset: u32,
    },
    /// Pointer to the type with this id.
    Ptr(u32),
    Array {
        elem: u32,
        nelems: u32,
    },
    /// STRUCT or UNION.
    Composite {
        size: u32,
        members: Vec<Member>,
    },
    /// ENUM or ENUM64: (name offset, value) in declaration order.
    Enum {
        size: u32,
        values: Vec<(u32, i64)>,
    },
    /// FLOAT or DATASEC: sized, but nothing inside we care about.
    Sized(u32),
    /// TYPEDEF, VOLATILE, CONST, RESTRICT, `TYPE_TAG`: transparent, names the next type.
    Alias(u32),
}

#[derive(Debug, Clone, Copy)]
struct Member {
    name_off: u32,
    ty: u32,
    bit_offset: u32,
    bitfield_size: u32,
}

/// Parsed kernel BTF: types indexed by id plus the string table.
#[derive(Debug)]
pub struct Btf {
    /// Index = type id; entry 0 is void.
    types: Vec<Type>,
    strings: Vec<u8>,
    /// First STRUCT/UNION definition per name (FWDs are never indexed).
    structs: HashMap<String, u32>,
    enums: HashMap<String, u32>,
    typedefs: HashMap<String, u32>,
}

/// Bounds-checked little-endian cursor; `None` means "ran past the end".
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn u32(&mut self) -> Option<u32> {
        let bytes = self.buf.get(self.pos..self.pos.checked_add(4)?)?;
        self.pos += 4;
        Some(u32::from_le_bytes(bytes.try_into().ok()?))
    }

    fn skip(&mut self, count: u32, each: usize) -> Option<()> {
        let end = usize::try_from(count)
            .ok()?
            .checked_mul(each)?
            .checked_add(self.pos)?;
        (end <= self.buf.len()).then(|| self.pos = end)
    }
}

/// NUL-terminated UTF-8 string at `off` in the string section.
fn str_at(strings: &[u8], off: u32) -> Result<&str, BtfError> {
    let tail = usize::try_from(off)
        .ok()
        .and_then(|o| strings.get(o..))
        .ok_or_else(|| malformed(format!("name offset {off} is outside the string section")))?;
    let s = tail.split(|&b| b == 0).next().unwrap_or_default();
    if s.len() == tail.len() {
        return Err(malformed(format!(
            "name at offset {off} is not NUL-terminated"
        )));
    }
    std::str::from_utf8(s).map_err(|_| malformed(format!("name at offset {off} is not UTF-8")))
}

/// The `off`/`len` section, whose offset counts from the end of the header.
fn section<'a>(
    bytes: &'a [u8],
    hdr_len: u32,
    off: u32,
    len: u32,
    what: &str,
) -> Result<&'a [u8], BtfError> {
    let start = u64::from(hdr_len) + u64::from(off);
    let end = start + u64::from(len);
    usize::try_from(start)
        .ok()
        .zip(usize::try_from(end).ok())
        .and_then(|(s, e)| bytes.get(s..e))
        .ok_or_else(|| {
            malformed(format!(
                "{what} section (bytes {start}..{end}) runs past the end of the {}-byte file",
                bytes.len()
            ))
        })
}

/// Decodes the trailing data of one type record; `None` if it is truncated.
fn decode(
    r: &mut Reader,
    kind: u32,
    vlen: u32,
    kind_flag: bool,
    size_or_type: u32,
) -> Option<Type> {
    Some(match kind {
        INT => {
            // Encoding word: bits 0-7 = used bits, 16-23 = bit offset.
            let enc = r.u32()?;
            Type::Int {
                size: size_or_type,
                bits: enc & 0xff,
                bit_offset: (enc >> 16) & 0xff,
            }
        }
        PTR => Type::Ptr(size_or_type),
        ARRAY => {
            let (elem, _index_type, nelems) = (r.u32()?, r.u32()?, r.u32()?);
            Type::Array { elem, nelems }
        }
        STRUCT | UNION => {
            let members = (0..vlen)
                .map(|_| {
                    let (name_off, ty, off) = (r.u32()?, r.u32()?, r.u32()?);
                    // With kind_flag set the offset word packs the bitfield size
                    // in its top 8 bits and the bit offset in the low 24.
                    let (bit_offset, bitfield_size) = if kind_flag {
                        (off & 0xff_ffff, off >> 24)
                    } else {
                        (off, 0)
                    };
                    Some(Member {
                        name_off,
                        ty,
                        bit_offset,
                        bitfield_size,
                    })
                })
                .collect::<Option<_>>()?;
            Type::Composite {
                size: size_or_type,
                members,
            }
        }
        ENUM | ENUM64 => {
            let values = (0..vlen)
                .map(|_| {
                    let (name_off, lo) = (r.u32()?, r.u32()?);
                    let value = if kind == ENUM64 {
                        // Same bits whether signed or not; unsigned values above i64::MAX wrap.
                        ((u64::from(r.u32()?) << 32) | u64::from(lo)).cast_signed()
                    } else if kind_flag {
                        i64::from(lo.cast_signed()) // kind_flag marks a signed enum
                    } else {
                        i64::from(lo)
                    };
                    Some((name_off, value))
                })
                .collect::<Option<_>>()?;
            Type::Enum {
                size: size_or_type,
                values,
            }
        }
        TYPEDEF | VOLATILE | CONST | RESTRICT | TYPE_TAG => Type::Alias(size_or_type),
        FUNC_PROTO => {
            r.skip(vlen, 8)?; // (name_off, type) per parameter
            Type::FuncProto { params: vlen }
        }
        VAR | DECL_TAG => {
            r.skip(1, 4)?; // linkage / component_idx
            Type::Opaque
        }
        DATASEC => {
            r.skip(vlen, 12)?; // (type, offset, size) per variable
            Type::Sized(size_or_type)
        }
        FLOAT => Type::Sized(size_or_type),
        _ => Type::Opaque, // FWD, FUNC; unknown kinds were rejected by the caller
    })
}

/// The bytes of a BTF file: a regular file of at most
/// [`files::BTF_MAX_BYTES`].
///
/// # Errors
/// `NotFound` if the file does not exist, `Unsuitable` if it is not a
/// regular file or too large, `Io` if it cannot be read.
pub fn read(path: &Path) -> Result<Vec<u8>, BtfError> {
    files::read_bounded(path, files::BTF_MAX_BYTES).map_err(|error| match error {
        ReadError::NotFound => BtfError::NotFound {
            path: path.to_owned(),
        },
        ReadError::Io(source) => BtfError::Io {
            path: path.to_owned(),
            source,
        },
        reason => BtfError::Unsuitable {
            path: path.to_owned(),
            reason,
        },
    })
}

impl Btf {
    /// Reads and parses a BTF file, normally `/sys/kernel/btf/vmlinux`.
    ///
    /// # Errors
    /// Those of [`read`], and `Malformed` if it is not valid little-endian
    /// BTF.
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        Self::parse(&read(path)?)
    }

    /// Parses raw little-endian BTF bytes.
    ///
    /// # Errors
    /// `Malformed` for a bad magic or version, a truncated header or section,
    /// a type record running past its section, an unknown kind, or a bad name.
    pub fn parse(bytes: &[u8]) -> Result<Self, BtfError> {
        let mut header = Reader { buf: bytes, pos: 0 };
        let mut field = || {
            header
                .u32()
                .ok_or_else(|| malformed("file is shorter than the 24-byte BTF header"))
        };
        // First word: magic (u16), version (u8), flags (u8).
        let first = field()?;
        let [hdr_len, type_off, type_len, str_off, str_len] =
            [field()?, field()?, field()?, field()?, field()?];
        match first & 0xffff {
            MAGIC => {}
            MAGIC_SWAPPED => return Err(malformed("big-endian BTF is not supported")),
            other => {
                return Err(malformed(format!(
                    "bad magic {other:#06x}, expected 0xeb9f"
                )));
            }
        }
        let version = (first >> 16) & 0xff;
        if version != 1 {
            return Err(malformed(format!(
                "unsupported BTF version {version}, expected 1"
            )));
        }
        if hdr_len < HEADER_LEN {
            return Err(malformed(format!(
                "header length {hdr_len} is shorter than {HEADER_LEN}"
            )));
        }
        let type_section = section(bytes, hdr_len, type_off, type_len, "type")?;
        let strings = section(bytes, hdr_len, str_off, str_len, "string")?;

        let mut btf = Btf {
            types: vec![Type::Opaque],
            strings: strings.to_vec(),
            structs: HashMap::new(),
            enums: HashMap::new(),
            typedefs: HashMap::new(),
        };
        let mut r = Reader {
            buf: type_section,
            pos: 0,
        };
        while r.pos < type_section.len() {
            let id = u32::try_from(btf.types.len()).map_err(|_| malformed("too many types"))?;
            let truncated = || {
                malformed(format!(
                    "type id {id} runs past the end of the type section"
                ))
            };
            // Common record header: name_off, info, size-or-type.
            let (Some(name_off), Some(info), Some(size_or_type)) = (r.u32(), r.u32(), r.u32())
            else {
                return Err(truncated());
            };
            let kind = (info >> 24) & 0x1f;
            if kind == 0 || kind > ENUM64 {
                // Its trailing size is unknown, so no later id could be trusted.
                return Err(malformed(format!(
                    "type id {id} has unknown kind {kind}; tcptrace's BTF parser needs updating"
                )));
            }
            let ty = decode(&mut r, kind, info & 0xffff, info >> 31 == 1, size_or_type)
                .ok_or_else(truncated)?;
            let index = match (kind, &ty) {
                (STRUCT | UNION, _) => Some(&mut btf.structs),
                (_, Type::Enum { .. }) => Some(&mut btf.enums),
                (TYPEDEF, _) => Some(&mut btf.typedefs),
                _ => None,
            };
            if let Some(index) = index {
                let name = str_at(strings, name_off)?;
                if !name.is_empty() && !index.contains_key(name) {
                    index.insert(name.to_owned(), id);
                }
            }
            btf.types.push(ty);
        }
        Ok(btf)
    }

    /// Byte offset of a member reached through a path of member names, e.g.
    /// `member_offset("sock", &["__sk_common", "skc_family"])`. Members of
    /// anonymous structs/unions are found transparently, as in C, and
    /// typedefs/qualifiers are looked through when descending. An empty path
    /// means the struct itself (offset 0).
    ///
    /// # Errors
    /// `TypeNotFound`, `MemberNotFound`, `NotComposite` (path continues through
    /// a non-struct), `Bitfield` (final member has no byte offset), `Malformed`.
    pub fn member_offset(&self, struct_name: &str, path: &[&str]) -> Result<u32, BtfError> {
        let (offset, _) = self.walk(struct_name, path)?;
        to_u32(offset, "member offset")
    }

    /// Size in bytes of the member reached by `path` (see [`Btf::member_offset`]).
    ///
    /// # Errors
    /// As [`Btf::member_offset`], plus `Unsized` for void/function/incomplete types.
    pub fn member_size(&self, struct_name: &str, path: &[&str]) -> Result<u32, BtfError> {
        let (_, ty) = self.walk(struct_name, path)?;
        let unsized_err = || BtfError::Unsized {
            ty: struct_name.to_owned(),
            member: path.join("."),
        };
        to_u32(self.size_of(ty, 0)?.ok_or_else(unsized_err)?, "member size")
    }

    /// Size of a named struct or union.
    ///
    /// # Errors
    /// `TypeNotFound` if no struct/union of that name is defined.
    pub fn struct_size(&self, name: &str) -> Result<u32, BtfError> {
        match self.ty(self.struct_id(name)?)? {
            Type::Composite { size, .. } => Ok(*size),
            _ => Err(malformed(format!(
                "struct index for `{name}` points at a non-struct"
            ))),
        }
    }

    /// Enumerators of a named enum (ENUM or ENUM64), in declaration order.
    ///
    /// # Errors
    /// `TypeNotFound` if no enum of that name is defined, `Malformed` for bad names.
    pub fn enum_values(&self, name: &str) -> Result<Vec<(String, i64)>, BtfError> {
        let id = *self.enums.get(name).ok_or_else(|| type_not_found(name))?;
        let Type::Enum { values, .. } = self.ty(id)? else {
            return Err(malformed(format!(
                "enum index for `{name}` points at a non-enum"
            )));
        };
        values
            .iter()
            .map(|&(off, value)| Ok((str_at(&self.strings, off)?.to_owned(), value)))
            .collect()
    }

    /// Number of arguments of the BTF tracepoint `name`, from its
    /// `btf_trace_<name>` typedef (a pointer to a prototype whose first
    /// parameter is the tracepoint's context, not an argument).
    pub fn tracepoint_args(&self, name: &str) -> Result<u32, BtfError> {
        let typedef = format!("btf_trace_{name}");
        let &id = self
            .typedefs
            .get(&typedef)
            .ok_or_else(|| type_not_found(&typedef))?;
        match self.resolve(id)? {
            &Type::Ptr(target) => match self.resolve(target)? {
                Type::FuncProto { params } => Ok(params.saturating_sub(1)),
                _ => Err(malformed(format!(
                    "{typedef} does not point to a prototype"
                ))),
            },
            _ => Err(malformed(format!("{typedef} is not a pointer"))),
        }
    }

    fn struct_id(&self, name: &str) -> Result<u32, BtfError> {
        self.structs
            .get(name)
            .copied()
            .ok_or_else(|| type_not_found(name))
    }

    fn ty(&self, id: u32) -> Result<&Type, BtfError> {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.types.get(i))
            .ok_or_else(|| malformed(format!("reference to nonexistent type id {id}")))
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Result<&Type, BtfError> {
        for _ in 0..MAX_DEPTH {
            match self.ty(id)? {
                Type::Alias(next) => id = *next,
                other => return Ok(other),
            }
        }
        Err(malformed(format!(
            "typedef/qualifier chain through type id {id} is too long or cyclic"
        )))
    }

    /// Size in bytes of type `id`, or `None` if it has none.
    fn size_of(&self, id: u32, depth: u32) -> Result<Option<u64>, BtfError> {
        if depth > MAX_DEPTH {
            return Err(malformed("arrays nested too deeply (cyclic type?)"));
        }
        Ok(match self.resolve(id)? {
            Type::Int { size, .. }
            | Type::Composite { size, .. }
            | Type::Enum { size, .. }
            | Type::Sized(size) => Some(u64::from(*size)),
            // tcptrace only runs on 64-bit kernels.
            Type::Ptr(_) => Some(8),
            Type::Array { elem, nelems } => match self.size_of(*elem, depth + 1)? {
                Some(elem_size) => Some(
                    elem_size
                        .checked_mul(u64::from(*nelems))
                        .ok_or_else(|| malformed("array size overflows"))?,
                ),
                None => None,
            },
            // `resolve` never returns an Alias.
            Type::Opaque | Type::FuncProto { .. } | Type::Alias(_) => None,
        })
    }

    /// Finds member `name` in `members`, descending into anonymous struct/union
    /// members as C does. Returns its bit offset relative to `members`' owner.
    /// `seen` holds anonymous member types already searched: searching one again
    /// cannot succeed, so skipping it bounds the work even on cyclic input.
    fn find_member(
        &self,
        members: &[Member],
        name: &str,
        depth: u32,
        seen: &mut HashSet<u32>,
    ) -> Result<Option<(u64, Member)>, BtfError> {
        if depth > MAX_DEPTH {
            return Err(malformed(
                "anonymous members nested too deeply (cyclic type?)",
            ));
        }
        for m in members {
            let m_name = str_at(&self.strings, m.name_off)?;
            if m_name.is_empty() {
                if seen.insert(m.ty)
                    && let Type::Composite { members: inner, .. } = self.resolve(m.ty)?
                    && let Some((off, found)) = self.find_member(inner, name, depth + 1, seen)?
                {
                    return Ok(Some((u64::from(m.bit_offset) + off, found)));
                }
            } else if m_name == name {
                return Ok(Some((u64::from(m.bit_offset), *m)));
            }
        }
        Ok(None)
    }

    /// Walks `path` from struct `struct_name`; returns the final member's byte
    /// offset and type id (the struct itself for an empty path).
    fn walk(&self, struct_name: &str, path: &[&str]) -> Result<(u64, u32), BtfError> {
        let (bits, id, width) = self.walk_bits(struct_name, path)?;
        if width.is_some() || bits % 8 != 0 {
            return Err(BtfError::Bitfield {
                ty: struct_name.to_owned(),
                member: path.join("."),
            });
        }
        Ok((bits / 8, id))
    }

    /// Bit offset and width of a bitfield member reached by `path` (see
    /// [`Btf::member_offset`]), e.g. `sock_common.skc_reuse`.
    ///
    /// # Errors
    /// As [`Btf::member_offset`]; `Malformed` if the member is no bitfield.
    pub fn bitfield(&self, struct_name: &str, path: &[&str]) -> Result<(u32, u32), BtfError> {
        let (bits, _, width) = self.walk_bits(struct_name, path)?;
        let width = width.ok_or_else(|| {
            malformed(format!(
                "{struct_name}.{} is not a bitfield",
                path.join(".")
            ))
        })?;
        Ok((to_u32(bits, "bit offset")?, width))
    }

    /// Walks `path`: the final member's offset in bits, its type id, and its
    /// width in bits if it is a bitfield.
    fn walk_bits(
        &self,
        struct_name: &str,
        path: &[&str],
    ) -> Result<(u64, u32, Option<u32>), BtfError> {
        let mut id = self.struct_id(struct_name)?;
        let (mut bits, mut width) = (0u64, None);
        // "sock.__sk_common" etc., for error messages.
        let mut container = struct_name.to_owned();
        for &member in path {
            let Type::Composite { members, .. } = self.resolve(id)? else {
                return Err(BtfError::NotComposite {
                    ty: container,
                    member: member.to_owned(),
                });
            };
            let not_found = || BtfError::MemberNotFound {
                ty: container.clone(),
                member: member.to_owned(),
            };
            let (off, m) = self
                .find_member(members, member, 0, &mut HashSet::new())?
                .ok_or_else(not_found)?;
            bits += off;
            // Old-style bitfields (no kind_flag) point at an INT narrower
            // than its storage, its own bit offset added.
            width = match self.resolve(m.ty)? {
                _ if m.bitfield_size != 0 => Some(m.bitfield_size),
                Type::Int {
                    size,
                    bits: int_bits,
                    bit_offset,
                } if *bit_offset != 0 || u64::from(*int_bits) < u64::from(*size) * 8 => {
                    bits += u64::from(*bit_offset);
                    Some(*int_bits)
                }
                _ => None,
            };
            id = m.ty;
            container.push('.');
            container.push_str(member);
        }
        Ok((bits, id, width))
    }
}

#[cfg(test)]
mod tests;
