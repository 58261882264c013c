//! Real parts for end-to-end tests: system users, smartsignd, a loopback
//! sshd with its own PAM service, an OpenSSH client that answers prompts,
//! and oathtool as the phone. These need root: they add users and write
//! /etc/pam.d/smartsign-e2e-*. Everything started is stopped by its PID and
//! everything made is removed when its guard drops, also on failure.

#![allow(dead_code)]

pub mod ntfy;

use std::fs;
use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const SMARTSIGND: &str = env!("CARGO_BIN_EXE_smartsignd");
pub const SMARTSIGN: &str = env!("CARGO_BIN_EXE_smartsign");

/// useradd and userdel lock /etc/passwd; running them in parallel fails.
static ACCOUNTS: Mutex<()> = Mutex::new(());

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "end-to-end tests need root (they add users and start sshd); run the README's test command"
    );
}

/// The PAM module built by `cargo build`, next to this test's binary.
pub fn module_path() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let module = profile_dir.join("libpam_smartsign.so");
    assert!(
        module.exists(),
        "{} is missing: run `cargo build --workspace` first",
        module.display()
    );
    module
}

/// `program` run as `uid` (its own group, no others), as a logged-in user
/// or a screen locker would run it.
pub fn as_uid(uid: u32, program: &str) -> Command {
    let uid = uid.to_string();
    let mut command = Command::new("setpriv");
    command.args(["--reuid", &uid, "--regid", &uid, "--clear-groups", program]);
    command
}

