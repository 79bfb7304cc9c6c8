//! The fixtures: what each one is, where its binary is, and what it leaves
//! outstanding ([`Kind::truth`]), so that a test names a fixture and gets its
//! ground truth with it.

use std::fs;
use std::path::{Path, PathBuf};

use crate::Totals;

/// Where `build.rs` put the C fixtures.
pub fn c_fixtures_dir() -> PathBuf {
    Path::new(env!("OUT_DIR")).join("fixtures")
}

/// The C fixture `name` built by `build.rs`, or why it was not built.
fn c_fixture(name: &str) -> Result<PathBuf, String> {
    let dir = c_fixtures_dir();
    if let Ok(error) = fs::read_to_string(dir.join(format!("{name}.error"))) {
        return Err(error);
    }
    let bin = dir.join(name);
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "{} is missing: rebuild the tests package",
            bin.display()
        ))
    }
}

/// The fixtures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `tests/fixtures/leaky.c`: leaks through every allocation function of
    /// libc while 4 threads churn, and makes one allocation that fails.
    Leaky,
    /// `tests/fixtures/leaky.c` built with `-O2 -fomit-frame-pointer`: the
    /// same leaks as [`Kind::Leaky`], but stacks cut short, so only the
    /// totals of its ground truth can be checked.
    LeakyNoFramePointers,
    /// `tests/fixtures/phases.c`: allocations that change over time (a
    /// steadily growing stack, a large flat one, blocks freed halfway, churn;
    /// with `--young`, young blocks right before `done`, [`Kind::PHASES_YOUNG`]).
    Phases,
    /// `tests/fixtures/stacks.c`: one 100-byte block leaked from each of 4096
    /// distinct call stacks (all ending in `leaf_alloc`).
    Stacks,
    /// `tests/fixtures/transient.c`: thousands of distinct stacks that each
    /// allocate and free one block, round after round, and 50 leaked 100-byte
    /// blocks from 50 distinct stacks (all ending in `leak_alloc`).
    Transient,
    /// `tests/fixtures/execer.c`: leaks 5 x 1000 bytes, execs itself, leaks
    /// 3 x 2000 bytes in `after_exec_leak` from the new program, then `done`.
    Execer,
    /// `tests/fixtures/soak.c SECS`: churns, meets new stacks and leaks one
    /// 1000-byte block in `soak_leak` every 50 ms, for SECS seconds.
    Soak,
    /// `tests/fixtures/leaky.c` linked with jemalloc, tcmalloc or mimalloc,
    /// which replace glibc's malloc: the same ground truth as [`Kind::Leaky`].
    LeakyJemalloc,
    LeakyTcmalloc,
    LeakyMimalloc,
    /// `tests/fixtures/leaky.c` with jemalloc linked into the executable.
    LeakyJemallocStatic,
    /// `tests/fixtures/leaky.c` built with musl-gcc, dynamically and
    /// statically linked: the same ground truth as [`Kind::Leaky`].
    LeakyMusl,
    LeakyMuslStatic,
    /// `tests/fixtures/leaky_cxx.cpp`: leaks through operator new (from
    /// libstdc++) while it churns through new and delete.
    LeakyCxx,
    /// The same, linked with tcmalloc or mimalloc, which define operator new
    /// and delete themselves.
    LeakyCxxTcmalloc,
    LeakyCxxMimalloc,
    /// `tests/fixtures/containers.cpp`: leaks through operator new and the
    /// standard containers four calls below main; built with frame pointers
    /// and without (`-O2 -fomit-frame-pointer`), the same leaks.
    Containers,
    ContainersNoFramePointers,
    /// `tests/fixtures/leaky_nofp.rs`, compiled by rustc alone at
    /// `-C opt-level=2` with `-C force-frame-pointers=yes` or `=no`: leaks
    /// through the global allocator and libc four calls below main.
    LeakyRustFramePointers,
    LeakyRustNoFramePointers,
    /// `tests/fixtures/gosleeper.go`, built with the Go toolchain: prints
    /// `ready <pid>` and waits for EOF on stdin.
    GoSleeper,
    /// `tests/fixtures/oneshot.c`: runs to its end by itself (no protocol),
    /// leaving its ground truth outstanding at its exit; exits with status 3.
    OneShot,
    /// `tests/fixtures/oneshot.c` linked with jemalloc or tcmalloc (which
    /// replace glibc's malloc): the same ground truth as [`Kind::OneShot`].
    OneShotJemalloc,
    OneShotTcmalloc,
    /// `tests/fixtures/spawner.c`: after go, forks short-lived children that
    /// each exit holding blocks from 512 distinct stacks; prints `spawned`
    /// once 40 have; stops at EOF on stdin.
    Spawner,
    /// `tests/fixtures/forker.c`: after go, forks two children that leak
    /// [`Kind::FORKER_CHILD`] each, leaks its own ground truth, prints
    /// `children <pid> <pid>`, then `done`.
    Forker,
    /// `tests/fixtures/clean.c`: after go, 20,000 malloc/free pairs, nothing kept
    /// (with `--now`: at once, without the protocol, then exits 0).
    Clean,
    /// `tests/fixtures/steps.c`: leaks in three steps, one per `go` line,
    /// each acknowledged with `step N` (ground truth in the `continuous` tests).
    Steps,
    /// `tests/fixtures/selfcheck.c RESULT_FILE`: checks its own allocations
    /// through every probed function and writes a checksum; frees everything.
    SelfCheck,
    /// The `leaky-rust` binary of this package: leaks through Rust's global
    /// allocator (glibc's malloc) and libc while 2 threads churn.
    LeakyRust,
    /// The `leaky-rust-jemalloc` binary of this package (jemalloc with the
    /// `_rjem_` prefix as its global allocator) beside glibc's malloc.
    LeakyRustJemalloc,
    /// `tests/fixtures/demo.c`: the demo service of `cargo xtask demo`
    /// (prints `ready <pid>`, then serves until stdin EOF, a signal, or
    /// `argv[1]` seconds; no go/done protocol).
    Demo,
    /// `tests/fixtures/static.c` linked with `-static`: a process without a
    /// libc shared object. Same protocol as [`Kind::Leaky`], does nothing.
    Static,
    /// `tests/fixtures/sampled.c`: 25,000 equal-size leaks from three
    /// functions and a lot of churn, for `--sample-rate` (its ground truth,
    /// with the statistical bound it is checked within, is in the `sampling`
    /// tests).
    Sampled,
    /// `tests/fixtures/mmaps.c`: anonymous mappings kept, trimmed, holed,
    /// mremap'ed and churned (ground truth in the `sources` tests).
    Mmaps,
    /// `tests/fixtures/kernel_objects.c keep|close`: 64 eventfds kept open or
    /// closed again (for `--kernel`, see the `sources` tests).
    KernelObjects,
    /// `tests/fixtures/profiles.c rate`: known allocations per stack, some
    /// freed at once, some kept, some freed after 200 ms
    /// ([`Kind::PROFILES_ALLOCS`]).
    ProfilesRate,
    /// `tests/fixtures/profiles.c peak`: rises to a known peak through known
    /// stacks, then frees most of it ([`Kind::PROFILES_PEAK`]).
    ProfilesPeak,
    /// `tests/fixtures/profiles.c steps`: grows in known steps, printing
    /// `step <k> <CLOCK_MONOTONIC ns>` after each ([`Kind::PROFILES_STEPS`]).
    ProfilesSteps,
    /// `tests/fixtures/perf_map.c`: keeps 40 x malloc(1500) called through
    /// a trampoline in anonymous memory that `/tmp/perf-PID.map` names
    /// (checked in the `perf_map` tests).
    PerfMap,
}

