//! Where continuous mode (`--every`) sends each period's report besides
//! stdout: files with rotating names, a Pyroscope server's ingest API, and
//! a Prometheus metrics endpoint. Plain HTTP/1.1 over `std::net`: the
//! requests are small and few (one per period), so no HTTP library is
//! needed; https is not supported.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::model::{Report, Totals};
use crate::render::{self, Format, RenderOptions};

/// How long a push may take to connect, send or answer.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// The name of period `period`'s file of `-o path`: `leak.svg` becomes
/// `leak-0003-20250101T120000Z.svg` (the period, then the UTC time of its
/// end); the extension is everything from the first dot of the file name
/// (`.pb.gz` stays whole).
pub fn period_path(path: &Path, period: u64, unix_secs: u64) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (stem, ext) = match name.char_indices().skip(1).find(|&(_, c)| c == '.') {
        Some((i, _)) => name.split_at(i),
        None => (name.as_str(), ""),
    };
    path.with_file_name(format!("{stem}-{period:04}-{}{ext}", utc_stamp(unix_secs)))
}

/// `YYYYMMDDTHHMMSSZ` of a Unix time.
pub fn utc_stamp(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    // Days to civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The rotating files of one `-o` path: writes each period's, and removes
/// the oldest beyond `keep` (0: none removed).
#[derive(Debug)]
pub struct Rotation {
    path: PathBuf,
    format: Format,
    keep: usize,
    written: VecDeque<PathBuf>,
}

impl Rotation {
    /// `-o path`, in `format`; the directory must exist.
    pub fn new(path: &Path, format: Format, keep: usize) -> anyhow::Result<Rotation> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            bail!(
                "{} does not exist: create it, or give -o a path in an existing directory",
                dir.display()
            );
        }
        Ok(Rotation {
            path: path.to_path_buf(),
            format,
            keep,
            written: VecDeque::new(),
        })
    }

    /// Writes period `period`'s report; returns its path.
    pub fn write(
        &mut self,
        report: &Report,
        opts: &RenderOptions,
        period: u64,
        unix_secs: u64,
    ) -> anyhow::Result<PathBuf> {
        let path = period_path(&self.path, period, unix_secs);
        let mut out = Vec::new();
        render::render(report, self.format, opts, &mut out)?;
        // Renamed into place: a reader never sees half a file.
        let partial = path.with_extension("partial");
        std::fs::write(&partial, &out).with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, &path)
            .with_context(|| format!("renaming {} into place", path.display()))?;
        self.written.push_back(path.clone());
        while self.keep > 0 && self.written.len() > self.keep {
            if let Some(old) = self.written.pop_front() {
                if let Err(e) = std::fs::remove_file(&old) {
                    log::warn!("removing {} failed: {e}", old.display());
                }
            }
        }
        Ok(path)
    }
}

/// Where `--push` sends profiles.
#[derive(Clone, Debug)]
pub struct Pyroscope {
    /// `host:port`.
    authority: String,
    /// The path before `/ingest` (empty, or `/prefix`).
    base: String,
    /// This host's name, for the `host` label.
    host: String,
}

impl Pyroscope {
    /// `url` is `http://HOST[:PORT][/PREFIX]`.
    pub fn new(url: &str) -> anyhow::Result<Pyroscope> {
        let Some(rest) = url.strip_prefix("http://") else {
            bail!(
                "--push {url}: only http:// URLs are supported (https is not: put a local \
                 proxy or Grafana Alloy's pyroscope.receive_http in front of the server)"
            );
        };
        let (authority, base) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.is_empty() {
            bail!("--push {url}: no host (as in http://localhost:4040)");
        }
        let authority = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Pyroscope {
            authority,
            base: base.trim_end_matches('/').to_string(),
            host: crate::model::Host::this().hostname,
        })
    }

    /// The application name with its labels, as the ingest API takes it:
    /// `service{host=...,pid=...,command=...}`.
    pub fn name(&self, service: &str, pid: u32, command: &str) -> String {
        format!(
            "{}{{host={},pid={pid},command={}}}",
            label_value(service),
            label_value(&self.host),
            label_value(command)
        )
    }

    /// Sends `report` as a pprof profile named `name` (see [`Pyroscope::name`])
    /// covering `from..until` (Unix seconds).
    ///
    /// With `format=pprof` the ingest API takes the body as the profile
    /// itself (gzipped or not) and ignores a multipart body's parts: the
    /// `profile` form field is for clients that leave `format` out.
    pub fn push(&self, name: &str, report: &Report, from: u64, until: u64) -> anyhow::Result<()> {
        let mut pprof = Vec::new();
        render::render(report, Format::Pprof, &RenderOptions::default(), &mut pprof)?;
        let target = format!(
            "{}/ingest?name={}&from={from}&until={until}&format=pprof&spyName=memprof",
            self.base,
            percent_encode(name)
        );
        let (status, answer) = post(&self.authority, &target, "application/octet-stream", &pprof)?;
        if !(200..300).contains(&status) {
            bail!(
                "{} answered {status} to the push: {}",
                self.authority,
                answer.trim()
            );
        }
        Ok(())
    }
}

