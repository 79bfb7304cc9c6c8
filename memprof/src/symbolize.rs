//! Turning instruction pointers of the target into function names and source lines.

use std::collections::HashMap;

use blazesym::symbolize::cache::{Cache, Process as CacheProcess};
use blazesym::symbolize::source::{Process, Source};
use blazesym::symbolize::{CodeInfo, Input, Symbolized, Symbolizer as Blaze};
use blazesym::Pid;

use crate::model::Frame;

/// One long-lived symbolizer per target (blazesym caches parsed ELF and DWARF).
pub struct Symbolizer {
    blaze: Blaze,
    pid: u32,
}

impl Symbolizer {
    /// Creates the symbolizer and caches the target's memory map now, so that
    /// stacks can still be symbolized if the target exits during the run.
    pub fn new(pid: u32) -> Symbolizer {
        let blaze = Blaze::builder()
            .enable_code_info(true)
            .enable_inlined_fns(true)
            .enable_demangling(true)
            .build();
        if let Err(e) = blaze.cache(&Cache::from(CacheProcess::new(Pid::from(pid)))) {
            log::debug!("caching the memory map of pid {pid}: {e}");
        }
        Symbolizer { blaze, pid }
    }

    /// Symbolizes many stacks at once (one batch for all distinct addresses).
    ///
    /// Stacks are instruction pointers innermost first, as captured at the
    /// allocator's return: every one is a return address, so the address looked
    /// up is `ip - 1`, inside the call instruction.
    pub fn symbolize_stacks(&self, stacks: &HashMap<i64, Vec<u64>>) -> HashMap<i64, Vec<Frame>> {
        let mut addrs: Vec<u64> =
            stacks.values().flatten().map(|ip| ip.saturating_sub(1)).collect();
        addrs.sort_unstable();
        addrs.dedup();
        let resolved = self.resolve(&addrs);
        stacks
            .iter()
            .map(|(&id, ips)| {
                let frames = ips
                    .iter()
                    .flat_map(|&ip| match resolved.get(&ip.saturating_sub(1)) {
                        Some(frames) => frames.iter().cloned().map(|f| Frame { addr: ip, ..f }).collect(),
                        None => vec![Frame { addr: ip, ..Frame::default() }],
                    })
                    .collect();
                (id, frames)
            })
            .collect()
    }

    fn resolve(&self, addrs: &[u64]) -> HashMap<u64, Vec<Frame>> {
        let mut src = Process::new(Pid::from(self.pid));
        src.map_files = true;
        let src = Source::Process(src);
        let results = match self.blaze.symbolize(&src, Input::AbsAddr(addrs)) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("symbolizing pid {}: {e}", self.pid);
                return HashMap::new();
            }
        };
        addrs
            .iter()
            .zip(results)
            .map(|(&addr, sym)| (addr, frames_of(addr, sym)))
            .collect()
    }
}

/// Frames of one address, innermost first: inlined functions, then the real one.
fn frames_of(addr: u64, sym: Symbolized<'_>) -> Vec<Frame> {
    let Symbolized::Sym(sym) = sym else {
        return vec![Frame { addr, ..Frame::default() }];
    };
    let module = sym.module.as_ref().map(|m| m.to_string_lossy().into_owned());
    let mut frames = Vec::with_capacity(sym.inlined.len() + 1);
    // blazesym lists inlined functions outermost first; the location of the
    // address is in the innermost one.
    let mut location = sym.code_info.as_deref().map(code_location);
    for inlined in sym.inlined.iter().rev() {
        let (file, line) = location.take().unwrap_or((None, None));
        frames.push(Frame {
            addr,
            function: Some(inlined.name.to_string()),
            module: module.clone(),
            file,
            line,
            inlined: true,
        });
        location = inlined.code_info.as_ref().map(code_location);
    }
    let (file, line) = location.unwrap_or((None, None));
    frames.push(Frame { addr, function: Some(sym.name.to_string()), module, file, line, inlined: false });
    frames
}

fn code_location(info: &CodeInfo<'_>) -> (Option<String>, Option<u32>) {
    (Some(info.to_path().to_string_lossy().into_owned()), info.line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbolizes_this_process() {
        #[inline(never)]
        fn marker() -> u64 {
            marker as *const () as u64
        }
        let addr = marker() + 1;
        let sym = Symbolizer::new(std::process::id());
        let stacks = HashMap::from([(7, vec![addr + 1])]);
        let frames = &sym.symbolize_stacks(&stacks)[&7];
        let name = frames.last().and_then(|f| f.function.clone()).unwrap_or_default();
        assert!(name.contains("marker"), "{frames:?}");
    }
}
