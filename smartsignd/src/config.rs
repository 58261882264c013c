//! `/etc/smartsign/smartsign.toml`: parsed strictly, with the line of any error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub const DEFAULT_CONFIG: &str = "/etc/smartsign/smartsign.toml";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where smartsignd listens.
    #[serde(default = "default_socket", deserialize_with = "absolute_path")]
    pub socket: PathBuf,
    /// Holds the SQLite store; created 0700.
    #[serde(default = "default_state_dir", deserialize_with = "absolute_path")]
    pub state_dir: PathBuf,
    /// What the PAM module does when SmartSign cannot decide (smartsignd
    /// down or failing), unless its `failmode=` argument says otherwise.
    /// The module reads this key itself, since it matters most when the
    /// daemon is not running.
    #[serde(default)]
    pub failmode: Failmode,
    #[serde(default)]
    pub totp: TotpConfig,
    #[serde(default)]
    pub lockout: LockoutConfig,
    #[serde(default)]
    pub policy: PolicyConfig,
    /// Emergency codes by email; off when the table is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailConfig>,
    /// Approval on the phone through an ntfy relay; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<PushConfig>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Failmode {
    /// Refuse the login.
    #[default]
    Secure,
    /// Leave the decision to the rest of the PAM stack (logged loudly).
    Safe,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// The ntfy server: `https://ntfy.sh` or a self-hosted one. Plain
    /// `http://` only for a relay on this host.
    #[serde(deserialize_with = "relay_url")]
    pub server: String,
    /// A file holding an ntfy access token (`tk_...`), readable by
    /// smartsignd alone; sent as a bearer token on publish and subscribe.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "some_absolute_path"
    )]
    pub token_file: Option<PathBuf>,
    /// The topic the phones' answers come back on. Taps carry no
    /// credentials, so everybody must be able to write to it. Made at
    /// random and kept in the store when not given.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "some_topic"
    )]
    pub response_topic: Option<String>,
    /// How long a login waits for the tap.
    #[serde(default = "default_push_timeout", with = "duration")]
    pub timeout: Duration,
    /// PAM services that push without asking first and wait for the tap,
    /// such as greeters that show one prompt at a time.
    #[serde(default)]
    pub autopush: Vec<String>,
    /// Pushes per account per hour, against push fatigue.
    #[serde(
        default = "default_pushes_per_hour",
        deserialize_with = "pushes_per_hour"
    )]
    pub max_per_hour: u32,
}

fn default_push_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_pushes_per_hour() -> u32 {
    10
}

fn pushes_per_hour<'de, D: Deserializer<'de>>(de: D) -> Result<u32, D::Error> {
    ranged(de, 1, 100, "max_per_hour is from 1 to 100")
}

/// An http(s) URL with a host and nothing after the path; kept without a
/// trailing slash.
fn relay_url<'de, D: Deserializer<'de>>(de: D) -> Result<String, D::Error> {
    let text = String::deserialize(de)?;
    check_relay_url(&text).map_err(serde::de::Error::custom)
}

/// A host name or address that is this host.
fn is_this_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare == "localhost"
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub fn check_relay_url(text: &str) -> Result<String, String> {
    let bad = |why: &str| format!("{text:?} is not a relay URL such as \"https://ntfy.sh\": {why}");
    let uri: ureq::http::Uri = text.parse().map_err(|err| bad(&format!("{err}")))?;
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    if uri.query().is_some() || text.contains('#') || text.contains('@') {
        return Err(bad("no user, query or fragment"));
    }
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") => {
            if !is_this_host(host) {
                return Err(bad("plain http only for a relay on this host; use https"));
            }
        }
        _ => return Err(bad("the scheme is https (or http on this host)")),
    }
    Ok(text.trim_end_matches('/').to_owned())
}

