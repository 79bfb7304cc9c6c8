//! A target that calls exec during the run: the blocks the old program held
//! went away with its address space, so they are left out (and counted);
//! the new program's leaks are reported exactly and symbolized from the new
//! program's binary. Needs root (run through `cargo xtask test`).

use tests::{check_no_loss, describe_report, profile_fixture, root_or_skip, Kind, Totals};

#[test]
fn exec_drops_the_old_programs_blocks_and_follows_the_new_one() {
    if !root_or_skip() {
        return;
    }
    let (output, pid) = profile_fixture(Kind::Execer, &["--format", "json", "--top", "100"]);
    let report = output.report();
    let dump = describe_report(&report);
    assert_eq!(report.target.pid, pid);
    assert_eq!(report.target.execs, 1, "{dump}");
    assert!(report.target.exec_after_secs.is_some(), "{dump}");
    assert_eq!(
        report.released.at_exec,
        Totals {
            bytes: 5 * 1000,
            count: 5
        },
        "{dump}"
    );
    let problems = check_no_loss(&report.stats);
    assert!(problems.is_empty(), "{problems:?}\n{dump}");
    let problems = Kind::Execer.truth().check_leaks(&report);
    assert!(problems.is_empty(), "{problems:#?}\n{dump}");
}
