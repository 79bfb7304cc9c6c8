//! `memprof --sample-rate N` against the `sampled` fixture
//! (`tests/fixtures/sampled.c`): the scaled estimates are within a stated
//! statistical bound of the ground truth, nothing of the churn shows up
//! (unsampled reallocs move sampled blocks), frames are symbolized, every
//! output says that it is sampled (the `detach` tests check that no exit
//! path leaves the session programs loaded). Needs root and Linux 6.13+
//! (uprobe session links).
//!
//! # The bound
//! Each allocation call is recorded with probability 1/N, independently, so a
//! function that leaves n blocks outstanding has k ~ Binomial(n, 1/N) of them
//! recorded and is reported as N·k blocks, with a standard deviation of
//! sqrt(n·(N-1)). The tests accept N·k within [`SIGMAS`] standard deviations
//! of n: a correct memprof fails that about once in 1.7 million runs per
//! figure, while a bias as small as the one a double sampling chance or a
//! forgotten realloc would bring is far outside it.

use std::io::Read as _;
use tests::{frame_index, profile_fixture, root_or_skip, sampling_or_skip, Kind, Report};

/// 1 in N.
const RATE: u64 = 16;
/// How many standard deviations an estimate may be off.
const SIGMAS: f64 = 5.0;

/// A function of `sampled.c` that leaves `count` blocks of `size` bytes outstanding.
struct Truth {
    function: &'static str,
    count: u64,
    size: u64,
}

/// The table at the top of `tests/fixtures/sampled.c`.
const SAMPLED: &[Truth] = &[
    // 20000 x malloc(256)
    Truth {
        function: "leak_many",
        count: 20_000,
        size: 256,
    },
    // 3000 x calloc(1, 1024)
    Truth {
        function: "leak_some",
        count: 3_000,
        size: 1024,
    },
    // 2000 x malloc(64) -> realloc(p, 512)
    Truth {
        function: "leak_grown",
        count: 2_000,
        size: 512,
    },
];

/// Allocates and frees everything (its reallocs move sampled blocks).
const CLEAN: &str = "churn_worker";

/// Allocation calls `sampled.c` makes after go: 2 churn threads x (200000
/// mallocs + 25000 reallocs + 12500 callocs), and 20000 + 3000 + 2000 + 2000
/// in the leaking functions. Each is recorded with probability 1/N.
const ALLOCATION_CALLS: u64 = 2 * (200_000 + 25_000 + 12_500) + 27_000;

/// The widest deviation of a 1-in-`rate` estimate of `n` accepted: [`SIGMAS`]
/// standard deviations, sqrt(n (N - 1)) each.
fn bound(n: u64, rate: u64) -> f64 {
    SIGMAS * (n as f64 * (rate - 1) as f64).sqrt()
}