fn some_topic<'de, D: Deserializer<'de>>(de: D) -> Result<Option<String>, D::Error> {
    let text = String::deserialize(de)?;
    let ok = (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(Some(text))
    } else {
        Err(serde::de::Error::custom(format!(
            "{text:?} is not an ntfy topic: 1 to 64 letters, digits, - and _"
        )))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// The From header, such as `SmartSign <smartsign@web-3.example.org>`.
    #[serde(deserialize_with = "mailbox")]
    pub from: String,
    pub transport: MailTransport,
    /// How long an emailed code is good for.
    #[serde(default = "default_code_ttl", with = "duration")]
    pub code_ttl: Duration,
    /// Mails per user per hour, codes for logins and for confirming an address.
    #[serde(default = "default_max_per_hour", deserialize_with = "max_per_hour")]
    pub max_per_hour: u32,
    /// The bound on handing one mail to the SMTP server or sendmail.
    #[serde(default = "default_mail_timeout", with = "duration")]
    pub timeout: Duration,
    /// SMTP: the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// SMTP: 587 for starttls, 465 for tls, 25 for none, unless given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: MailTls,
    /// SMTP: the user name to log in with; needs `password_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// SMTP: a file holding the password, readable by smartsignd alone.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "some_absolute_path"
    )]
    pub password_file: Option<PathBuf>,
    /// sendmail: the program.
    #[serde(default = "default_sendmail", deserialize_with = "absolute_path")]
    pub path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MailTransport {
    Smtp,
    Sendmail,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MailTls {
    /// Plain connection upgraded with STARTTLS; refused if the server cannot.
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS).
    Tls,
    /// No encryption: only for a relay on this host.
    None,
}

impl EmailConfig {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            MailTls::Starttls => 587,
            MailTls::Tls => 465,
            MailTls::None => 25,
        })
    }
}

fn default_code_ttl() -> Duration {
    Duration::from_secs(10 * 60)
}

fn default_max_per_hour() -> u32 {
    5
}

fn default_mail_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_sendmail() -> PathBuf {
    PathBuf::from("/usr/sbin/sendmail")
}

fn mailbox<'de, D: Deserializer<'de>>(de: D) -> Result<String, D::Error> {
    let text = String::deserialize(de)?;
    match text.parse::<lettre::message::Mailbox>() {
        Ok(_) => Ok(text),
        Err(err) => Err(serde::de::Error::custom(format!(
            "{text:?} is not a mail address such as \"SmartSign <smartsign@example.org>\": {err}"
        ))),
    }
}

fn max_per_hour<'de, D: Deserializer<'de>>(de: D) -> Result<u32, D::Error> {
    ranged(de, 1, 100, "max_per_hour is from 1 to 100")
}

fn some_absolute_path<'de, D: Deserializer<'de>>(de: D) -> Result<Option<PathBuf>, D::Error> {
    absolute_path(de).map(Some)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TotpConfig {
    /// 30-second steps accepted either side of now, for clock drift.
    #[serde(default = "default_skew", deserialize_with = "skew")]
    pub skew: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockoutConfig {
    /// Failed codes within `window` that lock the account.
    #[serde(default = "default_max_failures", deserialize_with = "max_failures")]
    pub max_failures: u32,
    /// How far back failures count, and how long a lockout lasts.
    #[serde(default = "default_window", with = "duration")]
    pub window: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            socket: default_socket(),
            state_dir: default_state_dir(),
            failmode: Failmode::Secure,
            totp: TotpConfig::default(),
            lockout: LockoutConfig::default(),
            policy: PolicyConfig::default(),
            email: None,
            push: None,
        }
    }
}

