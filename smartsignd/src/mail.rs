//! Emergency codes by mail: the message, and handing it to SMTP or sendmail
//! within a time bound.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{Address, SmtpTransport, Transport};
use zeroize::Zeroizing;

use crate::audit::sanitize;
use crate::config::{EmailConfig, MailTls, MailTransport};

/// The longest address accepted (RFC 5321's path limit).
pub const MAX_ADDRESS: usize = 254;

#[derive(Debug)]
pub struct MailError(pub String);

impl std::fmt::Display for MailError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MailError {}

fn fail(what: &str, err: impl std::fmt::Display) -> MailError {
    MailError(sanitize(&format!("{what}: {err}")))
}

/// A plausible address to send codes to; the mail it gets proves it.
pub fn check_address(address: &str) -> Result<Address, String> {
    if address.len() > MAX_ADDRESS || address.chars().any(crate::audit::is_invisible) {
        return Err(format!(
            "an address is at most {MAX_ADDRESS} visible characters"
        ));
    }
    address
        .parse::<Address>()
        .map_err(|err| format!("{address:?} is not a mail address: {err}"))
}

/// `alice@example.org` as `a****@example.org`: enough to recognise, not to harvest.
pub fn mask(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}****@{domain}")
        }
        None => "****".into(),
    }
}

/// What a mail says; every field is plain text from this daemon or checked.
pub struct CodeMail<'a> {
    pub user: &'a str,
    pub host: &'a str,
    pub code: &'a str,
    /// Why the code was sent: a login, or confirming the address.
    pub purpose: Purpose<'a>,
    pub sent: u64,
    pub expires: u64,
}

pub enum Purpose<'a> {
    Login {
        service: &'a str,
        rhost: Option<&'a str>,
    },
    ConfirmAddress,
    /// Proof for a change to an account enrolled by its address alone.
    Change,
}

impl CodeMail<'_> {
    pub fn subject(&self) -> String {
        let what = match self.purpose {
            Purpose::Login { .. } => "SmartSign code",
            Purpose::ConfirmAddress => "SmartSign address confirmation",
            Purpose::Change => "SmartSign code for a change",
        };
        one_line(&format!("{what} for {} on {}", self.user, self.host))
    }

    pub fn body(&self) -> String {
        let minutes = self.expires.saturating_sub(self.sent).div_ceil(60);
        let (user, host) = (sanitize(self.user), sanitize(self.host));
        let (what, warning) = match &self.purpose {
            Purpose::Login { service, rhost } => (
                format!(
                    "It lets {user} log in once\n  to:       {host}\n  through:  {}\n  from:     {}",
                    sanitize(service),
                    rhost.map_or_else(|| "this computer".to_owned(), sanitize)
                ),
                format!(
                    "If this was not you, give this code to nobody: someone who\n\
                     knows the password of {user} is trying to log in.\n\
                     Tell your administrator."
                ),
            ),
            Purpose::ConfirmAddress => (
                format!(
                    "Type it back into smartsign to receive SmartSign codes\n\
                     for {user} on {host} at this address."
                ),
                "If you did not ask for this, ignore this mail; nothing changes.".to_owned(),
            ),
            Purpose::Change => (
                format!(
                    "Type it into smartsign to change how {user} logs in to {host}:\n\
                     add a phone, change or remove this address, make backup\n\
                     codes, or turn SmartSign off. It does not log anyone in."
                ),
                format!(
                    "If you did not ask for this, give this code to nobody: someone\n\
                     with access to {user}'s session is trying to change how\n\
                     {user} logs in. Tell your administrator."
                ),
            ),
        };
        format!(
            "Your SmartSign code is: {}\n\n{what}\n\nRequested: {}\nExpires:   {} (in {minutes} minutes)\n\n{warning}\n",
            self.code,
            when(self.sent),
            when(self.expires),
        )
    }
}

fn when(unix: u64) -> String {
    let time = std::time::UNIX_EPOCH + Duration::from_secs(unix);
    humantime::format_rfc3339_seconds(time)
        .to_string()
        .replace('T', " ")
        .replace('Z', " UTC")
}