impl Kind {
    /// The fixture's binary. Errors are readable messages (the static
    /// fixture is not built without `libc.a`).
    pub fn path(self) -> Result<PathBuf, String> {
        match self {
            Kind::Leaky => c_fixture("leaky"),
            Kind::LeakyNoFramePointers => c_fixture("leaky-nofp"),
            Kind::Phases => c_fixture("phases"),
            Kind::Stacks => c_fixture("stacks"),
            Kind::Transient => c_fixture("transient"),
            Kind::Execer => c_fixture("execer"),
            Kind::Soak => c_fixture("soak"),
            Kind::OneShot => c_fixture("oneshot"),
            Kind::OneShotJemalloc => c_fixture("oneshot-jemalloc"),
            Kind::OneShotTcmalloc => c_fixture("oneshot-tcmalloc"),
            Kind::Spawner => c_fixture("spawner"),
            Kind::Forker => c_fixture("forker"),
            Kind::Clean => c_fixture("clean"),
            Kind::Steps => c_fixture("steps"),
            Kind::GoSleeper => c_fixture("go-sleeper"),
            Kind::LeakyJemalloc => c_fixture("leaky-jemalloc"),
            Kind::LeakyTcmalloc => c_fixture("leaky-tcmalloc"),
            Kind::LeakyMimalloc => c_fixture("leaky-mimalloc"),
            Kind::LeakyJemallocStatic => c_fixture("leaky-jemalloc-static"),
            Kind::LeakyMusl => c_fixture("leaky-musl"),
            Kind::LeakyMuslStatic => c_fixture("leaky-musl-static"),
            Kind::LeakyCxx => c_fixture("leaky-cxx"),
            Kind::LeakyCxxTcmalloc => c_fixture("leaky-cxx-tcmalloc"),
            Kind::LeakyCxxMimalloc => c_fixture("leaky-cxx-mimalloc"),
            Kind::Containers => c_fixture("containers"),
            Kind::ContainersNoFramePointers => c_fixture("containers-nofp"),
            Kind::LeakyRustFramePointers => c_fixture("leaky-rust-fp"),
            Kind::LeakyRustNoFramePointers => c_fixture("leaky-rust-nofp"),
            Kind::SelfCheck => c_fixture("selfcheck"),
            Kind::Demo => c_fixture("demo"),
            Kind::Static => c_fixture("static"),
            Kind::Sampled => c_fixture("sampled"),
            Kind::Mmaps => c_fixture("mmaps"),
            Kind::KernelObjects => c_fixture("kernel-objects"),
            Kind::PerfMap => c_fixture("perf-map"),
            Kind::ProfilesRate | Kind::ProfilesPeak | Kind::ProfilesSteps => c_fixture("profiles"),
            Kind::LeakyRust => rust_fixture_path("leaky-rust"),
            Kind::LeakyRustJemalloc => rust_fixture_path("leaky-rust-jemalloc"),
        }
    }
}