/// `[policy]`: who needs SmartSign, and from when.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Until then users without a phone may log in without one: a date
    /// (the start of that day in the host's time zone) or an RFC 3339 time.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "deadline"
    )]
    pub skip_until: Option<String>,
    #[serde(default)]
    pub unenrolled: crate::policy::Unenrolled,
    /// Only members of these groups need SmartSign (empty: everybody).
    #[serde(default)]
    pub require_groups: Vec<String>,
    /// Members of these groups never need it.
    #[serde(default)]
    pub exempt_groups: Vec<String>,
    /// Logins from these networks need no second factor.
    #[serde(default, deserialize_with = "networks")]
    pub trusted_networks: Vec<String>,
    /// A login with no remote host (console, local su) counts as trusted.
    #[serde(default)]
    pub trust_local: bool,
    /// Users may turn SmartSign off for themselves (`smartsign disable`).
    #[serde(default)]
    pub user_may_disable: bool,
    /// A confirmed address alone enrolls an account (emailed codes at
    /// every login); otherwise email is a fallback beside a phone.
    #[serde(default)]
    pub email_only: bool,
}

/// The instant a `skip_until` value names, in Unix seconds, and how to say it.
pub fn resolve_deadline(text: &str) -> Result<(i64, String), String> {
    use jiff::{Timestamp, civil::Date, tz::TimeZone};

    // A bare date; Date's parser would also take the date out of a full time.
    let date_only = text.len() == 10 && !text.contains(['T', 't', ' ']);
    if let Some(date) = date_only.then(|| text.parse::<Date>().ok()).flatten() {
        let zoned = date
            .to_zoned_datetime(TimeZone::system())
            .map_err(|err| format!("{text:?}: {err}"))?;
        let said = format!("{}", date.strftime("%-d %B %Y"));
        return Ok((zoned.timestamp().as_second(), said));
    }
    let instant: Timestamp = text.parse().map_err(|_| {
        format!(
            "{text:?} is not a date (2027-04-01) or an RFC 3339 time (2027-04-01T08:00:00+02:00)"
        )
    })?;
    let local = instant.to_zoned_datetime(TimeZone::system());
    Ok((
        instant.as_second(),
        format!("{}", local.strftime("%-d %B %Y %H:%M %Z")),
    ))
}

fn deadline<'de, D: Deserializer<'de>>(de: D) -> Result<Option<String>, D::Error> {
    let text = String::deserialize(de)?;
    resolve_deadline(&text).map_err(serde::de::Error::custom)?;
    Ok(Some(text))
}

fn networks<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<String>, D::Error> {
    let list = Vec::<String>::deserialize(de)?;
    for net in &list {
        net.parse::<ipnet::IpNet>().map_err(|_| {
            serde::de::Error::custom(format!(
                "{net:?} is not a network such as \"10.0.0.0/8\" or \"fd00::/8\""
            ))
        })?;
    }
    Ok(list)
}

impl Default for TotpConfig {
    fn default() -> Self {
        Self {
            skew: default_skew(),
        }
    }
}

impl Default for LockoutConfig {
    fn default() -> Self {
        Self {
            max_failures: default_max_failures(),
            window: default_window(),
        }
    }
}

fn default_socket() -> PathBuf {
    PathBuf::from(smartsign_proto::DEFAULT_SOCKET)
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/smartsign")
}

fn default_skew() -> u8 {
    1
}

fn default_max_failures() -> u32 {
    5
}

fn default_window() -> Duration {
    Duration::from_secs(15 * 60)
}

