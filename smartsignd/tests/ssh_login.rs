//! End to end through a real sshd on 127.0.0.1: the password by pam_unix,
//! then SmartSign's code, typed by a real OpenSSH client, computed by
//! oathtool from the enrolled secret. Needs root (see tests/common).

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

/// One user, one daemon, one sshd: each case has its own, so that cases
/// can run at once without sharing TOTP steps or lockouts.
struct Setup {
    sshd: Sshd,
    daemon: Daemon,
    user: TestUser,
    dir: TempDir,
    name: String,
}

fn setup(name: &str, daemon_config: &str, module_args: &str) -> Setup {
    require_root();
    syslog();
    let dir = TempDir::new(name);
    let user = TestUser::new(&format!("sse2e-{name}"));
    let daemon = Daemon::start(&dir, daemon_config);
    let args = format!("socket={} {module_args}", daemon.socket.display());
    let sshd = Sshd::start(&dir, name, &user.name, &args);
    Setup {
        sshd,
        daemon,
        user,
        dir,
        name: name.to_owned(),
    }
}

impl Setup {
    fn login(&self, password: &str, code: &str) -> Login {
        ssh(&self.dir, &self.sshd, &self.user.name, password, code)
    }

    fn login_with(&self, code: &str) -> Login {
        self.login(&self.user.password.clone(), code)
    }

    /// The module's own lines in syslog (`pam_smartsign(SERVICE:auth): ...`),
    /// or `None` where a syslog daemon owns /dev/log.
    fn module_log(&self) -> Option<String> {
        let tag = format!("pam_smartsign(smartsign-e2e-{}:auth)", self.name);
        syslog().map(|log| log.matching(&tag).join("\n"))
    }

    fn audit_has(&self, words: &[&str]) -> bool {
        self.daemon
            .audit()
            .iter()
            .any(|line| words.iter().all(|w| line.contains(w)))
    }
}

#[test]
fn right_password_and_right_code_log_in() {
    let s = setup("ok", "", "");
    let secret = s.daemon.enroll(&s.user.name, "Pixel 8");
    let login = s.login_with(&oathtool(&secret, "now"));
    assert!(
        login.logged_in_as(&s.user.name),
        "{}\n{}",
        login.stderr,
        s.sshd.log()
    );
    assert_eq!(login.prompts.len(), 2, "{:?}", login.prompts);
    assert!(
        login.prompts[1].ends_with(&format!("SmartSign code for {}: ", s.user.name)),
        "{:?}",
        login.prompts
    );
    let user = format!("user={}", s.user.name);
    let fields = [
        &user,
        "service=smartsign-e2e-ok",
        "rhost=127.0.0.1",
        "method=app-code",
        "phone=\"Pixel 8\"",
        "result=allow",
    ];
    assert!(s.audit_has(&fields), "{}", s.daemon.log());
    // The same line went to syslog on LOG_AUTHPRIV (facility 10: <8x>).
    if let Some(log) = syslog() {
        let lines = log.matching(&format!("audit: {user} service=smartsign-e2e-ok"));
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("<85>") && l.contains("smartsignd[")),
            "{lines:?}"
        );
    }
}

#[test]
fn right_password_and_wrong_code_are_refused_and_audited() {
    let s = setup("wrongcode", "", "");
    let secret = s.daemon.enroll(&s.user.name, "Pixel 8");
    let right = oathtool(&secret, "now");
    let wrong = format!("{:06}", (right.parse::<u32>().unwrap() + 1) % 1_000_000);
    let login = s.login_with(&wrong);
    assert!(!login.status.success());
    assert!(login.asked_for_code());
    assert!(
        s.audit_has(&["method=app-code", "result=deny", "reason=\"wrong code\""]),
        "{}",
        s.daemon.log()
    );
    // Nothing leaked into the log.
    assert!(!s.daemon.log().contains(&wrong) && !s.daemon.log().contains(&secret));
}

#[test]
fn a_code_that_let_someone_in_is_refused_the_second_time() {
    let s = setup("replay", "", "");
    let secret = s.daemon.enroll(&s.user.name, "Pixel 8");
    let code = oathtool(&secret, "now");
    assert!(s.login_with(&code).logged_in_as(&s.user.name));
    let again = s.login_with(&code);
    assert!(!again.status.success());
    assert!(
        s.audit_has(&["result=deny", "reason=\"code already used\""]),
        "{}",
        s.daemon.log()
    );
    // The next code is still good.
    assert!(
        s.login_with(&oathtool(&secret, "30 seconds"))
            .logged_in_as(&s.user.name)
    );
}