/// Header text on one line: no CR, LF or other control characters.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Where code mails go: SMTP or sendmail in the daemon, a list in tests.
pub trait MailSink: Send + Sync {
    fn send(&self, to: &Address, mail: &CodeMail<'_>) -> Result<(), MailError>;
}

pub struct Mailer {
    config: EmailConfig,
    from: Mailbox,
    password: Option<Zeroizing<String>>,
}

impl Mailer {
    /// Checks the settings and reads the SMTP password, which must be in a
    /// file nobody but its owner can read.
    pub fn new(config: &EmailConfig) -> Result<Mailer, MailError> {
        let from: Mailbox = config.from.parse().map_err(|err| fail("from", err))?;
        let password = match &config.password_file {
            Some(path) => Some(read_secret_file(path)?),
            None => None,
        };
        Ok(Mailer {
            config: config.clone(),
            from,
            password,
        })
    }

    fn build(&self, to: &Address, mail: &CodeMail<'_>) -> Result<Message, MailError> {
        Message::builder()
            .from(self.from.clone())
            .to(Mailbox::new(None, to.clone()))
            .subject(mail.subject())
            .date_now()
            .message_id(None)
            .header(ContentType::TEXT_PLAIN)
            .body(mail.body())
            .map_err(|err| fail("building the mail", err))
    }
}

impl MailSink for Mailer {
    fn send(&self, to: &Address, mail: &CodeMail<'_>) -> Result<(), MailError> {
        let message = self.build(to, mail)?;
        match self.config.transport {
            MailTransport::Smtp => self.send_smtp(&message),
            MailTransport::Sendmail => self.send_sendmail(&message, to),
        }
    }
}

impl Mailer {
    fn send_smtp(&self, message: &Message) -> Result<(), MailError> {
        let host = self.config.host.as_deref().unwrap_or("localhost");
        let builder = match self.config.tls {
            MailTls::Starttls => SmtpTransport::starttls_relay(host).map_err(|e| fail(host, e))?,
            MailTls::Tls => SmtpTransport::relay(host).map_err(|e| fail(host, e))?,
            MailTls::None => SmtpTransport::builder_dangerous(host),
        };
        let mut builder = builder
            .port(self.config.port())
            .timeout(Some(self.config.timeout));
        if let (Some(user), Some(password)) = (&self.config.user, &self.password) {
            builder = builder.credentials(Credentials::new(user.clone(), password.to_string()));
        }
        let server = format!("SMTP server {host}:{}", self.config.port());
        builder
            .build()
            .send(message)
            .map(drop)
            .map_err(|err| fail(&server, err))
    }

    /// Runs `path -i -f FROM -- TO` with the message on its stdin, killed
    /// if it has not finished within the timeout.
    fn send_sendmail(&self, message: &Message, to: &Address) -> Result<(), MailError> {
        let path = &self.config.path;
        let what = path.display().to_string();
        // In a process group of its own, so that a timeout or a failure ends
        // whatever the program started too.
        let mut child = Command::new(path)
            .args(["-i", "-f", self.from.email.as_ref(), "--", to.as_ref()])
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| fail(&what, err))?;
        let deadline = Instant::now() + self.config.timeout;

        let written = child
            .stdin
            .take()
            .map(|mut stdin| stdin.write_all(&message.formatted()));
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => {
                    kill_group(child.id());
                    let _ = child.wait();
                    return Err(MailError(format!(
                        "{what} did not finish within {:?}",
                        self.config.timeout
                    )));
                }
                Err(err) => return Err(fail(&what, err)),
            }
        };
        if status.success() {
            if let Some(Err(err)) = written {
                return Err(fail(&what, err));
            }
            return Ok(());
        }
        // Nothing of the group may keep the pipe open and the read waiting.
        kill_group(child.id());
        let mut stderr = String::new();
        if let Some(pipe) = child.stderr.take() {
            let _ = pipe.take(512).read_to_string(&mut stderr);
        }
        Err(fail(&format!("{what} failed ({status})"), stderr.trim()))
    }
}