/// A configuration file that cannot be used, with where and why.
#[derive(Debug)]
pub struct ConfigError {
    pub path: PathBuf,
    /// 1-based; `None` when the file could not be read at all.
    pub line: Option<usize>,
    /// The key at fault, when there is one.
    pub key: Option<String>,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
            path: path.to_owned(),
            line: None,
            key: None,
            message: format!("cannot read: {err}"),
        })?;
        Config::parse(&text, path)
    }

    /// Loads the file and resolves its policy: what the daemon starts with.
    pub fn load_with_policy(path: &Path) -> Result<(Config, crate::policy::Policy), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
            path: path.to_owned(),
            line: None,
            key: None,
            message: format!("cannot read: {err}"),
        })?;
        let config = Config::parse(&text, path)?;
        let policy = config.resolve_policy(&text, path)?;
        Ok((config, policy))
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = Config::parse_toml(text, path)?;
        config.check(text, path)?;
        Ok(config)
    }

    /// Rules that span keys, after each key has parsed.
    fn check(&self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let error = |key: &str, message: String| ConfigError {
            path: path.to_owned(),
            line: line_of(text, key),
            key: Some(key.to_owned()),
            message,
        };
        if let Some(push) = &self.push {
            if push.timeout > Duration::from_secs(300) {
                return Err(error("timeout", "a push waits at most 5 minutes".into()));
            }
            if let Some(bad) = push.autopush.iter().find(|s| s.is_empty() || s.len() > 64) {
                return Err(error(
                    "autopush",
                    format!("{bad:?} is not a PAM service name"),
                ));
            }
            if push.autopush.iter().any(|s| s == "sshd") {
                return Err(error(
                    "autopush",
                    "not for sshd: it shows the number only with the next prompt, \
                     so the user would not see it in time"
                        .into(),
                ));
            }
        }
        let Some(email) = &self.email else {
            if self.policy.email_only {
                return Err(error(
                    "email_only",
                    "email_only needs an [email] table: codes are mailed at every login".into(),
                ));
            }
            return Ok(());
        };
        if email.transport == MailTransport::Smtp && email.host.is_none() {
            return Err(error("transport", "transport = \"smtp\" needs host".into()));
        }
        if email.user.is_some() != email.password_file.is_some() {
            return Err(error("user", "user and password_file go together".into()));
        }
        if email.transport == MailTransport::Smtp
            && email.tls == MailTls::None
            && !email.host.as_deref().is_some_and(is_this_host)
        {
            return Err(error(
                "tls",
                "tls = \"none\" only for a mail server on this host (localhost, 127.0.0.1, ::1)"
                    .into(),
            ));
        }
        if email.user.is_some() && email.tls == MailTls::None {
            return Err(error(
                "tls",
                "a password is never sent without TLS: use starttls or tls".into(),
            ));
        }
        if email.timeout > Duration::from_secs(60) {
            return Err(error(
                "timeout",
                "the mail timeout is at most 60 seconds".into(),
            ));
        }
        if email.code_ttl > Duration::from_secs(24 * 3600) {
            return Err(error(
                "code_ttl",
                "an emailed code lives at most a day".into(),
            ));
        }
        Ok(())
    }

    fn parse_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|err| {
            let span = err.span();
            let line = span
                .as_ref()
                .map(|span| text[..span.start].matches('\n').count() + 1);
            let key = span.and_then(|span| key_at(text, span.start));
            ConfigError {
                path: path.to_owned(),
                line,
                key,
                message: err.message().trim().to_owned(),
            }
        })
    }

    /// The policy with group names looked up (through NSS) and the deadline
    /// resolved. A group that does not exist is an error, never a silent
    /// exemption of everybody (or of nobody).
    pub fn resolve_policy(
        &self,
        text: &str,
        path: &Path,
    ) -> Result<crate::policy::Policy, ConfigError> {
        let policy = &self.policy;
        let error = |key: &str, message: String| ConfigError {
            path: path.to_owned(),
            line: line_of(text, key),
            key: Some(key.to_owned()),
            message,
        };
        let gids = |key: &str, names: &[String]| -> Result<Vec<(String, u32)>, ConfigError> {
            names
                .iter()
                .map(|name| match nix::unistd::Group::from_name(name) {
                    Ok(Some(group)) => Ok((name.clone(), group.gid.as_raw())),
                    _ => Err(error(key, format!("group {name:?} does not exist"))),
                })
                .collect()
        };
        let skip_until = match &policy.skip_until {
            Some(text) => Some(resolve_deadline(text).map_err(|why| error("skip_until", why))?),
            None => None,
        };
        Ok(crate::policy::Policy {
            skip_until,
            unenrolled: policy.unenrolled,
            require_groups: gids("require_groups", &policy.require_groups)?,
            exempt_groups: gids("exempt_groups", &policy.exempt_groups)?,
            trusted_networks: policy
                .trusted_networks
                .iter()
                .filter_map(|n| n.parse().ok())
                .collect(),
            trust_local: policy.trust_local,
            user_may_disable: policy.user_may_disable,
            email_only: policy.email_only,
        })
    }

    /// The effective configuration, defaults filled in, as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|err| format!("# cannot print: {err}\n"))
    }
}

