//! Continuous mode, `memprof -p PID --every SECS`: the probes stay attached
//! and each period's report (what is outstanding at the period's end) is
//! pushed to a Pyroscope ingest endpoint, written to rotating files and
//! served as Prometheus metrics. The receiver is a real HTTP server on
//! 127.0.0.1 started by the test, which parses each request and decodes its
//! pprof. The fixture (`tests/fixtures/steps.c`) leaks and frees in steps,
//! each released only once the previous period was pushed, so every period
//! ends with a known set of blocks outstanding. Needs root (run through
//! `cargo xtask test`).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use crate::pprof_proto::{self, Profile};
use tests::{root_or_skip, Fixture, Kind, Memprof, Report, ATTACH_TIMEOUT, FINISH_TIMEOUT};

/// Long enough for a step to run well inside a period on a busy machine.
const EVERY_SECS: &str = "3";
const PUSH_TIMEOUT: Duration = Duration::from_secs(60);
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// What `steps` holds after each step: (function, blocks, bytes).
const AFTER_STEP: [&[(&str, i64, i64)]; 3] = [
    &[("step_one", 4, 4000)],
    &[("step_one", 2, 2000), ("step_two", 3, 9000)],
    &[
        ("step_one", 2, 2000),
        ("step_two", 2, 6000),
        ("step_three", 2, 10000),
    ],
];

/// One request the receiver got.
#[derive(Debug)]
struct Request {
    method: String,
    target: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Request {
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The query parameters, percent-decoded.
    fn query(&self) -> HashMap<String, String> {
        let query = self.target.split_once('?').map_or("", |(_, q)| q);
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), percent_decode(v)))
            .collect()
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// Reads one HTTP/1.1 request and answers 200.
fn serve_one(stream: TcpStream) -> Request {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let mut words = line.split_whitespace();
    let method = words.next().unwrap_or_default().to_string();
    let target = words.next().unwrap_or_default().to_string();
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').expect("a header line");
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    let length: usize = headers
        .get("content-length")
        .map_or(0, |l| l.parse().expect("a content length"));
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    let mut stream = reader.into_inner();
    stream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .unwrap();
    Request {
        method,
        target,
        headers,
        body,
    }
}

/// An HTTP server on 127.0.0.1: its port, and the requests it gets.
fn receiver() -> (u16, mpsc::Receiver<Request>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            if tx.send(serve_one(stream)).is_err() {
                break;
            }
        }
    });
    (port, rx)
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET /metrics.
fn scrape(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// A metric's value by its name and labels, as the exposition writes them.
fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in the metrics:\n{text}"))
}

