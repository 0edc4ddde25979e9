//! Caller input echoed in an error, kept short. A status message travels in an HTTP/2
//! header, and standard clients refuse headers past 16 KB with RESOURCE_EXHAUSTED,
//! which a caller reads as "node full, retry elsewhere": a 100 KB audio URI or a 1 MB
//! call_id echoed verbatim would turn a NOT_FOUND or INVALID_ARGUMENT into that.

use tonic::Status;

/// How much of an input an error shows (bytes, cut on a character boundary).
pub const SHOWN_INPUT: usize = 96;

/// The longest status message this node sends; anything longer is cut (a backstop:
/// every error that echoes input already clips it).
pub const STATUS_MESSAGE_MAX: usize = 1024;

/// `input` when short, else its start and how much was left out; control characters
/// show as U+FFFD, so quoting the result (`{:?}`) cannot blow it up again (a DEL is
/// six bytes once escaped).
pub fn clip(input: &str) -> String {
    let mut shown = String::new();
    let mut used = input.len();
    for (at, c) in input.char_indices() {
        let c = if c.is_control() { char::REPLACEMENT_CHARACTER } else { c };
        if shown.len() + c.len_utf8() > SHOWN_INPUT {
            used = at;
            break;
        }
        shown.push(c);
    }
    if used < input.len() {
        shown.push_str(&format!("…(+{} bytes)", input.len() - used));
    }
    shown
}

/// The status with its message no longer than `STATUS_MESSAGE_MAX`.
pub fn bounded(status: Status) -> Status {
    if status.message().len() <= STATUS_MESSAGE_MAX {
        return status;
    }
    let message = format!("{}… (message cut)", cut(status.message(), STATUS_MESSAGE_MAX - 20));
    Status::with_metadata(status.code(), message, status.metadata().clone())
}

fn cut(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_input_is_shown_whole_and_long_input_is_cut_on_a_char_boundary() {
        assert_eq!(clip("prompts/a.wav"), "prompts/a.wav");
        let long = "é".repeat(50_000); // 100_000 bytes, two per char
        let shown = clip(&long);
        assert!(shown.len() < SHOWN_INPUT + 20, "{}", shown.len());
        assert!(shown.ends_with("…(+99904 bytes)"), "{shown}");
        let controls = "\u{7f}".repeat(1000);
        let shown = format!("{:?}", clip(&controls));
        assert!(shown.len() < SHOWN_INPUT * 2, "{} bytes once quoted", shown.len());
    }

    #[test]
    fn a_status_message_is_bounded_and_keeps_its_code() {
        let s = bounded(Status::not_found("x".repeat(1_000_000)));
        assert_eq!(s.code(), tonic::Code::NotFound);
        assert!(s.message().len() <= STATUS_MESSAGE_MAX, "{}", s.message().len());
        let small = bounded(Status::invalid_argument("bad"));
        assert_eq!(small.message(), "bad");
    }
}
