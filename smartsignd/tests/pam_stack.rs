//! The module in PAM stacks other than sshd's, driven by pamtester under
//! pam_wrapper: a sudo-like stack run by root, and a screen locker run by
//! the user themself. Needs root for the test users (see tests/common).

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::*;

const MATRIX: &str = "/usr/lib/x86_64-linux-gnu/pam_wrapper/pam_matrix.so";

struct Stack {
    services: std::path::PathBuf,
    passdb: std::path::PathBuf,
}

fn stack(dir: &TempDir, daemon: &Daemon, module_args: &str) -> Stack {
    let services = dir.join("pam.d");
    std::fs::create_dir_all(&services).unwrap();
    let passdb = dir.join("passdb");
    let module = module_path();
    std::fs::write(
        services.join("smartsign-test"),
        format!(
            "auth required {MATRIX} passdb={}\n\
             auth required {} socket={} {module_args}\n",
            passdb.display(),
            module.display(),
            daemon.socket.display()
        ),
    )
    .unwrap();
    std::fs::write(
        services.join("other"),
        "auth required pam_deny.so\naccount required pam_deny.so\n",
    )
    .unwrap();
    Stack { services, passdb }
}

/// Runs `pamtester smartsign-test USER authenticate`, answering prompts
/// from `answers`, as `uid` (root when `None`).
/// One user with the password "secret" in a stack of its own, and a daemon
/// with `config`.
fn one_user(name: &str, user: &str, config: &str) -> (TempDir, TestUser, Daemon, Stack) {
    let dir = TempDir::new(name);
    let user = TestUser::new(user);
    let daemon = Daemon::start(&dir, config);
    let stack = stack(&dir, &daemon, "");
    std::fs::write(
        &stack.passdb,
        format!("{}:secret:smartsign-test\n", user.name),
    )
    .unwrap();
    (dir, user, daemon, stack)
}

fn pamtester(
    dir: &TempDir,
    stack: &Stack,
    user: &str,
    answers: &[&str],
    uid: Option<u32>,
) -> Output {
    let tmp = dir.join("pw-tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let mut command = match uid {
        Some(uid) => as_uid(uid, "pamtester"),
        None => Command::new("pamtester"),
    };
    let mut child = command
        .args(["-v", "smartsign-test", user, "authenticate"])
        .env("LD_PRELOAD", "libpam_wrapper.so")
        .env("PAM_WRAPPER", "1")
        .env("PAM_WRAPPER_SERVICE_DIR", &stack.services)
        .env("TMPDIR", &tmp)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for answer in answers {
        writeln!(stdin, "{answer}").unwrap();
    }
    drop(stdin);
    child.wait_with_output().unwrap()
}

