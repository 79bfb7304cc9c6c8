//! Where to put a probe inside an allocator function so that it is cheap.
//!
//! A uprobe replaces one instruction with a breakpoint. After the BPF
//! programs ran, the kernel must execute the displaced instruction: a few
//! kinds (push of a register, relative jumps, conditional jumps and calls,
//! `nop`) it emulates in a fraction of a microsecond; every other instruction
//! is single-stepped out of line, which costs several times more (glibc 2.36's
//! `free` begins with `test %rdi,%rdi`: a probe there costs several
//! microseconds per call, see the benchmark).
//!
//! [`cheap_offset`] walks the first instructions of a function and returns the
//! first one the kernel emulates, provided that every call reaches it and the
//! probes still see what they read at the entry: no instruction before it
//! branches, writes an argument register, or moves the stack pointer (a return
//! probe finds the return address at the stack pointer). When unsure, it
//! returns 0: the function's first instruction.

use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, InstructionInfoFactory, OpAccess, Register,
};

/// How far into a function [`cheap_offset`] looks.
const MAX_INSTRUCTIONS: usize = 8;

/// The argument registers of the System V x86-64 calling convention, in order.
const ARGS: [Register; 6] = [
    Register::RDI,
    Register::RSI,
    Register::RDX,
    Register::RCX,
    Register::R8,
    Register::R9,
];

/// Offset from the start of `code` (a function's first bytes) of the first
/// instruction that is cheap to probe and equivalent to the entry for a probe
/// reading the first `args` argument registers. 0 when there is none.
pub fn cheap_offset(code: &[u8], args: usize) -> u64 {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    let watched = &ARGS[..args.min(ARGS.len())];
    for _ in 0..MAX_INSTRUCTIONS {
        if !decoder.can_decode() {
            break;
        }
        let insn = decoder.decode();
        if insn.is_invalid() {
            break;
        }
        let start = insn.ip() as usize;
        let bytes = &code[start..start + insn.len()];
        if emulated(&insn, bytes) {
            return insn.ip();
        }
        if insn.flow_control() != FlowControl::Next {
            break;
        }
        let writes = info.info(&insn).used_registers().iter().any(|used| {
            let reg = used.register().full_register();
            let written = !matches!(
                used.access(),
                OpAccess::Read | OpAccess::CondRead | OpAccess::NoMemAccess | OpAccess::None
            );
            written && (reg == Register::RSP || watched.contains(&reg))
        });
        if writes || insn.stack_pointer_increment() != 0 {
            break;
        }
    }
    0
}

/// True for the instructions that x86 uprobes emulate instead of single-stepping.
fn emulated(insn: &iced_x86::Instruction, bytes: &[u8]) -> bool {
    match bytes {
        // push %rax..%rdi, push %r8..%r15
        [0x50..=0x57] | [0x41, 0x50..=0x57] => true,
        // nop
        [0x90] => true,
        _ => {
            // Relative jmp, jcc and call without prefixes.
            let plain = matches!(bytes.first(), Some(0x70..=0x7f | 0xe8 | 0xe9 | 0xeb | 0x0f));
            plain
                && (insn.is_jcc_short_or_near()
                    || insn.is_jmp_short_or_near()
                    || insn.code() == Code::Call_rel32_64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_236_free_moves_past_the_null_test() {
        // test %rdi,%rdi; je +0xbf; push %rbp; lea -0x10(%rdi),%rsi
        let code = [
            0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0, 0, 0, 0x55, 0x48, 0x8d, 0x77, 0xf0,
        ];
        assert_eq!(
            cheap_offset(&code, 1),
            3,
            "the je is emulated and every call reaches it"
        );
    }

    #[test]
    fn a_push_first_stays_at_zero() {
        // glibc 2.36 malloc: push %r12; push %rbp; push %rbx; mov %rdi,%rbx
        let code = [0x41, 0x54, 0x55, 0x53, 0x48, 0x89, 0xfb];
        assert_eq!(cheap_offset(&code, 1), 0);
    }

    #[test]
    fn skips_a_compare_to_reach_a_push() {
        // glibc 2.36 posix_memalign: cmpb $0x0,0x140201(%rip); push %r12; mov %rdx,%r12
        let code = [
            0x80, 0x3d, 0x01, 0x02, 0x14, 0x00, 0x00, 0x41, 0x54, 0x49, 0x89, 0xd4,
        ];
        assert_eq!(cheap_offset(&code, 3), 7);
    }

    #[test]
    fn stops_when_an_argument_is_overwritten() {
        // glibc 2.36 reallocarray: mov %rsi,%rax; mul %rdx (writes rdx); mov %rax,%rsi; jo; jmp
        let code = [
            0x48, 0x89, 0xf0, 0x48, 0xf7, 0xe2, 0x48, 0x89, 0xc6, 0x70, 0x05, 0xe9, 0, 0, 0, 0,
        ];
        assert_eq!(cheap_offset(&code, 3), 0);
    }

    #[test]
    fn stops_at_a_stack_change_or_a_branch_it_cannot_take() {
        // sub $0x18,%rsp; push %rbx
        assert_eq!(cheap_offset(&[0x48, 0x83, 0xec, 0x18, 0x53], 1), 0);
        // ret
        assert_eq!(cheap_offset(&[0xc3, 0x53], 1), 0);
        // endbr64; push %rbp: endbr64 is not emulated but harmless
        assert_eq!(cheap_offset(&[0xf3, 0x0f, 0x1e, 0xfa, 0x55], 1), 4);
    }

    #[test]
    fn garbage_falls_back_to_the_entry() {
        assert_eq!(cheap_offset(&[], 1), 0);
        assert_eq!(cheap_offset(&[0x0f, 0x0b], 1), 0); // ud2
        assert_eq!(cheap_offset(&[0xff; 3], 1), 0);
    }
}
