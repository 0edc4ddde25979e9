//! What a PlayAudio `audio_uri` asks for, and where a `file://` prompt may live.

use std::path::{Component, Path, PathBuf};

use base64::Engine;
use thiserror::Error;

use crate::echo::clip;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum UriError {
    #[error("audio_uri is empty")]
    Empty,
    #[error("unsupported audio_uri scheme in {0:?}: use file://, data: or control://")]
    Scheme(String),
    #[error("unknown control URI {0:?}: known are set_target, enable_echo, disable_echo, stop_audio")]
    Control(String),
    #[error("prompt path {0:?} leaves the assets root")]
    Escapes(String),
    #[error("prompt {0:?} does not exist under the assets root")]
    NotFound(String),
    #[error("data URI is malformed: {0}")]
    Data(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    SetTarget,
    EnableEcho,
    DisableEcho,
    StopAudio,
}

#[derive(Debug, PartialEq, Eq)]
pub enum AudioUri {
    /// Relative path under the assets root (not yet checked against the disk).
    File(PathBuf),
    /// Raw s16le PCM at the given rate.
    Pcm {
        rate: u32,
        bytes: Vec<u8>,
    },
    /// A whole WAV file.
    Wav(Vec<u8>),
    Control(Control),
}

pub fn parse(uri: &str) -> Result<AudioUri, UriError> {
    let uri = uri.trim();
    if uri.is_empty() {
        return Err(UriError::Empty);
    }
    if let Some(rest) = uri.strip_prefix("control://") {
        return match rest.trim_end_matches('/') {
            "set_target" => Ok(AudioUri::Control(Control::SetTarget)),
            "enable_echo" => Ok(AudioUri::Control(Control::EnableEcho)),
            "disable_echo" => Ok(AudioUri::Control(Control::DisableEcho)),
            "stop_audio" | "stop" => Ok(AudioUri::Control(Control::StopAudio)),
            other => Err(UriError::Control(clip(other))),
        };
    }
    if let Some(rest) = uri.strip_prefix("file://") {
        return relative_prompt_path(rest).map(AudioUri::File);
    }
    if let Some(rest) = uri.strip_prefix("data:") {
        return parse_data(rest);
    }
    Err(UriError::Scheme(clip(uri)))
}

/// A path that stays inside whatever root it is joined to: no `..`, no prefix, no NUL.
/// A leading `/` is taken as the root itself, as callers send `file:///prompts/x.wav`.
pub fn relative_prompt_path(raw: &str) -> Result<PathBuf, UriError> {
    if raw.contains('\0') {
        return Err(UriError::Escapes(clip(&raw.replace('\0', "\\0"))));
    }
    let mut out = PathBuf::new();
    for c in Path::new(raw).components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return Err(UriError::Escapes(clip(raw))),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(UriError::NotFound(clip(raw)));
    }
    Ok(out)
}

/// Joins a relative path to a root and proves, after resolving symlinks, that the
/// result is still inside the root.
pub fn resolve_under(root: &Path, relative: &Path) -> Result<PathBuf, UriError> {
    let shown = clip(&relative.display().to_string());
    let root = root.canonicalize().map_err(|_| UriError::NotFound(shown.clone()))?;
    let full = root.join(relative).canonicalize().map_err(|_| UriError::NotFound(shown.clone()))?;
    if !full.starts_with(&root) {
        return Err(UriError::Escapes(shown));
    }
    Ok(full)
}

