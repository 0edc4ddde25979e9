//! Parsing a StartRecording `output_uri` into a place that cannot escape its bucket or
//! directory, and naming the object: `<prefix>/YYYY/MM/DD/<call_id>.wav`.

use std::path::PathBuf;

use thiserror::Error;

use crate::audio::uri::relative_prompt_path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    S3 {
        bucket: String,
        prefix: String,
    },
    /// A folder relative to the node's recordings root.
    File {
        dir: PathBuf,
    },
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DestinationError {
    #[error("output_uri is empty and the node has no default recording destination (set BUCKET_NAME or RECORDINGS_DEFAULT_URI)")]
    NoDefault,
    #[error("output_uri {0:?} must be s3://bucket/prefix or file://relative/folder")]
    Scheme(String),
    #[error("bucket name {0:?} is not a valid S3 bucket name")]
    Bucket(String),
    #[error("output_uri {0:?} leaves its bucket or folder")]
    Escapes(String),
}

fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && b.as_bytes()[0].is_ascii_alphanumeric()
        && b.as_bytes()[b.len() - 1].is_ascii_alphanumeric()
        && !b.contains("..")
}

impl Destination {
    pub fn parse(uri: &str, default: Option<&Destination>) -> Result<Destination, DestinationError> {
        let uri = uri.trim();
        if uri.is_empty() {
            return default.cloned().ok_or(DestinationError::NoDefault);
        }
        if let Some(rest) = uri.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if !valid_bucket(bucket) {
                return Err(DestinationError::Bucket(bucket.to_string()));
            }
            let mut parts = Vec::new();
            for seg in prefix.split('/').filter(|s| !s.is_empty()) {
                if seg == ".." || seg == "." || seg.contains('\\') || seg.chars().any(|c| c.is_control()) {
                    return Err(DestinationError::Escapes(uri.to_string()));
                }
                parts.push(seg);
            }
            return Ok(Destination::S3 { bucket: bucket.to_string(), prefix: parts.join("/") });
        }
        if let Some(rest) = uri.strip_prefix("file://") {
            if rest.trim_matches('/').is_empty() {
                return Ok(Destination::File { dir: PathBuf::new() });
            }
            return relative_prompt_path(rest).map(|dir| Destination::File { dir }).map_err(|_| DestinationError::Escapes(uri.to_string()));
        }
        Err(DestinationError::Scheme(uri.chars().take(60).collect()))
    }
}

/// A call id made safe as a file or object name.
pub fn safe_name(call_id: &str) -> String {
    let s: String = call_id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' }).collect();
    let s = s.trim_matches('.').to_string();
    if s.is_empty() {
        "call".into()
    } else {
        s.chars().take(128).collect()
    }
}

/// `<prefix>/YYYY/MM/DD/<call_id>[-segment].wav`; the date is the recording's start (UTC).
pub fn object_key(prefix: &str, date: (i16, i8, i8), call_id: &str, segment: u32) -> String {
    let name = if segment <= 1 { format!("{}.wav", safe_name(call_id)) } else { format!("{}-{segment}.wav", safe_name(call_id)) };
    let dated = format!("{:04}/{:02}/{:02}/{name}", date.0, date.1, date.2);
    if prefix.is_empty() {
        dated
    } else {
        format!("{prefix}/{dated}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_and_file_destinations() {
        assert_eq!(
            Destination::parse("s3://calls/recordings", None),
            Ok(Destination::S3 { bucket: "calls".into(), prefix: "recordings".into() })
        );
        assert_eq!(Destination::parse("s3://calls", None), Ok(Destination::S3 { bucket: "calls".into(), prefix: "".into() }));
        assert_eq!(Destination::parse("file://tenant-a/rec", None), Ok(Destination::File { dir: "tenant-a/rec".into() }));
        let d = Destination::S3 { bucket: "def".into(), prefix: "p".into() };
        assert_eq!(Destination::parse("", Some(&d)), Ok(d));
        assert_eq!(Destination::parse("", None), Err(DestinationError::NoDefault));
    }

    #[test]
    fn nothing_escapes() {
        for bad in ["s3://calls/../other", "s3://calls/a/./b", "file://../etc", "file:///x/../../y"] {
            assert!(matches!(Destination::parse(bad, None), Err(DestinationError::Escapes(_))), "{bad}");
        }
        assert!(matches!(Destination::parse("s3://Bad_Bucket/x", None), Err(DestinationError::Bucket(_))));
        assert!(matches!(Destination::parse("s3://a/x", None), Err(DestinationError::Bucket(_))));
        assert!(matches!(Destination::parse("http://x/y", None), Err(DestinationError::Scheme(_))));
    }

    #[test]
    fn keys_are_dated_and_safe() {
        assert_eq!(object_key("recordings", (2026, 11, 5), "abc-123", 1), "recordings/2026/11/05/abc-123.wav");
        assert_eq!(object_key("", (2026, 1, 2), "a/../b", 2), "2026/01/02/a_.._b-2.wav");
        assert_eq!(safe_name("../.."), "_");
        assert_eq!(safe_name(""), "call");
    }
}
