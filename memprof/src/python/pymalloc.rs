//! pymalloc, CPython's allocator of small objects: where its entry points
//! are in an interpreter's binary, and whether probing them sees every
//! small object.
//!
//! `PyObject_Malloc` and `PyMem_Malloc` call through an allocator struct
//! (`_PyObject`, `_PyMem`; in 3.12+ inside `_PyRuntime`) whose functions
//! are, unless `PYTHONMALLOC` says otherwise, the static
//! `_PyObject_Malloc`, `_PyObject_Calloc`, `_PyObject_Realloc` and
//! `_PyObject_Free`: the one place every pymalloc call goes through. They
//! take the struct's `ctx` first. Their addresses come from the symbol
//! table (pyenv's and most self-built interpreters keep it).
//!
//! A build with link-time optimization may inline pymalloc into its
//! callers: Debian's python3.11 checks at each call site whether the
//! struct's function is `_PyObject_Malloc` and, if so, runs an inlined copy
//! of its fast path (219 sites), so most small objects never enter the
//! function. Probing it there would record a block in one place and miss
//! its release in another (false leaks), so such an interpreter is not
//! probed: [`examine`] says why. Its arenas are, though: pymalloc takes
//! them from its arena allocator, `_PyObject_ArenaMmap(ctx, size)` and
//! `_PyObject_ArenaMunmap(ctx, ptr, size)`, which it calls through the
//! struct `_PyObject_Arena` without such a check (one arena, 1 MiB from 3.10
//! and 256 KiB before, at a time). Their addresses are that struct's initial
//! values, and the struct is found in the exported
//! `PyObject_GetArenaAllocator`, which copies it. So an interpreter with
//! pymalloc inlined reports its small objects by the arenas they fill, under
//! the stack (and Python line) of the allocation that opened each arena.
//! `PYTHONMALLOC=malloc` makes it allocate its small objects with `malloc`,
//! which memprof sees one by one.

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SectionKind};

use crate::target::Kind;

/// pymalloc's entry points and what each does.
pub(crate) const FUNCTIONS: &[(&str, Kind)] = &[
    ("_PyObject_Malloc", Kind::PyMalloc),
    ("_PyObject_Calloc", Kind::PyCalloc),
    ("_PyObject_Realloc", Kind::PyRealloc),
    ("_PyObject_Free", Kind::PyFree),
];

/// The exported functions that call pymalloc: each must call through the
/// allocator struct, not inline a copy of pymalloc.
const CALLERS: &[&str] = &[
    "PyObject_Malloc",
    "PyObject_Calloc",
    "PyObject_Realloc",
    "PyObject_Free",
    "PyMem_Malloc",
    "PyMem_Calloc",
    "PyMem_Realloc",
    "PyMem_Free",
];

/// How a process's pymalloc is probed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Probed {
    /// Each small object, at pymalloc's entry points ([`FUNCTIONS`]).
    Objects,
    /// Each arena, at the arena allocator's functions (their ELF
    /// addresses), since pymalloc is inlined: `why` says so.
    Arenas { alloc: u64, free: u64, why: String },
}

/// The names memprof gives the arena allocator's functions (static, and
/// unnamed in a stripped interpreter).
pub(crate) const ARENA_FUNCTIONS: [(&str, Kind); 2] = [
    ("_PyObject_ArenaMmap", Kind::PyArenaAlloc),
    ("_PyObject_ArenaMunmap", Kind::PyArenaFree),
];

/// The CPython minor versions whose pymalloc memprof probes (those whose
/// requests of 1 to 512 bytes are pymalloc's, the size the BPF programs
/// expect).
pub(crate) const VERSIONS: std::ops::RangeInclusive<u32> = 8..=13;