/// A report per process: the report itself for one process; for many,
/// one per process with its stacks, as if it had been recorded alone (a
/// profile store keeps a series per process).
pub fn per_process(report: &Report) -> Vec<Report> {
    if report.processes.is_empty() {
        return vec![report.clone()];
    }
    report
        .processes
        .iter()
        .map(|p| Report {
            target: crate::model::Target {
                pid: p.pid,
                comm: p.comm.clone(),
                cmdline: p.cmdline.clone(),
                allocator: p.allocator.clone(),
                started_unix_secs: p.started_unix_secs,
                execs: p.execs,
                ..crate::model::Target::default()
            },
            selection: None,
            processes: Vec::new(),
            totals: p.totals,
            stacks: report
                .stacks
                .iter()
                .filter(|s| s.pid == Some(p.pid))
                .map(|s| crate::model::Stack {
                    pid: None,
                    ..s.clone()
                })
                .collect(),
            ..report.clone()
        })
        .collect()
}

/// A label value as Pyroscope's name syntax takes it: no separators.
fn label_value(s: &str) -> String {
    let v: String = s
        .chars()
        .map(|c| match c {
            ',' | '{' | '}' | '=' | '"' | ' ' | '\n' | '\t' => '_',
            c => c,
        })
        .collect();
    if v.is_empty() {
        "unknown".to_string()
    } else {
        v
    }
}

