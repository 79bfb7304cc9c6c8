//! Where to put a probe inside an allocator function so that it is cheap.
//!
//! A uprobe replaces one instruction with a breakpoint. After the BPF
//! programs ran, the kernel must execute the displaced instruction. Linux
//! (arch/x86/kernel/uprobes.c, as of 6.18) emulates a few kinds in a
//! fraction of a microsecond and single-steps every other one out of line,
//! which costs several times more (a second trap):
//! - `branch_setup_xol_ops`: the canonical nops of 1 to 8 bytes
//!   (`x86_nops[len]`), opcode 0x90 after any prefixes (`nop`, `pause`),
//!   `jmp rel8`/`jmp rel32`, `call rel32`, and the conditional jumps (`jcc`
//!   rel8 and rel32), each refused with an operand-size (0x66) prefix;
//! - `push_setup_xol_ops`: `push %reg` of one byte (0x50-0x57) or with the
//!   REX prefix 0x41 only (`push %r8`..`push %r15`).
//!
//! Nothing else: not `mov %reg,%reg`, not `sub $imm,%rsp`, not `endbr64`,
//! not the longer nops with a segment prefix. 6.18 can also turn a probe on a
//! 5-byte nop into a call (USDT sites); allocator functions do not start
//! with one. An instruction with an es, cs, ss, ds or lock prefix cannot be
//! probed at all.
//!
//! [`place_in_file`] follows a function's straight-line code from its entry
//! while the probes would still see what they read at the entry (each watched
//! argument in some register, the stack pointer and rbp untouched, the return
//! address still at `[rsp]` for a return probe), and stops at the first
//! instruction the kernel emulates. An argument copied by a 64-bit
//! register-to-register `mov` is followed to its copy, and the probe's cookie
//! tells its program which register to read ([`memprof_common::arg_regs`]):
//! mimalloc's malloc moves its size to rsi and reuses rdi before its first
//! branch. Every call must reach that instruction exactly once,
//! so it is refused when a direct branch of the function or of the whole file
//! ([`Landings`]), an entry of a jump table of the file, or a symbol, lands
//! between the entry and it. Jump tables are found as compilers build them:
//! the `i32` offsets from the address a rip-relative `lea` loads (PIC), or
//! the `u64` addresses an indirect `jmp` reads through an index; any such
//! table is read while its entries land in code (a string the code loads
//! with `lea` stops at once). When there is no
//! such instruction, the probe stays at the entry and the [`Placement`] says
//! why.

use std::{
    ops::RangeInclusive,
    path::Path,
    sync::{Arc, Mutex},
};

use iced_x86::{
    Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, Mnemonic, OpAccess,
    OpKind, Register,
};

/// The argument registers of the System V x86-64 calling convention, in order.
const ARGS: [Register; 6] = [
    Register::RDI,
    Register::RSI,
    Register::RDX,
    Register::RCX,
    Register::R8,
    Register::R9,
];

/// A file as (device, inode, size, modification time in s and ns).
type FileId = (u64, u64, u64, i64, i64);

/// How many bytes of a function whose size is unknown are read.
const UNSIZED_BYTES: usize = 256;

/// Where a probe goes in one function, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Placement {
    /// Offset of the probed instruction from the function's entry.
    pub offset: u64,
    /// Its mnemonic (`jne`, `push`, `mov`), `?` when it could not be decoded.
    pub mnemonic: String,
    /// True when the kernel emulates it; false when it single-steps it.
    pub emulated: bool,
    /// Why the probe is not on a later, emulated instruction: set whenever
    /// it is not emulated or sits at the entry for lack of a better place.
    pub why: Option<String>,
    /// The arguments that the probed instruction finds in another register
    /// than the calling convention's, copied there by the instructions the
    /// probe was moved past: (argument index from 0, register).
    pub moved: Moved,
}

impl Placement {
    /// One line for the log: `+0x30 (jne, emulated)`, `+0x15 (ja,
    /// emulated, argument 1 in rsi)`, or `+0 (mov, single-stepped: mov at
    /// +0x3 writes rdi)`.
    pub(crate) fn describe(&self) -> String {
        let mut how = if self.emulated {
            "emulated"
        } else {
            "single-stepped"
        }
        .to_string();
        if let Some(moved) = self.moved_arguments() {
            how.push_str(", ");
            how.push_str(&moved);
        }
        match &self.why {
            Some(why) => format!("+{:#x} ({}, {how}: {why})", self.offset, self.mnemonic),
            None => format!("+{:#x} ({}, {how})", self.offset, self.mnemonic),
        }
    }
}