/// Whether the pymalloc of CPython 3.`minor` in the ELF file `data` can be
/// probed: Ok, or why not (a sentence for the report). None when the file
/// defines no `PyObject_Malloc` (not the interpreter: the `python3.X`
/// executable of an interpreter in `libpython3.X.so`).
pub(crate) fn examine(data: &[u8], minor: u32) -> Option<Result<Probed, String>> {
    let file = object::File::parse(data).ok()?;
    let find = |name: &str| {
        file.dynamic_symbols()
            .chain(file.symbols())
            .find(|s| s.is_definition() && s.address() != 0 && s.name() == Ok(name))
            .map(|s| (s.address(), s.size()))
    };
    find("PyObject_Malloc")?;
    if !VERSIONS.contains(&minor) {
        return Some(Err(format!(
            "pymalloc is probed in CPython 3.{} to 3.{}, not 3.{minor}",
            VERSIONS.start(),
            VERSIONS.end()
        )));
    }
    let code: Vec<(u64, u64)> = file
        .sections()
        .filter(|s| s.kind() == SectionKind::Text)
        .map(|s| (s.address(), s.address() + s.size()))
        .collect();
    let is_code = |addr: u64| addr >= 0x1000 && code.iter().any(|&(a, b)| a <= addr && addr < b);
    let inlining: Vec<&str> = CALLERS
        .iter()
        .copied()
        .filter(|name| {
            find(name).is_some_and(|(addr, size)| {
                let Some(bytes) = function_bytes(&file, addr, size) else {
                    return false;
                };
                code_addresses(bytes, addr).any(|(_, target)| is_code(target))
            })
        })
        .collect();
    if !inlining.is_empty() {
        let inlined = format!(
            "the interpreter inlines pymalloc into its callers ({} compare the allocator \
             struct's function with pymalloc's and run an inlined copy; a build with \
             link-time optimization)",
            inlining.join(", ")
        );
        return Some(match arena_functions(&file) {
            Some((alloc, free)) if is_code(alloc) && is_code(free) => Ok(Probed::Arenas {
                alloc,
                free,
                why: "pymalloc is inlined into its callers (link-time optimization): small \
                      objects are seen by the arenas they fill, each under the allocation \
                      that opened it; PYTHONMALLOC=malloc shows them one by one"
                    .to_string(),
            }),
            _ => Err(format!(
                "{inlined}: its small objects cannot be probed. Run it with \
                 PYTHONMALLOC=malloc to see them as malloc blocks"
            )),
        });
    }
    let missing: Vec<&str> = FUNCTIONS
        .iter()
        .map(|&(name, _)| name)
        .filter(|name| find(name).is_none())
        .collect();
    if !missing.is_empty() {
        return Some(Err(format!(
            "its symbol table does not name pymalloc's entry points ({}): stripped",
            missing.join(", ")
        )));
    }
    Some(Ok(Probed::Objects))
}

/// The initial `alloc` and `free` of `_PyObject_Arena` (`{ctx, alloc,
/// free}`), the arena allocator: the struct is the lowest rip-relative
/// address that `PyObject_GetArenaAllocator` reads, its pointers are in the
/// file (an executable) or in relative relocations (a library, a PIE).
fn arena_functions(file: &object::File<'_>) -> Option<(u64, u64)> {
    let (addr, size) = file
        .dynamic_symbols()
        .chain(file.symbols())
        .find(|s| s.is_definition() && s.name() == Ok("PyObject_GetArenaAllocator"))
        .map(|s| (s.address(), s.size()))?;
    let code = function_bytes(file, addr, size.min(64))?;
    let mut decoder = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    let mut insn = Instruction::default();
    let mut arena: Option<u64> = None;
    while decoder.can_decode() {
        decoder.decode_out(&mut insn);
        if insn.is_ip_rel_memory_operand() && insn.mnemonic() != Mnemonic::Lea {
            let at = insn.ip_rel_memory_address();
            arena = Some(arena.map_or(at, |a: u64| a.min(at)));
        }
        if matches!(insn.mnemonic(), Mnemonic::Ret | Mnemonic::Jmp) {
            break;
        }
    }
    let arena = arena?;
    Some((pointer_at(file, arena + 8)?, pointer_at(file, arena + 16)?))
}

/// The pointer the file's data holds at `addr` once loaded: its bytes, or
/// the addend of the relative relocation there.
fn pointer_at(file: &object::File<'_>, addr: u64) -> Option<u64> {
    const R_X86_64_RELATIVE: u32 = 8;
    let relocated = file.dynamic_relocations().into_iter().flatten().find_map(|(at, r)| {
        let relative = matches!(r.flags(), object::RelocationFlags::Elf { r_type } if r_type == R_X86_64_RELATIVE);
        (at == addr && relative).then(|| r.addend() as u64)
    });
    if relocated.is_some() {
        return relocated;
    }
    let bytes = file
        .sections()
        .find_map(|s| s.data_range(addr, 8).ok().flatten())?;
    let value = u64::from_le_bytes(bytes.try_into().ok()?);
    (value != 0).then_some(value)
}

/// The bytes of the function at `addr` (`size` of them, or 256 when the
/// symbol has no size).
fn function_bytes<'a>(file: &object::File<'a>, addr: u64, size: u64) -> Option<&'a [u8]> {
    let len = if size == 0 { 256 } else { size.min(4096) };
    file.sections()
        .filter(|s| s.kind() == SectionKind::Text)
        .find_map(|s| s.data_range(addr, len).ok().flatten())
}