#[test]
fn wrong_password_and_right_code_are_refused() {
    let s = setup("wrongpw", "", "");
    let secret = s.daemon.enroll(&s.user.name, "Pixel 8");
    let login = s.login("not-the-password", &oathtool(&secret, "now"));
    assert!(!login.status.success());
    assert!(!login.stdout.contains(&s.user.name));
}

#[test]
fn too_many_wrong_codes_lock_out_until_the_window_has_passed() {
    let s = setup(
        "lockout",
        "[lockout]\nmax_failures = 2\nwindow = \"20s\"\n",
        "",
    );
    let secret = s.daemon.enroll(&s.user.name, "Pixel 8");
    for wrong in ["000000", "999999"] {
        assert!(!s.login_with(wrong).status.success());
    }
    assert!(
        s.audit_has(&["result=deny", "locked out after 2 failures"]),
        "{}",
        s.daemon.log()
    );
    let locked_at = std::time::Instant::now();

    // The right code is refused while locked, without being asked for.
    let login = s.login_with(&oathtool(&secret, "now"));
    assert!(!login.status.success());
    assert!(!login.asked_for_code(), "{:?}", login.prompts);
    assert!(s.audit_has(&["method=none", "result=deny", "reason=\"locked out\""]));
    let status = s.daemon.cli(&["--user", &s.user.name, "status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(status["locked_until"].as_u64().is_some(), "{status}");

    std::thread::sleep(Duration::from_secs(21).saturating_sub(locked_at.elapsed()));
    let login = s.login_with(&oathtool(&secret, "now"));
    assert!(
        login.logged_in_as(&s.user.name),
        "{}\n{}",
        login.stderr,
        s.daemon.log()
    );
}

#[test]
fn daemon_stopped_with_failmode_secure_refuses_within_the_timeout() {
    let mut s = setup("secure", "", "timeout=2");
    let secret = s.daemon.enroll(&s.user.name, "Pixel 8");

    s.daemon.signal(Signal::SIGSTOP);
    let login = s.login_with(&oathtool(&secret, "now"));
    s.daemon.signal(Signal::SIGCONT);
    assert!(!login.status.success());
    assert!(!login.asked_for_code());
    // pam_unix's delay after a failure is 2 s; the module's wait is bounded by timeout=2.
    assert!(
        login.elapsed < Duration::from_secs(10),
        "took {:?}",
        login.elapsed
    );

    s.daemon.stop();
    let login = s.login_with(&oathtool(&secret, "now"));
    assert!(!login.status.success());
    assert!(
        login.elapsed < Duration::from_secs(10),
        "took {:?}",
        login.elapsed
    );
    if let Some(log) = s.module_log() {
        assert!(log.contains("failmode=secure (the default"), "{log}");
        assert!(log.contains("refusing the login"), "{log}");
        assert!(log.contains("smartsignd did not answer in time"), "{log}");
        assert!(log.contains("smartsignd is not running"), "{log}");
    }
}

#[test]
fn daemon_stopped_with_failmode_safe_leaves_it_to_the_password() {
    let mut s = setup("safe", "", "failmode=safe timeout=2");
    s.daemon.enroll(&s.user.name, "Pixel 8");
    s.daemon.stop();
    let login = s.login_with("");
    assert!(login.logged_in_as(&s.user.name), "{}", login.stderr);
    assert!(!login.asked_for_code());
    assert!(s.login("wrong-password", "").status.code() != Some(0));
    if let Some(log) = s.module_log() {
        assert!(
            log.contains("failmode=safe (the module argument): NO SECOND FACTOR was asked"),
            "{log}"
        );
    }
}

#[test]
fn a_user_without_a_phone_logs_in_with_the_password_alone() {
    let s = setup("unenrolled", "[policy]\nunenrolled = \"allow\"\n", "");
    let login = s.login_with("");
    assert!(login.logged_in_as(&s.user.name), "{}", login.stderr);
    assert!(!login.asked_for_code());
    assert!(s.audit_has(&["method=none", "result=ignore", "reason=\"not enrolled\""]));
    assert!(!s.login("wrong-password", "").status.success());
}

#[test]
fn either_of_two_phones_works_and_the_log_names_it() {
    let s = setup("twophones", "", "");
    let pixel = s.daemon.enroll(&s.user.name, "Pixel 8");
    let iphone = s.daemon.enroll(&s.user.name, "work iPhone");
    assert!(
        s.login_with(&oathtool(&iphone, "now"))
            .logged_in_as(&s.user.name)
    );
    assert!(
        s.audit_has(&["phone=\"work iPhone\"", "result=allow"]),
        "{}",
        s.daemon.log()
    );
    assert!(
        s.login_with(&oathtool(&pixel, "now"))
            .logged_in_as(&s.user.name)
    );
    assert!(
        s.audit_has(&["phone=\"Pixel 8\"", "result=allow"]),
        "{}",
        s.daemon.log()
    );
}

#[test]
fn root_unlocks_a_locked_out_user_at_once() {
    let s = setup(
        "unlock",
        "[lockout]\nmax_failures = 2\nwindow = \"1h\"\n",
        "",
    );
    let secret = s.daemon.enroll(&s.user.name, "Pixel 8");
    for wrong in ["000000", "999999"] {
        assert!(!s.login_with(wrong).status.success());
    }
    assert!(!s.login_with(&oathtool(&secret, "now")).status.success());
    let out = s.daemon.cli(&["--user", &s.user.name, "unlock"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(s.audit_has(&["method=manage", "reason=\"unlocked by root\""]));
    let login = s.login_with(&oathtool(&secret, "now"));
    assert!(login.logged_in_as(&s.user.name), "{}", s.daemon.log());
}

/// Another name for the same uid (or a differently written one, as SSSD
/// accepts) meets the same second factor: enrollment belongs to the account.
#[test]
fn an_alias_of_an_enrolled_account_is_asked_for_the_code() {
    require_root();
    let dir = TempDir::new("alias");
    let user = TestUser::new("sse2e-alias");
    let alias = TestUser::alias("sse2e-alias2", &user);
    let daemon = Daemon::start(&dir, "");
    let args = format!("socket={}", daemon.socket.display());
    let sshd = Sshd::start(
        &dir,
        "alias",
        &format!("{} {}", user.name, alias.name),
        &args,
    );
    let secret = daemon.enroll(&user.name, "Pixel 8");

    let login = ssh(&dir, &sshd, &alias.name, &alias.password, "");
    assert!(login.asked_for_code(), "{:?}", login.prompts);
    assert!(!login.status.success());
    let login = ssh(
        &dir,
        &sshd,
        &alias.name,
        &alias.password,
        &oathtool(&secret, "now"),
    );
    assert!(login.logged_in_as(&user.name), "{}", login.stderr);
    let audit = daemon.audit();
    let line = format!("user={} service=smartsign-e2e-alias", user.name);
    assert!(
        audit
            .iter()
            .any(|l| l.starts_with(&line) && l.contains("result=allow")),
        "{audit:?}"
    );
}

/// By default a user without a phone is refused once SmartSign is
/// required; before the deadline they get in and are told from when.
#[test]
fn the_policy_for_users_without_a_phone() {
    let s = setup("nophone", "", "");
    let login = s.login_with("");
    assert!(!login.status.success());
    assert!(!login.asked_for_code());
    assert!(s.audit_has(&[
        "result=deny",
        "not enrolled, and the policy requires SmartSign"
    ]));

    let s = setup("grace", "[policy]\nskip_until = \"2099-01-01\"\n", "");
    let login = s.login_with("");
    assert!(login.logged_in_as(&s.user.name), "{}", s.daemon.log());
    assert!(s.audit_has(&[
        "result=ignore",
        "not enrolled; allowed until 1 January 2099"
    ]));
}

#[test]
fn a_trusted_network_needs_no_code() {
    let s = setup(
        "trusted",
        "[policy]\ntrusted_networks = [\"127.0.0.0/8\"]\n",
        "",
    );
    s.daemon.enroll(&s.user.name, "Pixel 8");
    let login = s.login_with("");
    assert!(login.logged_in_as(&s.user.name), "{}", s.daemon.log());
    assert!(!login.asked_for_code());
    assert!(s.audit_has(&[
        "rhost=127.0.0.1",
        "result=ignore",
        "trusted network 127.0.0.0/8"
    ]));
}

#[test]
fn an_enrolled_user_may_skip_before_the_deadline() {
    let s = setup("skipnow", "[policy]\nskip_until = \"2099-01-01\"\n", "");
    s.daemon.enroll(&s.user.name, "Pixel 8");
    let password = s.user.password.clone();
    let login = ssh_with(&s.dir, &s.sshd, &s.user.name, &password, "s", "", None);
    assert!(
        login.logged_in_as(&s.user.name),
        "{:?}\n{}",
        login.prompts,
        s.daemon.log()
    );
    assert!(login.prompts[1].contains("or s to skip SmartSign, allowed until 1 January 2099"));
    assert!(s.audit_has(&["result=ignore", "skipped by the user"]));
}