/// `s` percent-encoded for a query string (unreserved characters kept).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// One HTTP/1.1 POST; returns the status and the body of the answer.
fn post(
    authority: &str,
    target: &str,
    content_type: &str,
    body: &[u8],
) -> anyhow::Result<(u16, String)> {
    let addr = std::net::ToSocketAddrs::to_socket_addrs(authority)
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .with_context(|| format!("{authority} has no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, PUSH_TIMEOUT)
        .with_context(|| format!("connecting to {authority}: is the server running?"))?;
    stream.set_read_timeout(Some(PUSH_TIMEOUT))?;
    stream.set_write_timeout(Some(PUSH_TIMEOUT))?;
    let head = format!(
        "POST {target} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: memprof/{}\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .with_context(|| format!("reading {authority}'s answer"))?;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{authority} did not answer in HTTP"))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The Prometheus text exposition of a report.
pub fn metrics_text(report: &Report, period: u64) -> String {
    let mut out = String::new();
    let processes: Vec<(u32, &str, Totals)> = if report.processes.is_empty() {
        vec![(report.target.pid, &report.target.comm, report.totals)]
    } else {
        report
            .processes
            .iter()
            .map(|p| (p.pid, p.comm.as_str(), p.totals))
            .collect()
    };
    let gauge = |out: &mut String, name: &str, help: &str, value: &dyn Fn(Totals) -> u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (pid, comm, totals) in &processes {
            let _ = writeln!(
                out,
                "{name}{{pid=\"{pid}\",comm=\"{}\"}} {}",
                escape(comm),
                value(*totals)
            );
        }
    };
    gauge(
        &mut out,
        "memprof_outstanding_bytes",
        "Bytes allocated since memprof attached and not freed, at the end of the last period.",
        &|t| t.bytes,
    );
    gauge(
        &mut out,
        "memprof_outstanding_blocks",
        "Blocks allocated since memprof attached and not freed, at the end of the last period.",
        &|t| t.count,
    );
    let _ = writeln!(
        out,
        "# HELP memprof_events_total What the probes counted, by counter; all but allocs and \
         frees are events dropped or surprising (see the report's counters).\n\
         # TYPE memprof_events_total counter"
    );
    for (name, value) in report.stats.named() {
        let _ = writeln!(out, "memprof_events_total{{counter=\"{name}\"}} {value}");
    }
    let _ = writeln!(
        out,
        "# HELP memprof_periods_total Periods reported.\n# TYPE memprof_periods_total counter\n\
         memprof_periods_total {period}"
    );
    out
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The `--metrics` endpoint: serves the latest metrics text at `/metrics`
/// from a thread of its own until memprof exits.
#[derive(Clone, Debug)]
pub struct Metrics {
    text: Arc<Mutex<String>>,
    /// Where it listens (the port chosen when `:0` was asked).
    pub addr: SocketAddr,
}

impl Metrics {
    /// Listens on `addr` now, so that a port in use fails before profiling.
    pub fn serve(addr: SocketAddr) -> anyhow::Result<Metrics> {
        let listener = TcpListener::bind(addr).with_context(|| {
            format!("--metrics {addr}: cannot listen there (in use? another address?)")
        })?;
        let addr = listener.local_addr()?;
        let text = Arc::new(Mutex::new(
            "# memprof: no period has ended yet\nmemprof_periods_total 0\n".to_string(),
        ));
        let shared = Arc::clone(&text);
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    if let Err(e) = answer(stream, &shared) {
                        log::debug!("metrics request failed: {e:#}");
                    }
                }
            })
            .context("starting the metrics thread")?;
        Ok(Metrics { text, addr })
    }

    /// What `/metrics` shows from now on.
    pub fn set(&self, text: String) {
        if let Ok(mut t) = self.text.lock() {
            *t = text;
        }
    }
}

fn answer(stream: TcpStream, text: &Mutex<String>) -> anyhow::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let path = request.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = if path == "/metrics" || path.starts_with("/metrics?") {
        let body = text.lock().map(|t| t.clone()).unwrap_or_default();
        ("200 OK", body)
    } else {
        (
            "404 Not Found",
            "memprof serves /metrics only\n".to_string(),
        )
    };
    let mut stream = reader.into_inner();
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn period_files_keep_their_extension() {
        assert_eq!(
            period_path(Path::new("out/leak.svg"), 3, 0),
            PathBuf::from("out/leak-0003-19700101T000000Z.svg")
        );
        assert_eq!(
            period_path(Path::new("leak.pb.gz"), 12, 1_700_000_000),
            PathBuf::from("leak-0012-20231114T221320Z.pb.gz")
        );
        assert_eq!(
            period_path(Path::new(".hidden"), 1, 0),
            PathBuf::from(".hidden-0001-19700101T000000Z")
        );
    }

    #[test]
    fn utc_stamps_are_civil_dates() {
        assert_eq!(utc_stamp(951_782_400), "20000229T000000Z");
        assert_eq!(utc_stamp(4_102_444_799), "20991231T235959Z");
    }

    #[test]
    fn many_processes_are_split_into_a_report_each() {
        use crate::model::{Process, Stack};
        let stack = |pid, bytes| Stack {
            bytes,
            count: 1,
            pid: Some(pid),
            ..Stack::default()
        };
        let report = Report {
            processes: vec![
                Process {
                    pid: 7,
                    comm: "api".into(),
                    totals: Totals {
                        bytes: 300,
                        count: 2,
                    },
                    ..Process::default()
                },
                Process {
                    pid: 9,
                    comm: "worker".into(),
                    totals: Totals {
                        bytes: 50,
                        count: 1,
                    },
                    ..Process::default()
                },
            ],
            stacks: vec![stack(7, 200), stack(9, 50), stack(7, 100)],
            ..Report::default()
        };
        let each = per_process(&report);
        assert_eq!(each.len(), 2);
        assert_eq!(
            (each[0].target.pid, each[0].target.comm.as_str()),
            (7, "api")
        );
        assert_eq!(each[0].totals.bytes, 300);
        let bytes: Vec<u64> = each[0].stacks.iter().map(|s| s.bytes).collect();
        assert_eq!(bytes, [200, 100]);
        assert!(each[0].stacks.iter().all(|s| s.pid.is_none()));
        assert!(each[1].processes.is_empty());
        assert_eq!(each[1].stacks.len(), 1);
        let one = Report::default();
        assert_eq!(per_process(&one), vec![one]);
    }

    #[test]
    fn metrics_name_every_process_and_counter() {
        use crate::model::{Process, Report};
        let process = |pid, comm: &str, bytes, count| Process {
            pid,
            comm: comm.to_string(),
            totals: Totals { bytes, count },
            ..Process::default()
        };
        let mut report = Report {
            processes: vec![process(7, "api", 4096, 3), process(9, "a\"b", 0, 0)],
            ..Report::default()
        };
        report.stats.live_map_full = 5;
        let text = metrics_text(&report, 2);
        for line in [
            "# TYPE memprof_outstanding_bytes gauge",
            "memprof_outstanding_bytes{pid=\"7\",comm=\"api\"} 4096",
            "memprof_outstanding_blocks{pid=\"7\",comm=\"api\"} 3",
            "memprof_outstanding_bytes{pid=\"9\",comm=\"a\\\"b\"} 0",
            "# TYPE memprof_events_total counter",
            "memprof_events_total{counter=\"live_map_full\"} 5",
            "memprof_periods_total 2",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        // One process: the report's target and totals.
        let one = Report {
            target: crate::model::Target {
                pid: 42,
                comm: "leaky".into(),
                ..Default::default()
            },
            totals: Totals {
                bytes: 100,
                count: 1,
            },
            ..Report::default()
        };
        assert!(metrics_text(&one, 1)
            .contains("memprof_outstanding_bytes{pid=\"42\",comm=\"leaky\"} 100\n"));
    }

    #[test]
    fn push_names_carry_sanitized_labels() {
        let p = Pyroscope::new("http://127.0.0.1:4040/").unwrap();
        let name = p.name("my app", 42, "a,b");
        assert!(name.starts_with("my_app{host="), "{name}");
        assert!(name.ends_with(",pid=42,command=a_b}"), "{name}");
        assert_eq!(p.authority, "127.0.0.1:4040");
        assert_eq!(p.base, "");
        let p = Pyroscope::new("http://pyroscope/prefix/").unwrap();
        assert_eq!(p.authority, "pyroscope:80");
        assert_eq!(p.base, "/prefix");
        assert!(Pyroscope::new("https://x").is_err());
        assert!(Pyroscope::new("http:///ingest").is_err());
        assert_eq!(percent_encode("a{b=c}"), "a%7Bb%3Dc%7D");
    }
}
