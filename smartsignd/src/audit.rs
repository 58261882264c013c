//! The audit trail: one line per decision on syslog's LOG_AUTHPRIV.
//!
//! Fields are fixed and always present (`-` when unknown), values that are
//! not plain words are quoted with control characters escaped, so that a
//! user name or remote host cannot forge a second line. Codes and secrets
//! have no field here at all.

use std::ffi::CString;
use std::sync::{Mutex, Once};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// No second factor was asked (not enrolled, locked out before asking).
    None,
    AppCode,
    /// A code mailed to the account's address.
    EmailCode,
    /// One of the account's backup codes.
    BackupCode,
    /// Enrollment and other account changes through the smartsign command.
    Manage,
    /// Approval on the phone through the push relay.
    Push,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::None => "none",
            Method::AppCode => "app-code",
            Method::EmailCode => "email-code",
            Method::BackupCode => "backup-code",
            Method::Manage => "manage",
            Method::Push => "push",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    Deny,
    /// Left to the rest of the PAM stack.
    Ignore,
    /// The caller was not allowed to ask.
    Refused,
    /// An account change was made.
    Done,
    /// A push went out and waits for the phone.
    Pending,
    /// A push ended without deciding the login (a code typed instead, the
    /// login abandoned).
    Withdrawn,
    /// Something SmartSign needed did not work (a push could not be sent);
    /// the login goes on another way.
    Failed,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::Ignore => "ignore",
            Outcome::Refused => "refused",
            Outcome::Done => "done",
            Outcome::Pending => "pending",
            Outcome::Withdrawn => "withdrawn",
            Outcome::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub user: String,
    pub service: String,
    pub rhost: Option<String>,
    pub tty: Option<String>,
    pub method: Method,
    pub phone: Option<String>,
    pub result: Outcome,
    pub reason: String,
    /// The uid that asked, for requests that came from the smartsign command.
    pub peer_uid: Option<u32>,
}

impl std::fmt::Display for AuditEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let field = |value: Option<&str>| value.map_or_else(|| "-".to_owned(), |v| quote(&clip(v)));
        let quote = |value: &str| quote(&clip(value));
        write!(
            f,
            "user={} service={} rhost={} tty={} method={} phone={} result={} reason={}",
            quote(&self.user),
            quote(&self.service),
            field(self.rhost.as_deref()),
            field(self.tty.as_deref()),
            self.method.as_str(),
            field(self.phone.as_deref()),
            self.result.as_str(),
            quote(&self.reason),
        )?;
        if let Some(uid) = self.peer_uid {
            write!(f, " uid={uid}")?;
        }
        Ok(())
    }
}

/// A plain word stays as it is; anything else is quoted and escaped.
fn quote(value: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "._-@:/+[]".contains(c);
    // A bare "-" means "none" in these lines; a value that is "-" is quoted.
    if !value.is_empty() && value != "-" && value.chars().all(plain) {
        return value.to_owned();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => push_visible(&mut out, c),
        }
    }
    out.push('"');
    out
}

/// Text from a client made safe for one log line: control characters and
/// invisible ones that reorder or hide text (bidi overrides, zero-width
/// spaces, line separators) become `\xNN` / `\u{NNNN}`.
pub fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        push_visible(&mut out, c);
    }
    out
}

/// Characters that change how a line reads without showing themselves:
/// controls, format characters (bidi marks, zero-width and soft hyphens,
/// tags), fillers that render as blanks, variation selectors.
pub fn is_invisible(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00ad}'
                | '\u{034f}'
                | '\u{061c}'
                | '\u{115f}'
                | '\u{1160}'
                | '\u{17b4}'
                | '\u{17b5}'
                | '\u{180b}'..='\u{180f}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{206f}'
                | '\u{2800}'
                | '\u{3164}'
                | '\u{fe00}'..='\u{fe0f}'
                | '\u{feff}'
                | '\u{ffa0}'
                | '\u{fff0}'..='\u{fffb}'
                | '\u{e0000}'..='\u{e0fff}'
        )
}

/// At most `MAX_LOGGED` characters of `text`, saying how much was cut.
pub fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_LOGGED) {
        Some((cut, _)) => format!("{}...[{} more bytes]", &text[..cut], text.len() - cut),
        None => text.to_owned(),
    }
}

/// The most characters of one client-supplied value in a log line.
pub const MAX_LOGGED: usize = 256;

