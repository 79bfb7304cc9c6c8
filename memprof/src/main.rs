use std::fs::{self, File};
use std::io::{BufWriter, Write as _};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use memprof::cli::{Cli, Command, OutputArgs};
use memprof::model::Report;
use memprof::render::{self, Format};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("memprof: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    match &cli.command {
        None => {
            let Some(pid) = cli.profile.pid else {
                anyhow::bail!("which process? give its pid with -p PID (see memprof --help)");
            };
            let report = memprof::profile(&cli.profile, pid, cli.quiet)?;
            write_report(&report, &cli.output)
        }
        Some(Command::Merge { reports, output }) => {
            let reports = reports
                .iter()
                .map(|p| read_report(p))
                .collect::<anyhow::Result<Vec<_>>>()?;
            write_report(&memprof::compare::merge(&reports), output)
        }
        Some(Command::Diff {
            before,
            after,
            output,
        }) => {
            let (before, after) = (read_report(before)?, read_report(after)?);
            write_diff(&before, &after, output)
        }
    }
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
fn write_report(report: &Report, output: &OutputArgs) -> anyhow::Result<()> {
    let opts = output.render_options();
    each_output(output, |format, out| {
        render::render(report, format, &opts, out)
    })
}

fn write_diff(before: &Report, after: &Report, output: &OutputArgs) -> anyhow::Result<()> {
    let opts = output.render_options();
    each_output(output, |format, out| match format {
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

/// Runs `render` once per output: each `-o FILE`, or stdout. When only files
/// were asked for, the text report still goes to stdout.
fn each_output(
    output: &OutputArgs,
    mut render: impl FnMut(Format, &mut dyn std::io::Write) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let to_stdout =
        |render: &mut dyn FnMut(Format, &mut dyn std::io::Write) -> anyhow::Result<()>, format| {
            let mut out = std::io::stdout().lock();
            render(format, &mut out)?;
            out.flush()?;
            anyhow::Ok(())
        };
    if output.output.is_empty() {
        return to_stdout(&mut render, output.format);
    }
    for path in &output.output {
        let format = Format::from_path(path).unwrap_or(output.format);
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut out = BufWriter::new(file);
        render(format, &mut out)
            .and_then(|()| out.flush().map_err(Into::into))
            .with_context(|| format!("writing {}", path.display()))?;
        log::info!("wrote {} ({format:?})", path.display());
    }
    if !output
        .output
        .iter()
        .any(|p| Format::from_path(p).unwrap_or(output.format) == Format::Text)
    {
        to_stdout(&mut render, Format::Text)?;
    }
    Ok(())
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