fn parse_data(rest: &str) -> Result<AudioUri, UriError> {
    let (meta, payload) = rest.split_once(',').ok_or_else(|| UriError::Data("no ',' before the payload".into()))?;
    let mut params = meta.split(';');
    let mime = params.next().unwrap_or("").trim().to_ascii_lowercase();
    let mut base64 = false;
    let mut rate = None;
    for p in params {
        let p = p.trim();
        if p.eq_ignore_ascii_case("base64") {
            base64 = true;
        } else if let Some(r) = p.strip_prefix("rate=") {
            rate = Some(r.parse::<u32>().map_err(|_| UriError::Data(format!("bad rate {:?}", clip(r))))?);
        }
    }
    if !base64 {
        return Err(UriError::Data("only base64 data URIs carry audio".into()));
    }
    let bytes = base64::engine::general_purpose::STANDARD.decode(payload.trim()).map_err(|e| UriError::Data(format!("base64: {e}")))?;
    match mime.as_str() {
        "audio/wav" | "audio/x-wav" | "audio/wave" | "audio/vnd.wave" => Ok(AudioUri::Wav(bytes)),
        // The platform's historical form: 16 kHz s16le unless a rate says otherwise.
        "audio/pcm" | "audio/l16" | "audio/raw" | "" => {
            let rate = rate.unwrap_or(16000);
            if !(4000..=192_000).contains(&rate) {
                return Err(UriError::Data(format!("rate {rate} is out of range")));
            }
            if bytes.len() % 2 != 0 {
                return Err(UriError::Data("odd number of bytes for 16-bit PCM".into()));
            }
            Ok(AudioUri::Pcm { rate, bytes })
        }
        other => Err(UriError::Data(format!("unsupported media type {:?}", clip(other)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls() {
        assert_eq!(parse("control://set_target"), Ok(AudioUri::Control(Control::SetTarget)));
        assert_eq!(parse("control://stop_audio"), Ok(AudioUri::Control(Control::StopAudio)));
        assert_eq!(parse("control://enable_echo"), Ok(AudioUri::Control(Control::EnableEcho)));
        assert_eq!(parse("control://disable_echo"), Ok(AudioUri::Control(Control::DisableEcho)));
        assert!(matches!(parse("control://reboot"), Err(UriError::Control(_))));
    }

    #[test]
    fn file_paths_stay_inside() {
        assert_eq!(parse("file://prompts/tr/welcome.wav"), Ok(AudioUri::File("prompts/tr/welcome.wav".into())));
        assert_eq!(parse("file:///prompts/welcome.wav"), Ok(AudioUri::File("prompts/welcome.wav".into())));
        for bad in ["file://../etc/passwd", "file://prompts/../../x.wav", "file:///../../x", "file://a/\0b"] {
            assert!(matches!(parse(bad), Err(UriError::Escapes(_))), "{bad}");
        }
    }

    #[test]
    fn symlink_out_of_root_is_refused() {
        let dir = std::env::temp_dir().join(format!("uri-test-{}", std::process::id()));
        let root = dir.join("assets");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(dir.join("secret.wav"), b"x").unwrap();
        std::fs::write(root.join("ok.wav"), b"x").unwrap();
        let _ = std::os::unix::fs::symlink(dir.join("secret.wav"), root.join("link.wav"));
        assert!(resolve_under(&root, Path::new("ok.wav")).is_ok());
        assert!(matches!(resolve_under(&root, Path::new("link.wav")), Err(UriError::Escapes(_))));
        assert!(matches!(resolve_under(&root, Path::new("missing.wav")), Err(UriError::NotFound(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn data_uris() {
        assert_eq!(parse("data:audio/pcm;base64,AAABAA=="), Ok(AudioUri::Pcm { rate: 16000, bytes: vec![0, 0, 1, 0] }));
        assert_eq!(parse("data:audio/L16;rate=8000;base64,AAA="), Ok(AudioUri::Pcm { rate: 8000, bytes: vec![0, 0] }));
        assert!(matches!(parse("data:audio/wav;base64,UklGRg=="), Ok(AudioUri::Wav(_))));
        assert!(matches!(parse("data:audio/pcm;base64,@@@"), Err(UriError::Data(_))));
        assert!(matches!(parse("data:audio/pcm,plain"), Err(UriError::Data(_))));
        assert!(matches!(parse("data:audio/pcm;base64,AAAB"), Err(UriError::Data(_))));
        assert!(matches!(parse("http://example.com/a.wav"), Err(UriError::Scheme(_))));
        assert_eq!(parse("  "), Err(UriError::Empty));
    }
}
