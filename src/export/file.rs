//! File output: OTLP JSON lines, one `ExportMetricsServiceRequest` per line, the layout the
//! OpenTelemetry Collector's file exporter writes. Unset optional fields are left out rather
//! than written as `null`, as the collector does.
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;

#[derive(Debug, thiserror::Error)]
pub enum FileOutputError {
    #[error("cannot open the metrics file {path} (check export.file.path)")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the metrics file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode metrics as JSON")]
    Encode(#[source] serde_json::Error),
}

pub struct FileOutput {
    path: PathBuf,
    file: File,
}

impl FileOutput {
    /// Opens `path` for appending, creating it if needed.
    pub fn open(path: &Path) -> Result<Self, FileOutputError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| FileOutputError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn write(&mut self, request: &ExportMetricsServiceRequest) -> Result<usize, FileOutputError> {
        let line = to_json_line(request)?;
        self.file
            .write_all(line.as_bytes())
            .map_err(|source| FileOutputError::Write {
                path: self.path.clone(),
                source,
            })?;
        Ok(line.len())
    }
}

/// One request as a JSON line, newline included.
pub fn to_json_line(request: &ExportMetricsServiceRequest) -> Result<String, FileOutputError> {
    let mut value = serde_json::to_value(request).map_err(FileOutputError::Encode)?;
    drop_nulls(&mut value);
    let mut line = serde_json::to_string(&value).map_err(FileOutputError::Encode)?;
    line.push('\n');
    Ok(line)
}

fn drop_nulls(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(drop_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::io::BufRead;

    use super::*;
    use crate::export::metric_set::build;
    use crate::export::otlp::{encode, HistogramFormat};
    use crate::export::Temporality;
    use crate::names;
    use crate::testing;

    #[test]
    fn lines_parse_back_into_the_same_requests() {
        let frame = testing::frame();
        let requests = [Temporality::Cumulative, Temporality::Delta].map(|t| {
            let set = build(&frame, &[], &Default::default(), t, &Default::default());
            encode(&set, &Default::default(), HistogramFormat::Exponential)
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("metrics.jsonl");
        let mut out = FileOutput::open(&path).expect("open");
        for r in &requests {
            out.write(r).expect("write");
        }
        let lines: Vec<String> = std::io::BufReader::new(File::open(&path).expect("reopen"))
            .lines()
            .map(|l| l.expect("line"))
            .collect();
        assert_eq!(lines.len(), 2);
        for (line, expected) in lines.iter().zip(&requests) {
            assert!(!line.contains("null"), "no nulls: {line}");
            let parsed: ExportMetricsServiceRequest = serde_json::from_str(line).expect("protobuf JSON decodes");
            assert_eq!(&parsed, expected);
        }
        // the OTLP/JSON encoding: camelCase names, 64-bit integers as strings
        assert!(lines[0].contains(&format!("\"name\":\"{}\"", names::BYTES)));
        assert!(lines[0].contains("\"asInt\":\"1200\""));
        assert!(lines[0].contains("\"startTimeUnixNano\":\"1700000000000000000\""));
    }
}
