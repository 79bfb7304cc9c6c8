//! A hand-built report shared by the renderer tests: C frames with file:line,
//! Rust names (one with `;` in it, one inlined frame), a frame without any
//! symbol, a stack the kernel could not walk, and counters that say data was lost.
//! Variants of it as `--interval` and `--min-age` would have produced it.
#![allow(dead_code)] // each test crate uses part of this

use memprof::model::{
    Frame, Growth, Host, Released, Report, Stack, Stats, Target, Totals, Truncation, Walk,
    SCHEMA_VERSION,
};

const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";
const APP: &str = "/opt/leaky/bin/leaky";

fn c_frame(addr: u64, function: &str, file: &str, line: u32) -> Frame {
    Frame {
        addr,
        function: Some(function.to_string()),
        module: Some(APP.to_string()),
        file: Some(file.to_string()),
        line: Some(line),
        ..Frame::default()
    }
}

fn libc_frame(addr: u64, function: &str) -> Frame {
    Frame {
        addr,
        function: Some(function.to_string()),
        module: Some(LIBC.to_string()),
        ..Frame::default()
    }
}

/// The bottom of every C stack: main, then libc's start code.
fn c_roots() -> Vec<Frame> {
    vec![
        c_frame(0x5555_5555_5301, "main", "/src/leaky/leaky.c", 88),
        libc_frame(0x7fff_f7c2_9d90, "__libc_start_call_main"),
        libc_frame(0x7fff_f7c2_9e40, "__libc_start_main_impl"),
        // `_start` has no debug information.
        Frame {
            addr: 0x5555_5555_50a5,
            function: Some("_start".to_string()),
            module: Some(APP.to_string()),
            ..Frame::default()
        },
    ]
}

fn stack(bytes: u64, count: u64, oldest: f64, median: f64, frames: Vec<Frame>) -> Stack {
    Stack {
        bytes,
        count,
        oldest_age_secs: oldest,
        median_age_secs: median,
        // As memprof sets it.
        truncated: !frames.is_empty() && !memprof::reaches_start(&frames),
        walk: (!frames.is_empty()).then_some(Walk::Cfi),
        truncation: (!frames.is_empty() && !memprof::reaches_start(&frames))
            .then_some(Truncation::FramePointers),
        frames,
        growth: None,
        pid: None,
        estimate: None,
        allocator: Default::default(),
    }
}

/// A report as the pipeline would produce it (stacks largest first).
pub(crate) fn sample_report() -> Report {
    let start = c_roots();

    let mut leak = vec![
        c_frame(0x5555_5555_5189, "leak_buffer", "/src/leaky/leaky.c", 12),
        c_frame(
            0x5555_5555_5240,
            "process_request",
            "/src/leaky/leaky.c",
            40,
        ),
    ];
    leak.extend(start.clone());

    let mut rust = vec![
        Frame {
            addr: 0x5555_5555_6a10,
            function: Some("alloc::raw_vec::RawVec<T,A>::grow_one".to_string()),
            module: Some(APP.to_string()),
            file: Some("/rustc/library/alloc/src/raw_vec.rs".to_string()),
            line: Some(567),
            inlined: true,
            ..Frame::default()
        },
        Frame {
            addr: 0x5555_5555_6a10,
            function: Some("leaky::cache::Cache::insert".to_string()),
            module: Some(APP.to_string()),
            file: Some("/src/leaky/src/cache.rs".to_string()),
            line: Some(31),
            ..Frame::default()
        },
        c_frame(
            0x5555_5555_6b22,
            "leaky::main",
            "/src/leaky/src/main.rs",
            10,
        ),
    ];
    rust.extend(start[1..].iter().cloned());

    let mut semicolon = vec![c_frame(
        0x5555_5555_7004,
        "<[u8; 16] as leaky::Fill>::fill",
        "/src/leaky/src/fill.rs",
        7,
    )];
    semicolon.extend(start.clone());

    let mut unsymbolized = vec![Frame {
        addr: 0x7fff_f7e0_1234,
        module: Some("/usr/lib/libfoo.so.1".to_string()),
        module_offset: Some(0x1234),
        ..Frame::default()
    }];
    unsymbolized.extend(start.clone());

    // Rust's std has frame pointers; the rest of the program has none.
    let mut rust = stack(256 << 10, 64, 20.0, 10.25, rust);
    rust.walk = Some(Walk::Mixed);
    let stacks = vec![
        stack(1 << 20, 16, 29.75, 15.5, leak),
        rust,
        stack(8192, 1, 0.125, 0.125, unsymbolized),
        stack(4096, 2, 3.5, 2.0, vec![]),
        stack(1000, 10, 61.0, 0.5, semicolon),
    ];
    let totals = totals_of(&stacks);
    Report {
        version: SCHEMA_VERSION,
        selection: None,
        processes: Vec::new(),
        host: Host {
            hostname: "web-7".to_string(),
            boot_id: "6f1d3c52-93c8-4b4e-9d0e-1f0a3e5b7c21".to_string(),
            kernel: "6.18.0".to_string(),
        },
        target: Target {
            pid: 4242,
            comm: "leaky".to_string(),
            cmdline: "/opt/leaky/bin/leaky --rounds 3 --size 4096".to_string(),
            allocator: LIBC.to_string(),
            exited_after_secs: Some(27.25),
            exit_status: None,
            started_unix_secs: Some(1_714_500_000.5),
            execs: 1,
            exec_after_secs: Some(2.5),
        },
        start_unix_secs: 1_714_564_800.25,
        duration_secs: 30.0,
        totals,
        stacks,
        stats: Stats {
            allocs: 1200,
            frees: 1107,
            failed_allocs: 0,
            frees_unknown: 37,
            nested_calls: 3,
            live_map_full: 5,
            live_map_full_bytes: 20480,
            stack_lost: 2,
            stack_map_full: 0,
            stack_no_room: 0,
            exits_not_noted: 0,
            return_without_entry: 1,
            pending_map_full: 0,
            pending_stale: 0,
            stack_collisions: 0,
            stacks_freed: 12,
            forks_not_followed: 0,
            heap_events_lost: 0,
            unwind: Default::default(),
            python: Default::default(),
        },
        min_age_secs: None,
        younger: None,
        interval_secs: None,
        released: Released {
            at_exec: Totals {
                bytes: 65_536,
                count: 3,
            },
            at_exit: Totals::default(),
        },
        sampling: None,
        mmap: None,
        kernel: None,
        probes: Vec::new(),
        allocations: None,
        peak: None,
        timeline: None,
    }
}