/// The binary `name` of this package (`leaky-rust`) next to the running test
/// binary: cargo puts integration tests in `<target>/<profile>/deps/` and the
/// package's binaries in `<target>/<profile>/`, and builds the binaries
/// before the tests.
fn rust_fixture_path(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the test binary: {e}"))?;
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or_else(|| format!("unexpected test binary path {}", exe.display()))?;
    let bin = profile_dir.join(name);
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "{} not found: build it with `cargo build -p tests --bins` (cargo test builds it \
             before the integration tests)",
            bin.display()
        ))
    }
}

// ---------------------------------------------------------------------------
// Ground truth

/// Outstanding memory one leaking function leaves behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leak {
    /// The function that called the allocator (last path segment for Rust).
    pub function: &'static str,
    /// Outstanding allocations.
    pub count: u64,
    /// Outstanding bytes (sum of requested sizes).
    pub bytes: u64,
}

/// Every allocation one function made, freed or not (the allocation profile).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocTruth {
    pub function: &'static str,
    pub count: u64,
    pub bytes: u64,
    /// Those freed within the temporary threshold.
    pub temporary: u64,
    pub temporary_bytes: u64,
}

/// An [`AllocTruth`], shorter (for the tables).
pub const fn alloc_truth(
    function: &'static str,
    count: u64,
    bytes: u64,
    temporary: u64,
    temporary_bytes: u64,
) -> AllocTruth {
    AllocTruth {
        function,
        count,
        bytes,
        temporary,
        temporary_bytes,
    }
}