/// The code addresses an instruction of `code` (at `ip`) names other than
/// as a branch target: immediates and `lea` of a rip-relative address, each
/// with the instruction's address. A function that compares a function
/// pointer with one of these has inlined its callee (speculative
/// devirtualization).
fn code_addresses(code: &[u8], ip: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut insn = Instruction::default();
    std::iter::from_fn(move || {
        while decoder.can_decode() {
            decoder.decode_out(&mut insn);
            if insn.mnemonic() == Mnemonic::Lea && insn.is_ip_rel_memory_operand() {
                return Some((insn.ip(), insn.ip_rel_memory_address()));
            }
            for i in 0..insn.op_count() {
                if matches!(
                    insn.op_kind(i),
                    OpKind::Immediate32 | OpKind::Immediate32to64 | OpKind::Immediate64
                ) {
                    return Some((insn.ip(), insn.immediate(i)));
                }
            }
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cmp $0x4fb450, %rax` (Debian's python3.11 checks the allocator
    /// struct's function against `_PyObject_Malloc` this way) names a code
    /// address; `mov 0x10(%rip), %rax` and `jmp *%rax` do not.
    #[test]
    fn compares_with_function_addresses_are_found() {
        // mov 0x10(%rip),%rax; cmp $0x4fb450,%rax; jmp *%rax
        let code = [
            0x48, 0x8b, 0x05, 0x10, 0x00, 0x00, 0x00, 0x48, 0x3d, 0x50, 0xb4, 0x4f, 0x00, 0xff,
            0xe0,
        ];
        let found: Vec<_> = code_addresses(&code, 0x1000).collect();
        assert_eq!(found, vec![(0x1007, 0x4fb450)]);
    }

    /// Debian's python3.11 (LTO) inlines pymalloc: its arenas are probed,
    /// at `_PyObject_ArenaMmap` (0x62d080: `push %rcx; ...; call mmap64`)
    /// and `_PyObject_ArenaMunmap` (0x666350: `mov %rsi,%rdi; mov
    /// %rdx,%rsi; jmp munmap`), read off `objdump -d` of python3.11
    /// 3.11.2-6+deb12u6; and it says why.
    #[test]
    fn debian_python_is_probed_by_arenas() {
        let python = "/usr/bin/python3.11";
        let Ok(data) = std::fs::read(python) else {
            eprintln!("skipped: {python} is not installed");
            return;
        };
        let Probed::Arenas { alloc, free, why } = examine(&data, 11).unwrap().unwrap() else {
            panic!("Debian's python3.11 is not probed by arenas");
        };
        assert!(why.contains("inlined"), "{why}");
        assert!(why.contains("PYTHONMALLOC=malloc"), "{why}");
        let file = object::File::parse(&*data).unwrap();
        let alloc_code = function_bytes(&file, alloc, 16).unwrap();
        let free_code = function_bytes(&file, free, 16).unwrap();
        // The first calls mmap with the size in rsi, the second munmap.
        assert_eq!(alloc_code[0], 0x51, "push %rcx at {alloc:#x}");
        assert_eq!(
            &free_code[..6],
            &[0x48, 0x89, 0xf7, 0x48, 0x89, 0xd6],
            "at {free:#x}"
        );
    }

    /// pyenv's libpython keeps its symbols: the arena functions found
    /// through `PyObject_GetArenaAllocator` (in a shared library: by its
    /// relative relocations) are the named ones.
    #[test]
    fn arena_functions_are_found_through_relocations() {
        let Ok(dirs) = std::fs::read_dir("/root/.pyenv/versions") else {
            eprintln!("skipped: no pyenv versions");
            return;
        };
        for dir in dirs.filter_map(Result::ok) {
            let name = dir.file_name().to_string_lossy().into_owned();
            let Some(minor) = name.strip_prefix("3.").and_then(|r| r.split('.').next()) else {
                continue;
            };
            let lib = dir.path().join(format!("lib/libpython3.{minor}.so.1.0"));
            let Ok(data) = std::fs::read(&lib) else {
                continue;
            };
            let file = object::File::parse(&*data).unwrap();
            let named = |want: &str| {
                file.symbols()
                    .find(|s| s.name() == Ok(want))
                    .map(|s| s.address())
            };
            let (Some(mmap), Some(munmap)) =
                (named("_PyObject_ArenaMmap"), named("_PyObject_ArenaMunmap"))
            else {
                continue;
            };
            assert_eq!(arena_functions(&file), Some((mmap, munmap)), "{name}");
        }
    }

    /// pyenv's builds (no LTO, symbols kept) are probed.
    #[test]
    fn pyenv_pythons_are_probed() {
        let Ok(dirs) = std::fs::read_dir("/root/.pyenv/versions") else {
            eprintln!("skipped: no pyenv versions");
            return;
        };
        for dir in dirs.filter_map(Result::ok) {
            let name = dir.file_name().to_string_lossy().into_owned();
            let Some(minor) = name
                .strip_prefix("3.")
                .and_then(|r| r.split('.').next())
                .and_then(|m| m.parse::<u32>().ok())
            else {
                continue;
            };
            let lib = dir.path().join(format!("lib/libpython3.{minor}.so.1.0"));
            let Ok(data) = std::fs::read(&lib) else {
                continue;
            };
            let verdict = examine(&data, minor).unwrap();
            assert_eq!(
                verdict.is_ok(),
                VERSIONS.contains(&minor),
                "{name}: {verdict:?}"
            );
        }
    }
}