/// Every problem of a sampled report of `sampled.c`, empty when it is right.
fn check_estimates(report: &Report) -> Vec<String> {
    let mut problems = Vec::new();
    match report.sampling {
        Some(s) if s.rate == RATE => {
            if s.sampled_count * RATE != report.totals.count {
                problems.push(format!(
                    "sampling.sampled_count {} x {RATE} != totals.count {}",
                    s.sampled_count, report.totals.count
                ));
            }
        }
        other => problems.push(format!("sampling is {other:?}, expected rate {RATE}")),
    }
    let mut found = vec![(0u64, 0u64); SAMPLED.len()];
    for stack in &report.stacks {
        if frame_index(stack, CLEAN).is_some() {
            problems.push(format!(
                "a stack of {CLEAN}, which frees everything: {}",
                tests::describe_stack(stack)
            ));
        }
        let hits: Vec<(usize, usize)> = SAMPLED
            .iter()
            .enumerate()
            .filter_map(|(i, t)| frame_index(stack, t.function).map(|depth| (i, depth)))
            .collect();
        match hits.as_slice() {
            [(i, depth)] => {
                found[*i].0 += stack.count;
                found[*i].1 += stack.bytes;
                // Stacks are taken where the allocator returns, so the
                // leaking function is the first, symbolized frame.
                if *depth != 0 {
                    problems.push(format!(
                        "{} is frame {depth}, expected 0: {}",
                        SAMPLED[*i].function,
                        tests::describe_stack(stack)
                    ));
                }
            }
            _ => problems.push(format!(
                "a stack belongs to no single leaking function: {}",
                tests::describe_stack(stack)
            )),
        }
        if stack.count % RATE != 0 || stack.bytes % RATE != 0 {
            problems.push(format!(
                "a stack's figures are not multiples of {RATE}: {}",
                tests::describe_stack(stack)
            ));
        }
    }
    for (truth, (count, bytes)) in SAMPLED.iter().zip(found) {
        let off = count as f64 - truth.count as f64;
        let max = bound(truth.count, RATE);
        if off.abs() > max {
            problems.push(format!(
                "{}: estimated {count} blocks, true {}: off by {off:.0}, more than \
                 {SIGMAS} sigma ({max:.0})",
                truth.function, truth.count
            ));
        }
        if bytes != count * truth.size {
            problems.push(format!(
                "{}: estimated {bytes} B for {count} blocks of {} B",
                truth.function, truth.size
            ));
        }
    }
    // The probes recorded about 1 in N allocation calls (not more: no call
    // gets two chances; not fewer).
    let recorded = report.stats.allocs as f64;
    let expected = ALLOCATION_CALLS as f64 / RATE as f64;
    let sd = (ALLOCATION_CALLS as f64 * (1.0 / RATE as f64) * (1.0 - 1.0 / RATE as f64)).sqrt();
    if (recorded - expected).abs() > SIGMAS * sd + 50.0 {
        problems.push(format!(
            "stats.allocs = {recorded}, expected about {expected:.0} (1 in {RATE} of \
             {ALLOCATION_CALLS} calls, sd {sd:.0})"
        ));
    }
    problems.extend(tests::check_no_loss(&report.stats));
    problems
}

#[test]
fn estimates_are_within_five_sigma_and_every_output_says_so() {
    if !sampling_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let (json, text, svg, pprof) = (
        path("r.json"),
        path("r.txt"),
        path("r.svg"),
        path("r.pb.gz"),
    );
    let rate = RATE.to_string();
    let (output, pid) = profile_fixture(
        Kind::Sampled,
        &[
            "--sample-rate",
            &rate,
            "--top",
            "1000",
            "-o",
            &json,
            "-o",
            &text,
            "-o",
            &svg,
            "-o",
            &pprof,
        ],
    );
    let report: Report = serde_json::from_slice(&std::fs::read(&json).unwrap())
        .unwrap_or_else(|e| panic!("{json} is not a report: {e}\n{}", output.stderr));
    assert_eq!(report.target.pid, pid);
    let problems = check_estimates(&report);
    assert!(
        problems.is_empty(),
        "the sampled report does not match sampled.c's ground truth:\n- {}\n\nreport:\n{}",
        problems.join("\n- "),
        tests::describe_report(&report)
    );

    let statement = format!("ESTIMATES from 1-in-{RATE} sampling");
    let text = std::fs::read_to_string(&text).unwrap();
    assert!(
        text.contains(&format!("\nsampling:     {statement}")),
        "{text}"
    );
    assert!(text.contains("1/sqrt(k)"), "{text}");
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(
        svg.contains(&statement),
        "the SVG does not say it is sampled"
    );
    let mut profile = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&pprof).unwrap())
        .read_to_end(&mut profile)
        .unwrap();
    let needle = statement.as_bytes();
    assert!(
        profile.windows(needle.len()).any(|w| w == needle),
        "the pprof profile has no comment saying it is sampled"
    );
}

#[test]
fn full_tracking_reports_are_not_marked_sampled() {
    if !root_or_skip() {
        return;
    }
    let (output, _) = profile_fixture(Kind::Leaky, &["--format", "json"]);
    let report = output.report();
    assert_eq!(report.sampling, None);
    assert!(!output.stdout_text().contains("\"sampling\""));
}