/// A [`Leak`], shorter (for the tables).
pub const fn leak(function: &'static str, count: u64, bytes: u64) -> Leak {
    Leak {
        function,
        count,
        bytes,
    }
}

/// The sum of a ground-truth table.
pub fn total(leaks: &[Leak]) -> Totals {
    Totals {
        bytes: leaks.iter().map(|l| l.bytes).sum(),
        count: leaks.iter().map(|l| l.count).sum(),
    }
}

/// What a fixture holds when it says `done` (or, for [`Kind::OneShot`],
/// when it exits), counted from the go line, and what its run must show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroundTruth {
    /// Each leaking function with its outstanding allocations and bytes.
    pub leaks: &'static [Leak],
    /// Functions that allocate but leave nothing outstanding: no stack of
    /// the report may contain one.
    pub clean: &'static [&'static str],
    /// How deep in its stacks a leaking function may be: `Some(n)`, among
    /// the first `n` frames (stacks are taken where the allocator returns,
    /// so the caller is `frames[0]`; `frames[1]` is tolerated where libc's
    /// functions call one another: reallocarray tail-calls realloc);
    /// `None`, anywhere (Rust's allocations pass several std frames first).
    pub max_depth: Option<usize>,
    /// Allocations the fixture makes besides its leaks, at least, and frees
    /// at least as many (its churn): a run that saw fewer did not see the
    /// churn, and "no stack of the churn" would prove nothing.
    pub min_churn: u64,
    /// Allocations that fail on purpose, at least (`fail_alloc`'s malloc of
    /// half the address space).
    pub min_failed_allocs: u64,
}

impl GroundTruth {
    /// The sum of [`GroundTruth::leaks`].
    pub fn total(&self) -> Totals {
        total(self.leaks)
    }
}

