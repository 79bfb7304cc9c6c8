//! Runs over many processes: `-p` repeated, system-wide (no `-p`), `--comm`,
//! `--follow-forks` and `--cgroup`. Each process's leaks must be reported
//! exactly, under its pid, the processes ranked by outstanding bytes, and the
//! processes that are not selected (or leak nothing) left out. Needs root
//! (run through `cargo xtask test`).

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use tests::{
    describe_report, root_or_skip, Fixture, GroundTruth, Kind, Memprof, Output, Process, Report,
    Totals, ATTACH_TIMEOUT, DONE_TIMEOUT, FINISH_TIMEOUT, SCHEMA_VERSION,
};

/// The report of one process of a run over many: its stacks, its totals.
fn of_process(report: &Report, pid: u32) -> Report {
    let process = find(report, pid);
    Report {
        stacks: report
            .stacks
            .iter()
            .filter(|s| s.pid == Some(pid))
            .cloned()
            .collect(),
        totals: process.totals,
        ..report.clone()
    }
}

fn find(report: &Report, pid: u32) -> &Process {
    report
        .processes
        .iter()
        .find(|p| p.pid == pid)
        .unwrap_or_else(|| panic!("pid {pid} is not in the report\n{}", describe(report)))
}

fn rank(report: &Report, pid: u32) -> usize {
    report
        .processes
        .iter()
        .position(|p| p.pid == pid)
        .unwrap_or_else(|| panic!("pid {pid} is not in the report\n{}", describe(report)))
}

fn describe(report: &Report) -> String {
    let processes: Vec<String> = report
        .processes
        .iter()
        .map(|p| format!("{} {} B in {}", p.label(), p.totals.bytes, p.totals.count))
        .collect();
    format!("processes: {processes:?}\n{}", describe_report(report))
}

/// Asserts that `pid` holds exactly its ground truth, with symbols.
fn assert_exact(report: &Report, pid: u32, truth: &GroundTruth) {
    let mine = of_process(report, pid);
    assert_eq!(
        mine.totals,
        truth.total(),
        "pid {pid}\n{}",
        describe(report)
    );
    let problems = truth.check_leaks(&mine);
    assert!(
        problems.is_empty(),
        "pid {pid}: {problems:#?}\n{}",
        describe(report)
    );
}

/// Runs memprof with `args`, then lets every fixture leak and finish, then
/// stops memprof and returns its output.
fn run(args: &[&str], fixtures: &mut [Fixture]) -> Output {
    let mut memprof = Memprof::spawn(args);
    memprof.wait_attached(ATTACH_TIMEOUT);
    go_and_finish(memprof, fixtures)
}

fn go_and_finish(memprof: Memprof, fixtures: &mut [Fixture]) -> Output {
    for fixture in fixtures.iter_mut() {
        fixture.go();
    }
    for fixture in fixtures.iter_mut() {
        fixture.wait_done(DONE_TIMEOUT);
    }
    memprof.interrupt();
    let output = memprof.finish(FINISH_TIMEOUT);
    output.assert_success();
    output
}

