use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use memprof::check::Suppressions;
use memprof::cli::{Cli, Command, OutputArgs, ProfileArgs};
use memprof::continuous::{self, Metrics, Pyroscope, Rotation};
use memprof::model::Report;
use memprof::render::{self, Format};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    match run(&cli) {
        // A launched command's failure is passed on, as strace, time and
        // valgrind do: a script or CI step that wraps it sees it.
        Ok(Some(status)) if status != 0 => ExitCode::from(status.clamp(1, 255) as u8),
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("memprof: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs what the command line asks; returns the launched command's exit
/// status (as a shell gives it) when there was one.
fn run(cli: &Cli) -> anyhow::Result<Option<i32>> {
    match &cli.command {
        None if cli.profile.every.is_some() => run_every(cli),
        Some(Command::Check {
            max_leak,
            suppressions,
            no_default_suppressions,
            exit_code,
            profile,
            output,
        }) => {
            let mut rules = if *no_default_suppressions {
                Suppressions::default()
            } else {
                Suppressions::built_in()
            };
            for path in suppressions {
                let text = fs::read_to_string(path)
                    .with_context(|| format!("reading the suppressions {}", path.display()))?;
                rules
                    .add(&text, &path.display().to_string())
                    .map_err(anyhow::Error::msg)?;
            }
            check(profile, output, &rules, *max_leak, *exit_code, cli.quiet)
        }
        None => {
            let outputs = Outputs::open(&cli.output)?;
            let result = memprof::profile(&cli.profile.to_config(), cli.quiet);
            let report = match result {
                Ok(report) => report,
                Err(e) => {
                    outputs.abandon();
                    return Err(e);
                }
            };
            write_report(&report, &cli.output, outputs)?;
            Ok(report.target.exit_status)
        }
        Some(Command::Merge { reports, output }) => {
            let reports = reports
                .iter()
                .map(|p| read_report(p))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let outputs = Outputs::open(output)?;
            write_report(&memprof::compare::merge(&reports), output, outputs)?;
            Ok(None)
        }
        Some(Command::Diff {
            before,
            after,
            output,
        }) => {
            let (before, after) = (read_report(before)?, read_report(after)?);
            let outputs = Outputs::open(output)?;
            write_diff(&before, &after, output, outputs)?;
            Ok(None)
        }
    }
}

/// `memprof check`: the command's report, then the gate's verdict on stderr.
/// Returns the exit status: the command's when it failed, else `exit_code`
/// over the budget, else 0.
fn check(
    profile: &ProfileArgs,
    output: &OutputArgs,
    rules: &Suppressions,
    max_leak: u64,
    exit_code: u8,
    quiet: bool,
) -> anyhow::Result<Option<i32>> {
    if profile.command.is_empty() {
        anyhow::bail!("memprof check needs a command to run: memprof check [OPTIONS] -- COMMAND");
    }
    if profile.every.is_some() {
        anyhow::bail!("memprof check reports once, at the command's exit: leave --every out");
    }
    let outputs = Outputs::open(output)?;
    let report = match memprof::profile(&profile.to_config(), quiet) {
        Ok(report) => report,
        Err(e) => {
            outputs.abandon();
            return Err(e);
        }
    };
    write_report(&report, output, outputs)?;
    let verdict = memprof::check::verdict(&report, rules, max_leak);
    let mut err = std::io::stderr().lock();
    let amount = |t: memprof::model::Totals| {
        format!(
            "{} ({} bytes) in {} {}",
            render::human_bytes(t.bytes),
            t.bytes,
            t.count,
            if t.count == 1 { "block" } else { "blocks" }
        )
    };
    writeln!(
        err,
        "memprof check: the command held {} at its exit",
        amount(verdict.held)
    )?;
    for (rule, totals) in &verdict.suppressed {
        writeln!(
            err,
            "memprof check:   suppressed {} by {rule}",
            amount(*totals)
        )?;
    }
    writeln!(
        err,
        "memprof check: {}: {} leaked, budget {} bytes (--max-leak)",
        if verdict.failed { "FAILED" } else { "passed" },
        amount(verdict.leaked),
        verdict.max_leak
    )?;
    let status = report.target.exit_status.unwrap_or(0);
    if status != 0 {
        writeln!(
            err,
            "memprof check: the command failed (status {status}): passing its status on"
        )?;
        return Ok(Some(status));
    }
    Ok(Some(if verdict.failed {
        i32::from(exit_code)
    } else {
        0
    }))
}

/// Continuous mode: each period's report to the rotating files (or stdout),
/// Pyroscope and the metrics endpoint; the last, partial period's too.
fn run_every(cli: &Cli) -> anyhow::Result<Option<i32>> {
    let config = cli.profile.to_config();
    let opts = cli.output.render_options();
    let args = &cli.continuous;
    let mut files = cli
        .output
        .output
        .iter()
        .map(|path| {
            let format = Format::from_path(path).unwrap_or(cli.output.format);
            Rotation::new(path, format, args.keep)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let metrics = args.metrics.map(Metrics::serve).transpose()?;
    if let Some(m) = &metrics {
        log::info!("serving Prometheus metrics at http://{}/metrics", m.addr);
    }
    let pyroscope = args.push.as_deref().map(Pyroscope::new).transpose()?;
    let mut from: Option<u64> = None;
    let last = std::cell::Cell::new(0);
    let mut emit = |period: u64, report: Report| -> anyhow::Result<()> {
        // When the period ended, not when its report was done.
        let until = (report.start_unix_secs + report.duration_secs) as u64;
        last.set(period);
        // The metrics first: whoever receives the push may scrape them.
        if let Some(m) = &metrics {
            m.set(continuous::metrics_text(&report, period));
        }
        for file in &mut files {
            match file.write(&report, &opts, period, until) {
                Ok(path) => log::info!("period {period}: wrote {}", path.display()),
                Err(e) => log::warn!("period {period}: {e:#}"),
            }
        }
        if files.is_empty() {
            let mut out = std::io::stdout().lock();
            render::render(&report, cli.output.format, &opts, &mut out)?;
            out.flush()?;
        }
        if let Some(pyroscope) = &pyroscope {
            // The first period starts when the probes did.
            let from = from.unwrap_or(report.start_unix_secs as u64);
            for one in continuous::per_process(&report) {
                let service = args.service.as_deref().unwrap_or(&one.target.comm);
                let name = pyroscope.name(service, one.target.pid, &one.target.comm);
                match pyroscope.push(&name, &one, from, until.max(from + 1)) {
                    Ok(()) => log::info!("period {period}: pushed {name}"),
                    Err(e) => log::warn!("period {period}: pushing {name} failed: {e:#}"),
                }
            }
        }
        log::info!(
            "period {period}: {} in {} blocks outstanding",
            render::human_bytes(report.totals.bytes),
            report.totals.count
        );
        from = Some(until);
        Ok(())
    };
    let report = memprof::profile_every(&config, cli.quiet, &mut emit)?;
    let status = report.target.exit_status;
    // The last period, cut short by the end of the run.
    emit(last.get() + 1, report)?;
    Ok(status)
}

fn read_report(path: &Path) -> anyhow::Result<Report> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a memprof JSON report (memprof ... -o report.json)",
            path.display()
        )
    })
}

