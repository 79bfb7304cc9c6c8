//! Compiles one ELF object's call frame information (`.eh_frame`, or
//! `.debug_frame` when that is all it has) into the compact rows the BPF
//! unwinder searches: sorted by address, one row per change of rule, a
//! [`cfa::NONE`] row wherever a gap between functions begins.

use anyhow::Context as _;
use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, LittleEndian, Register, RegisterRule,
    UnwindContext, UnwindSection, X86_64,
};
use memprof_common::unwind::{cfa, UnwindRow};
use object::{Object as _, ObjectSection as _, ObjectSegment as _};

/// An object's rows and what went into them.
#[derive(Debug, Default, Clone)]
pub(crate) struct Compiled {
    /// Sorted by `pc`, no two neighbours with the same rule.
    pub rows: Vec<UnwindRow>,
    /// Function descriptions (FDEs) read.
    pub fdes: u64,
    /// Rows whose rule the BPF unwinder cannot follow ([`cfa::UNSUPPORTED`]).
    pub unsupported: u64,
    /// Rows of the PLT's well-known CFA expression, which it can.
    pub plt: u64,
    /// FDEs that set up a frame pointer (a row with CFA = rbp + 16 and rbp
    /// saved at CFA - 16).
    pub fp_fdes: u64,
}

impl Compiled {
    /// True when the object was built with frame pointers: nearly every
    /// function keeps its caller's frame at rbp, so at a return address in
    /// it a frame-pointer step finds what the rows would. A few FDEs
    /// without (start-up code, hand-written assembly) are allowed: a
    /// frame-pointer step there skips a frame, as `--unwind fp` would.
    pub(crate) fn frame_pointers(&self) -> bool {
        let without = self.fdes - self.fp_fdes;
        self.fp_fdes * 2 > self.fdes && without <= FP_EXCEPTIONS + self.fdes / 10
    }
}

/// FDEs without a frame pointer that an object built with them may have
/// besides one in ten (`_start`, the PLT, `_init`: linked in from
/// elsewhere).
const FP_EXCEPTIONS: u64 = 8;

/// The page index of `rows` (see [`memprof_common::unwind::PAGE_SHIFT`]):
/// the first page's number and one entry per page up to the last row's.
/// None when an object is too large for the entries.
pub(crate) fn page_index(rows: &[UnwindRow]) -> Option<(u32, Vec<u32>)> {
    use memprof_common::unwind::{PAGE_LEN_SHIFT, PAGE_SHIFT};
    let (first, last) = (rows.first()?, rows.last()?);
    if rows.len() >= 1 << PAGE_LEN_SHIFT {
        return None;
    }
    let page0 = first.pc >> PAGE_SHIFT;
    let pages = (last.pc >> PAGE_SHIFT) - page0 + 1;
    // The row in effect at `pc` (the first row when none is: the search
    // then finds that no row covers it).
    let at = |pc: u64| rows.partition_point(|r| u64::from(r.pc) <= pc).max(1) - 1;
    let max_len = (1u32 << (32 - PAGE_LEN_SHIFT)) - 1;
    let index = (0..pages)
        .map(|p| {
            let start = u64::from(page0 + p) << PAGE_SHIFT;
            let (first, last) = (at(start), at(start + (1 << PAGE_SHIFT) - 1));
            let len = (last - first + 1) as u32;
            let len = if len > max_len { 0 } else { len };
            first as u32 | len << PAGE_LEN_SHIFT
        })
        .collect();
    Some((page0, index))
}

/// The rule of one address range, as the BPF side reads it.
type Rule = (u8, u16, i8);

const UNSUPPORTED: Rule = (cfa::UNSUPPORTED, 0, 0);

/// One FDE: its start and end address, and its rows (address, rule).
type FdeRows = (u64, u64, Vec<(u64, Rule)>);