fn totals_of(stacks: &[Stack]) -> Totals {
    Totals {
        bytes: stacks.iter().map(|s| s.bytes).sum(),
        count: stacks.iter().map(|s| s.count).sum(),
    }
}

/// The sample as `--interval 2.5` would have produced it: 12 snapshots (the
/// last at the end of the run), the C leak growing fast, the `;` stack growing
/// slowly, the Rust stack flat, the unsymbolized one shrinking and the lost one
/// going up and down; growing stacks first (fastest first), then by bytes.
///
/// Rates are the least-squares slopes rounded to 1/16 B/s, so that they are
/// exact in JSON.
pub(crate) fn growth_report() -> Report {
    let mut report = sample_report();
    report.interval_secs = Some(2.5);
    let growth = |samples: Vec<u64>, bytes_per_sec: f64, growing: bool| {
        Some(Growth {
            samples,
            bytes_per_sec,
            growing,
        })
    };
    // By bytes: leak, rust, unsymbolized, lost, semicolon.
    let mut stacks = std::mem::take(&mut report.stacks);
    assert_eq!(stacks.len(), 5);
    stacks[0].growth = growth(
        [1, 2, 4, 5, 7, 8, 9, 11, 12, 13, 15, 16]
            .iter()
            .map(|n| n * 65536)
            .collect(),
        36021.875,
        true,
    );
    stacks[1].growth = growth(vec![262_144; 12], 0.0, false);
    stacks[2].growth = growth(
        vec![
            45056, 40960, 40960, 36864, 32768, 28672, 24576, 20480, 16384, 12288, 12288, 8192,
        ],
        -1409.25,
        false,
    );
    stacks[3].growth = growth(
        vec![
            4096, 8192, 0, 4096, 4096, 0, 8192, 4096, 4096, 0, 8192, 4096,
        ],
        11.4375,
        false,
    );
    stacks[4].growth = growth(
        vec![0, 100, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000],
        37.1875,
        true,
    );
    let semicolon = stacks.remove(4);
    stacks.insert(1, semicolon);
    report.stacks = stacks;
    report
}

/// The sample as `--min-age 2` would have produced it: the unsymbolized stack
/// (all younger) is gone, the `;` stack keeps its 4 older allocations, and what
/// was left out is in `younger`.
pub(crate) fn min_age_report() -> Report {
    let mut report = sample_report();
    report.min_age_secs = Some(2.0);
    report.stacks.remove(2);
    if let Some(semicolon) = report.stacks.last_mut() {
        semicolon.bytes = 400;
        semicolon.count = 4;
        semicolon.median_age_secs = 20.0;
    }
    report.totals = totals_of(&report.stacks);
    report.younger = Some(Totals {
        bytes: 8192 + 600 + 16384,
        count: 1 + 6 + 4,
    });
    report
}

/// A report of a run that found nothing outstanding.
pub(crate) fn empty_report() -> Report {
    Report {
        version: SCHEMA_VERSION,
        target: Target {
            pid: 7,
            comm: "quiet".to_string(),
            cmdline: "quiet".to_string(),
            allocator: LIBC.to_string(),
            ..Target::default()
        },
        start_unix_secs: 1_714_564_800.0,
        duration_secs: 5.0,
        stats: Stats {
            allocs: 10,
            frees: 10,
            ..Stats::default()
        },
        ..Report::default()
    }
}