/// Writes the report to every `-o` file (format by extension), or to stdout.
fn write_report(report: &Report, output: &OutputArgs, outputs: Outputs) -> anyhow::Result<()> {
    let opts = output.render_options();
    if let Some(path) = &output.timeline {
        let mut out = BufWriter::new(
            File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        render::render_timeline(report, &opts, &mut out)
            .and_then(|()| out.flush().map_err(Into::into))
            .with_context(|| format!("writing {}", path.display()))?;
        log::info!("wrote {} (the timeline)", path.display());
    }
    outputs.write(|format, out| render::render(report, format, &opts, out))
}

fn write_diff(
    before: &Report,
    after: &Report,
    output: &OutputArgs,
    outputs: Outputs,
) -> anyhow::Result<()> {
    let opts = output.render_options();
    outputs.write(|format, out| match format {
        Format::Svg => memprof::compare::render_diff_svg(before, after, &opts, out),
        Format::Text => memprof::compare::render_diff_text(before, after, &opts, out),
        Format::Folded => {
            let (b, a) = memprof::compare::diff_folded(before, after);
            writeln!(out, "# before\n{b}# after\n{a}")?;
            Ok(())
        }
        other => anyhow::bail!("memprof diff writes text, svg or folded, not {other:?}"),
    })
}

/// Where a report goes: the `-o` files, opened before any work so that a bad
/// path fails at once instead of after a long run, and stdout (the report in
/// `--format`, or the text report next to files that are not text).
struct Outputs {
    files: Vec<OutputFile>,
    stdout: Option<Format>,
}

struct OutputFile {
    path: PathBuf,
    format: Format,
    file: File,
    /// Whether the file was there before: a failed run leaves it untouched
    /// and removes the ones it created.
    existed: bool,
}

impl Outputs {
    fn open(output: &OutputArgs) -> anyhow::Result<Outputs> {
        let mut files = Vec::new();
        for path in &output.output {
            let existed = path.exists();
            // Not truncated yet: a failed run must not destroy an older report.
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .with_context(|| format!("creating {}", path.display()))?;
            let format = Format::from_path(path).unwrap_or(output.format);
            files.push(OutputFile {
                path: path.clone(),
                format,
                file,
                existed,
            });
        }
        let stdout = if files.is_empty() {
            Some(output.format)
        } else if files.iter().any(|f| f.format == Format::Text) {
            None
        } else {
            Some(Format::Text)
        };
        Ok(Outputs { files, stdout })
    }

    /// Removes the files that `open` created; leaves older ones as they were.
    fn abandon(self) {
        for f in self.files.into_iter().filter(|f| !f.existed) {
            let _ = fs::remove_file(&f.path);
        }
    }

    /// Runs `render` once per destination.
    fn write(
        self,
        mut render: impl FnMut(Format, &mut dyn Write) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        for OutputFile {
            path, format, file, ..
        } in self.files
        {
            let is_file = file.metadata().map(|m| m.is_file()).unwrap_or(false);
            if is_file {
                file.set_len(0)
                    .with_context(|| format!("truncating {}", path.display()))?;
            }
            let mut out = BufWriter::new(file);
            render(format, &mut out)
                .and_then(|()| out.flush().map_err(Into::into))
                .with_context(|| format!("writing {}", path.display()))?;
            log::info!("wrote {} ({format:?})", path.display());
        }
        if let Some(format) = self.stdout {
            let mut out = std::io::stdout().lock();
            render(format, &mut out)?;
            out.flush()?;
        }
        Ok(())
    }
}

fn init_logging(cli: &Cli) {
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => log::LevelFilter::Error,
        (false, 0) => log::LevelFilter::Info,
        (false, 1) => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    env_logger::Builder::new()
        .filter_level(log::LevelFilter::Warn)
        .filter_module("memprof", level)
        .format(|buf, record| match record.level() {
            log::Level::Info => writeln!(buf, "memprof: {}", record.args()),
            log::Level::Warn => writeln!(buf, "memprof: warning: {}", record.args()),
            level => writeln!(
                buf,
                "memprof: {}: {}",
                level.as_str().to_lowercase(),
                record.args()
            ),
        })
        .init();
}