/// Compiles the ELF object `data` (see the module comment).
pub(crate) fn compile(data: &[u8]) -> anyhow::Result<Compiled> {
    let file = object::File::parse(data).context("not an ELF object")?;
    if file.architecture() != object::Architecture::X86_64 {
        anyhow::bail!("not an x86-64 object: only x86-64 stacks can be unwound");
    }
    let section_addr = |name: &str| file.section_by_name(name).map(|s| s.address());
    let mut ranges: Vec<FdeRows> = Vec::new();
    let mut out = Compiled::default();
    if let Some(section) = file.section_by_name(".eh_frame") {
        let bytes = section.data().context(".eh_frame unreadable")?;
        let eh = EhFrame::new(bytes, LittleEndian);
        let mut bases = BaseAddresses::default().set_eh_frame(section.address());
        if let Some(text) = section_addr(".text") {
            bases = bases.set_text(text);
        }
        if let Some(got) = section_addr(".got") {
            bases = bases.set_got(got);
        }
        if let Some(hdr) = section_addr(".eh_frame_hdr") {
            bases = bases.set_eh_frame_hdr(hdr);
        }
        collect(&eh, &bases, &mut ranges, &mut out)?;
    } else if let Some(section) = file.section_by_name(".debug_frame") {
        let bytes = section.data().context(".debug_frame unreadable")?;
        let mut debug = DebugFrame::new(bytes, LittleEndian);
        debug.set_address_size(8);
        collect(&debug, &BaseAddresses::default(), &mut ranges, &mut out)?;
    } else {
        anyhow::bail!(
            "no .eh_frame or .debug_frame: its frames can only be walked by frame pointer"
        );
    }
    // The highest address must fit the rows' 32-bit `pc`.
    let top = file
        .segments()
        .map(|s| s.address() + s.size())
        .max()
        .unwrap_or(0);
    if top > u64::from(u32::MAX) {
        anyhow::bail!("code above 4 GiB in the object's addresses, which the rows cannot hold");
    }
    ranges.sort_by_key(|r| r.0);
    let mut rows: Vec<UnwindRow> = Vec::new();
    let push = |rows: &mut Vec<UnwindRow>, pc: u64, (kind, cfa_offset, rbp): Rule| {
        let row = UnwindRow {
            pc: pc as u32,
            cfa_offset,
            kind,
            rbp,
        };
        match rows.last_mut() {
            // A later range starting where an earlier one did replaces it.
            Some(last) if u64::from(last.pc) == pc => *last = row,
            _ => rows.push(row),
        }
    };
    for (i, (_, end, fde_rows)) in ranges.iter().enumerate() {
        for &(pc, rule) in fde_rows {
            push(&mut rows, pc, rule);
        }
        let next = ranges.get(i + 1).map(|r| r.0);
        if next.is_none_or(|next| next > *end) {
            push(&mut rows, *end, (cfa::NONE, 0, 0));
        }
    }
    rows.dedup_by(|later, earlier| {
        (later.kind, later.cfa_offset, later.rbp) == (earlier.kind, earlier.cfa_offset, earlier.rbp)
    });
    out.rows = rows;
    Ok(out)
}