pub fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A directory under /tmp that every user may traverse, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let path =
            std::env::temp_dir().join(format!("smartsign-e2e-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        TempDir(path)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A system user with a home and a password, deleted on drop.
pub struct TestUser {
    pub name: String,
    pub password: String,
    /// Whether deleting it removes a home (an alias shares its owner's).
    home: bool,
}

impl TestUser {
    pub fn new(name: &str) -> TestUser {
        let _lock = ACCOUNTS.lock().unwrap_or_else(|p| p.into_inner());
        let _ = Command::new("userdel")
            .args(["-r", name])
            .stderr(Stdio::null())
            .status();
        let status = Command::new("useradd")
            .args(["-m", "-s", "/bin/bash", name])
            .status()
            .unwrap();
        assert!(status.success(), "useradd {name}");
        let password = format!("pw-{name}-{}", std::process::id());
        let mut chpasswd = Command::new("chpasswd")
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(chpasswd.stdin.take().unwrap(), "{name}:{password}").unwrap();
        assert!(chpasswd.wait().unwrap().success(), "chpasswd {name}");
        TestUser {
            name: name.to_owned(),
            password,
            home: true,
        }
    }

    /// A second name for `of`'s account: same uid, group and home.
    pub fn alias(name: &str, of: &TestUser) -> TestUser {
        let _lock = ACCOUNTS.lock().unwrap_or_else(|p| p.into_inner());
        let _ = Command::new("userdel")
            .arg(name)
            .stderr(Stdio::null())
            .status();
        let entry = nix::unistd::User::from_name(&of.name).unwrap().unwrap();
        let status = Command::new("useradd")
            .args(["-o", "-M", "-s", "/bin/bash"])
            .args(["-u", &entry.uid.to_string(), "-g", &entry.gid.to_string()])
            .arg("-d")
            .arg(&entry.dir)
            .arg(name)
            .status()
            .unwrap();
        assert!(status.success(), "useradd {name}");
        let mut chpasswd = Command::new("chpasswd")
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(chpasswd.stdin.take().unwrap(), "{name}:{}", of.password).unwrap();
        assert!(chpasswd.wait().unwrap().success());
        TestUser {
            name: name.to_owned(),
            password: of.password.clone(),
            home: false,
        }
    }

    pub fn uid(&self) -> u32 {
        nix::unistd::User::from_name(&self.name)
            .unwrap()
            .unwrap()
            .uid
            .as_raw()
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _lock = ACCOUNTS.lock().unwrap_or_else(|p| p.into_inner());
        let _ = Command::new("userdel")
            .args(["-r", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// smartsignd on a throw-away config, state dir and socket.
pub struct Daemon {
    child: Option<Child>,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    /// `extra` is appended to the config file (TOML tables).
    pub fn start(dir: &TempDir, extra: &str) -> Daemon {
        let socket = dir.join("smartsignd.sock");
        let config = dir.join("smartsign.toml");
        let state = dir.join("state");
        fs::write(
            &config,
            format!("socket = {socket:?}\nstate_dir = {state:?}\n{extra}\n"),
        )
        .unwrap();
        let mut daemon = Daemon {
            child: None,
            config,
            socket,
            log: dir.join("smartsignd.log"),
        };
        daemon.restart();
        daemon
    }

    pub fn restart(&mut self) {
        self.stop();
        let log = fs::File::create(&self.log).unwrap();
        let child = Command::new(SMARTSIGND)
            .arg("--config")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let socket = self.socket.clone();
        wait_until("smartsignd's socket", Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = self.child.as_ref().expect("running").id();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap();
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Audit lines (without the prefix).
    pub fn audit(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|l| l.strip_prefix("smartsignd: audit: "))
            .map(str::to_owned)
            .collect()
    }

    /// Runs the smartsign command as root against this daemon.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(SMARTSIGN)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }

    /// Enrolls and confirms a phone for `user` the way a script would, and
    /// returns its secret. The confirming code is the previous step's, so
    /// the current code is still unused.
    pub fn enroll(&self, user: &str, phone: &str) -> String {
        self.enroll_push(user, phone).0
    }

    /// Like [`Daemon::enroll`]; also returns the phone's push subscription
    /// URL (empty without `[push]`).
    pub fn enroll_push(&self, user: &str, phone: &str) -> (String, String) {
        let out = self.cli(&["--user", user, "phone", "add", phone, "--json"]);
        assert!(
            out.status.success(),
            "phone add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let secret = json["secret"].as_str().unwrap().to_owned();
        assert!(
            json["otpauth_uri"]
                .as_str()
                .unwrap()
                .starts_with("otpauth://totp/SmartSign:")
        );
        let push_url = json["push_url"].as_str().unwrap_or_default().to_owned();
        let code = oathtool(&secret, "30 seconds ago");
        let out = self.cli(&["--user", user, "phone", "confirm", phone, &code]);
        assert!(
            out.status.success(),
            "phone confirm: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (secret, push_url)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.signal(nix::sys::signal::Signal::SIGCONT)
            }));
        }
        self.stop();
    }
}

/// The code an authenticator app shows, from an independent implementation.
/// `when` is a time for `oathtool -N`, such as "now" or "30 seconds ago".
pub fn oathtool(secret: &str, when: &str) -> String {
    let out = Command::new("oathtool")
        .args(["--totp", "-b", "-N", when, secret])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "oathtool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A real sshd on 127.0.0.1 whose PAM service is its own file in /etc/pam.d.
pub struct Sshd {
    child: Child,
    pub port: u16,
    pam_file: PathBuf,
    pub log: PathBuf,
}

impl Sshd {
    /// `module_args` follow the module path on its `auth` line.
    pub fn start(dir: &TempDir, name: &str, user: &str, module_args: &str) -> Sshd {
        let methods = "KbdInteractiveAuthentication yes\nPasswordAuthentication no\n\
                       AuthenticationMethods keyboard-interactive\n";
        Sshd::start_with(dir, name, user, module_args, methods)
    }

    /// Like [`Sshd::start`], with `methods` as the sshd_config lines that
    /// choose the authentication methods.
    pub fn start_with(
        dir: &TempDir,
        name: &str,
        user: &str,
        module_args: &str,
        methods: &str,
    ) -> Sshd {
        let service = format!("smartsign-e2e-{name}");
        let pam_file = PathBuf::from("/etc/pam.d").join(&service);
        fs::write(
            &pam_file,
            format!(
                "auth required pam_unix.so\n\
                 auth required {} {module_args}\n\
                 account required pam_unix.so\n\
                 session required pam_permit.so\n",
                module_path().display()
            ),
        )
        .unwrap();

        fs::create_dir_all("/run/sshd").unwrap();
        fs::set_permissions("/run/sshd", fs::Permissions::from_mode(0o755)).unwrap();
        let bin = dir.join("bin");
        fs::create_dir_all(&bin).unwrap();
        let exe = bin.join(&service);
        let _ = fs::remove_file(&exe);
        std::os::unix::fs::symlink("/usr/sbin/sshd", &exe).unwrap();
        let hostkey = dir.join("hostkey");
        if !hostkey.exists() {
            let status = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&hostkey)
                .status()
                .unwrap();
            assert!(status.success());
        }

        let port = free_port();
        let config = dir.join("sshd_config");
        fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\n\
                 UsePAM yes\n{methods}\
                 PubkeyAuthentication no\n\
                 AllowUsers {user}\nUseDNS no\nLogLevel VERBOSE\nPrintMotd no\n\
                 LoginGraceTime 60\n",
                hostkey.display(),
                dir.join("sshd.pid").display()
            ),
        )
        .unwrap();
        let check = Command::new(&exe)
            .arg("-t")
            .arg("-f")
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "sshd -t: {}",
            String::from_utf8_lossy(&check.stderr)
        );

        let log = dir.join("sshd.log");
        let child = Command::new(&exe)
            .args(["-D", "-f"])
            .arg(&config)
            .arg("-E")
            .arg(&log)
            .spawn()
            .unwrap();
        wait_until("sshd's port", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Sshd {
            child,
            port,
            pam_file,
            log,
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.pam_file);
    }
}

pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// What an ssh login did.
pub struct Login {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// Every prompt the client was shown, in order.
    pub prompts: Vec<String>,
    pub elapsed: Duration,
}

impl Login {
    pub fn logged_in_as(&self, user: &str) -> bool {
        self.status.success() && self.stdout.trim() == user
    }

    pub fn asked_for_code(&self) -> bool {
        self.prompts
            .iter()
            .any(|p| p.contains("SmartSign code for"))
    }
}

/// Logs in with OpenSSH's client and runs `id -un`. The askpass helper
/// answers the password prompt with `password` and the SmartSign prompt
/// with `code`, and records every prompt.
pub fn ssh(dir: &TempDir, sshd: &Sshd, user: &str, password: &str, code: &str) -> Login {
    ssh_with(dir, sshd, user, password, code, code, None)
}

/// Logs in like [`ssh`], where the first SmartSign prompt may offer email:
/// `first` answers that prompt ("1" to ask for an email), `code` any later
/// SmartSign prompt, and the prompt for the emailed code gets the code from
/// the newest mail in `maildir`.
pub fn ssh_with(
    dir: &TempDir,
    sshd: &Sshd,
    user: &str,
    password: &str,
    first: &str,
    code: &str,
    maildir: Option<&Path>,
) -> Login {
    ssh_push(dir, sshd, user, password, first, code, "", maildir)
}

/// Logs in like [`ssh_with`]; `push` answers the push prompt ("Tap NN on
/// your phone, then press Enter"): "" is Enter, and "wait-for-tap" waits
/// (up to 20 s) for the file `DIR/askpass/push-ready` and answers with what
/// it holds. The prompt lands in `DIR/askpass/prompts` before the answer.
#[allow(clippy::too_many_arguments)]
pub fn ssh_push(
    dir: &TempDir,
    sshd: &Sshd,
    user: &str,
    password: &str,
    first: &str,
    code: &str,
    push: &str,
    maildir: Option<&Path>,
) -> Login {
    ssh_methods(
        dir,
        sshd,
        user,
        password,
        first,
        code,
        push,
        maildir,
        "keyboard-interactive",
    )
}

/// Like [`ssh_push`], trying the client's `methods` in order
/// (PreferredAuthentications).
#[allow(clippy::too_many_arguments)]
pub fn ssh_methods(
    dir: &TempDir,
    sshd: &Sshd,
    user: &str,
    password: &str,
    first: &str,
    code: &str,
    push: &str,
    maildir: Option<&Path>,
    methods: &str,
) -> Login {
    let answers = dir.join("askpass");
    fs::create_dir_all(&answers).unwrap();
    fs::write(answers.join("push"), push).unwrap();
    let _ = fs::remove_file(answers.join("push-ready"));
    fs::write(answers.join("password"), password).unwrap();
    fs::write(answers.join("first"), first).unwrap();
    fs::write(answers.join("code"), code).unwrap();
    let maildir = maildir.map_or_else(|| "/nonexistent".to_owned(), |m| m.display().to_string());
    let prompts = answers.join("prompts");
    let _ = fs::remove_file(&prompts);
    let script = answers.join("askpass.sh");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\nd={}\nm={maildir}\nprintf '%s\\n' \"$1\" >> \"$d/prompts\"\n\
             case \"$1\" in\n\
               *'on your phone, then press Enter'*)\n\
                 if [ \"$(cat \"$d/push\")\" = wait-for-tap ]; then i=0\n\
                   while [ ! -f \"$d/push-ready\" ] && [ $i -lt 200 ]; do\n\
                     sleep 0.1; i=$((i+1))\n\
                   done\n\
                   cat \"$d/push-ready\"\n\
                 else cat \"$d/push\"; fi ;;\n\
               *'or 1 to email'*|*'s to skip SmartSign'*) cat \"$d/first\" ;;\n\
               *'Code from the email'*) f=$(ls -t \"$m\"/new/* | head -n 1)\n\
                 sed -n 's/.*code is: \\([0-9]\\{{8\\}}\\).*/\\1/p' \"$f\" | head -n 1 ;;\n\
               *SmartSign*) cat \"$d/code\" ;;\n\
               *assword*) cat \"$d/password\" ;;\n\
             esac\necho\n",
            answers.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();

    let started = Instant::now();
    let mut child = Command::new("ssh")
        .args(["-F", "/dev/null", "-p", &sshd.port.to_string()])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(["-o", &format!("PreferredAuthentications={methods}")])
        .args([
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "NumberOfPasswordPrompts=1",
        ])
        .args(["-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"])
        .arg(format!("{user}@127.0.0.1"))
        .args(["id", "-un"])
        .env("SSH_ASKPASS", &script)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let limit = Duration::from_secs(90);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    Login {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        prompts: fs::read_to_string(&prompts)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect(),
        elapsed: started.elapsed(),
    }
}

/// What reaches syslog(3) on this machine, for checking the module's
/// pam_syslog lines and the daemon's LOG_AUTHPRIV audit. Test machines run
/// no syslog daemon, so the capture binds /dev/log itself (and removes it
/// at exit). Where a syslog daemon already owns /dev/log, `lines` is `None`
/// and the caller says so instead of checking.
pub struct Syslog {
    lines: std::sync::Arc<Mutex<Vec<String>>>,
}

static SYSLOG: std::sync::OnceLock<Option<Syslog>> = std::sync::OnceLock::new();

extern "C" fn remove_dev_log() {
    let _ = fs::remove_file("/dev/log");
}

pub fn syslog() -> Option<&'static Syslog> {
    SYSLOG
        .get_or_init(|| {
            if Path::new("/dev/log").exists() {
                eprintln!(
                    "note: /dev/log belongs to a syslog daemon; syslog lines are not checked"
                );
                return None;
            }
            let socket = std::os::unix::net::UnixDatagram::bind("/dev/log").ok()?;
            fs::set_permissions("/dev/log", fs::Permissions::from_mode(0o666)).ok()?;
            // SAFETY: registers a plain extern "C" function with no captured state.
            unsafe { libc::atexit(remove_dev_log) };
            let lines = std::sync::Arc::new(Mutex::new(Vec::new()));
            let sink = std::sync::Arc::clone(&lines);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 8192];
                while let Ok(n) = socket.recv(&mut buf) {
                    let line = String::from_utf8_lossy(&buf[..n]).into_owned();
                    sink.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                }
            });
            Some(Syslog { lines })
        })
        .as_ref()
}

