//! The pprof renderer, checked with an independent decoder: the messages of
//! `profile.proto` declared with prost (in `common/pprof_proto.rs`), and the
//! gzip undone with flate2.

mod common;
#[path = "common/pprof_proto.rs"]
mod pprof_proto;

use std::io::Read;

use common::{empty_report, profiles_report, sample_report};
use memprof::model::Report;
use memprof::render::{render, Format, RenderOptions};
use pprof_proto::{Profile, Sample};

fn decode(report: &Report) -> Profile {
    let mut gz = Vec::new();
    render(report, Format::Pprof, &RenderOptions::default(), &mut gz).unwrap();
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut raw)
        .unwrap();
    <Profile as prost::Message>::decode(&raw[..]).unwrap()
}

/// One frame of a decoded stack: function name, file and line, or the address.
#[derive(Debug, PartialEq)]
enum Decoded {
    Line(String, String, i64),
    Addr(u64),
}

/// The frames of `sample`, innermost first, with inlined lines expanded.
fn frames(p: &Profile, sample: &Sample) -> Vec<Decoded> {
    let s = |i: i64| p.string_table[i as usize].clone();
    let mut out = Vec::new();
    for &id in &sample.location_id {
        let loc = &p.location[id as usize - 1];
        assert_eq!(loc.id, id, "location ids are their index plus one");
        if loc.line.is_empty() {
            out.push(Decoded::Addr(loc.address));
        }
        for line in &loc.line {
            let f = &p.function[line.function_id as usize - 1];
            assert_eq!(f.id, line.function_id);
            out.push(Decoded::Line(s(f.name), s(f.filename), line.line));
        }
    }
    out
}

