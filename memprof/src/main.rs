use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use memprof::cli::Cli;
use memprof::render::{self, Format, RenderOptions};

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
    let report = memprof::profile(cli)?;
    let opts = RenderOptions {
        top: cli.top,
        color: cli.color,
        title: cli.title.clone(),
    };
    if cli.output.is_empty() {
        let mut out = std::io::stdout().lock();
        render::render(&report, cli.format, &opts, &mut out)?;
        out.flush()?;
        return Ok(());
    }
    for path in &cli.output {
        let format = Format::from_path(path).unwrap_or(cli.format);
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut out = BufWriter::new(file);
        render::render(&report, format, &opts, &mut out)
            .and_then(|()| out.flush().map_err(Into::into))
            .with_context(|| format!("writing {}", path.display()))?;
        log::info!("wrote {} ({format:?})", path.display());
    }
    // Files were asked for: still show the text report on a terminal or pipe,
    // unless it was one of the files.
    if !cli
        .output
        .iter()
        .any(|p| Format::from_path(p).unwrap_or(cli.format) == Format::Text)
    {
        let mut out = std::io::stdout().lock();
        render::render(&report, Format::Text, &opts, &mut out)?;
        out.flush()?;
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