#[test]
fn processes_given_with_p_are_ranked_and_each_is_exact() {
    if !root_or_skip() {
        return;
    }
    let mut fixtures = [
        Fixture::spawn(Kind::LeakyCxx),
        Fixture::spawn(Kind::Leaky),
        Fixture::spawn(Kind::Clean),
    ];
    let pids: Vec<String> = fixtures.iter().map(|f| f.pid().to_string()).collect();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let svg = dir.path().join("r.svg");
    let mut args = vec!["--top", "1000", "-o"];
    args.push(json.to_str().unwrap());
    args.extend(["-o", svg.to_str().unwrap()]);
    for pid in &pids {
        args.extend(["-p", pid.as_str()]);
    }
    let output = run(&args, &mut fixtures);
    let report: Report = serde_json::from_str(&fs::read_to_string(&json).unwrap()).unwrap();
    let (cxx, leaky, clean) = (fixtures[0].pid(), fixtures[1].pid(), fixtures[2].pid());

    assert_eq!(report.version, SCHEMA_VERSION);
    let ranked: Vec<u32> = report.processes.iter().map(|p| p.pid).collect();
    assert_eq!(ranked, vec![leaky, cxx], "{}", describe(&report));
    assert_exact(&report, leaky, Kind::Leaky.truth());
    assert_exact(&report, cxx, Kind::LeakyCxx.truth());
    assert_eq!(report.totals, {
        let (a, b) = (Kind::Leaky.truth().total(), Kind::LeakyCxx.truth().total());
        Totals {
            bytes: a.bytes + b.bytes,
            count: a.count + b.count,
        }
    });
    assert_eq!(find(&report, leaky).comm, "leaky");
    assert!(
        report.stats.allocs >= 20_000,
        "the clean process's churn was recorded too\n{}",
        describe(&report)
    );
    assert!(!report.processes.iter().any(|p| p.pid == clean));
    assert_eq!(
        report.selection.as_deref(),
        Some(format!("pids {}", {
            let mut sorted = pids.clone();
            sorted.sort_by_key(|p| p.parse::<u32>().unwrap());
            sorted.join(", ")
        }))
        .as_deref()
    );

    // The text report lists the processes, then each one's stacks under its name.
    let text = output.stdout_text();
    let heading = |pid: u32, comm: &str| format!("--- {comm} ({pid}) ---");
    let (first, second) = (
        text.find(&heading(leaky, "leaky")),
        text.find(&heading(cxx, "leaky-cxx")),
    );
    assert!(
        matches!((first, second), (Some(a), Some(b)) if a < b),
        "process headings missing or out of order:\n{text}"
    );
    assert!(text.contains("2 processes by outstanding bytes"), "{text}");
    // The flame graph's roots are the processes.
    let svg = fs::read_to_string(&svg).unwrap();
    assert!(
        svg.contains(&format!("leaky ({leaky})")),
        "no process frame in the SVG"
    );
    assert!(
        svg.contains(&format!("leaky-cxx ({cxx})")),
        "no process frame in the SVG"
    );
    assert!(
        !svg.contains(&format!("({clean})")),
        "the clean process is in the SVG"
    );
}

#[test]
fn system_wide_finds_the_leaking_processes_even_new_ones() {
    if !root_or_skip() {
        return;
    }
    let mut leaky = Fixture::spawn(Kind::Leaky);
    let clean = Fixture::spawn(Kind::Clean);
    let mut memprof = Memprof::spawn(&["--format", "json", "--top", "1000"]);
    memprof.wait_attached(ATTACH_TIMEOUT);
    let memprof_pid = memprof.pid();
    // Started during the run: it maps libstdc++, which memprof probes once
    // it has seen the process (within a second).
    let cxx = Fixture::spawn(Kind::LeakyCxx);
    std::thread::sleep(Duration::from_secs(3));
    let (leaky_pid, cxx_pid, clean_pid) = (leaky.pid(), cxx.pid(), clean.pid());
    let mut fixtures = [cxx, clean];
    leaky.go();
    leaky.wait_done(DONE_TIMEOUT);
    let output = go_and_finish(memprof, &mut fixtures);
    let report = output.report();

    assert_eq!(report.selection.as_deref(), Some("system-wide"));
    assert_exact(&report, leaky_pid, Kind::Leaky.truth());
    // Started during the run, it holds what it allocated at its start too
    // (libstdc++'s emergency exception pool, ...): its leaks are exact, and
    // nothing of its churn is left.
    let truth = Kind::LeakyCxx.truth();
    let mut cxx = of_process(&report, cxx_pid);
    let functions: Vec<&str> = truth
        .leaks
        .iter()
        .map(|leak| leak.function)
        .chain(truth.clean.iter().copied())
        .collect();
    cxx.stacks
        .retain(|s| functions.iter().any(|f| tests::frame_index(s, f).is_some()));
    cxx.totals = truth.total();
    let problems = truth.check_leaks(&cxx);
    assert!(problems.is_empty(), "{problems:#?}\n{}", describe(&report));
    assert!(rank(&report, leaky_pid) < rank(&report, cxx_pid));
    assert!(
        !report.processes.iter().any(|p| p.pid == clean_pid),
        "{}",
        describe(&report)
    );
    assert!(
        !report.processes.iter().any(|p| p.pid == memprof_pid),
        "memprof recorded itself\n{}",
        describe(&report)
    );
}

