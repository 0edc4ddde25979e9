//! Parsing a StartRecording `output_uri` into a place that cannot escape its bucket or
//! directory, and naming the object: `<prefix>/YYYY/MM/DD/<call_id>.wav`.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::audio::uri::relative_prompt_path;
use crate::echo::clip;

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
    #[error("output_uri prefix or folder is {0} bytes; at most {MAX_PREFIX} (S3 keys end at 1024 bytes with the date and call id)")]
    TooLong(usize),
}

/// The longest prefix or folder a destination may have: an S3 key is at most 1024
/// bytes, and `/YYYY/MM/DD/<call_id up to 128>-<segment>.wav` takes up to about 160.
pub const MAX_PREFIX: usize = 512;

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
                return Err(DestinationError::Bucket(clip(bucket)));
            }
            let mut parts = Vec::new();
            for seg in prefix.split('/').filter(|s| !s.is_empty()) {
                if seg == ".." || seg == "." || seg.contains('\\') || seg.chars().any(|c| c.is_control()) {
                    return Err(DestinationError::Escapes(clip(uri)));
                }
                parts.push(seg);
            }
            let prefix = parts.join("/");
            if prefix.len() > MAX_PREFIX {
                return Err(DestinationError::TooLong(prefix.len()));
            }
            return Ok(Destination::S3 { bucket: bucket.to_string(), prefix });
        }
        if let Some(rest) = uri.strip_prefix("file://") {
            if rest.trim_matches('/').is_empty() {
                return Ok(Destination::File { dir: PathBuf::new() });
            }
            let dir = relative_prompt_path(rest).map_err(|_| DestinationError::Escapes(clip(uri)))?;
            if dir.as_os_str().len() > MAX_PREFIX {
                return Err(DestinationError::TooLong(dir.as_os_str().len()));
            }
            return Ok(Destination::File { dir });
        }
        Err(DestinationError::Scheme(clip(uri)))
    }
}

/// Where a file recording under `root` would be written, proved to stay inside `root`
/// once symlinks are followed: the deepest part of `root/relative` that exists is
/// resolved and must still be under the resolved root. The parser already refuses
/// `..`; this stops a symlink inside the recordings root (planted by whoever can write
/// there) from carrying a recording elsewhere.
pub fn contained(root: &Path, relative: &Path) -> Result<PathBuf, DestinationError> {
    let escapes = || DestinationError::Escapes(clip(&relative.display().to_string()));
    std::fs::create_dir_all(root).map_err(|_| escapes())?;
    let real_root = root.canonicalize().map_err(|_| escapes())?;
    let full = root.join(relative);
    let mut existing = full.as_path();
    while !existing.exists() {
        existing = existing.parent().ok_or_else(escapes)?;
    }
    let real = existing.canonicalize().map_err(|_| escapes())?;
    if !real.starts_with(&real_root) {
        return Err(escapes());
    }
    Ok(full)
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
    #[test]
    fn a_symlink_inside_the_recordings_root_does_not_carry_a_recording_out() {
        let base = std::env::temp_dir().join(format!("contained-{}-{}", std::process::id(), rand::random::<u32>()));
        let root = base.join("recordings");
        std::fs::create_dir_all(root.join("tenant")).unwrap();
        std::os::unix::fs::symlink(&base, root.join("out")).unwrap();
        assert_eq!(contained(&root, Path::new("tenant/a/b")).unwrap(), root.join("tenant/a/b"), "new folders under the root are fine");
        assert!(matches!(contained(&root, Path::new("out/x")), Err(DestinationError::Escapes(_))));
        assert!(matches!(contained(&root, Path::new("out")), Err(DestinationError::Escapes(_))));
        std::fs::remove_dir_all(&base).unwrap();
    }

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
        // A prefix that no S3 key could hold is refused now, not retried forever later.
        let long = format!("s3://calls/{}", "x/".repeat(300));
        assert_eq!(Destination::parse(&long, None), Err(DestinationError::TooLong(599)));
        assert!(matches!(Destination::parse(&format!("file://{}", "d/".repeat(300)), None), Err(DestinationError::TooLong(_))));
    }

    #[test]
    fn keys_are_dated_and_safe() {
        assert_eq!(object_key("recordings", (2026, 11, 5), "abc-123", 1), "recordings/2026/11/05/abc-123.wav");
        assert_eq!(object_key("", (2026, 1, 2), "a/../b", 2), "2026/01/02/a_.._b-2.wav");
        assert_eq!(safe_name("../.."), "_");
        assert_eq!(safe_name(""), "call");
    }
}