impl Placement {
    /// `argument 1 in rsi, argument 2 in rdx` (counting from 1, as a reader
    /// of the C prototype does), or None when every argument is where the
    /// calling convention puts it.
    pub(crate) fn moved_arguments(&self) -> Option<String> {
        (!self.moved.is_empty()).then(|| {
            self.moved
                .iter()
                .map(|(arg, reg)| match *reg {
                    ONE => format!("argument {} multiplied in", arg + 1),
                    reg => format!("argument {} in {}", arg + 1, register_name(reg)),
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
    }

    /// The bits of the probe's BPF cookie that say where its program reads
    /// each moved argument ([`memprof_common::arg_regs`]); 0 when none moved.
    pub(crate) fn arg_regs(&self) -> u64 {
        self.moved.iter().fold(0, |cookie, &(arg, reg)| {
            memprof_common::arg_regs::with(cookie, arg, pt_regs_index(reg))
        })
    }
}

/// The number [`memprof_common::arg_regs`] gives a general-purpose register.
fn pt_regs_index(reg: Register) -> u64 {
    use memprof_common::arg_regs as r;
    match reg {
        Register::RAX => r::RAX,
        Register::RBX => r::RBX,
        Register::RCX => r::RCX,
        Register::RDX => r::RDX,
        Register::RSI => r::RSI,
        Register::RDI => r::RDI,
        ONE => r::ONE,
        Register::R8 => r::R8,
        Register::R9 => r::R9,
        Register::R10 => r::R10,
        Register::R11 => r::R11,
        Register::R12 => r::R12,
        Register::R13 => r::R13,
        Register::R14 => r::R14,
        Register::R15 => r::R15,
        // Never a home of an argument (see `Homes`).
        _ => r::DEFAULT,
    }
}

/// `rsi`, `r8`.
fn register_name(reg: Register) -> String {
    format!("{reg:?}").to_lowercase()
}

/// Where a factor that the probed code has multiplied into another argument
/// is read: the constant 1 (rbp stands for it, being never a home of an
/// argument: the walk stops at a write to it).
const ONE: Register = Register::RBP;

/// What the probes at a function read when they fire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Needs {
    /// How many argument registers the entry program reads.
    pub args: usize,
    /// True when a return probe (or a session's return half) is attached
    /// too: it takes the return address from `[rsp]` when the entry fires.
    pub returns: bool,
    /// The two arguments the entry program multiplies (calloc's, reallocarray's
    /// count and size): a `mul` of the one by the other may stand for both.
    pub factors: Option<(usize, usize)>,
}

/// The probe's place in `function`, all of the function's bytes from its
/// entry (its size from the symbol table). `sized` is false when the size is
/// not known: `function` is then only its first bytes, branches later in it
/// cannot be ruled out, and the probe stays at the entry.
fn place(function: &[u8], sized: bool, needs: Needs) -> Placement {
    let found = first_emulated(function, needs);
    let Some(entry) = found.entry else {
        return Placement {
            offset: 0,
            mnemonic: "?".to_string(),
            emulated: false,
            why: Some("the entry could not be decoded".to_string()),
            moved: Vec::new(),
        };
    };
    let at_entry = |why: String| Placement {
        offset: 0,
        mnemonic: entry.0.clone(),
        emulated: entry.1,
        why: Some(why),
        moved: Vec::new(),
    };
    let Some((offset, mnemonic, moved)) = found.chosen else {
        return at_entry(found.why);
    };
    if offset == 0 {
        return Placement {
            offset,
            mnemonic,
            emulated: true,
            why: None,
            moved: Vec::new(),
        };
    }
    if !sized {
        return at_entry(format!(
            "{mnemonic} at +{offset:#x} is emulated, but the function's size is unknown, \
             so a branch into the instructions before it cannot be ruled out"
        ));
    }
    if let Some((from, to)) = branch_into(function, 1..=offset) {
        return at_entry(format!(
            "{mnemonic} at +{offset:#x} is emulated, but the branch at +{from:#x} lands at \
             +{to:#x}, before it"
        ));
    }
    Placement {
        offset,
        mnemonic,
        emulated: true,
        why: None,
        moved,
    }
}

/// Arguments read from another register than the calling convention's:
/// (argument index from 0, register).
type Moved = Vec<(usize, Register)>;

/// What the straight-line walk from the entry found.
struct Walk {
    /// The entry instruction's mnemonic and whether it is emulated.
    entry: Option<(String, bool)>,
    /// The first emulated instruction every call reaches with the watched
    /// state intact: its offset, its mnemonic, and the arguments found
    /// there in another register than the calling convention's.
    chosen: Option<(u64, String, Moved)>,
    /// Why the walk stopped before finding one.
    why: String,
}

fn first_emulated(code: &[u8], needs: Needs) -> Walk {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    let mut homes = Homes::new(needs.args, needs.factors);
    let mut walk = Walk {
        entry: None,
        chosen: None,
        why: String::new(),
    };
    loop {
        if !decoder.can_decode() {
            walk.why = format!(
                "no instruction the kernel emulates in the {} bytes read",
                code.len()
            );
            return walk;
        }
        let insn = decoder.decode();
        let at = insn.ip();
        if insn.is_invalid() {
            walk.why = format!("undecodable bytes at +{at:#x}");
            return walk;
        }
        let start = at as usize;
        let bytes = code.get(start..start + insn.len()).unwrap_or_default();
        let name = mnemonic(&insn);
        let emulated = emulated(&insn, bytes);
        if walk.entry.is_none() {
            walk.entry = Some((name.clone(), emulated));
        }
        if emulated {
            walk.chosen = Some((at, name, homes.moved()));
            return walk;
        }
        if insn.flow_control() != FlowControl::Next {
            walk.why = format!("{name} at +{at:#x} branches and the kernel does not emulate it");
            return walk;
        }
        if let Some(what) = changes_stack(&mut info, &insn, needs.returns) {
            walk.why = format!(
                "{name} at +{at:#x} writes {what} before any instruction the kernel emulates"
            );
            return walk;
        }
        if let Some(reg) = homes.step(&mut info, &insn) {
            walk.why = format!(
                "{name} at +{at:#x} writes {} before any instruction the kernel emulates",
                register_name(reg)
            );
            return walk;
        }
    }
}

/// Where each watched argument is while the walk goes on: the registers that
/// hold its value at the entry. A `mov` from one 64-bit register to another
/// copies an argument (mimalloc's malloc moves its size from rdi to rsi and
/// reuses rdi), any other write to a register takes it off the list, and
/// the walk stops when an argument has no register left.
struct Homes {
    /// Per argument, in order: its registers, the calling convention's first
    /// while it holds it.
    regs: Vec<Vec<Register>>,
    /// See [`Needs::factors`].
    factors: Option<(usize, usize)>,
}

impl Homes {
    fn new(args: usize, factors: Option<(usize, usize)>) -> Homes {
        Homes {
            regs: ARGS[..args.min(ARGS.len())]
                .iter()
                .map(|&reg| vec![reg])
                .collect(),
            factors,
        }
    }

    /// The factors `insn` multiplies, when it is `mul r64` of a home of one
    /// factor (rax) by a home of the other: (the one whose product rax then
    /// holds, the one that becomes [`ONE`]).
    fn product(&self, insn: &Instruction) -> Option<(usize, usize)> {
        let (a, b) = self.factors?;
        if insn.mnemonic() != Mnemonic::Mul
            || insn.op_count() != 1
            || insn.op0_kind() != OpKind::Register
            || !insn.op0_register().is_gpr64()
        {
            return None;
        }
        let by = insn.op0_register();
        let holds =
            |arg: usize, reg: Register| self.regs.get(arg).is_some_and(|h| h.contains(&reg));
        if (holds(a, Register::RAX) && holds(b, by)) || (holds(b, Register::RAX) && holds(a, by)) {
            Some((a, b))
        } else {
            None
        }
    }

    /// Follows `insn`'s register writes; returns the register whose write
    /// left an argument nowhere, or rbp, which the frame-pointer walk from
    /// the probe reads as the caller's frame.
    fn step(&mut self, info: &mut InstructionInfoFactory, insn: &Instruction) -> Option<Register> {
        let copy = (insn.mnemonic() == Mnemonic::Mov
            && insn.op_count() == 2
            && insn.op0_kind() == OpKind::Register
            && insn.op1_kind() == OpKind::Register
            && insn.op0_register().is_gpr64()
            && insn.op1_register().is_gpr64())
        .then(|| (insn.op0_register(), insn.op1_register()));
        let written: Vec<Register> = info
            .info(insn)
            .used_registers()
            .iter()
            .filter(|used| {
                !matches!(
                    used.access(),
                    OpAccess::Read | OpAccess::CondRead | OpAccess::NoMemAccess | OpAccess::None
                )
            })
            .map(|used| used.register().full_register())
            .collect();
        if written.contains(&Register::RBP) {
            return Some(Register::RBP);
        }
        let product = self.product(insn);
        let mut lost = None;
        for homes in &mut self.regs {
            let copied = copy.is_some_and(|(_, from)| homes.contains(&from));
            let last = homes.first().copied();
            homes.retain(|reg| !written.contains(reg));
            if let (true, Some((to, _))) = (copied, copy) {
                if to != Register::RSP {
                    homes.push(to);
                }
            }
            if homes.is_empty() && lost.is_none() {
                lost = last;
            }
        }
        if let Some((a, b)) = product {
            // rax holds a x b (the low half, as the programs compute it).
            if let (Some(_), Some(_)) = (self.regs.get(a), self.regs.get(b)) {
                self.regs[a] = vec![Register::RAX];
                self.regs[b] = vec![ONE];
                lost = self.regs.iter().position(Vec::is_empty).and(lost);
            }
        }
        lost
    }

    /// The arguments not in their calling convention's register: (index,
    /// the register they are read from).
    fn moved(&self) -> Vec<(usize, Register)> {
        self.regs
            .iter()
            .enumerate()
            .filter_map(|(arg, homes)| {
                let abi = *ARGS.get(arg)?;
                let first = *homes.first()?;
                (first != abi).then_some((arg, first))
            })
            .collect()
    }
}

/// What `insn` changes that every probe reads: the stack pointer, or (with
/// `returns`) the return address at `[rsp]`.
fn changes_stack(
    info: &mut InstructionInfoFactory,
    insn: &Instruction,
    returns: bool,
) -> Option<String> {
    if insn.stack_pointer_increment() != 0 {
        return Some("rsp".to_string());
    }
    let info = info.info(insn);
    let writes = |access: OpAccess| {
        !matches!(
            access,
            OpAccess::Read | OpAccess::CondRead | OpAccess::NoMemAccess | OpAccess::None
        )
    };
    if info
        .used_registers()
        .iter()
        .any(|used| used.register().full_register() == Register::RSP && writes(used.access()))
    {
        return Some("rsp".to_string());
    }
    let writes_stack = info
        .used_memory()
        .iter()
        .any(|mem| mem.base() == Register::RSP && writes(mem.access()));
    (returns && writes_stack).then(|| "the stack (the return address may be there)".to_string())
}

/// A near branch of `code` that lands in `range` (offsets from the start of
/// `code`), found by decoding all of it: (where from, where to).
fn branch_into(code: &[u8], range: RangeInclusive<u64>) -> Option<(u64, u64)> {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut insn = Instruction::default();
    while decoder.can_decode() {
        decoder.decode_out(&mut insn);
        if let Some(to) = near_target(&insn) {
            if range.contains(&to) {
                return Some((insn.ip(), to));
            }
        }
    }
    None
}

/// The target of a direct near branch (jmp, jcc, call, loop, jrcxz, xbegin).
fn near_target(insn: &Instruction) -> Option<u64> {
    (insn.op_count() > 0
        && matches!(
            insn.op0_kind(),
            OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
        ))
    .then(|| insn.near_branch_target())
}

/// A table that `insn` reads code addresses from, if it may be a jump
/// table: the target of a rip-relative `lea` (compilers load a relative
/// jump table's address so, then add an `i32` entry to it: (file offset
/// in `insn`'s section, true)), or the displacement of an indirect `jmp`
/// through an index without base (an absolute table of `u64` addresses:
/// (address, false)).
fn table_of(insn: &Instruction) -> Option<(u64, bool)> {
    if insn.mnemonic() == Mnemonic::Lea && insn.is_ip_rel_memory_operand() {
        return Some((insn.ip_rel_memory_address(), true));
    }
    (insn.mnemonic() == Mnemonic::Jmp
        && insn.op0_kind() == OpKind::Memory
        && insn.memory_base() == Register::None
        && insn.memory_index() != Register::None)
        .then(|| (insn.memory_displacement64(), false))
}

/// The code addresses read from `tables` (see [`table_of`]), as file
/// offsets: each table's entries from its start while they land in
/// executable code. A table that is not one (a string the code loads
/// with `lea`) mostly stops at its first entry; one that adds a landing
/// where no branch lands only keeps a probe at its entry.
fn jump_table_targets(
    data: &[u8],
    file: &object::File<'_>,
    code: &[(u64, u64, u64)],
    mut tables: Vec<(u64, bool)>,
) -> Vec<u64> {
    use object::{Object, ObjectSection};
    let in_code = |address: u64| {
        code.iter()
            .find(|(start, size, _)| address >= *start && address - start < *size)
            .map(|(start, _, offset)| address - start + offset)
    };
    tables.sort_unstable();
    tables.dedup();
    let mut targets = Vec::new();
    for (table, relative) in tables {
        // The table's bytes: in a section with file contents, not code.
        let bytes = file.sections().find_map(|section| {
            let (offset, size) = section.file_range()?;
            let start = section.address();
            (table >= start && table - start < size && in_code(table).is_none()).then(|| {
                let from = usize::try_from(offset + (table - start)).ok()?;
                let to = usize::try_from(offset + size).ok()?;
                data.get(from..to)
            })?
        });
        let Some(bytes) = bytes else { continue };
        targets.extend(table_entries(bytes, table, relative, in_code));
    }
    targets
}

/// The code a table at address `table` whose bytes are `bytes` points to,
/// as file offsets (`in_code` gives the file offset of an address in
/// executable code): its `i32` entries relative to `table`, or its absolute
/// `u64` ones, from the first while they land in code.
fn table_entries(
    bytes: &[u8],
    table: u64,
    relative: bool,
    in_code: impl Fn(u64) -> Option<u64>,
) -> Vec<u64> {
    /// Entries read from one table at most.
    const MAX_ENTRIES: usize = 4096;
    let width = if relative { 4 } else { 8 };
    let mut targets = Vec::new();
    for entry in bytes.chunks_exact(width).take(MAX_ENTRIES) {
        let address = if relative {
            let Ok(raw) = <[u8; 4]>::try_from(entry) else {
                break;
            };
            table.wrapping_add_signed(i64::from(i32::from_le_bytes(raw)))
        } else {
            let Ok(raw) = <[u8; 8]>::try_from(entry) else {
                break;
            };
            u64::from_le_bytes(raw)
        };
        match in_code(address) {
            Some(offset) => targets.push(offset),
            None => break,
        }
    }
    targets
}

/// The direct branch targets in a file's executable code, as file offsets:
/// a branch from anywhere (a function's cold part, another function's tail
/// jump) into the instructions a probe was moved past would reach the probe
/// without the entry, or reach it twice.
#[derive(Clone, Debug, Default)]
pub(crate) struct Landings {
    /// Sorted, deduplicated.
    targets: Vec<u64>,
}

impl Landings {
    /// Decodes every executable section of an ELF file from its start
    /// (linear sweep: bytes that are data may add targets, which only makes
    /// placement more careful), and adds every symbol's address.
    fn of_file(data: &[u8], file: &object::File<'_>) -> Landings {
        use object::{
            Object, ObjectSection, ObjectSegment, ObjectSymbol, SectionFlags, SectionKind,
        };
        const SHF_EXECINSTR: u64 = 0x4;
        let mut targets = Vec::new();
        // Executable sections: (address, size, file offset).
        let mut code_ranges: Vec<(u64, u64, u64)> = Vec::new();
        // Addresses of tables that code reads at a computed index, possible
        // jump tables: (address, entries relative to it (i32) or absolute (u64)).
        let mut tables: Vec<(u64, bool)> = Vec::new();
        for section in file.sections() {
            let executable = section.kind() == SectionKind::Text
                || matches!(section.flags(), SectionFlags::Elf { sh_flags } if sh_flags & SHF_EXECINSTR != 0);
            let Some((offset, size)) = section.file_range() else {
                continue;
            };
            if !executable {
                continue;
            }
            let (Ok(start), Ok(len)) = (usize::try_from(offset), usize::try_from(size)) else {
                continue;
            };
            let Some(code) = data.get(start..start.saturating_add(len)) else {
                continue;
            };
            code_ranges.push((section.address(), size, offset));
            // File offset to address, in this section.
            let to_address = |at: u64| at.wrapping_sub(offset).wrapping_add(section.address());
            let mut decoder = Decoder::with_ip(64, code, offset, DecoderOptions::NONE);
            let mut insn = Instruction::default();
            while decoder.can_decode() {
                decoder.decode_out(&mut insn);
                if let Some(to) = near_target(&insn) {
                    targets.push(to);
                }
                if let Some(table) = table_of(&insn) {
                    tables.push(match table {
                        (at, true) => (to_address(at), true),
                        absolute => absolute,
                    });
                }
            }
        }
        targets.extend(jump_table_targets(data, file, &code_ranges, tables));
        // Every other symbol is an entry too: a function that falls through
        // into the next one would reach a probe moved past that one's entry.
        for symbol in file.dynamic_symbols().chain(file.symbols()) {
            if !symbol.is_definition() || symbol.address() == 0 {
                continue;
            }
            let address = symbol.address();
            let offset = file.segments().find_map(|seg| {
                let (offset, size) = seg.file_range();
                (address >= seg.address() && address < seg.address() + size)
                    .then(|| address - seg.address() + offset)
            });
            targets.extend(offset);
        }
        targets.sort_unstable();
        targets.dedup();
        Landings { targets }
    }

    /// The landings of the file at `path` (whose bytes are `data`),
    /// computed once per file (device, inode, size, modification time) for
    /// the life of the process: runs over many processes place probes in
    /// the same libraries again and again.
    pub(crate) fn cached(path: &Path, data: &[u8], file: &object::File<'_>) -> Arc<Landings> {
        use std::os::unix::fs::MetadataExt as _;
        static CACHE: Mutex<Vec<(FileId, Arc<Landings>)>> = Mutex::new(Vec::new());
        let id = std::fs::metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()));
        let Some(id) = id else {
            return Arc::new(Landings::of_file(data, file));
        };
        if let Ok(cache) = CACHE.lock() {
            if let Some((_, found)) = cache.iter().find(|(known, _)| *known == id) {
                return found.clone();
            }
        }
        let landings = Arc::new(Landings::of_file(data, file));
        if let Ok(mut cache) = CACHE.lock() {
            cache.push((id, landings.clone()));
        }
        landings
    }

    /// The first target in `range` (file offsets), if any. A probe's own
    /// entry is never in its range.
    fn any_in(&self, range: RangeInclusive<u64>) -> Option<u64> {
        let from = self.targets.partition_point(|&t| t < *range.start());
        self.targets
            .get(from)
            .copied()
            .filter(|t| range.contains(t))
    }
}

/// The probe's place in the function at `file_offset` of an ELF file's
/// bytes `data`, of `size` bytes (0: unknown), checked against the branches
/// of the whole file.
pub(crate) fn place_in_file(
    data: &[u8],
    landings: &Landings,
    file_offset: u64,
    size: u64,
    needs: Needs,
) -> Placement {
    let start = usize::try_from(file_offset).unwrap_or(usize::MAX);
    let len = match usize::try_from(size) {
        Ok(0) | Err(_) => UNSIZED_BYTES,
        Ok(n) => n,
    };
    let function = data
        .get(start..)
        .map(|c| &c[..c.len().min(len)])
        .unwrap_or_default();
    let placed = place(function, size > 0, needs);
    if placed.offset == 0 {
        return placed;
    }
    match landings.any_in(file_offset + 1..=file_offset + placed.offset) {
        None => placed,
        Some(to) => {
            let (mnemonic, emulated) = entry_of(function);
            Placement {
                offset: 0,
                mnemonic,
                emulated,
                why: Some(format!(
                    "{} at +{:#x} is emulated, but a branch elsewhere in the file lands at \
                     +{:#x}, before it",
                    placed.mnemonic,
                    placed.offset,
                    to - file_offset
                )),
                moved: Vec::new(),
            }
        }
    }
}

/// A probe left at the entry of `function` (its first bytes) on purpose.
pub(crate) fn at_entry(function: &[u8], why: &str) -> Placement {
    let (mnemonic, emulated) = entry_of(function);
    Placement {
        offset: 0,
        mnemonic,
        emulated,
        why: Some(why.to_string()),
        moved: Vec::new(),
    }
}

/// The mnemonic of the entry instruction of `function` and whether the
/// kernel emulates it.
fn entry_of(function: &[u8]) -> (String, bool) {
    let mut decoder = Decoder::with_ip(64, function, 0, DecoderOptions::NONE);
    if !decoder.can_decode() {
        return ("?".to_string(), false);
    }
    let insn = decoder.decode();
    if insn.is_invalid() {
        return ("?".to_string(), false);
    }
    let bytes = function.get(..insn.len()).unwrap_or_default();
    (mnemonic(&insn), emulated(&insn, bytes))
}

/// The lowercase mnemonic of `insn`.
fn mnemonic(insn: &Instruction) -> String {
    format!("{:?}", insn.mnemonic()).to_lowercase()
}

/// The canonical nops of `x86_nops[]` (arch/x86/include/asm/nops.h, 64-bit).
const NOPS: [&[u8]; 8] = [
    &[0x90],
    &[0x66, 0x90],
    &[0x0f, 0x1f, 0x00],
    &[0x0f, 0x1f, 0x40, 0x00],
    &[0x0f, 0x1f, 0x44, 0x00, 0x00],
    &[0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00],
    &[0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00],
    &[0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
];

/// True for the instructions that x86-64 uprobes emulate instead of
/// single-stepping (see the module's documentation), `bytes` being all of
/// `insn`'s bytes.
fn emulated(insn: &Instruction, bytes: &[u8]) -> bool {
    // Legacy prefixes, then at most one REX prefix, then the opcode.
    let legacy = bytes
        .iter()
        .take_while(|b| {
            matches!(
                b,
                0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3
            )
        })
        .count();
    let prefixes = &bytes[..legacy];
    // is_prefix_bad(): es, cs, ss, ds and lock cannot be probed at all.
    if prefixes
        .iter()
        .any(|b| matches!(b, 0x26 | 0x2e | 0x36 | 0x3e | 0xf0))
    {
        return false;
    }
    if NOPS.contains(&bytes) {
        return true;
    }
    let rest = &bytes[legacy..];
    let (rex, opcode) = match rest {
        [rex @ 0x40..=0x4f, opcode @ ..] => (Some(*rex), opcode),
        opcode => (None, opcode),
    };
    let operand_size = prefixes.contains(&0x66);
    match opcode {
        // push %reg: one byte, or 0x41 and one byte, nothing else.
        [0x50..=0x57] => bytes.len() == 1 || (bytes.len() == 2 && rex == Some(0x41)),
        // 0x90 after any prefixes: the kernel skips it as a nop. With a REX.B
        // it is `xchg %eax,%r8d`, which it would skip as well: never chosen.
        [0x90] => matches!(insn.mnemonic(), Mnemonic::Nop | Mnemonic::Pause),
        // jmp rel8 / rel32, call rel32, jcc rel8 / rel32.
        [0xeb, _] | [0xe9, _, _, _, _] | [0xe8, _, _, _, _] | [0x70..=0x7f, _] => !operand_size,
        [0x0f, 0x80..=0x8f, _, _, _, _] => !operand_size,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memprof_common::arg_regs;

    const FREE: Needs = Needs {
        args: 1,
        returns: false,
        factors: None,
    };

    /// An allocation function of `args` arguments; calloc's 2 and
    /// reallocarray's 3 are multiplied as the programs do.
    const fn alloc(args: usize) -> Needs {
        Needs {
            args,
            returns: true,
            factors: match args {
                2 => Some((0, 1)),
                3 => Some((1, 2)),
                _ => None,
            },
        }
    }

    fn bytes(hex: &str) -> Vec<u8> {
        hex.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    fn offset(hex: &str, needs: Needs) -> u64 {
        place(&bytes(hex), true, needs).offset
    }

    /// (function, what its probes read, its first bytes, the probe's
    /// offset, whether the kernel emulates the instruction there).
    type Real = (&'static str, Needs, &'static str, u64, bool);

    /// glibc 2.36 (Debian 12 `libc6` 2.36-9+deb12u14), /usr/lib/x86_64-linux-gnu/libc.so.6: each function's first bytes, up to the
    /// instruction the walk stops at, and where the probe goes.
    #[rustfmt::skip]
    const GLIBC_2_36: &[Real] = &[
        ("malloc", alloc(1), "41 54", 0x0, true),
        ("calloc", alloc(2), "41 55", 0x0, true),
        ("realloc", alloc(2), "41 57", 0x0, true),
        ("reallocarray", alloc(3), "48 89 f0 48 f7 e2 48 89 c6 70 05", 0x9, true),
        ("posix_memalign", alloc(3), "80 3d 01 02 14 00 00 41 54", 0x7, true),
        ("aligned_alloc", alloc(2), "80 3d 71 0e 14 00 00 74 07", 0x7, true),
        ("valloc", alloc(1), "80 3d 31 0e 14 00 00 53", 0x7, true),
        ("pvalloc", alloc(1), "80 3d 01 0e 14 00 00 53", 0x7, true),
        ("free", FREE, "48 85 ff 0f 84 bf 00 00 00", 0x3, true),
    ];

    /// musl 1.2.3 (Debian 12 `musl` 1.2.3-1), /lib/x86_64-linux-musl/libc.so: each function's first bytes, up to the
    /// instruction the walk stops at, and where the probe goes.
    #[rustfmt::skip]
    const MUSL_1_2_3: &[Real] = &[
        ("malloc", alloc(1), "e9 6b 19 00 00", 0x0, true),
        ("calloc", alloc(2), "41 54", 0x0, true),
        ("realloc", alloc(2), "e9 fb fa ff ff", 0x0, true),
        ("reallocarray", alloc(3), "48 89 d1 48 85 d2 74 08", 0x6, true),
        ("posix_memalign", alloc(3), "53", 0x0, true),
        ("aligned_alloc", alloc(2), "55", 0x0, true),
        ("valloc", alloc(1), "48 89 fe bf 00 10 00 00 e9 a3 49 ff ff", 0x8, true),
        ("free", FREE, "e9 bb 0a 00 00", 0x0, true),
    ];

    /// jemalloc 5.3.0 (Debian 12 `libjemalloc2` 5.3.0-1), libjemalloc.so.2: each function's first bytes, up to the
    /// instruction the walk stops at, and where the probe goes.
    #[rustfmt::skip]
    const JEMALLOC_5_3_0: &[Real] = &[
        ("malloc", alloc(1), "48 81 ff 00 10 00 00 0f 87 93 00 00 00", 0x7, true),
        ("calloc", alloc(2), "41 57", 0x0, true),
        ("realloc", alloc(2), "41 57", 0x0, true),
        ("posix_memalign", alloc(3), "41 57", 0x0, true),
        ("aligned_alloc", alloc(2), "41 57", 0x0, true),
        ("valloc", alloc(1), "41 57", 0x0, true),
        ("free", FREE, "48 89 f8 48 8b 15 0e 53 0a 00 48 89 f9 48 c1 e8 1a 48 81 e1 00 00 00 c0 25 f0 00 00 00 64 48 03 04 25 00 00 00 00 48 01 d0 48 3b 88 b0 01 00 00 0f 85 8a 00 00 00", 0x30, true),
        ("mallocx", alloc(1), "41 57", 0x0, true),
        ("rallocx", alloc(2), "31 c9 e9 e9 1c ff ff", 0x2, true),
        ("dallocx", FREE, "41 57", 0x0, true),
        ("sdallocx", FREE, "49 89 f8 48 81 fe 00 10 00 00 77 0c", 0xa, true),
        ("_Znwm", alloc(1), "48 81 ff 00 10 00 00 0f 87 93 00 00 00", 0x7, true),
        ("_Znam", alloc(1), "e9 1b ff ff ff", 0x0, true),
        ("_ZnwmRKSt9nothrow_t", alloc(1), "48 81 ff 00 10 00 00 0f 87 93 00 00 00", 0x7, true),
        ("_ZnwmSt11align_val_t", alloc(1), "53", 0x0, true),
        ("_ZdlPv", FREE, "e9 eb af f5 ff", 0x0, true),
        ("_ZdaPv", FREE, "e9 db af f5 ff", 0x0, true),
        ("_ZdlPvm", FREE, "48 85 ff 74 13", 0x3, true),
        ("_ZdlPvSt11align_val_t", FREE, "e9 6b af f5 ff", 0x0, true),
        ("_ZdlPvmSt11align_val_t", FREE, "48 85 ff 74 4b", 0x3, true),
        ("_ZdlPvRKSt9nothrow_t", FREE, "e9 cb af f5 ff", 0x0, true),
    ];

    /// gperftools 2.10 (Debian 12 `libgoogle-perftools4` 2.10-1), libtcmalloc.so.4: each function's first bytes, up to the
    /// instruction the walk stops at, and where the probe goes.
    #[rustfmt::skip]
    const TCMALLOC_2_10: &[Real] = &[
        ("malloc", alloc(1), "48 8b 05 f9 32 01 00 49 89 f8 48 85 c0 0f 85 8e 00 00 00", 0xd, true),
        ("calloc", alloc(2), "48 8b 0d 19 39 01 00 64 80 79 10 00 0f 85 7e 01 00 00", 0xc, true),
        ("realloc", alloc(2), "41 57", 0x0, true),
        ("posix_memalign", alloc(3), "48 8d 46 ff 48 83 c8 07 48 85 f0 75 2b", 0xb, true),
        ("aligned_alloc", alloc(2), "49 89 f8 48 81 ff 00 20 00 00 0f 87 f8 00 00 00", 0xa, true),
        ("valloc", alloc(1), "55", 0x0, true),
        ("pvalloc", alloc(1), "53", 0x0, true),
        ("free", FREE, "48 8b 05 99 41 1c 00 48 85 c0 0f 85 90 00 00 00", 0xa, true),
        ("tc_free_sized", FREE, "48 8b 05 19 40 1c 00 48 85 c0 0f 85 90 00 00 00", 0xa, true),
        ("_Znwm", alloc(1), "48 8b 05 39 3b 01 00 49 89 f8 48 85 c0 0f 85 8e 00 00 00", 0xd, true),
        ("_Znam", alloc(1), "48 8b 05 39 3b 01 00 49 89 f8 48 85 c0 0f 85 8e 00 00 00", 0xd, true),
        ("_ZnwmRKSt9nothrow_t", alloc(1), "48 8b 05 39 37 01 00 49 89 f8 48 85 c0 0f 85 8e 00 00 00", 0xd, true),
        ("_ZnwmSt11align_val_t", alloc(1), "49 89 f9 49 89 f0 48 81 fe 00 20 00 00 0f 87 c5 00 00 00", 0xd, true),
        ("_ZdlPv", FREE, "48 8b 05 99 41 1c 00 48 85 c0 0f 85 90 00 00 00", 0xa, true),
        ("_ZdaPv", FREE, "48 8b 05 99 41 1c 00 48 85 c0 0f 85 90 00 00 00", 0xa, true),
        ("_ZdlPvm", FREE, "48 8b 05 19 40 1c 00 48 85 c0 0f 85 90 00 00 00", 0xa, true),
        ("_ZdlPvSt11align_val_t", FREE, "48 8b 05 19 3c 1c 00 48 85 c0 0f 85 90 00 00 00", 0xa, true),
        ("_ZdlPvmSt11align_val_t", FREE, "48 8b 05 a9 3a 1c 00 48 85 c0 0f 85 90 00 00 00", 0xa, true),
        ("_ZdlPvRKSt9nothrow_t", FREE, "48 8b 05 89 3d 1c 00 48 85 c0 0f 85 90 00 00 00", 0xa, true),
    ];

    /// mimalloc 2.0.9 (Debian 12 `libmimalloc2.0` 2.0.9+ds-2), libmimalloc.so.2: each function's first bytes, up to the
    /// instruction the walk stops at, and where the probe goes.
    #[rustfmt::skip]
    const MIMALLOC_2_0_9: &[Real] = &[
        ("malloc", alloc(1), "48 8b 05 49 b4 00 00 48 89 fe 64 48 8b 38 48 81 fe 00 04 00 00 77 29", 0x15, true),
        ("calloc", alloc(2), "48 8b 15 c9 ad 00 00 48 89 f8 64 48 8b 3a 48 83 f8 01 74 08", 0x12, true),
        ("realloc", alloc(2), "48 8b 05 49 a9 00 00 48 89 f2 48 89 fe 64 48 8b 00 48 89 c7 e9 f7 4e ff ff", 0x14, true),
        ("reallocarray", alloc(3), "e9 5b 5c ff ff", 0x0, true),
        ("posix_memalign", alloc(3), "e9 6b 5c ff ff", 0x0, true),
        ("aligned_alloc", alloc(2), "e9 eb 59 ff ff", 0x0, true),
        ("valloc", alloc(1), "e9 7b 58 ff ff", 0x0, true),
        ("pvalloc", alloc(1), "e9 ab 5b ff ff", 0x0, true),
        ("free", FREE, "48 89 f9 48 85 ff 74 5d", 0x6, true),
        ("mi_free_size", FREE, "e9 3b 52 ff ff", 0x0, true),
        ("_Znwm", alloc(1), "55", 0x0, true),
        ("_Znam", alloc(1), "55", 0x0, true),
        ("_ZnwmRKSt9nothrow_t", alloc(1), "e9 eb 43 ff ff", 0x0, true),
        ("_ZnwmSt11align_val_t", alloc(1), "41 54", 0x0, true),
        ("_ZdlPv", FREE, "48 89 f9 48 85 ff 74 5d", 0x6, true),
        ("_ZdaPv", FREE, "48 89 f9 48 85 ff 74 5d", 0x6, true),
        ("_ZdlPvm", FREE, "e9 3b 52 ff ff", 0x0, true),
        ("_ZdlPvSt11align_val_t", FREE, "e9 1b 55 ff ff", 0x0, true),
        ("_ZdlPvmSt11align_val_t", FREE, "e9 bb 50 ff ff", 0x0, true),
    ];

    /// libstdc++ of GCC 12.2 (Debian 12 `libstdc++6` 12.2.0-14+deb12u1), libstdc++.so.6: each function's first bytes, up to the
    /// instruction the walk stops at, and where the probe goes.
    #[rustfmt::skip]
    const LIBSTDCXX_12: &[Real] = &[
        ("_Znwm", alloc(1), "f3 0f 1e fa 48 85 ff b8 01 00 00 00 53", 0xc, true),
        ("_Znam", alloc(1), "f3 0f 1e fa e9 f7 02 ff ff", 0x4, true),
        ("_ZnwmRKSt9nothrow_t", alloc(1), "f3 0f 1e fa 48 83 ec 08", 0x0, false),
        ("_ZnwmSt11align_val_t", alloc(1), "f3 0f 1e fa 55", 0x4, true),
    ];

    #[test]
    fn real_allocators_of_debian_12() {
        for (allocator, table) in [
            ("GLIBC_2_36", GLIBC_2_36),
            ("MUSL_1_2_3", MUSL_1_2_3),
            ("JEMALLOC_5_3_0", JEMALLOC_5_3_0),
            ("TCMALLOC_2_10", TCMALLOC_2_10),
            ("MIMALLOC_2_0_9", MIMALLOC_2_0_9),
            ("LIBSTDCXX_12", LIBSTDCXX_12),
        ] {
            for &(function, needs, code, offset, emulated) in table {
                let placed = place(&bytes(code), true, needs);
                assert_eq!(
                    (placed.offset, placed.emulated),
                    (offset, emulated),
                    "{allocator} {function}: {placed:?}"
                );
                assert_eq!(placed.why.is_some(), !emulated, "{allocator} {function}");
            }
        }
    }

    #[test]
    fn jemalloc_free_goes_past_twelve_instructions() {
        // The walk is not bounded by a count: jemalloc 5.3.0's free reaches its
        // first branch after 12 instructions that leave rdi alone.
        let (_, needs, code, _, _) = JEMALLOC_5_3_0
            .iter()
            .find(|(f, ..)| *f == "free")
            .copied()
            .unwrap();
        let placed = place(&bytes(code), true, needs);
        assert_eq!(placed.describe(), "+0x30 (jne, emulated)");
    }

    /// The row of `function` in `table`.
    fn row(table: &[Real], function: &str) -> Real {
        table
            .iter()
            .find(|(f, ..)| *f == function)
            .copied()
            .unwrap()
    }

    #[test]
    fn follows_arguments_copied_to_other_registers() {
        // mimalloc 2.0.9's malloc, calloc and realloc copy their arguments to
        // other registers and give rdi the thread's heap before their first
        // branch: the probe reads them from the copies.
        for (function, described, cookie) in [
            (
                "malloc",
                "+0x15 (ja, emulated, argument 1 in rsi)",
                arg_regs::with(0, 0, arg_regs::RSI),
            ),
            (
                "calloc",
                "+0x12 (je, emulated, argument 1 in rax)",
                arg_regs::with(0, 0, arg_regs::RAX),
            ),
            (
                "realloc",
                "+0x14 (jmp, emulated, argument 1 in rsi, argument 2 in rdx)",
                arg_regs::with(arg_regs::with(0, 0, arg_regs::RSI), 1, arg_regs::RDX),
            ),
        ] {
            let (_, needs, code, _, _) = row(MIMALLOC_2_0_9, function);
            let placed = place(&bytes(code), true, needs);
            assert_eq!(placed.describe(), described, "mimalloc {function}");
            assert_eq!(placed.arg_regs(), cookie, "mimalloc {function}");
        }
        // musl 1.2.3's valloc: mov %rdi,%rsi; mov $0x1000,%edi; jmp memalign.
        let (_, needs, code, _, _) = row(MUSL_1_2_3, "valloc");
        assert_eq!(
            place(&bytes(code), true, needs).describe(),
            "+0x8 (jmp, emulated, argument 1 in rsi)"
        );
        // Where nothing moved, the cookie is 0: the programs read the calling
        // convention's registers.
        let (_, needs, code, _, _) = row(JEMALLOC_5_3_0, "free");
        assert_eq!(place(&bytes(code), true, needs).arg_regs(), 0);
        // The cookie's kind bits stay apart from the registers' bits.
        let cookie = memprof_common::window_cookie::for_window(
            memprof_common::window_cookie::CALLOC | arg_regs::with(0, 0, arg_regs::RAX),
            7,
        );
        assert_eq!(
            memprof_common::window_cookie::kind(cookie),
            memprof_common::window_cookie::CALLOC
        );
        assert_eq!(memprof_common::window_cookie::window(cookie), 7);
        assert_eq!(arg_regs::of(cookie, 0), arg_regs::RAX);
        assert_eq!(arg_regs::of(cookie, 1), arg_regs::DEFAULT);
    }

    #[test]
    fn an_argument_whose_copies_are_all_overwritten_stops_the_walk() {
        // mov %rdi,%rsi; mov $1,%edi; mov $2,%esi; jne
        let placed = place(
            &bytes("48 89 fe bf 01 00 00 00 be 02 00 00 00 75 00"),
            true,
            FREE,
        );
        assert_eq!(placed.offset, 0);
        assert_eq!(
            placed.why.as_deref(),
            Some("mov at +0x8 writes rsi before any instruction the kernel emulates")
        );
        // A 32-bit move is not a copy of a pointer: mov %edi,%esi; mov $1,%edi; jne
        assert_eq!(offset("89 fe bf 01 00 00 00 75 00", FREE), 0);
        // A copy into rsp is no home: mov %rdi,%rsp stops at the stack change.
        assert_eq!(offset("48 89 fc 75 00", FREE), 0);
        // rbp is read by the frame-pointer walk: mov %rdi,%rbp stops it.
        let placed = place(&bytes("48 89 fd 75 00"), true, FREE);
        assert_eq!(placed.offset, 0);
        assert!(placed.why.unwrap().contains("writes rbp"));
    }

    #[test]
    fn says_why_a_function_is_single_stepped() {
        let (_, needs, code, _, _) = LIBSTDCXX_12
            .iter()
            .find(|(f, ..)| *f == "_ZnwmRKSt9nothrow_t")
            .copied()
            .unwrap();
        assert_eq!(
            place(&bytes(code), true, needs).describe(),
            "+0x0 (endbr64, single-stepped: sub at +0x4 writes rsp before any instruction \
             the kernel emulates)"
        );
    }

    #[test]
    fn the_kernels_emulated_instructions() {
        let emulated_at_0 = |hex: &str| {
            let code = bytes(hex);
            let insn = Decoder::with_ip(64, &code, 0, DecoderOptions::NONE).decode();
            emulated(&insn, &code[..insn.len()])
        };
        for yes in [
            "90",
            "66 90",
            "f3 90", // pause
            "0f 1f 00",
            "0f 1f 40 00",
            "0f 1f 44 00 00",
            "66 0f 1f 44 00 00",
            "0f 1f 80 00 00 00 00",
            "0f 1f 84 00 00 00 00 00",
            "55",
            "41 57",
            "eb 10",
            "e9 00 01 00 00",
            "e8 00 01 00 00",
            "74 05",
            "0f 85 8a 00 00 00",
            "f2 e9 00 01 00 00", // bnd jmp
        ] {
            assert!(emulated_at_0(yes), "{yes} is emulated");
        }
        for no in [
            "f3 0f 1e fa",                   // endbr64
            "48 89 f8",                      // mov %rdi,%rax
            "48 83 ec 18",                   // sub $0x18,%rsp
            "48 85 ff",                      // test %rdi,%rdi
            "41 90",                         // xchg %eax,%r8d
            "48 55",                         // push %rbp with REX.W
            "66 2e 0f 1f 84 00 00 00 00 00", // cs nopw: not probeable at all
            "66 0f 1f 84 00 00 00 00 00",    // not in x86_nops[]
            "2e 74 05",                      // jcc with a cs hint: refused
            "66 e9 00 01",                   // jmp rel16
            "c3",                            // ret
            "ff e0",                         // jmp *%rax
        ] {
            assert!(!emulated_at_0(no), "{no} is single-stepped");
        }
    }

    #[test]
    fn glibc_236_free_moves_past_the_null_test() {
        // test %rdi,%rdi; je +0xbf; push %rbp; lea -0x10(%rdi),%rsi
        let placed = place(
            &bytes("48 85 ff 0f 84 bf 00 00 00 55 48 8d 77 f0"),
            true,
            FREE,
        );
        assert_eq!(placed.offset, 3);
        assert_eq!(placed.mnemonic, "je");
        assert!(placed.emulated);
        assert_eq!(placed.why, None);
    }

    #[test]
    fn a_push_first_stays_at_zero() {
        // glibc 2.36 malloc: push %r12; push %rbp; push %rbx; mov %rdi,%rbx
        let placed = place(&bytes("41 54 55 53 48 89 fb"), true, alloc(1));
        assert_eq!((placed.offset, placed.emulated), (0, true));
        assert_eq!(placed.why, None);
    }

    #[test]
    fn stops_when_an_argument_is_overwritten() {
        // mov %rsi,%rax; mul %rdx (writes rdx, not as reallocarray's factor
        // here: calloc's factors are the first two); mov %rax,%rsi; jo; jmp
        let code = "48 89 f0 48 f7 e2 48 89 c6 70 05 e9 00 00 00 00";
        let three = Needs {
            args: 3,
            returns: true,
            factors: None,
        };
        let placed = place(&bytes(code), true, three);
        assert_eq!((placed.offset, placed.emulated), (0, false));
        assert_eq!(
            placed.why.as_deref(),
            Some("mul at +0x3 writes rdx before any instruction the kernel emulates")
        );
        // A probe that reads rdi only may go past both writes, to the jo.
        assert_eq!(offset(code, FREE), 9);
    }

    #[test]
    fn a_multiplication_of_the_two_factors_stands_for_both() {
        // glibc 2.36's reallocarray: mov %rsi,%rax; mul %rdx; mov %rax,%rsi;
        // jo; jmp realloc: at the jo, rsi (and rax) hold nmemb x size, which
        // the program multiplies by 1.
        let (_, needs, code, _, _) = row(GLIBC_2_36, "reallocarray");
        let placed = place(&bytes(code), true, needs);
        assert_eq!(
            placed.describe(),
            "+0x9 (jo, emulated, argument 2 in rax, argument 3 multiplied in)"
        );
        assert_eq!(
            placed.arg_regs(),
            arg_regs::with(arg_regs::with(0, 1, arg_regs::RAX), 2, arg_regs::ONE)
        );
        // mul by a register that is not the other factor: the size is lost.
        // mov %rsi,%rax; mul %rcx; jo
        assert_eq!(offset("48 89 f0 48 f7 e1 70 05", alloc(3)), 0);
        // The product is lost when rax is written before the branch:
        // mov %rsi,%rax; mul %rdx; xor %eax,%eax; jo
        assert_eq!(offset("48 89 f0 48 f7 e2 31 c0 70 05", alloc(3)), 0);
    }

    #[test]
    fn stops_at_a_stack_change_or_a_branch_it_cannot_take() {
        // sub $0x18,%rsp; push %rbx
        assert_eq!(offset("48 83 ec 18 53", FREE), 0);
        // ret
        assert_eq!(offset("c3 53", FREE), 0);
        // endbr64; push %rbp: endbr64 is not emulated but harmless
        assert_eq!(offset("f3 0f 1e fa 55", FREE), 4);
        // A store to the return address's slot before a push: not for a return probe.
        assert_eq!(offset("48 89 3c 24 55", alloc(1)), 0);
        assert_eq!(offset("48 89 3c 24 55", FREE), 4);
    }

    #[test]
    fn a_branch_back_before_the_chosen_instruction_keeps_the_entry() {
        // 0: mov %rdi,%rax; 3: add $1,%rax; 7: jne 3 (a loop back to +3)
        let placed = place(&bytes("48 89 f8 48 83 c0 01 75 fa"), true, FREE);
        assert_eq!(placed.offset, 0);
        assert_eq!(
            placed.why.as_deref(),
            Some("jne at +0x7 is emulated, but the branch at +0x7 lands at +0x3, before it")
        );
        // The same, with the loop further away: 9: jmp 3.
        let placed = place(&bytes("48 89 f8 48 83 c0 01 74 02 eb f8 c3"), true, FREE);
        assert_eq!(placed.offset, 0);
        // A branch to the entry itself or past the probe is fine.
        assert_eq!(offset("48 89 f8 74 02 eb f9 c3", FREE), 3);
        // Unknown size: the rest of the function cannot be checked.
        let placed = place(&bytes("48 89 f8 74 02 c3"), false, FREE);
        assert_eq!(placed.offset, 0);
        assert!(placed.why.unwrap().contains("size is unknown"));
    }

    #[test]
    fn branches_from_elsewhere_in_the_file_keep_the_entry() {
        let landings = Landings {
            targets: vec![0x1003],
        };
        // At file offset 0x1000: mov %rdi,%rax; mov %rax,%rcx; jne
        let mut data = vec![0xcc; 0x1000];
        data.extend(bytes("48 89 f8 48 89 c1 75 02 c3 c3"));
        let placed = place_in_file(&data, &landings, 0x1000, 10, FREE);
        assert_eq!(placed.offset, 0);
        assert!(placed
            .why
            .unwrap()
            .contains("elsewhere in the file lands at +0x3"));
        let placed = place_in_file(&data, &Landings::default(), 0x1000, 10, FREE);
        assert_eq!(placed.offset, 6);
    }

    #[test]
    fn jump_tables_are_read_while_they_point_into_code() {
        // gcc's PIC switch: lea table(%rip),%rdx; movslq (%rdx,%rax,4),%rax;
        // add %rdx,%rax; jmp *%rax. The lea names the table.
        let lea = Decoder::with_ip(
            64,
            &bytes("48 8d 15 f9 0f 00 00"),
            0x1000,
            DecoderOptions::NONE,
        )
        .decode();
        assert_eq!(table_of(&lea), Some((0x2000, true)));
        // jmp *0x402000(,%rax,8): an absolute table.
        let jmp = Decoder::with_ip(
            64,
            &bytes("ff 24 c5 00 20 40 00"),
            0x401000,
            DecoderOptions::NONE,
        )
        .decode();
        assert_eq!(table_of(&jmp), Some((0x402000, false)));
        // A lea of a stack slot or a plain indirect jump names no table.
        let stack =
            Decoder::with_ip(64, &bytes("48 8d 44 24 08"), 0, DecoderOptions::NONE).decode();
        assert_eq!(table_of(&stack), None);
        let reg = Decoder::with_ip(64, &bytes("ff e0"), 0, DecoderOptions::NONE).decode();
        assert_eq!(table_of(&reg), None);
        // Code at addresses 0x1000..0x1800, file offset = address.
        let in_code = |a: u64| (0x1000..0x1800).contains(&a).then_some(a);
        // A table at 0x2000 with entries -0xff0, -0xfe0, then a string.
        let mut table = Vec::new();
        for entry in [-0xff0i32, -0xfe0] {
            table.extend(entry.to_le_bytes());
        }
        table.extend(b"abcdefgh");
        assert_eq!(
            table_entries(&table, 0x2000, true, in_code),
            vec![0x1010, 0x1020]
        );
        // Absolute entries.
        let mut table = Vec::new();
        for entry in [0x1100u64, 0x1200, 0x9999] {
            table.extend(entry.to_le_bytes());
        }
        assert_eq!(
            table_entries(&table, 0x2000, false, in_code),
            vec![0x1100, 0x1200]
        );
        // A string loaded with lea: no entry lands in code.
        assert!(table_entries(b"hello, world", 0x2000, true, in_code).is_empty());
    }

    #[test]
    fn garbage_falls_back_to_the_entry() {
        assert_eq!(offset("", FREE), 0);
        assert_eq!(offset("0f 0b", FREE), 0); // ud2
        assert_eq!(offset("ff ff ff", FREE), 0);
    }
}