/// Reads every FDE of `section` into `(start, end, rows)`.
fn collect<'a, S: UnwindSection<gimli::EndianSlice<'a, LittleEndian>>>(
    section: &S,
    bases: &BaseAddresses,
    ranges: &mut Vec<FdeRows>,
    out: &mut Compiled,
) -> anyhow::Result<()>
where
    S::Offset: gimli::UnwindOffset<usize>,
{
    let mut ctx = Box::new(UnwindContext::new());
    let mut entries = section.entries(bases);
    while let Some(entry) = entries.next().context("malformed call frame information")? {
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        // One bad FDE costs its function, not the object.
        let Ok(fde) = partial.parse(S::cie_from_offset) else {
            continue;
        };
        if fde.len() == 0 {
            continue;
        }
        out.fdes += 1;
        let mut rows: Vec<(u64, Rule)> = Vec::new();
        let Ok(mut table) = fde.rows(section, bases, &mut ctx) else {
            ranges.push((
                fde.initial_address(),
                fde.end_address(),
                vec![(fde.initial_address(), UNSUPPORTED)],
            ));
            out.unsupported += 1;
            continue;
        };
        loop {
            match table.next_row() {
                Ok(Some(row)) => {
                    let rule = rule_of(section, row);
                    if rule.0 == cfa::UNSUPPORTED {
                        out.unsupported += 1;
                    } else if rule.0 == cfa::PLT {
                        out.plt += 1;
                    }
                    rows.push((row.start_address(), rule));
                }
                Ok(None) => break,
                Err(_) => {
                    rows.push((fde.initial_address(), UNSUPPORTED));
                    out.unsupported += 1;
                    break;
                }
            }
        }
        if rows.iter().any(|(_, rule)| *rule == (cfa::RBP, 16, -2)) {
            out.fp_fdes += 1;
        }
        ranges.push((fde.initial_address(), fde.end_address(), rows));
    }
    Ok(())
}

/// The rule of one row of an FDE's table.
fn rule_of<'a, S: UnwindSection<gimli::EndianSlice<'a, LittleEndian>>>(
    section: &S,
    row: &gimli::UnwindTableRow<usize>,
) -> Rule {
    match row.register(X86_64::RA) {
        Some(RegisterRule::Offset(-8)) => {}
        Some(RegisterRule::Undefined) => return (cfa::END, 0, 0),
        _ => return UNSUPPORTED,
    }
    let rbp = match row.register(X86_64::RBP) {
        None | Some(RegisterRule::Undefined | RegisterRule::SameValue) => 0,
        Some(RegisterRule::Offset(off)) if off % 8 == 0 => match i8::try_from(off / 8) {
            Ok(words) if words != 0 => words,
            _ => return UNSUPPORTED,
        },
        _ => return UNSUPPORTED,
    };
    match *row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => {
            let Ok(offset) = u16::try_from(offset) else {
                return UNSUPPORTED;
            };
            match register {
                Register(7) => (cfa::RSP, offset, rbp),
                Register(6) => (cfa::RBP, offset, rbp),
                _ => UNSUPPORTED,
            }
        }
        CfaRule::Expression(ref expr) => match expr.get(section) {
            Ok(expr) => plt_rule(expr.0.slice()).unwrap_or(UNSUPPORTED),
            Err(_) => UNSUPPORTED,
        },
    }
}

