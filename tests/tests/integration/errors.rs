//! memprof refuses bad input with a non-zero exit and a message that says
//! what is wrong: a pid that does not exist, a process without libc, a user
//! without the capabilities to load BPF programs, a kernel without uprobes,
//! and a uprobe of another tracer in the way.

use std::ffi::CString;
use std::path::Path;
use std::time::Duration;

use tests::{
    dead_pid, find_program, is_root, root_or_skip, run_memprof, skip, Fixture, Kind, Output,
};

const ERROR_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs memprof through `setpriv` as nobody, without capabilities.
const AS_NOBODY: &[&str] = &[
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=-all",
];

fn assert_fails_with(output: &Output, any_of: &[&str]) {
    assert!(
        !output.status.success(),
        "memprof should have failed but exited 0; stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        output.stderr
    );
    assert!(
        any_of.iter().any(|needle| output.stderr.contains(needle)),
        "memprof's error should mention one of {any_of:?} ({}); stderr:\n{}",
        output.status,
        output.stderr
    );
}

#[test]
fn pid_that_does_not_exist() {
    if !root_or_skip() {
        return;
    }
    let pid = dead_pid().to_string();
    let output = run_memprof(&[], &["-p", &pid], ERROR_TIMEOUT);
    assert_fails_with(&output, &["does not exist"]);
}

#[test]
fn a_failed_run_keeps_older_reports_and_leaves_no_new_files() {
    if !root_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let older = dir.path().join("older.json");
    std::fs::write(&older, "an older report").unwrap();
    let fresh = dir.path().join("fresh.svg");
    let pid = dead_pid().to_string();
    let output = run_memprof(
        &[],
        &[
            "-p",
            &pid,
            "-o",
            older.to_str().unwrap(),
            "-o",
            fresh.to_str().unwrap(),
        ],
        ERROR_TIMEOUT,
    );
    assert_fails_with(&output, &["does not exist"]);
    assert_eq!(std::fs::read_to_string(&older).unwrap(), "an older report");
    assert!(
        !fresh.exists(),
        "a failed run left {} behind",
        fresh.display()
    );
}

#[test]
fn an_unwritable_output_fails_before_attaching() {
    if !root_or_skip() {
        return;
    }
    let fixture = Fixture::spawn(Kind::Leaky);
    let pid = fixture.pid().to_string();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("no-such-dir").join("leak.svg");
    // --duration 30: if memprof attached first, this would take 30 s and fail
    // the "not attached" check below.
    let output = run_memprof(
        &[],
        &["-p", &pid, "--duration", "30", "-o", bad.to_str().unwrap()],
        ERROR_TIMEOUT,
    );
    assert_fails_with(&output, &["creating", "no-such-dir"]);
    assert!(!output.stderr.contains("attached"), "{}", output.stderr);
}

#[test]
fn statically_linked_target_has_no_libc() {
    if !root_or_skip() {
        return;
    }
    if let Err(e) = Kind::Static.path() {
        skip(&format!(
            "cannot build the static fixture (is libc.a installed? it comes with libc6-dev): {e}"
        ));
        return;
    }
    let fixture = Fixture::spawn(Kind::Static);
    let pid = fixture.pid().to_string();
    let output = run_memprof(&[], &["-p", &pid], ERROR_TIMEOUT);
    assert_fails_with(&output, &["libc"]);
}

#[test]
fn a_go_program_is_refused_before_attaching() {
    if !root_or_skip() {
        return;
    }
    let bin = match Kind::GoSleeper.path() {
        Ok(bin) => bin,
        Err(e) => {
            skip(&format!("cannot build the Go fixture: {e}"));
            return;
        }
    };
    let fixture = Fixture::spawn(Kind::GoSleeper);
    let pid = fixture.pid().to_string();
    let output = run_memprof(&[], &["-p", &pid], ERROR_TIMEOUT);
    assert_fails_with(&output, &["Go program", "does not attach"]);
    assert!(!output.stderr.contains("attached"), "{}", output.stderr);
    // Launch mode refuses it before running it.
    let output = run_memprof(&[], &["--", &bin.display().to_string()], ERROR_TIMEOUT);
    assert_fails_with(&output, &["Go program"]);
    assert!(!output.stdout_text().contains("ready"), "it ran");
}

#[test]
fn unprivileged_user_is_told_what_is_missing() {
    // As root, drop to nobody without capabilities; otherwise we already are
    // an unprivileged user.
    let wrapper: &[&str] = if is_root() {
        if find_program("setpriv").is_none() {
            skip("setpriv (util-linux) is not installed");
            return;
        }
        AS_NOBODY
    } else {
        &[]
    };
    // The target belongs to the same user, so only the missing capabilities
    // can stop memprof.
    let fixture = Fixture::spawn_with(Kind::Leaky, wrapper, &[]);
    let pid = fixture.pid().to_string();
    let output = run_memprof(wrapper, &["-p", &pid], ERROR_TIMEOUT);
    assert_fails_with(&output, &["CAP_BPF", "root"]);
}

/// Runs memprof in a private mount namespace whose
/// `/sys/bus/event_source/devices` is an empty tmpfs: the kernel's uprobe
/// PMU seems missing, as on a kernel without `CONFIG_UPROBE_EVENTS`.
#[test]
fn kernel_without_uprobes_is_named() {
    if !root_or_skip() {
        return;
    }
    if find_program("unshare").is_none() {
        skip("unshare (util-linux) is not installed");
        return;
    }
    let fixture = Fixture::spawn(Kind::Leaky);
    let pid = fixture.pid().to_string();
    // `sh -c SCRIPT memprof ARGS...`: $0 is memprof, $@ its arguments.
    let wrapper = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount -t tmpfs none /sys/bus/event_source/devices && exec \"$0\" \"$@\"",
    ];
    // Should memprof attach after all, it ends by itself and exits 0.
    let output = run_memprof(&wrapper, &["-p", &pid, "--duration", "5"], ERROR_TIMEOUT);
    assert_fails_with(&output, &["uprobes"]);
    // memprof's own error, and not the permission one (which mentions
    // uprobes too).
    assert!(
        output.stderr.contains("memprof: error:") && !output.stderr.contains("CAP_BPF"),
        "the failure is not memprof's error about uprobes; stderr:\n{}",
        output.stderr
    );
}