/// The line on which `key` is set, for errors found after parsing.
fn line_of(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            let line = line.trim_start();
            line.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|index| index + 1)
}

/// The key on the line holding byte `offset`: `name` in `name = value`, or
/// the table name of a `[table]` line.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?.trim();
    let key = match line.strip_prefix('[') {
        Some(table) => table.trim_end_matches(']'),
        None => line.split('=').next()?,
    };
    let key = key.trim().trim_matches('"');
    (!key.is_empty()).then(|| key.to_owned())
}

/// A whole number within `low..=high`; `what` says so when it is not.
fn ranged<'de, D: Deserializer<'de>, T: TryFrom<i64>>(
    de: D,
    low: i64,
    high: i64,
    what: &str,
) -> Result<T, D::Error> {
    let value = i64::deserialize(de)?;
    (low..=high)
        .contains(&value)
        .then(|| T::try_from(value).ok())
        .flatten()
        .ok_or_else(|| serde::de::Error::custom(format!("{what}, not {value}")))
}

fn absolute_path<'de, D: Deserializer<'de>>(de: D) -> Result<PathBuf, D::Error> {
    let path = PathBuf::deserialize(de)?;
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(serde::de::Error::custom(format!(
            "{} is not an absolute path",
            path.display()
        )))
    }
}

fn skew<'de, D: Deserializer<'de>>(de: D) -> Result<u8, D::Error> {
    ranged(
        de,
        0,
        10,
        "skew is a number of 30-second steps from 0 to 10",
    )
}

fn max_failures<'de, D: Deserializer<'de>>(de: D) -> Result<u32, D::Error> {
    ranged(de, 1, 1000, "max_failures is from 1 to 1000")
}

/// Durations are written as `"30s"`, `"15m"`, `"1h"`.
mod duration {
    use super::*;

    const MAX: Duration = Duration::from_secs(30 * 24 * 3600);

