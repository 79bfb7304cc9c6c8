//! memprof refuses bad input with a non-zero exit and a message that says
//! what is wrong: a pid that does not exist, a process without libc, and a
//! user without the capabilities to load BPF programs.

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
