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
        match read_config(&self.config) {
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

/// The configuration file's text, if it is a regular file that only root
/// (or this process's own user) can change, read without waiting: a FIFO
/// there must not hang a login.
fn read_config(path: &std::path::Path) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

    const MAX: u64 = 1 << 20;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|err| err.to_string())?;
    let meta = file.metadata().map_err(|err| err.to_string())?;
    if !meta.is_file() {
        return Err("it is not a regular file".into());
    }
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    let me = unsafe { libc::geteuid() };
    if (meta.uid() != 0 && meta.uid() != me) || meta.mode() & 0o022 != 0 {
        return Err("others than root may change it".into());
    }
    let mut text = String::new();
    file.take(MAX)
        .read_to_string(&mut text)
        .map_err(|err| err.to_string())?;
    Ok(text)
}

/// The top-level `failmode` of a smartsign.toml, read without a TOML
/// parser (this runs inside sshd): `failmode = "safe"` or `"secure"` on a
/// line of its own before the first table, with spaces or tabs around the
/// `=` and an optional `# comment` after. Anything that might make that
/// line mean something else (a multi-line string before it, the key twice,
/// any other spelling of the line) is an error, which leaves the default.
fn failmode_in(text: &str) -> Result<Option<Failmode>, String> {
    let blank = |c: char| c == ' ' || c == '\t';
    let not_clear = |line: &str| format!("{line:?} is not failmode = \"secure\" or \"safe\"");
    let mut found = None;
    for line in text.lines() {
        let line = line.trim_matches(blank);
        if line.starts_with('[') {
            break;
        }
        if line.contains("\"\"\"") || line.contains("'''") {
            return Err("a multi-line string before the failmode line".into());
        }
        let Some(rest) = line.strip_prefix("failmode") else {
            continue;
        };
        if !rest.starts_with([' ', '\t', '=']) {
            // Another key (failmodes = ...), not ours.
            if rest.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                continue;
            }
            return Err(not_clear(line));
        }
        let value = rest
            .trim_start_matches(blank)
            .strip_prefix('=')
            .ok_or_else(|| not_clear(line))?
            .trim_start_matches(blank);
        // One quoted word, the same quote at both ends, nothing but a
        // comment after it.
        let quote = value
            .chars()
            .next()
            .filter(|c| *c == '"' || *c == '\'')
            .ok_or_else(|| not_clear(line))?;
        let inner = &value[1..];
        let end = inner.find(quote).ok_or_else(|| not_clear(line))?;
        let after = inner[end + 1..].trim_start_matches(blank);
        if !(after.is_empty() || after.starts_with('#')) {
            return Err(not_clear(line));
        }
        let mode = match &inner[..end] {
            "secure" => Failmode::Secure,
            "safe" => Failmode::Safe,
            _ => return Err(not_clear(line)),
        };
        if found.replace(mode).is_some() {
            return Err("failmode is set twice".into());
        }
    }
    Ok(found)
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
            // What a TOML reader would take otherwise, or not at all.
            (
                "s = '''x\nfailmode = \"safe\"\n'''\nfailmode = \"secure\"\n",
                Err(()),
            ),
            ("failmode = \"safe\"\nfailmode = \"secure\"\n", Err(())),
            ("failmode = \"safe\"\u{c}\n", Err(())),
            ("failmode\u{a0}= \"safe\"\n", Err(())),
            ("failmode = \"saf\\u0065\"\n", Err(())),
            ("failmode = \"safe'\n", Err(())),
            ("failmode = \"safe\"x\n", Err(())),
            ("failmode.x = \"safe\"\n", Err(())),
            ("failmode_x = \"safe\"\n", Ok(None)),
            (
                "\tfailmode\t=\t\"safe\"\t# ok\r\n",
                Ok(Some(Failmode::Safe)),
            ),
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
        std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
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

    #[test]
    fn a_fifo_or_a_file_others_may_change_is_not_believed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("pam-smartsign-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo.toml");
        let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o644) }, 0);
        let args = Args {
            config: fifo,
            ..Args::default()
        };
        let started = std::time::Instant::now();
        let (mode, why) = args.resolve_failmode();
        assert_eq!(mode, Failmode::Secure);
        assert!(why.contains("not a regular file"), "{why}");
        assert!(started.elapsed() < Duration::from_secs(1));

        let open = dir.join("open.toml");
        std::fs::write(&open, "failmode = \"safe\"\n").unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o666)).unwrap();
        let args = Args {
            config: open,
            ..Args::default()
        };
        let (mode, why) = args.resolve_failmode();
        assert_eq!(mode, Failmode::Secure);
        assert!(why.contains("others than root may change it"), "{why}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