/// Blocks and bytes by the function that called the allocator.
fn by_function(gz: &[u8]) -> BTreeMap<String, (i64, i64)> {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut raw)
        .expect("the pushed profile gunzips");
    let profile = <Profile as prost::Message>::decode(&raw[..])
        .expect("the pushed profile is a perftools.profiles.Profile");
    let types: Vec<&str> = profile
        .sample_type
        .iter()
        .map(|t| profile.string_table[t.r#type as usize].as_str())
        .collect();
    // A period's report holds what is outstanding; the run's last one also
    // the allocation profile, with Go's four heap types.
    assert!(
        types == ["inuse_space", "inuse_objects"]
            || types
                == [
                    "alloc_objects",
                    "alloc_space",
                    "inuse_objects",
                    "inuse_space"
                ],
        "{types:?}"
    );
    let index = |name: &str| types.iter().position(|t| *t == name).unwrap();
    let (space, objects) = (index("inuse_space"), index("inuse_objects"));
    let functions: HashMap<u64, &str> = profile
        .function
        .iter()
        .map(|f| (f.id, profile.string_table[f.name as usize].as_str()))
        .collect();
    let locations: HashMap<u64, &pprof_proto::Location> =
        profile.location.iter().map(|l| (l.id, l)).collect();
    let mut out = BTreeMap::new();
    for sample in &profile.sample {
        let leaf = sample
            .location_id
            .first()
            .and_then(|id| locations.get(id))
            .and_then(|l| l.line.first())
            .map_or("?", |line| functions[&line.function_id]);
        if sample.value[space] == 0 && sample.value[objects] == 0 {
            // Allocated, holds nothing now.
            continue;
        }
        let entry = out.entry(leaf.to_string()).or_insert((0, 0));
        entry.0 += sample.value[objects];
        entry.1 += sample.value[space];
    }
    out
}

fn expected(step: usize) -> BTreeMap<String, (i64, i64)> {
    AFTER_STEP[step]
        .iter()
        .map(|&(f, count, bytes)| (f.to_string(), (count, bytes)))
        .collect()
}

/// Checks one push: where it went, its labels, and that its profile holds
/// exactly what `steps` held after `step` (0-based).
fn check_push(push: &Request, pid: u32, step: usize, last_until: &mut u64) {
    assert_eq!(push.method, "POST");
    assert_eq!(push.path(), "/ingest");
    let query = push.query();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(
        query["name"],
        format!("steps-svc{{host={},pid={pid},command=steps}}", host.trim())
    );
    assert_eq!(query["format"], "pprof");
    assert_eq!(query["spyName"], "memprof");
    let from: u64 = query["from"].parse().unwrap();
    let until: u64 = query["until"].parse().unwrap();
    assert!(from < until, "from {from} until {until}");
    // Periods follow each other: none overlaps the one before.
    assert!(from >= *last_until, "from {from} before {last_until}");
    *last_until = until;
    // With format=pprof the body is the profile itself.
    assert_eq!(push.headers["content-type"], "application/octet-stream");
    let got = by_function(&push.body);
    assert_eq!(
        got,
        expected(step),
        "the profile of the period after step {}",
        step + 1
    );
}

#[test]
fn each_period_pushes_exactly_what_is_outstanding_at_its_end() {
    if !root_or_skip() {
        return;
    }
    let (port, pushes) = receiver();
    let metrics_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("steps.json");
    let mut fixture = Fixture::spawn(Kind::Steps);
    let pid = fixture.pid();
    let (pid_arg, push_arg, metrics_arg, files_arg) = (
        pid.to_string(),
        format!("http://127.0.0.1:{port}"),
        format!("127.0.0.1:{metrics_port}"),
        files.display().to_string(),
    );
    let mut memprof = Memprof::spawn(&[
        "-p",
        &pid_arg,
        "--every",
        EVERY_SECS,
        "--push",
        &push_arg,
        "--service",
        "steps-svc",
        "--metrics",
        &metrics_arg,
        "-o",
        &files_arg,
        "--keep",
        "2",
    ]);
    memprof.wait_attached(ATTACH_TIMEOUT);
    let series = |name: &str| format!("{name}{{pid=\"{pid}\",comm=\"steps\"}}");
    let mut last_until = 0;
    for step in 0..3 {
        // The next step, then the end of the period it falls in.
        fixture.go();
        assert_eq!(
            fixture.expect_line("step", STEP_TIMEOUT),
            format!("step {}", step + 1)
        );
        let push = pushes
            .recv_timeout(PUSH_TIMEOUT)
            .unwrap_or_else(|_| panic!("no push within {PUSH_TIMEOUT:?} after step {}", step + 1));
        check_push(&push, pid, step, &mut last_until);
        // The metrics were updated before the push was sent.
        let text = scrape(metrics_port);
        let (blocks, bytes) = expected(step)
            .values()
            .fold((0, 0), |(c, b), &(count, bytes)| (c + count, b + bytes));
        assert_eq!(
            metric(&text, &series("memprof_outstanding_bytes")),
            bytes as u64,
            "{text}"
        );
        assert_eq!(
            metric(&text, &series("memprof_outstanding_blocks")),
            blocks as u64,
            "{text}"
        );
        assert_eq!(metric(&text, "memprof_periods_total"), step as u64 + 1);
        assert_eq!(
            metric(&text, "memprof_events_total{counter=\"live_map_full\"}"),
            0
        );
    }
    // Ctrl-C: detached, and the last (partial) period reported too.
    memprof.interrupt();
    let output = memprof.finish(FINISH_TIMEOUT);
    output.assert_success();
    let push = pushes
        .recv_timeout(PUSH_TIMEOUT)
        .expect("the last, partial period pushed");
    check_push(&push, pid, 2, &mut last_until);
    // Rotating files: the last two of the four periods kept.
    let mut kept: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    kept.sort();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(kept[0].starts_with("steps-0003-"), "{kept:?}");
    assert!(kept[1].starts_with("steps-0004-"), "{kept:?}");
    for name in &kept {
        assert!(name.ends_with("Z.json"), "{name}");
        let text = std::fs::read_to_string(dir.path().join(name)).unwrap();
        let report: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(report.totals.bytes, 18000, "{name}");
        assert_eq!(report.totals.count, 6, "{name}");
    }
    let status = fixture.finish(Duration::from_secs(10));
    assert!(status.success(), "steps did not exit cleanly: {status}");
}
