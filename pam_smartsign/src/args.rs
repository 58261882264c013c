//! Module arguments from the PAM stack line. A bad or unknown argument is
//! logged and ignored: a typo in /etc/pam.d must not lock everybody out.

use std::ffi::CStr;
use std::path::PathBuf;
use std::time::Duration;

use smartsign_proto::DEFAULT_SOCKET;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_TIMEOUT_SECS: u64 = 300;

/// What to do when SmartSign cannot decide (daemon down, slow or refusing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failmode {
    /// Refuse the login (`PAM_AUTHINFO_UNAVAIL`).
    Secure,
    /// Leave the decision to the rest of the stack (`PAM_IGNORE`).
    Safe,
}

/// Where the fail mode is read from when no `failmode=` argument is given.
pub const DEFAULT_CONFIG: &str = "/etc/smartsign/smartsign.toml";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub socket: PathBuf,
    /// `failmode=`; `None` leaves it to the configuration file.
    pub failmode: Option<Failmode>,
    /// The configuration file whose top-level `failmode` applies when no
    /// argument sets one.
    pub config: PathBuf,
    /// The bound on any single wait for the daemon.
    pub timeout: Duration,
    pub debug: bool,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_SOCKET),
            failmode: None,
            config: PathBuf::from(DEFAULT_CONFIG),
            timeout: DEFAULT_TIMEOUT,
            debug: false,
        }
    }
}

impl Args {
    /// The fail mode and where it came from: the argument, else the
    /// configuration file's top-level `failmode`, else secure.
    pub fn resolve_failmode(&self) -> (Failmode, String) {
        if let Some(mode) = self.failmode {
            return (mode, "the module argument".into());
        }
        let path = self.config.display();
        match std::fs::read_to_string(&self.config) {
            Ok(text) => match failmode_in(&text) {
                Ok(Some(mode)) => (mode, format!("{path}")),
                Ok(None) => (Failmode::Secure, "the default".into()),
                Err(why) => (
                    Failmode::Secure,
                    format!("the default, as {path} does not say it clearly: {why}"),
                ),
            },
            Err(err) => (
                Failmode::Secure,
                format!("the default, as {path} cannot be read: {err}"),
            ),
        }
    }

    /// Parses `argv`; `warn` receives one message for each argument ignored.
    pub fn parse(argv: &[&CStr], warn: &mut dyn FnMut(&str)) -> Args {
        let mut args = Args::default();
        for raw in argv {
            let Ok(arg) = raw.to_str() else {
                warn("ignoring an argument that is not UTF-8");
                continue;
            };
            let (key, value) = match arg.split_once('=') {
                Some((key, value)) => (key, Some(value)),
                None => (arg, None),
            };
            match (key, value) {
                ("debug", None) => args.debug = true,
                ("socket", Some(path)) if path.starts_with('/') => args.socket = path.into(),
                ("failmode", Some("secure")) => args.failmode = Some(Failmode::Secure),
                ("failmode", Some("safe")) => args.failmode = Some(Failmode::Safe),
                ("config", Some(path)) if path.starts_with('/') => args.config = path.into(),
                ("config", _) => warn(&format!("ignoring {arg:?}: config needs an absolute path")),
                ("timeout", Some(secs)) => match secs.parse::<u64>() {
                    Ok(secs @ 1..=MAX_TIMEOUT_SECS) => args.timeout = Duration::from_secs(secs),
                    _ => warn(&format!(
                        "ignoring {arg:?}: timeout is whole seconds from 1 to {MAX_TIMEOUT_SECS}"
                    )),
                },
                ("socket", _) => warn(&format!("ignoring {arg:?}: socket needs an absolute path")),
                ("failmode", _) => warn(&format!("ignoring {arg:?}: failmode is secure or safe")),
                _ => warn(&format!("ignoring unknown argument {arg:?}")),
            }
        }
        args
    }
}