impl Kind {
    /// The fixture's ground truth. Panics for the fixtures that have no
    /// table of outstanding blocks: [`Kind::Sampled`], [`Kind::Mmaps`] and
    /// [`Kind::KernelObjects`] are checked in their own tests' terms,
    /// [`Kind::Soak`]'s leaks grow with the length of its run, the demo's
    /// with the time memprof watches it, and the others leak nothing or are
    /// never profiled.
    #[track_caller]
    pub fn truth(self) -> &'static GroundTruth {
        match self {
            Kind::Leaky
            | Kind::LeakyNoFramePointers
            | Kind::LeakyJemalloc
            | Kind::LeakyTcmalloc
            | Kind::LeakyMimalloc
            | Kind::LeakyJemallocStatic
            | Kind::LeakyMusl
            | Kind::LeakyMuslStatic => &LEAKY_C,
            Kind::LeakyCxx | Kind::LeakyCxxTcmalloc | Kind::LeakyCxxMimalloc => &LEAKY_CXX,
            Kind::LeakyRust => &LEAKY_RUST,
            Kind::Containers | Kind::ContainersNoFramePointers => &CONTAINERS,
            Kind::LeakyRustFramePointers | Kind::LeakyRustNoFramePointers => &LEAKY_RUST_NOFP,
            Kind::LeakyRustJemalloc => &LEAKY_RUST_JEMALLOC,
            Kind::Phases => &PHASES,
            Kind::Forker => &FORKER,
            Kind::OneShot | Kind::OneShotJemalloc | Kind::OneShotTcmalloc => &ONESHOT,
            Kind::Execer => &EXECER,
            Kind::Stacks => &STACKS,
            Kind::Transient => &TRANSIENT,
            Kind::ProfilesRate => &PROFILES_RATE,
            Kind::ProfilesPeak => &PROFILES_PEAK,
            Kind::ProfilesSteps => &PROFILES_STEPS,
            Kind::Soak
            | Kind::GoSleeper
            | Kind::Clean
            | Kind::Steps
            | Kind::Spawner
            | Kind::SelfCheck
            | Kind::Demo
            | Kind::Static
            | Kind::Sampled
            | Kind::Mmaps
            | Kind::KernelObjects
            | Kind::PerfMap => panic!("the {self:?} fixture has no ground-truth table"),
        }
    }

    /// What [`Kind::Phases`] run with `--young` holds besides its ground
    /// truth: 7 x malloc(3000) right before `done`, at least 3 s after
    /// everything else.
    pub const PHASES_YOUNG: Leak = leak("young_blocks", 7, 21_000);

    /// The argument that selects the mode of `profiles.c`, for the
    /// [`Kind::ProfilesRate`], [`Kind::ProfilesPeak`] and [`Kind::ProfilesSteps`] fixtures.
    pub fn profiles_mode(self) -> &'static str {
        match self {
            Kind::ProfilesRate => "rate",
            Kind::ProfilesPeak => "peak",
            Kind::ProfilesSteps => "steps",
            _ => panic!("the {self:?} fixture is not profiles.c"),
        }
    }

    /// Every allocation [`Kind::ProfilesRate`] makes after go, by function,
    /// with `--temporary-ms 50` (its temporaries are freed at once, its
    /// `slow_free` blocks after 200 ms).
    pub const PROFILES_ALLOCS: &'static [AllocTruth] = &[
        alloc_truth("churn_temp", 1000, 64_000, 1000, 64_000),
        alloc_truth("keep_some", 200, 51_200, 0, 0),
        alloc_truth("mixed", 300, 38_400, 200, 25_600),
        alloc_truth("slow_free", 50, 25_600, 0, 0),
    ];

    /// The peak of [`Kind::ProfilesPeak`] (250,000 B in 15 blocks) and the
    /// stacks that held it.
    pub const PROFILES_PEAK: &'static [Leak] =
        &[leak("peak_b", 5, 150_000), leak("peak_a", 10, 100_000)];

    /// The blocks [`Kind::ProfilesSteps`] keeps, one per step, in order.
    pub const PROFILES_STEPS: &'static [u64] = &[100_000, 200_000, 300_000, 400_000];

    /// What each child of [`Kind::Forker`] holds after `done`.
    pub const FORKER_CHILD: GroundTruth = GroundTruth {
        leaks: &[leak("child_leak", 3, 3000)],
        clean: &["parent_leak"],
        ..NOTHING
    };
}

/// The fields every table below starts from.
const NOTHING: GroundTruth = GroundTruth {
    leaks: &[],
    clean: &[],
    max_depth: Some(2),
    min_churn: 0,
    min_failed_allocs: 0,
};

/// `tests/fixtures/leaky.c` (the table at its top; checked with valgrind).
const LEAKY_C: GroundTruth = GroundTruth {
    leaks: &[
        // 10 x malloc(1000)
        leak("leak_malloc", 10, 10_000),
        // 5 x calloc(4, 256)
        leak("leak_calloc", 5, 5_120),
        // 1 x calloc(1, 1 MiB): served by mmap
        leak("leak_calloc_big", 1, 1_048_576),
        // 4 chains ending at 2000, 2 (from realloc(NULL, 32)) at 3000, 1 at 300000
        // (mremap), and one realloc(p, 0) that frees
        leak("leak_realloc_chain", 7, 314_000),
        // 6 x posix_memalign(64, 512)
        leak("leak_posix_memalign", 6, 3_072),
        // 4 x aligned_alloc(64, 640) + 3 x memalign(128, 384)
        leak("leak_aligned_alloc", 7, 3_712),
        // 3 x reallocarray(NULL, 10, 100) -> reallocarray(p, 30, 100)
        leak("leak_reallocarray", 3, 9_000),
        // 2 x valloc(100)
        leak("leak_valloc", 2, 200),
    ],
    clean: &["churn_worker", "fail_alloc"],
    // 4 threads x 50000 mallocs.
    min_churn: 4 * 50_000,
    min_failed_allocs: 1,
    ..NOTHING
};