/// A run over many processes: the sample report's stacks split between two
/// processes, the larger first, as the pipeline ranks them.
pub(crate) fn many_report() -> Report {
    let mut report = sample_report();
    let (web, cron) = (4242, 977);
    for (i, stack) in report.stacks.iter_mut().enumerate() {
        stack.pid = Some(if i < 2 { web } else { cron });
    }
    let totals = |pid| {
        report
            .stacks
            .iter()
            .filter(|s| s.pid == Some(pid))
            .fold(Totals::default(), |t, s| Totals {
                bytes: t.bytes + s.bytes,
                count: t.count + s.count,
            })
    };
    report.processes = vec![
        memprof::model::Process {
            pid: web,
            comm: "web".to_string(),
            cmdline: "/usr/bin/web --port 80".to_string(),
            allocator: "/usr/lib/x86_64-linux-gnu/libc.so.6".to_string(),
            started_unix_secs: Some(1_714_500_000.5),
            exited: false,
            execs: 0,
            totals: totals(web),
        },
        memprof::model::Process {
            pid: cron,
            comm: "cron job".to_string(),
            cmdline: "/usr/bin/cron-job".to_string(),
            allocator: "jemalloc (/usr/lib/x86_64-linux-gnu/libjemalloc.so.2)".to_string(),
            started_unix_secs: None,
            exited: true,
            execs: 1,
            totals: totals(cron),
        },
    ];
    report.selection = Some("system-wide".to_string());
    report.target = Target {
        pid: 0,
        comm: "2 processes".to_string(),
        cmdline: "system-wide".to_string(),
        allocator: "/usr/lib/x86_64-linux-gnu/libc.so.6, jemalloc (/usr/lib/x86_64-linux-gnu/libjemalloc.so.2)"
            .to_string(),
        ..Target::default()
    };
    report
}

/// The sample report with the profiles of a full-tracking run: every
/// outstanding stack allocated more than it holds, a churn stack that holds
/// nothing, a peak held by the leak and the churn, and a timeline of 6
/// samples in which the leak grows and the churn comes and goes.
pub(crate) fn profiles_report() -> Report {
    use memprof::model::{
        AllocStack, AllocTotals, Allocations, Peak, PeakStack, Timeline, TimelineSample,
        TimelineStack,
    };
    let mut report = sample_report();
    let churn = {
        let mut frames = vec![c_frame(
            0x5555_5555_5400,
            "parse_request",
            "/src/leaky/leaky.c",
            55,
        )];
        frames.extend(c_roots());
        frames
    };
    let mut allocations: Vec<AllocStack> = report
        .stacks
        .iter()
        .map(|s| AllocStack {
            totals: AllocTotals {
                count: s.count * 3,
                bytes: s.bytes * 3,
                temporary: s.count,
                temporary_bytes: s.bytes,
            },
            outstanding: Totals {
                bytes: s.bytes,
                count: s.count,
            },
            frames: s.frames.clone(),
            pid: s.pid,
        })
        .collect();
    allocations.insert(
        0,
        AllocStack {
            totals: AllocTotals {
                count: 50_000,
                bytes: 25_600_000,
                temporary: 49_000,
                temporary_bytes: 25_088_000,
            },
            outstanding: Totals::default(),
            frames: churn.clone(),
            pid: None,
        },
    );
    let totals = allocations
        .iter()
        .fold(AllocTotals::default(), |t, a| AllocTotals {
            count: t.count + a.totals.count,
            bytes: t.bytes + a.totals.bytes,
            temporary: t.temporary + a.totals.temporary,
            temporary_bytes: t.temporary_bytes + a.totals.temporary_bytes,
        });
    report.allocations = Some(Allocations {
        temporary_secs: 0.001,
        totals,
        stacks: allocations,
    });
    let leak = report.stacks[0].frames.clone();
    report.peak = Some(Peak {
        at_secs: 21.5,
        totals: Totals {
            bytes: (1 << 20) + 3_000_000,
            count: 16 + 3_000,
        },
        exact: true,
        events_lost: 0,
        events: 1_234_567,
        stacks: vec![
            PeakStack {
                bytes: 3_000_000,
                count: 3_000,
                frames: churn,
                pid: None,
            },
            PeakStack {
                bytes: 1 << 20,
                count: 16,
                frames: leak.clone(),
                pid: None,
            },
        ],
    });
    let at = [0.0, 5.0, 10.0, 20.0, 25.0, 30.0];
    let leak_bytes = [0, 200_000, 400_000, 800_000, 1_000_000, 1 << 20];
    let churn_bytes = [0, 100_000, 0, 2_900_000, 0, 0];
    report.timeline = Some(Timeline {
        every_secs: 5.0,
        samples: (0..6)
            .map(|i| TimelineSample {
                at_secs: at[i],
                bytes: leak_bytes[i] + churn_bytes[i],
                count: 0,
                rss_bytes: Some(8_000_000 + leak_bytes[i] + churn_bytes[i] * 2),
            })
            .collect(),
        stacks: vec![
            TimelineStack {
                bytes: churn_bytes.to_vec(),
                frames: report.peak.as_ref().unwrap().stacks[0].frames.clone(),
                pid: None,
            },
            TimelineStack {
                bytes: leak_bytes.to_vec(),
                frames: leak,
                pid: None,
            },
        ],
    });
    report
}