/// `--sample-by window` against `sampled paced`: every leak is made at its
/// own moment over about 2.5 s, so the windows (2 ms each, covering 1/4 of
/// the run here) record about a quarter of them, in clusters of about 20.
///
/// The bound is each stack's own standard error as the report states it,
/// which counts each window as one unit: a wrong scale, or the blocks of a
/// window counted as independent (an error about sqrt(20) times too small),
/// fail it. The churn's reallocs, made between windows where nothing is
/// recorded, move blocks recorded in windows: they must be forgotten.
#[test]
fn windows_estimates_are_within_their_stated_error() {
    if !sampling_or_skip() {
        return;
    }
    const WINDOW_RATE: u64 = 4;
    let rate = WINDOW_RATE.to_string();
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let (json, svg) = (path("r.json"), path("r.svg"));
    let (output, _) = tests::profile_fixture_with(
        Kind::Sampled,
        &["paced"],
        &[
            "--sample-rate",
            &rate,
            "--sample-by",
            "window",
            "--top",
            "1000",
            "-o",
            &json,
            "-o",
            &svg,
        ],
    );
    let report: Report = serde_json::from_slice(&std::fs::read(&json).unwrap())
        .unwrap_or_else(|e| panic!("{json} is not a report: {e}\n{}", output.stderr));
    let described = tests::describe_report(&report);
    let sampling = report.sampling.expect("a sampled report");
    assert_eq!(sampling.method, tests::SampleMethod::Window);
    assert_eq!(sampling.rate, WINDOW_RATE);
    let windows = sampling.windows.expect("the windows are reported");
    assert_eq!(windows.failed_links, 0, "{windows:?}");
    // About 2.5 s of leaking at a window every 8 ms or so.
    assert!(windows.count >= 100, "{windows:?}");
    let scale = sampling.factor();
    assert!(
        (WINDOW_RATE as f64 / 2.0..=WINDOW_RATE as f64 * 2.0).contains(&scale),
        "the windows covered 1/{scale:.2} of the run, asked 1/{WINDOW_RATE}"
    );

    let mut problems = Vec::new();
    let mut found = vec![(0u64, 0u64, 0f64, 0u64); SAMPLED.len()];
    for stack in &report.stacks {
        if frame_index(stack, CLEAN).is_some() {
            problems.push(format!(
                "a stack of {CLEAN}, which frees everything: {}",
                tests::describe_stack(stack)
            ));
        }
        let Some(i) = SAMPLED
            .iter()
            .position(|t| frame_index(stack, t.function) == Some(0))
        else {
            problems.push(format!(
                "a stack of no leaking function: {}",
                tests::describe_stack(stack)
            ));
            continue;
        };
        let estimate = stack.estimate.expect("sampled stacks carry their estimate");
        found[i].0 += stack.count;
        found[i].1 += stack.bytes;
        found[i].2 = found[i].2.hypot(estimate.count_stderr);
        found[i].3 += estimate.recorded;
        // Clusters of about 20 blocks: far above the error of independent blocks.
        let independent = (estimate.recorded as f64 * scale * (scale - 1.0)).sqrt();
        if estimate.recorded >= 100 && estimate.count_stderr < 2.0 * independent {
            problems.push(format!(
                "{}: standard error {:.0} for {} blocks recorded in clusters, not above \
                 the {independent:.0} of independent blocks",
                SAMPLED[i].function, estimate.count_stderr, estimate.recorded
            ));
        }
    }
    for (truth, (count, bytes, stderr, recorded)) in SAMPLED.iter().zip(found) {
        if recorded == 0 {
            problems.push(format!("{}: nothing recorded", truth.function));
            continue;
        }
        let off = count as f64 - truth.count as f64;
        if off.abs() > SIGMAS * stderr {
            problems.push(format!(
                "{}: estimated {count} blocks, true {}: off by {off:.0}, more than \
                 {SIGMAS} x its standard error {stderr:.0}",
                truth.function, truth.count
            ));
        }
        // Scaled by a fraction: bytes and count are rounded apart.
        if bytes.abs_diff(count * truth.size) > truth.size {
            problems.push(format!(
                "{}: estimated {bytes} B for {count} blocks of {} B",
                truth.function, truth.size
            ));
        }
    }
    problems.extend(tests::check_no_loss(&report.stats));
    assert!(
        problems.is_empty(),
        "the report sampled by window does not match sampled.c's ground truth:\n- {}\n\n\
         report:\n{described}",
        problems.join("\n- "),
    );
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(
        svg.contains(&format!(
            "ESTIMATES from sampling windows (1/{scale:.1} of the run)"
        )),
        "the SVG does not say how it was sampled"
    );
}