impl Syslog {
    /// Lines received so far that contain `needle`.
    pub fn matching(&self, needle: &str) -> Vec<String> {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }
}

/// A real SMTP server on 127.0.0.1 (aiosmtpd) delivering into a Maildir.
pub struct SmtpServer {
    child: Option<Child>,
    pub port: u16,
    pub maildir: PathBuf,
}

impl SmtpServer {
    pub fn start(dir: &TempDir) -> SmtpServer {
        let mut server = SmtpServer {
            child: None,
            port: free_port(),
            maildir: dir.join("Maildir"),
        };
        server.restart();
        server
    }

    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("/usr/bin/python3")
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{}", self.port),
            ])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&self.maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let port = self.port;
        wait_until("the SMTP server", Duration::from_secs(15), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Every message received, oldest first, as raw text.
    pub fn messages(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(self.maildir.join("new")) else {
            return Vec::new();
        };
        let mut files: Vec<_> = entries.flatten().collect();
        files.sort_by_key(|e| e.metadata().and_then(|m| m.modified()).ok());
        files
            .iter()
            .filter_map(|e| fs::read_to_string(e.path()).ok())
            .collect()
    }

    /// The 8-digit code in the newest message.
    pub fn last_code(&self) -> String {
        let messages = self.messages();
        let text = messages.last().expect("a mail arrived");
        let start = text.find("code is: ").expect("a code in the mail") + "code is: ".len();
        text[start..start + 8].to_owned()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.stop();
    }
}