fn kill_group(leader: u32) {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;

    if let Ok(pid) = i32::try_from(leader) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// A new 8-digit code from the OS random source; leading zeros allowed.
pub fn new_code() -> Result<Zeroizing<String>, MailError> {
    // Below 42 * 10^8 every remainder mod 10^8 is equally likely.
    const LIMIT: u32 = 4_200_000_000;
    for _ in 0..16 {
        let mut bytes = [0u8; 4];
        getrandom::fill(&mut bytes).map_err(|err| fail("randomness", err))?;
        let value = u32::from_le_bytes(bytes);
        if value < LIMIT {
            return Ok(Zeroizing::new(format!("{:08}", value % 100_000_000)));
        }
    }
    Err(MailError("the OS random source keeps failing".into()))
}

/// A file that holds a credential: refused when anybody may read it.
/// Owner- or group-readable (`root:_smartsign 0640`) is fine.
pub fn read_secret_file(path: &Path) -> Result<Zeroizing<String>, MailError> {
    let what = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|err| fail(&what, err))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        return Err(MailError(format!(
            "{what} holds a secret but everybody may read it (mode {mode:o}): chmod o= it"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|err| {
        let hint = if err.kind() == std::io::ErrorKind::PermissionDenied {
            " (give it to smartsignd's user or group, e.g. chgrp _smartsign, mode 0640)"
        } else {
            ""
        };
        fail(&what, format!("{err}{hint}"))
    })?;
    let text = Zeroizing::new(text);
    Ok(Zeroizing::new(
        text.trim_end_matches(['\r', '\n']).to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail<'a>(user: &'a str, host: &'a str, rhost: Option<&'a str>) -> CodeMail<'a> {
        CodeMail {
            user,
            host,
            code: "01234567",
            purpose: Purpose::Login {
                service: "sshd",
                rhost,
            },
            sent: 1_800_000_000,
            expires: 1_800_000_600,
        }
    }

    #[test]
    fn codes_are_eight_digits_and_vary() {
        let codes: Vec<String> = (0..50).map(|_| new_code().unwrap().to_string()).collect();
        assert!(
            codes
                .iter()
                .all(|c| c.len() == 8 && c.bytes().all(|b| b.is_ascii_digit()))
        );
        let distinct: std::collections::HashSet<_> = codes.iter().collect();
        assert!(distinct.len() > 45);
    }

    #[test]
    fn masking() {
        assert_eq!(mask("alice@example.org"), "a****@example.org");
        assert_eq!(mask("a@b.c"), "a****@b.c");
        assert_eq!(mask("\"odd@local\"@example.org"), "\"****@example.org");
        assert_eq!(mask("élodie@exemple.fr"), "é****@exemple.fr");
        assert_eq!(mask("nonsense"), "****");
    }

    #[test]
    fn addresses() {
        assert!(check_address("alice@example.org").is_ok());
        for bad in [
            "alice",
            "alice@example.org\r\nBcc: evil@example.net",
            "alice@example.org\nX: y",
            "<alice@example.org>",
            "alice@exa mple.org",
            &format!("{}@example.org", "a".repeat(250)),
        ] {
            assert!(check_address(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_mail_says_what_and_when_and_holds_no_link() {
        let mail = mail("alice", "web-3", Some("192.0.2.7"));
        assert_eq!(mail.subject(), "SmartSign code for alice on web-3");
        let body = mail.body();
        assert!(body.contains("Your SmartSign code is: 01234567"), "{body}");
        assert!(
            body.contains("  through:  sshd\n  from:     192.0.2.7"),
            "{body}"
        );
        assert!(
            body.lines().all(|l| l.len() <= 76),
            "short lines, no encoding: {body}"
        );
        assert!(
            body.contains("Expires:   2027-01-15 08:10:00 UTC (in 10 minutes)"),
            "{body}"
        );
        assert!(body.contains("If this was not you"));
        assert!(!body.contains("http"), "no links");
    }

    /// Nothing from a client can add a header: not through the subject
    /// (user, host), not through the body (service, rhost).
    #[test]
    fn no_header_injection_from_any_field() {
        let hostile = "x\r\nBcc: evil@example.net\r\n\r\nbody";
        let mail = mail(hostile, hostile, Some(hostile));
        let to: Address = "alice@example.org".parse().unwrap();
        let message = Message::builder()
            .from("SmartSign <ss@example.org>".parse().unwrap())
            .to(Mailbox::new(None, to))
            .subject(mail.subject())
            .date_now()
            .message_id(None)
            .header(ContentType::TEXT_PLAIN)
            .body(mail.body())
            .unwrap();
        let text = String::from_utf8(message.formatted()).unwrap();
        let (headers, _) = text.split_once("\r\n\r\n").unwrap();
        assert!(!headers.lines().any(|l| l.starts_with("Bcc")), "{headers}");
        for line in headers.lines() {
            assert!(
                [
                    "From:",
                    "To:",
                    "Subject:",
                    "Date:",
                    "Message-ID:",
                    "Content-Type:",
                    "Content-Transfer-Encoding:",
                    " ",
                    "\t"
                ]
                .iter()
                .any(|h| line.starts_with(h)),
                "unexpected header line {line:?}"
            );
        }
        assert!(!mail.body().contains('\r'));
    }

    #[test]
    fn a_password_file_others_can_read_is_refused() {
        let dir = std::env::temp_dir().join(format!("smartsign-mail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("password");
        std::fs::write(&file, "hunter2\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_secret_file(&file).unwrap_err();
        assert!(
            err.to_string().contains("everybody may read it (mode 644)"),
            "{err}"
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(
            read_secret_file(&file).unwrap().as_str(),
            "hunter2",
            "group-readable is fine"
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret_file(&file).unwrap().as_str(), "hunter2");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn settings(extra: &str) -> EmailConfig {
        let text =
            format!("[email]\nfrom = \"SmartSign <ss@example.org>\"\ntimeout = \"1s\"\n{extra}");
        crate::config::Config::parse(&text, Path::new("t.toml"))
            .unwrap()
            .email
            .unwrap()
    }

    fn try_send(mailer: &Mailer) -> (Result<(), MailError>, Duration) {
        let started = Instant::now();
        let to: Address = "alice@example.org".parse().unwrap();
        let result = mailer.send(&to, &mail("alice", "web-3", None));
        (result, started.elapsed())
    }

    /// A server that accepts and never says a word: the mail fails at the timeout.
    #[test]
    fn a_silent_smtp_server_times_out() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mailer = Mailer::new(&settings(&format!(
            "transport = \"smtp\"\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n"
        )))
        .unwrap();
        let (result, took) = try_send(&mailer);
        assert!(result.is_err());
        assert!(took < Duration::from_secs(4), "took {took:?}");
        drop(listener);
    }

    /// A sendmail that hangs is killed at the timeout.
    #[test]
    fn a_hanging_sendmail_is_killed() {
        let dir = std::env::temp_dir().join(format!("smartsign-sendmail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("sendmail");
        std::fs::write(&script, "#!/bin/sh\nexec sleep 30\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mailer = Mailer::new(&settings(&format!(
            "transport = \"sendmail\"\npath = {script:?}\n"
        )))
        .unwrap();
        let (result, took) = try_send(&mailer);
        let err = result.unwrap_err().to_string();
        assert!(err.contains("did not finish within 1s"), "{err}");
        assert!(took < Duration::from_secs(3), "took {took:?}");

        std::fs::write(
            &script,
            "#!/bin/sh\nsleep 30 &\necho 'no such user' >&2\nexit 67\n",
        )
        .unwrap();
        let started = Instant::now();
        let err = try_send(&mailer).0.unwrap_err().to_string();
        assert!(
            err.contains("exit status: 67") && err.contains("no such user"),
            "{err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "a child left behind held the pipe"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