/// `struct perf_event_attr` up to `config2` (`PERF_ATTR_SIZE_VER1`).
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    /// The bit fields (`disabled`, `inherit`, ...): all zero.
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    /// For the uprobe PMU: a pointer to the path of the probed file.
    config1: u64,
    /// For the uprobe PMU: the probe's offset in the file.
    config2: u64,
}

const PERF_ATTR_SIZE_VER1: u32 = 72;
const _: () = assert!(std::mem::size_of::<PerfEventAttr>() == PERF_ATTR_SIZE_VER1 as usize);
/// Where the uprobe PMU takes `ref_ctr_offset` in `config`.
const PERF_UPROBE_REF_CTR_OFFSET_SHIFT: u32 = 32;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;

/// A perf event fd, closed on drop.
struct PerfFd(libc::c_int);

impl Drop for PerfFd {
    fn drop(&mut self) {
        // SAFETY: the fd was returned by perf_event_open and is closed once.
        unsafe { libc::close(self.0) };
    }
}

/// A child process killed and reaped on drop.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The path of the libc.so.6 that `pid` maps (from `/proc/PID/maps`).
fn libc_of(pid: u32) -> String {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|path| {
            Path::new(path)
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libc.so"))
        })
        .unwrap_or_else(|| panic!("pid {pid} maps no libc.so:\n{maps}"))
        .to_owned()
}

/// File offsets in `libc` of the start of `.data` and of `malloc`'s first
/// instruction (its address through the PT_LOAD segment that holds it).
fn data_and_malloc_offsets(libc: &Path) -> (u64, u64) {
    use object::{Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol as _};
    let data = std::fs::read(libc).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let (data_offset, _) = file
        .section_by_name(".data")
        .and_then(|s| s.file_range())
        .unwrap_or_else(|| panic!("{} has no .data in the file", libc.display()));
    let malloc = file
        .dynamic_symbols()
        .find(|s| s.is_definition() && s.name() == Ok("malloc"))
        .unwrap_or_else(|| panic!("{} does not export malloc", libc.display()))
        .address();
    let malloc_offset = file
        .segments()
        .find_map(|seg| {
            let (offset, size) = seg.file_range();
            (malloc >= seg.address() && malloc < seg.address() + size)
                .then(|| malloc - seg.address() + offset)
        })
        .unwrap_or_else(|| panic!("malloc at {malloc:#x} is in no loadable segment"));
    (data_offset, malloc_offset)
}

/// Another tracer holds a uprobe on libc's `malloc` with a semaphore
/// (`ref_ctr_offset`, as USDT probes have): the kernel refuses a second
/// uprobe at the same place without one, and memprof says why.
#[test]
fn probe_conflict_is_explained() {
    if !root_or_skip() {
        return;
    }
    let fixture = Fixture::spawn(Kind::Leaky);
    let libc = libc_of(fixture.pid());
    let (ref_ctr_offset, malloc_offset) = data_and_malloc_offsets(Path::new(&libc));
    assert!(
        ref_ctr_offset != 0 && ref_ctr_offset % 2 == 0,
        "ref_ctr_offset {ref_ctr_offset:#x} must be even and nonzero"
    );

    // The other tracer's probe is scoped to a throwaway process, so nothing
    // else is touched (the kernel bumps the semaphore only where it installs
    // the probe).
    let sleeper = KillOnDrop(
        std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("cannot run sleep"),
    );
    let pmu_type: u32 = std::fs::read_to_string("/sys/bus/event_source/devices/uprobe/type")
        .expect("no uprobe PMU")
        .trim()
        .parse()
        .unwrap();
    let path = CString::new(libc.as_str()).unwrap();
    let attr = PerfEventAttr {
        type_: pmu_type,
        size: PERF_ATTR_SIZE_VER1,
        config: ref_ctr_offset << PERF_UPROBE_REF_CTR_OFFSET_SHIFT,
        config1: path.as_ptr() as u64,
        config2: malloc_offset,
        ..PerfEventAttr::default()
    };
    let sleeper_pid = libc::pid_t::try_from(sleeper.0.id()).unwrap();
    // SAFETY: attr is a valid perf_event_attr of the size it declares, and
    // the path it points to outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const PerfEventAttr,
            sleeper_pid,
            -1 as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    assert!(
        fd >= 0,
        "perf_event_open of a uprobe on {libc}+{malloc_offset:#x} with ref_ctr_offset \
         {ref_ctr_offset:#x} failed: {} (EINVAL with `ref_ctr_offset mismatch` in dmesg: \
         another tracer, e.g. a memprof running at the same time, already probes malloc)",
        std::io::Error::last_os_error()
    );
    let held = PerfFd(libc::c_int::try_from(fd).unwrap());

    let pid = fixture.pid().to_string();
    // Should memprof attach after all, it ends by itself and exits 0.
    let output = run_memprof(&[], &["-p", &pid, "--duration", "5"], ERROR_TIMEOUT);
    drop(held);
    drop(sleeper);
    assert_fails_with(&output, &["ref_ctr_offset"]);
}