/// `tests/fixtures/leaky_cxx.cpp`.
const LEAKY_CXX: GroundTruth = GroundTruth {
    leaks: &[
        leak("leak_new", 5, 240),
        leak("leak_new_array", 3, 300),
        leak("leak_aligned_new", 2, 256),
    ],
    clean: &["churn_new"],
    // Each leak at its function, not at operator new.
    max_depth: Some(1),
    // 2,000 new/delete pairs.
    min_churn: 2_000,
    ..NOTHING
};

/// `tests/fixtures/containers.cpp` (the table at its top; checked with valgrind).
const CONTAINERS: GroundTruth = GroundTruth {
    leaks: &[
        leak("leak_widgets", 5, 240),
        // new vector (24 bytes) + reserve(250) of u64 (2000 bytes), 3 times
        leak("leak_vectors", 6, 6_072),
        // new string (32 bytes) + 100 chars (101 bytes), 4 times
        leak("leak_strings", 8, 532),
        // new map (48 bytes) + 10 nodes of 40 bytes
        leak("leak_map", 11, 448),
    ],
    clean: &["churn"],
    // The containers' own functions come first.
    max_depth: None,
    // 1,000 vectors grown to 40 ints: 7 allocations each.
    min_churn: 7_000,
    ..NOTHING
};

/// `tests/fixtures/leaky_nofp.rs` (the table at its top; checked with valgrind).
const LEAKY_RUST_NOFP: GroundTruth = GroundTruth {
    leaks: &[
        leak("leak_boxes", 8, 32_768),
        leak("leak_vecs", 4, 32_000),
        leak("leak_strings", 3, 1_500),
        leak("leak_libc_malloc", 5, 3_885),
    ],
    clean: &["churn"],
    max_depth: None,
    // 10,000 vectors, most grown a few times.
    min_churn: 10_000,
    ..NOTHING
};

/// The `leaky-rust` fixture (the table in `src/bin/leaky_rust.rs`; checked
/// with valgrind).
const LEAKY_RUST: GroundTruth = GroundTruth {
    leaks: &[
        // 8 x Box<[u8; 4096]>: malloc(4096)
        leak("leak_boxes", 8, 32_768),
        // 4 x Vec::<u64>::with_capacity(1000): malloc(8000)
        leak("leak_vec", 4, 32_000),
        // 100 pushes of u32 then shrink_to_fit: realloc(p, 400)
        leak("leak_vec_grow", 1, 400),
        // 2 x vec![0u8; 3000]: calloc(3000, 1)
        leak("leak_zeroed", 2, 6_000),
        // 3 x Box<Aligned64> (192 bytes, align 64): posix_memalign(64, 192)
        leak("leak_aligned", 3, 576),
        // 5 x libc::malloc(777)
        leak("leak_libc_malloc", 5, 3_885),
    ],
    clean: &["churn_worker", "fail_alloc"],
    max_depth: None,
    // 2 threads x 20000 boxes.
    min_churn: 2 * 20_000,
    min_failed_allocs: 1,
};

/// The `leaky-rust-jemalloc` fixture (the table in
/// `src/bin/leaky_rust_jemalloc.rs`).
const LEAKY_RUST_JEMALLOC: GroundTruth = GroundTruth {
    leaks: &[
        // 8 x Box<[u8; 4096]>: _rjem_malloc(4096)
        leak("leak_boxes", 8, 32_768),
        // 4 x Vec::<u64>::with_capacity(1000): _rjem_malloc(8000)
        leak("leak_vec", 4, 32_000),
        // 100 pushes of u32 then shrink_to_fit: _rjem_realloc(p, 400)
        leak("leak_vec_grow", 1, 400),
        // 2 x vec![0u8; 3000]: _rjem_calloc(1, 3000)
        leak("leak_zeroed", 2, 6_000),
        // 3 x Box<Aligned64> (192 bytes, align 64): _rjem_mallocx(192, align 64)
        leak("leak_aligned", 3, 576),
        // 2 x alloc_zeroed(256, align 64): _rjem_mallocx(256, align 64 | zero)
        leak("leak_aligned_zeroed", 2, 512),
        // 2 x alloc(128, align 64) -> realloc(1024): _rjem_rallocx(p, 1024, align 64)
        leak("leak_aligned_realloc", 2, 2_048),
        // 5 x libc::malloc(777): glibc's malloc
        leak("leak_libc_malloc", 5, 3_885),
    ],
    // The same churn, clean functions and failed allocation.
    ..LEAKY_RUST
};