fn output(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn sudo_like_stack_run_by_root() {
    require_root();
    let (dir, user, daemon, stack) = one_user("pamstack", "sse2e-pam", "");
    let phone = daemon.enroll(&user.name, "Pixel");

    let out = pamtester(
        &dir,
        &stack,
        &user.name,
        &["secret", &oathtool(&phone, "now")],
        None,
    );
    assert!(out.status.success(), "{}", output(&out));
    assert!(
        output(&out).contains("SmartSign code for sse2e-pam: "),
        "{}",
        output(&out)
    );

    let out = pamtester(&dir, &stack, &user.name, &["secret", "12345"], None);
    assert!(!out.status.success());
    assert!(
        output(&out).contains("SmartSign: that is not a code."),
        "{}",
        output(&out)
    );

    // An answer far longer than any code, and one with bytes that are not UTF-8.
    let long = "7".repeat(5000);
    let out = pamtester(&dir, &stack, &user.name, &["secret", &long], None);
    assert!(!out.status.success(), "{}", output(&out));
    assert!(daemon.audit().iter().all(|l| !l.contains(&long)));
}

#[test]
fn hostile_user_names_are_refused_not_crashed() {
    require_root();
    let dir = TempDir::new("pamnames");
    let daemon = Daemon::start(&dir, "");
    let stack = stack(&dir, &daemon, "");
    let names = ["../../etc/shadow", "-rf", "a b"];
    let passdb: String = names
        .iter()
        .map(|n| format!("{n}:secret:smartsign-test\n"))
        .collect();
    std::fs::write(&stack.passdb, passdb).unwrap();
    for name in names {
        let out = pamtester(&dir, &stack, name, &["secret", "123456"], None);
        assert!(!out.status.success(), "{name}: {}", output(&out));
        assert!(
            output(&out).contains("SmartSign refused this login"),
            "{name}: {}",
            output(&out)
        );
    }
    assert_eq!(
        daemon
            .audit()
            .iter()
            .filter(|l| l.contains("invalid user name"))
            .count(),
        names.len(),
        "{}",
        daemon.log()
    );
}

/// A screen locker runs PAM as the logged-in user: the module's uid is the
/// user's own, which the daemon allows for that user and no other.
#[test]
fn screen_locker_runs_as_the_user() {
    require_root();
    let dir = TempDir::new("locker");
    let user = TestUser::new("sse2e-lock");
    let other = TestUser::new("sse2e-lock2");
    let daemon = Daemon::start(&dir, "");
    let stack = stack(&dir, &daemon, "");
    std::fs::write(
        &stack.passdb,
        format!(
            "{}:secret:smartsign-test\n{}:secret:smartsign-test\n",
            user.name, other.name
        ),
    )
    .unwrap();
    let phone = daemon.enroll(&user.name, "Pixel");
    daemon.enroll(&other.name, "Pixel");

    let code = oathtool(&phone, "now");
    let out = pamtester(
        &dir,
        &stack,
        &user.name,
        &["secret", &code],
        Some(user.uid()),
    );
    assert!(out.status.success(), "{}", output(&out));

    // Unlocking someone else's session from this uid is refused outright.
    let out = pamtester(
        &dir,
        &stack,
        &other.name,
        &["secret", "123456"],
        Some(user.uid()),
    );
    assert!(!out.status.success(), "{}", output(&out));
    assert!(
        daemon
            .audit()
            .iter()
            .any(|l| l.contains(&format!("user={}", other.name)) && l.contains("result=refused")),
        "{}",
        daemon.log()
    );
}

/// Something other than smartsignd on the socket (a user's process, where
/// socket= points into a directory a user can write) is not believed, even
/// when it answers "allow". Needs root for the user.
#[test]
fn a_fake_daemon_run_by_a_user_is_not_believed() {
    require_root();
    let dir = TempDir::new("fakedaemon");
    let user = TestUser::new("sse2e-fake");
    let uid = user.uid();
    let own = dir.join("userdir");
    std::fs::create_dir(&own).unwrap();
    nix::unistd::chown(&own, Some(uid.into()), Some(uid.into())).unwrap();
    let socket = own.join("fake.sock");
    let script = format!(
        "import socket, struct, json, os\n\
         s = socket.socket(socket.AF_UNIX); s.bind({path:?}); os.chmod({path:?}, 0o666); s.listen(8)\n\
         print('ready', flush=True)\n\
         for _ in range(4):\n\
         \x20   c, _ = s.accept()\n\
         \x20   n = struct.unpack('>I', c.recv(4))[0]; req = json.loads(c.recv(n))['request']\n\
         \x20   ans = {{'result': 'challenge', 'phones': ['x']}} if req['op'] == 'begin' else {{'result': 'allow', 'phone': 'x'}}\n\
         \x20   body = json.dumps({{'v': 1, 'response': ans}}).encode(); c.sendall(struct.pack('>I', len(body)) + body); c.close()\n",
        path = socket.display().to_string()
    );
    let mut fake = as_uid(uid, "/usr/bin/python3")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(fake.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "ready");

    let services = dir.join("pam.d");
    std::fs::create_dir_all(&services).unwrap();
    std::fs::write(
        services.join("smartsign-test"),
        format!(
            "auth required {} socket={} timeout=2\n",
            module_path().display(),
            socket.display()
        ),
    )
    .unwrap();
    let stack = Stack {
        services,
        passdb: dir.join("passdb"),
    };
    let out = pamtester(&dir, &stack, &user.name, &["999999"], None);
    let _ = fake.kill();
    let _ = fake.wait();
    assert!(!out.status.success(), "{}", output(&out));
    assert!(
        output(&out).contains("SmartSign is unavailable"),
        "{}",
        output(&out)
    );
    // Under pam_wrapper, pam_syslog lines go to stderr.
    assert!(
        output(&out).contains(&format!("of uid {uid}, not to smartsignd")),
        "{}",
        output(&out)
    );
}

/// PAM_RHOST as sshd would set it (through pam_wrapper's pam_set_items):
/// IPv4, IPv6 with a scope, IPv4-mapped; a host name never matches.
#[test]
fn trusted_networks_by_remote_address() {
    require_root();
    let dir = TempDir::new("pamrhost");
    let user = TestUser::new("sse2e-rhost");
    let policy = "[policy]\ntrusted_networks = [\"10.0.0.0/8\", \"fd00::/8\"]\n";
    let daemon = Daemon::start(&dir, policy);
    let services = dir.join("pam.d");
    std::fs::create_dir_all(&services).unwrap();
    let set_items = "/usr/lib/x86_64-linux-gnu/pam_wrapper/pam_set_items.so";
    std::fs::write(
        services.join("smartsign-test"),
        format!(
            "auth required {set_items}\nauth required {} socket={}\n",
            module_path().display(),
            daemon.socket.display()
        ),
    )
    .unwrap();
    let stack = Stack {
        services,
        passdb: dir.join("passdb"),
    };
    daemon.enroll(&user.name, "Pixel");

    for (rhost, trusted) in [
        ("10.1.2.3", true),
        ("fd00::5%eth0", true),
        ("::ffff:10.9.8.7", true),
        ("192.0.2.7", false),
        ("10.example.org", false),
    ] {
        let out = pamtester_with_rhost(&dir, &stack, &user.name, rhost);
        assert_eq!(out.status.success(), trusted, "{rhost}: {}", output(&out));
        assert_eq!(
            !output(&out).contains("SmartSign code for"),
            trusted,
            "{rhost}"
        );
    }
    assert!(daemon.audit().iter().any(|l| l.contains("rhost=\"fd00::5%eth0\"") && l.contains("trusted network fd00::/8")));
}

fn pamtester_with_rhost(dir: &TempDir, stack: &Stack, user: &str, rhost: &str) -> Output {
    let tmp = dir.join("pw-tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let mut child = Command::new("pamtester")
        .args(["-v", "smartsign-test", user, "authenticate"])
        .env("LD_PRELOAD", "libpam_wrapper.so")
        .env("PAM_WRAPPER", "1")
        .env("PAM_WRAPPER_SERVICE_DIR", &stack.services)
        .env("TMPDIR", &tmp)
        .env("PAM_RHOST", rhost)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "000000").unwrap();
    child.wait_with_output().unwrap()
}

/// A user NSS does not know (a password module of its own, an LDAP outage)
/// has no groups to be exempt by: `require_groups` must not let them skip.
#[test]
fn a_user_nss_cannot_find_is_not_exempted_by_groups() {
    require_root();
    let dir = TempDir::new("ghost");
    let daemon = Daemon::start(&dir, "[policy]\nrequire_groups = [\"root\"]\n");
    let stack = stack(&dir, &daemon, "");
    std::fs::write(&stack.passdb, "sse2e-ghost:secret:smartsign-test\n").unwrap();
    let out = pamtester(&dir, &stack, "sse2e-ghost", &["secret"], None);
    assert!(!out.status.success(), "{}", output(&out));
    assert!(
        daemon
            .audit()
            .iter()
            .any(|l| l.contains("user=sse2e-ghost") && l.contains("result=deny")),
        "{}",
        daemon.log()
    );
}

/// A backup code from `smartsign backup-codes` lets one login in at the
/// SmartSign prompt, once.
#[test]
fn a_backup_code_works_once() {
    require_root();
    let (dir, user, daemon, stack) = one_user("backup", "sse2e-backup", "");
    daemon.enroll(&user.name, "Pixel");
    let out = daemon.cli(&["--user", &user.name, "backup-codes"]);
    assert!(out.status.success(), "{}", output(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let codes: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("    "))
        .collect();
    assert_eq!(codes.len(), 10, "{text}");

    let out = pamtester(&dir, &stack, &user.name, &["secret", codes[3]], None);
    assert!(out.status.success(), "{}", output(&out));
    let again = pamtester(&dir, &stack, &user.name, &["secret", codes[3]], None);
    assert!(!again.status.success(), "{}", output(&again));
    let status = daemon.cli(&["--user", &user.name, "status"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("Backup codes: 9 left"));
    assert!(
        daemon
            .audit()
            .iter()
            .any(|l| l.contains("method=backup-code") && l.contains("result=allow"))
    );
}

/// `smartsign disable` run by the user: refused where the policy forbids
/// it, and where it allows it, later logins need no code.
#[test]
fn a_user_disables_smartsign_only_where_allowed() {
    require_root();
    for allowed in [false, true] {
        let (dir, user, daemon, stack) = one_user(
            &format!("disable-{allowed}"),
            &format!("sse2e-dis{}", u8::from(allowed)),
            &format!("[policy]\nuser_may_disable = {allowed}\n"),
        );
        let secret = daemon.enroll(&user.name, "Pixel");
        let out = as_uid(user.uid(), SMARTSIGN)
            .arg("--socket")
            .arg(&daemon.socket)
            .args(["disable", "--code", &oathtool(&secret, "now")])
            .output()
            .unwrap();
        assert_eq!(out.status.success(), allowed, "{}", output(&out));
        let login = pamtester(&dir, &stack, &user.name, &["secret", "000000"], None);
        assert_eq!(login.status.success(), allowed, "{}", output(&login));
        let expected = if allowed {
            "disabled for this account by the user"
        } else {
            "not allowed by the policy"
        };
        assert!(
            daemon.audit().iter().any(|l| l.contains(expected)),
            "{}",
            daemon.log()
        );
    }
}

/// Every skip is PAM_IGNORE, never PAM_SUCCESS: with
/// `auth sufficient pam_smartsign.so` first, the password is still asked.
#[test]
fn a_sufficient_stack_still_asks_for_the_password() {
    require_root();
    let dir = TempDir::new("sufficient");
    let user = TestUser::new("sse2e-suff");
    let daemon = Daemon::start(
        &dir,
        "[policy]\ntrusted_networks = [\"10.0.0.0/8\"]\nunenrolled = \"allow\"\n",
    );
    let services = dir.join("pam.d");
    std::fs::create_dir_all(&services).unwrap();
    let passdb = dir.join("passdb");
    std::fs::write(&passdb, format!("{}:secret:smartsign-test\n", user.name)).unwrap();
    std::fs::write(
        services.join("smartsign-test"),
        format!(
            "auth required /usr/lib/x86_64-linux-gnu/pam_wrapper/pam_set_items.so\n\
             auth sufficient {} socket={}\n\
             auth required {MATRIX} passdb={}\n",
            module_path().display(),
            daemon.socket.display(),
            passdb.display()
        ),
    )
    .unwrap();
    let stack = Stack { services, passdb };
    // Trusted network and no phone: SmartSign skips, the password decides.
    let wrong = pamtester_with_rhost(&dir, &stack, &user.name, "10.1.2.3");
    assert!(!wrong.status.success(), "{}", output(&wrong));
    assert!(output(&wrong).contains("Password"), "{}", output(&wrong));
    assert!(daemon.audit().iter().any(|l| l.contains("trusted network")));
}

/// A configuration smartsignd refuses stops it with the file, line and key;
/// the module, finding no daemon, applies the fail mode: that file's own
/// `failmode`, which it reads itself, or secure when it cannot tell.
#[test]
fn a_broken_config_stops_the_daemon_and_the_failmode_applies() {
    require_root();
    let dir = TempDir::new("broken-config");
    let user = TestUser::new("sse2e-brokencfg");
    let config = dir.join("smartsign.toml");
    let socket = dir.join("smartsignd.sock");
    let cases = [
        // (the file, what the module does without a daemon)
        ("failmode = \"safe\"\n[lockout]\nwindow = \"soon\"\n", true),
        (
            "failmode = \"secure\"\n[lockout]\nwindow = \"soon\"\n",
            false,
        ),
        ("[lockout]\nwindow = \"soon\"\n", false),
        ("failmode = \"sometimes\"\n", false),
    ];
    for (text, lets_through) in cases {
        std::fs::write(&config, format!("socket = {socket:?}\n{text}")).unwrap();
        let started = Command::new(SMARTSIGND)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert_eq!(started.status.code(), Some(2), "{text:?}: {started:?}");
        let said = String::from_utf8_lossy(&started.stderr);
        assert!(said.contains("smartsign.toml:"), "{said}");
        assert!(!socket.exists());

        let services = dir.join("pam.d");
        std::fs::create_dir_all(&services).unwrap();
        std::fs::write(
            services.join("smartsign-test"),
            format!(
                "auth required {MATRIX} passdb={}\n\
                 auth required {} socket={} config={} timeout=2\n",
                dir.join("passdb").display(),
                module_path().display(),
                socket.display(),
                config.display()
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("passdb"),
            format!("{}:secret:smartsign-test\n", user.name),
        )
        .unwrap();
        let stack = Stack {
            services,
            passdb: dir.join("passdb"),
        };
        let out = pamtester(&dir, &stack, &user.name, &["secret"], None);
        assert_eq!(
            out.status.success(),
            lets_through,
            "{text:?}: {}",
            output(&out)
        );
        let message = if lets_through {
            "continuing without the second factor"
        } else {
            "SmartSign is unavailable, so the login is refused"
        };
        assert!(output(&out).contains(message), "{text:?}: {}", output(&out));
        // pam_wrapper shows the module's pam_syslog lines on stderr.
        let why = if lets_through {
            "failmode=safe (/"
        } else {
            "failmode=secure ("
        };
        let logged = output(&out);
        assert!(
            logged.contains(why) && logged.contains("--check-config"),
            "{text:?}: {logged}"
        );
    }
    // A file the module cannot read at all: secure.
    let missing = dir.join("missing.toml");
    std::fs::write(
        dir.join("pam.d").join("smartsign-test"),
        format!(
            "auth required {MATRIX} passdb={}\n\
             auth required {} socket={} config={} timeout=2\n",
            dir.join("passdb").display(),
            module_path().display(),
            socket.display(),
            missing.display()
        ),
    )
    .unwrap();
    let stack = Stack {
        services: dir.join("pam.d"),
        passdb: dir.join("passdb"),
    };
    let out = pamtester(&dir, &stack, &user.name, &["secret"], None);
    assert!(!out.status.success(), "{}", output(&out));
}
