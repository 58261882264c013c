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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub socket: PathBuf,
    pub failmode: Failmode,
    /// The bound on any single wait for the daemon.
    pub timeout: Duration,
    pub debug: bool,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_SOCKET),
            failmode: Failmode::Secure,
            timeout: DEFAULT_TIMEOUT,
            debug: false,
        }
    }
}

impl Args {
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
                ("failmode", Some("secure")) => args.failmode = Failmode::Secure,
                ("failmode", Some("safe")) => args.failmode = Failmode::Safe,
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
        assert_eq!(args.failmode, Failmode::Secure);
        assert_eq!(args.timeout, Duration::from_secs(10));
        assert!(warnings.is_empty());
    }

    #[test]
    fn every_argument() {
        let (args, warnings) =
            parse(&["socket=/tmp/s.sock", "failmode=safe", "timeout=3", "debug"]);
        assert_eq!(args.socket, PathBuf::from("/tmp/s.sock"));
        assert_eq!(args.failmode, Failmode::Safe);
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
        ]);
        assert_eq!(args, Args::default());
        assert_eq!(warnings.len(), 7, "{warnings:?}");
        assert!(warnings[0].contains("nullok"));
    }
}