fn push_visible(out: &mut String, c: char) {
    if c.is_ascii_control() {
        out.push_str(&format!("\\x{:02x}", u32::from(c)));
    } else if is_invisible(c) {
        out.push_str(&format!("\\u{{{:04x}}}", u32::from(c)));
    } else {
        out.push(c);
    }
}

pub trait AuditSink: Send + Sync {
    fn record(&self, event: &AuditEvent);
}

/// syslog(3) on LOG_AUTHPRIV, and stderr when smartsignd runs in the foreground.
pub struct Syslog {
    stderr: bool,
}

static OPENLOG: Once = Once::new();

impl Syslog {
    pub fn new(stderr: bool) -> Self {
        OPENLOG.call_once(|| {
            // SAFETY: the ident is a static C string, valid for the whole
            // process as openlog(3) requires; smartsignd owns its process.
            unsafe { libc::openlog(c"smartsignd".as_ptr(), libc::LOG_PID, libc::LOG_AUTHPRIV) };
        });
        Self { stderr }
    }
}

impl AuditSink for Syslog {
    fn record(&self, event: &AuditEvent) {
        let line = format!("audit: {event}");
        let level = match event.result {
            Outcome::Deny | Outcome::Refused => libc::LOG_WARNING,
            _ => libc::LOG_NOTICE,
        };
        if let Ok(text) = CString::new(line.as_str()) {
            // SAFETY: a literal "%s" format with one NUL-terminated argument.
            unsafe { libc::syslog(libc::LOG_AUTHPRIV | level, c"%s".as_ptr(), text.as_ptr()) };
        }
        if self.stderr {
            crate::say!("{line}");
        }
    }
}

/// Keeps lines in memory, for tests.
#[derive(Default)]
pub struct Memory {
    pub lines: Mutex<Vec<String>>,
}

impl AuditSink for Memory {
    fn record(&self, event: &AuditEvent) {
        if let Ok(mut lines) = self.lines.lock() {
            lines.push(event.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> AuditEvent {
        AuditEvent {
            user: "alice".into(),
            service: "sshd".into(),
            rhost: Some("192.0.2.7".into()),
            tty: None,
            method: Method::AppCode,
            phone: Some("Pixel 8".into()),
            result: Outcome::Deny,
            reason: "wrong code".into(),
            peer_uid: None,
        }
    }

    #[test]
    fn one_line_with_every_field() {
        assert_eq!(
            event().to_string(),
            "user=alice service=sshd rhost=192.0.2.7 tty=- method=app-code \
             phone=\"Pixel 8\" result=deny reason=\"wrong code\""
        );
    }

    #[test]
    fn hostile_values_cannot_forge_a_line() {
        let mut event = event();
        event.user = "mallory\nuser=root result=allow".into();
        event.rhost = Some("x\" result=\"allow".into());
        let line = event.to_string();
        assert!(!line.contains('\n'));
        assert!(
            line.starts_with("user=\"mallory\\x0auser=root result=allow\" "),
            "{line}"
        );
        assert!(line.contains("rhost=\"x\\\" result=\\\"allow\""), "{line}");
        assert!(line.contains(" result=deny "));
    }

    #[test]
    fn invisible_characters_are_shown() {
        let mut event = event();
        event.phone = Some("Pixel\u{202e}lla\u{200b}\u{2028}x".into());
        let line = event.to_string();
        assert!(
            line.contains("phone=\"Pixel\\u{202e}lla\\u{200b}\\u{2028}x\""),
            "{line}"
        );
        assert_eq!(sanitize("a\nb\u{202e}c"), "a\\x0ab\\u{202e}c");
        for hidden in [
            '\u{061c}',
            '\u{00ad}',
            '\u{180e}',
            '\u{3164}',
            '\u{e0041}',
            '\u{fe0f}',
        ] {
            assert!(is_invisible(hidden), "{hidden:?}");
        }
        assert!(!is_invisible('é') && !is_invisible('日'));
    }

    #[test]
    fn a_dash_value_is_not_none_and_long_values_are_clipped() {
        let mut event = event();
        event.phone = Some("-".into());
        assert!(event.to_string().contains("phone=\"-\""));
        let long = "x".repeat(1000);
        assert_eq!(clip(&long).len(), MAX_LOGGED + "...[744 more bytes]".len());
        event.reason = long;
        assert!(event.to_string().len() < 600, "{}", event.to_string().len());
    }
}