/// The top-level `failmode` of a smartsign.toml, read without a TOML
/// parser (this runs inside sshd): `failmode = "safe"` or `"secure"` on a
/// line of its own before the first table. Anything else that names the
/// key is an error, which leaves the default.
fn failmode_in(text: &str) -> Result<Option<Failmode>, String> {
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            break;
        }
        let Some(rest) = line.strip_prefix("failmode") else {
            continue;
        };
        let Some(value) = rest.trim_start().strip_prefix('=') else {
            if rest.starts_with([' ', '\t', '=']) {
                return Err(format!("{line:?} is not failmode = \"secure\" or \"safe\""));
            }
            continue;
        };
        let value = value.split('#').next().unwrap_or_default().trim();
        return match value {
            "\"secure\"" | "'secure'" => Ok(Some(Failmode::Secure)),
            "\"safe\"" | "'safe'" => Ok(Some(Failmode::Safe)),
            _ => Err(format!("{line:?} is not failmode = \"secure\" or \"safe\"")),
        };
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    fn parse(words: &[&str]) -> (Args, Vec<String>) {
        let owned: Vec<CString> = words.iter().map(|w| CString::new(*w).unwrap()).collect();
        let argv: Vec<&CStr> = owned.iter().map(|c| c.as_c_str()).collect();
        let mut warnings = Vec::new();
        let args = Args::parse(&argv, &mut |w| warnings.push(w.to_owned()));
        (args, warnings)
    }

    #[test]
    fn defaults() {
        let (args, warnings) = parse(&[]);
        assert_eq!(args, Args::default());
        assert_eq!(args.socket, PathBuf::from("/run/smartsign/smartsignd.sock"));
        assert_eq!(args.failmode, None);
        assert_eq!(args.config, PathBuf::from("/etc/smartsign/smartsign.toml"));
        assert_eq!(args.timeout, Duration::from_secs(10));
        assert!(warnings.is_empty());
    }

    #[test]
    fn every_argument() {
        let (args, warnings) = parse(&[
            "socket=/tmp/s.sock",
            "failmode=safe",
            "timeout=3",
            "debug",
            "config=/c.toml",
        ]);
        assert_eq!(args.socket, PathBuf::from("/tmp/s.sock"));
        assert_eq!(args.failmode, Some(Failmode::Safe));
        assert_eq!(args.config, PathBuf::from("/c.toml"));
        assert_eq!(args.timeout, Duration::from_secs(3));
        assert!(args.debug);
        assert!(warnings.is_empty());
    }

    #[test]
    fn bad_arguments_are_ignored_with_a_warning() {
        let (args, warnings) = parse(&[
            "nullok",
            "failmode=open",
            "timeout=0",
            "timeout=-5",
            "timeout=99999999999999999999",
            "socket=relative.sock",
            "debug=yes",
            "config=c.toml",
        ]);
        assert_eq!(args, Args::default());
        assert_eq!(warnings.len(), 8, "{warnings:?}");
        assert!(warnings[0].contains("nullok"));
    }

    #[test]
    fn failmode_from_the_configuration_file() {
        let cases: &[(&str, Result<Option<Failmode>, ()>)] = &[
            ("", Ok(None)),
            ("failmode = \"safe\"\n", Ok(Some(Failmode::Safe))),
            (
                "# comment\nsocket = \"/s\"\nfailmode='secure' # why\n",
                Ok(Some(Failmode::Secure)),
            ),
            ("failmode=\"safe\"", Ok(Some(Failmode::Safe))),
            ("#failmode = \"safe\"\n", Ok(None)),
            ("[policy]\nfailmode = \"safe\"\n", Ok(None)),
            ("failmodes = \"safe\"\n", Ok(None)),
            ("failmode = \"open\"\n", Err(())),
            ("failmode = safe\n", Err(())),
            ("failmode = \"safe\" \"secure\"\n", Err(())),
            ("failmode \"safe\"\n", Err(())),
        ];
        for (text, expected) in cases {
            let got = failmode_in(text).map_err(|_| ());
            assert_eq!(&got, expected, "{text:?}");
        }
    }

    #[test]
    fn the_argument_wins_and_an_unreadable_file_is_secure() {
        let dir = std::env::temp_dir().join(format!("pam-smartsign-args-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("smartsign.toml");
        std::fs::write(&config, "failmode = \"safe\"\n").unwrap();
        let mut args = Args {
            config: config.clone(),
            ..Args::default()
        };
        assert_eq!(args.resolve_failmode().0, Failmode::Safe);
        args.failmode = Some(Failmode::Secure);
        assert_eq!(args.resolve_failmode().0, Failmode::Secure);
        args.failmode = None;
        args.config = dir.join("missing.toml");
        let (mode, why) = args.resolve_failmode();
        assert_eq!(mode, Failmode::Secure);
        assert!(why.contains("cannot be read"), "{why}");
        std::fs::write(&config, "failmode = \"open\"\n").unwrap();
        args.config = config;
        let (mode, why) = args.resolve_failmode();
        assert_eq!(mode, Failmode::Secure);
        assert!(why.contains("does not say it clearly"), "{why}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
