//! The report as pretty-printed JSON; the schema is [`Report`], versioned by
//! [`SCHEMA_VERSION`].

use std::borrow::Cow;
use std::io::Write;

use crate::model::{Report, SCHEMA_VERSION};

pub(crate) fn render(report: &Report, out: &mut dyn Write) -> anyhow::Result<()> {
    // Whatever built the report, what is written follows this build's schema.
    let report = if report.version == SCHEMA_VERSION {
        Cow::Borrowed(report)
    } else {
        Cow::Owned(Report {
            version: SCHEMA_VERSION,
            ..report.clone()
        })
    };
    serde_json::to_writer_pretty(&mut *out, &*report)?;
    writeln!(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_schema_version_and_round_trips() {
        let report = Report::default();
        let mut out = Vec::new();
        render(&report, &mut out).unwrap();
        let back: Report = serde_json::from_slice(&out).unwrap();
        assert_eq!(back.version, SCHEMA_VERSION);
        assert_eq!(
            back,
            Report {
                version: SCHEMA_VERSION,
                ..report
            }
        );
    }
}