#[test]
fn comm_selects_processes_by_name_including_new_ones() {
    if !root_or_skip() {
        return;
    }
    let first = Fixture::spawn(Kind::Leaky);
    let other = Fixture::spawn(Kind::LeakyCxx);
    let mut memprof = Memprof::spawn(&["--comm", "^leaky$", "--format", "json", "--top", "1000"]);
    memprof.wait_attached(ATTACH_TIMEOUT);
    let second = Fixture::spawn(Kind::Leaky);
    memprof.wait_line(
        &format!("pid {} matches --comm", second.pid()),
        ATTACH_TIMEOUT,
    );
    let pids = (first.pid(), second.pid(), other.pid());
    let mut fixtures = [first, second, other];
    let output = go_and_finish(memprof, &mut fixtures);
    let report = output.report();

    let mut got: Vec<u32> = report.processes.iter().map(|p| p.pid).collect();
    got.sort_unstable();
    let mut want = vec![pids.0, pids.1];
    want.sort_unstable();
    assert_eq!(got, want, "{}", describe(&report));
    assert_exact(&report, pids.0, Kind::Leaky.truth());
    assert_exact(&report, pids.1, Kind::Leaky.truth());
}

/// The forker's children, from its `children <pid> <pid>` line.
fn children(fixture: &mut Fixture) -> Vec<u32> {
    let line = fixture.expect_line("children", DONE_TIMEOUT);
    line.strip_prefix("children ")
        .unwrap_or_else(|| panic!("forker printed {line:?}"))
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

#[test]
fn follow_forks_records_the_children_and_only_with_it() {
    if !root_or_skip() {
        return;
    }
    let mut forker = Fixture::spawn(Kind::Forker);
    let pid = forker.pid().to_string();
    let mut memprof = Memprof::spawn(&[
        "-p",
        &pid,
        "--follow-forks",
        "--format",
        "json",
        "--top",
        "1000",
    ]);
    memprof.wait_attached(ATTACH_TIMEOUT);
    forker.go();
    let kids = children(&mut forker);
    forker.wait_done(DONE_TIMEOUT);
    memprof.interrupt();
    let output = memprof.finish(FINISH_TIMEOUT);
    output.assert_success();
    let report = output.report();
    assert_eq!(report.processes.len(), 3, "{}", describe(&report));
    assert_eq!(rank(&report, forker.pid()), 2, "the parent holds least");
    assert_exact(&report, forker.pid(), Kind::Forker.truth());
    for kid in kids {
        assert_exact(&report, kid, &Kind::FORKER_CHILD);
        assert_eq!(find(&report, kid).comm, "forker");
    }
    drop(forker);

    // Without --follow-forks, only the parent.
    let mut forker = Fixture::spawn(Kind::Forker);
    let pid = forker.pid().to_string();
    let mut memprof = Memprof::spawn(&["-p", &pid, "--format", "json", "--top", "1000"]);
    memprof.wait_attached(ATTACH_TIMEOUT);
    forker.go();
    children(&mut forker);
    forker.wait_done(DONE_TIMEOUT);
    memprof.interrupt();
    let output = memprof.finish(FINISH_TIMEOUT);
    output.assert_success();
    let report = output.report();
    let problems = Kind::Forker.truth().check_leaks(&report);
    assert!(
        problems.is_empty(),
        "{problems:#?}\n{}",
        describe_report(&report)
    );
}

/// A cgroup v2 made for a test, removed (with its processes moved out) when dropped.
struct TestCgroup {
    dir: PathBuf,
    root: PathBuf,
}

impl TestCgroup {
    fn new() -> Option<TestCgroup> {
        let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
        let root = mounts.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(fields[1]))
        })?;
        let dir = root.join(format!("memprof-test-{}", std::process::id()));
        fs::create_dir(&dir).ok()?;
        Some(TestCgroup { dir, root })
    }

    fn add(&self, pid: u32) {
        fs::write(self.dir.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Ok(procs) = fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = fs::write(self.root.join("cgroup.procs"), pid);
            }
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

#[test]
fn cgroup_selects_the_processes_inside_it() {
    if !root_or_skip() {
        return;
    }
    let Some(cgroup) = TestCgroup::new() else {
        tests::skip("no writable cgroup v2 hierarchy");
        return;
    };
    let inside = Fixture::spawn(Kind::Leaky);
    let outside = Fixture::spawn(Kind::Leaky);
    cgroup.add(inside.pid());
    let name = cgroup
        .dir
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let (inside_pid, outside_pid) = (inside.pid(), outside.pid());
    let mut fixtures = [inside, outside];
    let output = run(
        &["--cgroup", &name, "--format", "json", "--top", "1000"],
        &mut fixtures,
    );
    let report = output.report();
    let pids: Vec<u32> = report.processes.iter().map(|p| p.pid).collect();
    assert_eq!(pids, vec![inside_pid], "{}", describe(&report));
    assert_exact(&report, inside_pid, Kind::Leaky.truth());
    assert!(!pids.contains(&outside_pid));
    assert!(
        report
            .selection
            .as_deref()
            .is_some_and(|s| s.contains(&name)),
        "{:?}",
        report.selection
    );
}

/// Runs `-p A -p B` (plus `extra`), lets both leak, ends A, then stops memprof.
fn one_of_two_exits(extra: &[&str]) -> (Report, u32, u32) {
    let mut a = Fixture::spawn(Kind::Leaky);
    let mut b = Fixture::spawn(Kind::Leaky);
    let (pa, pb) = (a.pid().to_string(), b.pid().to_string());
    let mut args = vec!["-p", &pa, "-p", &pb, "--format", "json", "--top", "1000"];
    args.extend_from_slice(extra);
    let mut memprof = Memprof::spawn(&args);
    memprof.wait_attached(ATTACH_TIMEOUT);
    for f in [&mut a, &mut b] {
        f.go();
        f.wait_done(DONE_TIMEOUT);
    }
    let (a_pid, b_pid) = (a.pid(), b.pid());
    assert!(a.finish(Duration::from_secs(10)).success());
    // memprof reads the processes every second.
    std::thread::sleep(Duration::from_millis(1500));
    memprof.interrupt();
    let output = memprof.finish(FINISH_TIMEOUT);
    output.assert_success();
    drop(b);
    (output.report(), a_pid, b_pid)
}

#[test]
fn a_process_that_exits_is_left_out_unless_at_exit() {
    if !root_or_skip() {
        return;
    }
    let (report, gone, alive) = one_of_two_exits(&[]);
    let pids: Vec<u32> = report.processes.iter().map(|p| p.pid).collect();
    assert_eq!(pids, vec![alive], "{}", describe(&report));
    assert_exact(&report, alive, Kind::Leaky.truth());
    assert_eq!(
        report.released.at_exit,
        Kind::Leaky.truth().total(),
        "pid {gone}'s blocks"
    );

    // With --at-exit: reported, symbolized from the files memprof kept open.
    let (report, gone, alive) = one_of_two_exits(&["--at-exit"]);
    assert_exact(&report, gone, Kind::Leaky.truth());
    assert_exact(&report, alive, Kind::Leaky.truth());
    assert!(find(&report, gone).exited);
    assert!(!find(&report, alive).exited);
    assert_eq!(report.released.at_exit, Totals::default());
}

/// `memprof --follow-forks [extra] -- forker oneshot`: the command's report.
fn launch_forker(extra: &[&str]) -> Report {
    let bin = Kind::Forker.path().expect("the forker fixture");
    let bin = bin.display().to_string();
    let mut args = vec!["--follow-forks", "--format", "json", "--top", "1000"];
    args.extend_from_slice(extra);
    args.extend(["--", &bin, "oneshot"]);
    let output = tests::run_memprof(&[], &args, FINISH_TIMEOUT);
    output.assert_success();
    output.report()
}

#[test]
fn a_launched_command_and_its_children() {
    if !root_or_skip() {
        return;
    }
    // The children exit before the command: what they held went with them.
    let report = launch_forker(&[]);
    assert_eq!(report.processes.len(), 1, "{}", describe(&report));
    let parent = report.processes[0].pid;
    assert!(find(&report, parent).exited);
    assert_exact(&report, parent, Kind::Forker.truth());
    assert_eq!(find(&report, parent).comm, "forker");
    let children = Kind::FORKER_CHILD.total();
    assert_eq!(
        report.released.at_exit,
        Totals {
            bytes: 2 * children.bytes,
            count: 2 * children.count,
        },
        "{}",
        describe(&report)
    );

    // With --at-exit, each child's too, exactly. Its frames are named when
    // memprof read the child's mappings before it exited; a child that
    // lives less than one follow-up round keeps its exact figures only.
    let report = launch_forker(&["--at-exit"]);
    assert_eq!(report.processes.len(), 3, "{}", describe(&report));
    let parent = report.processes[2].pid;
    assert_exact(&report, parent, Kind::Forker.truth());
    for child in &report.processes[..2] {
        assert!(child.exited);
        assert_eq!(
            child.totals,
            Totals {
                bytes: children.bytes,
                count: children.count,
            },
            "{}",
            describe(&report)
        );
    }
}