#[test]
fn sample_report_decodes_exactly() {
    let report = sample_report();
    let p = decode(&report);
    let s = |i: i64| p.string_table[i as usize].as_str();

    assert_eq!(p.string_table[0], "");
    let types: Vec<_> = p
        .sample_type
        .iter()
        .map(|t| (s(t.r#type), s(t.unit)))
        .collect();
    assert_eq!(
        types,
        [("inuse_space", "bytes"), ("inuse_objects", "count")]
    );
    assert_eq!(s(p.default_sample_type), "inuse_space");
    assert_eq!(p.time_nanos, 1_714_564_800_250_000_000);
    assert_eq!(p.duration_nanos, 30_000_000_000);

    // One sample per stack, values [bytes, count], totals exact.
    assert_eq!(p.sample.len(), report.stacks.len());
    for (sample, stack) in p.sample.iter().zip(&report.stacks) {
        assert_eq!(sample.value, [stack.bytes as i64, stack.count as i64]);
    }
    let bytes: i64 = p.sample.iter().map(|s| s.value[0]).sum();
    let count: i64 = p.sample.iter().map(|s| s.value[1]).sum();
    assert_eq!(bytes as u64, report.totals.bytes);
    assert_eq!(count as u64, report.totals.count);

    let line = |f: &str, file: &str, l: i64| Decoded::Line(f.into(), file.into(), l);
    let libc_start = [
        line("__libc_start_call_main", "", 0),
        line("__libc_start_main_impl", "", 0),
        line("_start", "", 0),
    ];

    let mut want = vec![
        line("leak_buffer", "/src/leaky/leaky.c", 12),
        line("process_request", "/src/leaky/leaky.c", 40),
        line("main", "/src/leaky/leaky.c", 88),
    ];
    want.extend(libc_start.iter().map(|d| match d {
        Decoded::Line(a, b, c) => Decoded::Line(a.clone(), b.clone(), *c),
        Decoded::Addr(a) => Decoded::Addr(*a),
    }));
    assert_eq!(frames(&p, &p.sample[0]), want);

    // The inlined frame shares the location of the frame it was inlined into.
    let rust = &p.sample[1];
    assert_eq!(rust.location_id.len(), report.stacks[1].frames.len() - 1);
    let inlined = &p.location[rust.location_id[0] as usize - 1];
    assert_eq!(inlined.address, 0x5555_5555_6a10);
    assert_eq!(inlined.line.len(), 2);
    assert_eq!(
        frames(&p, rust)[..3],
        [
            line(
                "alloc::raw_vec::RawVec<T,A>::grow_one",
                "/rustc/library/alloc/src/raw_vec.rs",
                567
            ),
            line("leaky::cache::Cache::insert", "/src/leaky/src/cache.rs", 31),
            line("leaky::main", "/src/leaky/src/main.rs", 10),
        ]
    );

    // A frame without a symbol is an address in its module's mapping.
    let unsymbolized = &p.sample[2];
    assert_eq!(frames(&p, unsymbolized)[0], Decoded::Addr(0x7fff_f7e0_1234));
    let loc = &p.location[unsymbolized.location_id[0] as usize - 1];
    let mapping = &p.mapping[loc.mapping_id as usize - 1];
    assert_eq!(s(mapping.filename), "/usr/lib/libfoo.so.1");
    assert!(!mapping.has_functions);
    assert!(mapping.memory_start <= loc.address && loc.address < mapping.memory_limit);

    // The stack the kernel could not walk.
    assert_eq!(frames(&p, &p.sample[3]), [line("[stack lost]", "", 0)]);

    // `;` needs no escaping in pprof: the name is kept as is.
    assert_eq!(
        frames(&p, &p.sample[4])[0],
        line(
            "<[u8; 16] as leaky::Fill>::fill",
            "/src/leaky/src/fill.rs",
            7
        )
    );

    // Every mapping covers the addresses of its locations.
    for loc in &p.location {
        if loc.mapping_id != 0 {
            let m = &p.mapping[loc.mapping_id as usize - 1];
            assert!(m.memory_start <= loc.address && loc.address < m.memory_limit);
        }
    }
    let comments: Vec<_> = p.comment.iter().map(|&i| s(i)).collect();
    assert!(comments.contains(&"memprof: outstanding memory of pid 4242 (leaky)"));
    assert!(comments.iter().any(|c| c.contains("lower bounds")));
}

#[test]
fn empty_report_decodes() {
    let p = decode(&empty_report());
    assert!(p.sample.is_empty());
    assert!(p.location.is_empty());
    assert_eq!(p.sample_type.len(), 2);
    assert_eq!(p.string_table[0], "");
}

#[test]
fn output_is_deterministic() {
    let mut a = Vec::new();
    let mut b = Vec::new();
    let opts = RenderOptions::default();
    render(&sample_report(), Format::Pprof, &opts, &mut a).unwrap();
    render(&sample_report(), Format::Pprof, &opts, &mut b).unwrap();
    assert_eq!(a, b);
}

#[test]
fn with_the_allocation_profile_it_has_go_s_four_heap_types() {
    let report = profiles_report();
    let p = decode(&report);
    let s = |i: i64| p.string_table[i as usize].clone();
    let types: Vec<(String, String)> = p
        .sample_type
        .iter()
        .map(|t| (s(t.r#type), s(t.unit)))
        .collect();
    let want: Vec<(String, String)> = [
        ("alloc_objects", "count"),
        ("alloc_space", "bytes"),
        ("inuse_objects", "count"),
        ("inuse_space", "bytes"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(types, want);
    assert_eq!(s(p.default_sample_type), "inuse_space");
    // The outstanding stacks first, each with its allocations; then the
    // stacks that only allocated (the churn), with nothing in use.
    let allocations = report.allocations.as_ref().unwrap();
    assert_eq!(p.sample.len(), report.stacks.len() + 1);
    for (sample, stack) in p.sample.iter().zip(&report.stacks) {
        let a = allocations
            .stacks
            .iter()
            .find(|a| a.frames == stack.frames)
            .unwrap();
        assert_eq!(
            sample.value,
            [
                a.totals.count as i64,
                a.totals.bytes as i64,
                stack.count as i64,
                stack.bytes as i64
            ]
        );
    }
    let churn = p.sample.last().unwrap();
    assert_eq!(churn.value, [50_000, 25_600_000, 0, 0]);
    let sum = |i: usize| p.sample.iter().map(|s| s.value[i]).sum::<i64>() as u64;
    assert_eq!(
        (sum(0), sum(1)),
        (allocations.totals.count, allocations.totals.bytes)
    );
    assert_eq!((sum(2), sum(3)), (report.totals.count, report.totals.bytes));
}