/// The PLT stubs' CFA expression (every linker emits the same one):
/// `rsp + off + ((rip & 15) >= t ? 8 : 0)`, as
/// `breg7 off; breg16 0; lit15; and; lit<t>; ge; lit3; shl; plus`.
fn plt_rule(expr: &[u8]) -> Option<Rule> {
    match *expr {
        [0x77, off, 0x80, 0x00, 0x3f, 0x1a, lit, 0x2a, 0x33, 0x24, 0x22]
            if off < 0x40 && (0x30..0x40).contains(&lit) =>
        {
            Some((cfa::PLT, u16::from(off), (lit - 0x30) as i8))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn libc() -> std::path::PathBuf {
        [
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
        ]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
        .expect("libc.so.6 of the system")
    }

    /// The row in effect at `pc`.
    fn row_at(rows: &[UnwindRow], pc: u64) -> UnwindRow {
        let i = rows.partition_point(|r| u64::from(r.pc) <= pc);
        rows[i - 1]
    }

    /// The file address of the symbol `name` in the object at `path`.
    fn symbol(data: &[u8], name: &str) -> u64 {
        use object::ObjectSymbol as _;
        let file = object::File::parse(data).unwrap();
        file.symbols()
            .chain(file.dynamic_symbols())
            .find(|s| s.name() == Ok(name))
            .map(|s| s.address())
            .unwrap_or_else(|| panic!("{name} not found"))
    }

    #[test]
    fn libc_rows_are_sorted_and_mostly_followable() {
        let data = std::fs::read(libc()).unwrap();
        let c = compile(&data).unwrap();
        assert!(c.fdes > 1000, "{} FDEs", c.fdes);
        assert!(c.rows.windows(2).all(|w| w[0].pc < w[1].pc));
        let unsupported = c.rows.iter().filter(|r| r.kind == cfa::UNSUPPORTED).count();
        assert!(
            unsupported * 100 < c.rows.len(),
            "{unsupported} of {}",
            c.rows.len()
        );
        // malloc's first instruction: nothing pushed yet, the return
        // address is right at rsp.
        let malloc = symbol(&data, "malloc");
        assert_eq!(
            row_at(&c.rows, malloc),
            UnwindRow {
                pc: row_at(&c.rows, malloc).pc,
                cfa_offset: 8,
                kind: cfa::RSP,
                rbp: 0
            }
        );
        // The PLT of libc is described by the well-known expression.
        assert!(c.plt > 0);
    }

    #[test]
    fn python_main_loop_has_rows() {
        let path = std::path::Path::new("/usr/bin/python3.11");
        if !path.exists() {
            eprintln!("skipped: /usr/bin/python3.11 is not installed (apt-get install python3)");
            return;
        }
        let data = std::fs::read(path).unwrap();
        let c = compile(&data).unwrap();
        let eval = symbol(&data, "_PyEval_EvalFrameDefault");
        let row = row_at(&c.rows, eval + 64);
        assert!(matches!(row.kind, cfa::RSP | cfa::RBP), "{row:?}");
        eprintln!(
            "python3.11: {} FDEs, {} rows, {} unsupported",
            c.fdes,
            c.rows.len(),
            c.unsupported
        );
    }

    #[test]
    fn an_object_counts_as_built_with_frame_pointers_when_nearly_every_fde_sets_one_up() {
        let of = |fdes, fp_fdes| Compiled {
            fdes,
            fp_fdes,
            ..Compiled::default()
        };
        // A small program: its own functions, and _start, _init, the PLT.
        assert!(of(8, 5).frame_pointers());
        assert!(!of(8, 0).frame_pointers());
        // libc: 94 of 3,713 FDEs.
        assert!(!of(3713, 94).frame_pointers());
        assert!(of(3713, 3400).frame_pointers());
        assert!(!of(3713, 3000).frame_pointers());
        assert!(!of(0, 0).frame_pointers());
    }

    #[test]
    fn page_index_bounds_each_page_rows() {
        use memprof_common::unwind::{PAGE_LEN_SHIFT, PAGE_SHIFT};
        let data = std::fs::read(libc()).unwrap();
        let c = compile(&data).unwrap();
        assert!(!c.frame_pointers(), "{} of {} FDEs", c.fp_fdes, c.fdes);
        let (page0, index) = page_index(&c.rows).unwrap();
        // Every address's row lies within its page's entry.
        for pc in (u64::from(c.rows[0].pc)..u64::from(c.rows.last().unwrap().pc)).step_by(37) {
            let want = c.rows.partition_point(|r| u64::from(r.pc) <= pc) - 1;
            let entry = index[((pc >> PAGE_SHIFT) - u64::from(page0)) as usize];
            let first = (entry & ((1 << PAGE_LEN_SHIFT) - 1)) as usize;
            let len = (entry >> PAGE_LEN_SHIFT) as usize;
            let end = if len == 0 { c.rows.len() } else { first + len };
            assert!(
                first <= want && want < end,
                "pc {pc:#x}: row {want}, page [{first}, {end})"
            );
        }
    }

    #[test]
    fn plt_expression_is_recognised() {
        let expr = [
            0x77, 0x08, 0x80, 0x00, 0x3f, 0x1a, 0x3b, 0x2a, 0x33, 0x24, 0x22,
        ];
        assert_eq!(plt_rule(&expr), Some((cfa::PLT, 8, 11)));
        assert_eq!(plt_rule(&expr[..10]), None);
    }
}