    pub fn serialize<S: Serializer>(value: &Duration, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(&humantime::format_duration(*value).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(de)?;
        let value = humantime::parse_duration(&text).map_err(|err| {
            serde::de::Error::custom(format!(
                "{text:?} is not a duration such as \"30s\" or \"15m\": {err}"
            ))
        })?;
        if value < Duration::from_secs(1) || value > MAX {
            return Err(serde::de::Error::custom(format!(
                "{text:?} is out of range: from 1 second to 30 days"
            )));
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/smartsign/smartsign.toml"))
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(
            config.socket,
            PathBuf::from("/run/smartsign/smartsignd.sock")
        );
        assert_eq!(config.state_dir, PathBuf::from("/var/lib/smartsign"));
        assert_eq!(config.totp.skew, 1);
        assert_eq!(config.lockout.max_failures, 5);
        assert_eq!(config.lockout.window, Duration::from_secs(900));
    }

    #[test]
    fn every_key() {
        let config = parse(
            "socket = \"/tmp/s.sock\"\nstate_dir = \"/tmp/state\"\nfailmode = \"safe\"\n\n\
             [totp]\nskew = 2\n\n[lockout]\nmax_failures = 3\nwindow = \"30s\"\n",
        )
        .unwrap();
        assert_eq!(config.socket, PathBuf::from("/tmp/s.sock"));
        assert_eq!(config.failmode, Failmode::Safe);
        assert_eq!(config.totp.skew, 2);
        assert_eq!(config.lockout.max_failures, 3);
        assert_eq!(config.lockout.window, Duration::from_secs(30));
    }

    #[test]
    fn effective_config_reparses_to_itself() {
        let config = parse("[lockout]\nwindow = \"90m\"\n").unwrap();
        let printed = config.to_toml();
        assert!(printed.contains("window = \"1h 30m\""), "{printed}");
        assert_eq!(parse(&printed).unwrap(), config);
    }

    #[test]
    fn errors_name_the_key_and_line() {
        let cases = [
            (
                "socket = \"/s\"\nsokcet = \"/t\"\n",
                2,
                "sokcet",
                "unknown field",
            ),
            (
                "[totp]\nskew = 1\n\n[lockout]\nwindow = \"soon\"\n",
                5,
                "window",
                "not a duration",
            ),
            (
                "[lockout]\nmax_failures = 0\n",
                2,
                "max_failures",
                "from 1 to 1000",
            ),
            ("[totp]\nskew = 99\n", 2, "skew", "from 0 to 10"),
            ("[totp]\nskew = \"one\"\n", 2, "skew", "invalid type"),
            ("state_dir = \"relative\"\n", 1, "state_dir", "absolute"),
            ("[lockout]\nwindow = \"0s\"\n", 2, "window", "out of range"),
            ("[push]\nserver = \"x\"\n", 2, "server", "not a relay URL"),
            (
                "[push]\nserver = \"http://ntfy.example.org\"\n",
                2,
                "server",
                "only for a relay on this host",
            ),
            (
                "[push]\nserver = \"https://ntfy.sh/?x=1\"\n",
                2,
                "server",
                "no user, query",
            ),
            (
                "[push]\nserver = \"https://ntfy.sh\"\ntimeout = \"10m\"\n",
                3,
                "timeout",
                "at most 5 minutes",
            ),
            (
                "[push]\nserver = \"https://ntfy.sh\"\nresponse_topic = \"a/b\"\n",
                3,
                "response_topic",
                "not an ntfy topic",
            ),
            ("[pusj]\nserver = \"x\"\n", 1, "pusj", "unknown field"),
            ("failmode = \"open\"\n", 1, "failmode", "unknown variant"),
        ];
        for (text, line, key, words) in cases {
            let err = parse(text).unwrap_err();
            assert_eq!(err.line, Some(line), "{text:?}: {err}");
            assert_eq!(err.key.as_deref(), Some(key), "{text:?}: {err}");
            assert!(err.to_string().contains(words), "{text:?}: {err}");
        }
    }

    #[test]
    fn push_settings_and_their_defaults() {
        let push = parse("[push]\nserver = \"https://ntfy.sh/\"\n")
            .unwrap()
            .push
            .unwrap();
        assert_eq!(push.server, "https://ntfy.sh");
        assert_eq!(push.timeout, Duration::from_secs(60));
        assert_eq!(push.max_per_hour, 10);
        assert!(push.autopush.is_empty() && push.token_file.is_none());
        for local in [
            "http://127.0.0.1:8080",
            "http://[::1]:80",
            "http://localhost",
        ] {
            let text = format!("[push]\nserver = \"{local}\"\n");
            assert!(parse(&text).is_ok(), "{local}");
        }
    }

    const EMAIL: &str = "[email]\nfrom = \"SmartSign <smartsign@example.org>\"\n";

    #[test]
    fn email_transports() {
        let smtp = parse(&format!(
            "{EMAIL}transport = \"smtp\"\nhost = \"mail.example.org\"\nuser = \"ss\"\n\
             password_file = \"/etc/smartsign/smtp-password\"\n"
        ))
        .unwrap();
        let email = smtp.email.unwrap();
        assert_eq!((email.tls, email.port()), (MailTls::Starttls, 587));
        assert_eq!(email.code_ttl, Duration::from_secs(600));
        assert_eq!(email.max_per_hour, 5);

        let sendmail = parse(&format!("{EMAIL}transport = \"sendmail\"\n")).unwrap();
        assert_eq!(
            sendmail.email.unwrap().path,
            PathBuf::from("/usr/sbin/sendmail")
        );
    }

    #[test]
    fn email_mistakes_name_the_key() {
        let cases = [
            (
                format!("{EMAIL}transport = \"smtp\"\n"),
                3,
                "transport",
                "needs host",
            ),
            (
                format!("{EMAIL}transport = \"pigeon\"\n"),
                3,
                "transport",
                "unknown variant",
            ),
            (
                format!("{EMAIL}transport = \"smtp\"\nhost = \"h\"\nuser = \"u\"\n"),
                5,
                "user",
                "go together",
            ),
            (
                format!(
                    "{EMAIL}transport = \"smtp\"\nhost = \"localhost\"\ntls = \"none\"\n\
                     user = \"u\"\npassword_file = \"/p\"\n"
                ),
                5,
                "tls",
                "never sent without TLS",
            ),
            (
                format!(
                    "{EMAIL}transport = \"smtp\"\nhost = \"mail.example.org\"\ntls = \"none\"\n"
                ),
                5,
                "tls",
                "only for a mail server on this host",
            ),
            (
                "[policy]\nemail_only = true\n".into(),
                2,
                "email_only",
                "needs an [email] table",
            ),
            (
                "[email]\nfrom = \"not an address\"\ntransport = \"sendmail\"\n".into(),
                2,
                "from",
                "not a mail address",
            ),
            (
                format!("{EMAIL}transport = \"sendmail\"\nmax_per_hour = 0\n"),
                4,
                "max_per_hour",
                "from 1 to 100",
            ),
        ];
        for (text, line, key, words) in cases {
            let err = parse(&text).unwrap_err();
            assert_eq!(
                (err.line, err.key.as_deref()),
                (Some(line), Some(key)),
                "{text}: {err}"
            );
            assert!(err.to_string().contains(words), "{text}: {err}");
        }
    }

    #[test]
    fn policy_keys() {
        let text = "[policy]\nskip_until = \"2027-04-01\"\nunenrolled = \"allow\"\n\
                    exempt_groups = [\"root\"]\ntrusted_networks = [\"10.0.0.0/8\", \"fd00::/8\"]\n";
        let config = parse(text).unwrap();
        let policy = config.resolve_policy(text, Path::new("t.toml")).unwrap();
        assert_eq!(policy.exempt_groups, [("root".to_owned(), 0)]);
        assert_eq!(policy.trusted_networks.len(), 2);
        let (_, said) = policy.skip_until.unwrap();
        assert_eq!(said, "1 April 2027");
        let (at, _) = resolve_deadline("2027-04-01T08:00:00+02:00").unwrap();
        assert_eq!(at, 1_806_559_200);
    }

    #[test]
    fn policy_mistakes_name_the_key() {
        for (text, line, key, words) in [
            (
                "[policy]\nskip_until = \"next spring\"\n",
                2,
                "skip_until",
                "not a date",
            ),
            (
                "[policy]\ntrusted_networks = [\"10.0.0.0/33\"]\n",
                2,
                "trusted_networks",
                "not a network",
            ),
            (
                "[policy]\nunenrolled = \"maybe\"\n",
                2,
                "unenrolled",
                "unknown variant",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert_eq!(
                (err.line, err.key.as_deref()),
                (Some(line), Some(key)),
                "{err}"
            );
            assert!(err.to_string().contains(words), "{err}");
        }
        let text = "[policy]\n\nexempt_groups = [\"no-such-group-here\"]\n";
        let err = parse(text)
            .unwrap()
            .resolve_policy(text, Path::new("t.toml"))
            .unwrap_err();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(3), Some("exempt_groups")),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("\"no-such-group-here\" does not exist"),
            "{err}"
        );
    }

    #[test]
    fn broken_toml_is_an_error_with_a_line() {
        let err = parse("socket = \"/s\"\n[lockout\n").unwrap_err();
        assert_eq!(err.line, Some(2), "{err}");
    }
}