/// `tests/fixtures/phases.c` (the table at its top): what is outstanding
/// after `done`, with or without `--young` (which adds
/// [`Kind::PHASES_YOUNG`]).
const PHASES: GroundTruth = GroundTruth {
    leaks: &[
        // 30 x malloc(4096), one every 100 ms for 3 s: growing
        leak("grow_steadily", 30, 122_880),
        // 1 x malloc(512 KiB) right after go: large and flat
        leak("hold_flat", 1, 524_288),
    ],
    // free_later: 20 x malloc(1000), all freed at ~1.5 s; short_lived: the churn.
    clean: &["free_later", "short_lived"],
    // free_later's 20 blocks and the churn's 10,000 allocations at least.
    min_churn: 20 + 10_000,
    ..NOTHING
};

/// `tests/fixtures/forker.c`: what the parent holds after `done`.
const FORKER: GroundTruth = GroundTruth {
    leaks: &[leak("parent_leak", 2, 1000)],
    clean: &["child_leak"],
    ..NOTHING
};

/// `tests/fixtures/oneshot.c`: what it holds at its exit.
const ONESHOT: GroundTruth = GroundTruth {
    leaks: &[
        leak("oneshot_malloc", 7, 2100),
        leak("oneshot_calloc", 1, 1000),
        leak("oneshot_realloc", 1, 5000),
    ],
    clean: &["oneshot_churn"],
    max_depth: Some(1),
    ..NOTHING
};

/// `tests/fixtures/execer.c`: what the new program holds after `done` (the
/// old one's 5 x 1000 bytes from `before_exec_leak` went away with the exec).
const EXECER: GroundTruth = GroundTruth {
    leaks: &[leak("after_exec_leak", 3, 3 * 2000)],
    clean: &["before_exec_leak"],
    max_depth: Some(1),
    ..NOTHING
};

/// `tests/fixtures/stacks.c`: one 100-byte block from each of 4096 distinct
/// call stacks, all ending in `leaf_alloc`.
const STACKS: GroundTruth = GroundTruth {
    leaks: &[leak("leaf_alloc", 4096, 4096 * 100)],
    max_depth: Some(1),
    ..NOTHING
};

/// `tests/fixtures/transient.c`: 50 leaked 100-byte blocks from 50 distinct
/// stacks (all ending in `leak_alloc`); the blocks of the thousands of
/// transient stacks are all freed.
const TRANSIENT: GroundTruth = GroundTruth {
    leaks: &[leak("leak_alloc", 50, 50 * 100)],
    max_depth: Some(1),
    ..NOTHING
};

/// `tests/fixtures/profiles.c rate` (the table at its top): what it keeps.
const PROFILES_RATE: GroundTruth = GroundTruth {
    leaks: &[leak("keep_some", 200, 51_200), leak("mixed", 100, 12_800)],
    clean: &["churn_temp", "slow_free"],
    max_depth: Some(1),
    // churn_temp, the freed two thirds of mixed, slow_free.
    min_churn: 1000 + 200 + 50,
    min_failed_allocs: 0,
};

/// `tests/fixtures/profiles.c peak`: what is left after the peak.
const PROFILES_PEAK: GroundTruth = GroundTruth {
    leaks: &[leak("peak_a", 2, 20_000), leak("after_peak", 3, 60_000)],
    clean: &["pre_churn", "peak_b"],
    max_depth: Some(1),
    min_churn: 100 + 5 + 8,
    min_failed_allocs: 0,
};

/// `tests/fixtures/profiles.c steps`: one block per step, all kept.
const PROFILES_STEPS: GroundTruth = GroundTruth {
    leaks: &[leak("step_grow", 4, 1_000_000)],
    max_depth: Some(1),
    ..NOTHING
};
