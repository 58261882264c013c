//! Emergency codes by email, end to end: a real sshd, a real SMTP server
//! (aiosmtpd) or sendmail (msmtp relaying into it), and the code read from
//! the delivered message. Needs root (see tests/common).

mod common;

use std::time::Duration;

use common::*;

struct Setup {
    sshd: Sshd,
    daemon: Daemon,
    smtp: SmtpServer,
    user: TestUser,
    secret: String,
    dir: TempDir,
}

fn smtp_settings(port: u16, extra: &str) -> String {
    format!(
        "[email]\nfrom = \"SmartSign <smartsign@test.example>\"\ntransport = \"smtp\"\n\
         host = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\ntimeout = \"3s\"\n{extra}"
    )
}

/// A user with a phone and a confirmed address, and sshd asking for both.
fn setup(name: &str, extra: &str) -> Setup {
    require_root();
    syslog();
    let dir = TempDir::new(name);
    let user = TestUser::new(&format!("sse2e-{name}"));
    let smtp = SmtpServer::start(&dir);
    let daemon = Daemon::start(&dir, &smtp_settings(smtp.port, extra));
    let secret = daemon.enroll(&user.name, "Pixel 8");
    let out = daemon.cli(&["--user", &user.name, "email", "set", "mail@test.example"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let args = format!("socket={}", daemon.socket.display());
    let sshd = Sshd::start(&dir, name, &user.name, &args);
    Setup {
        sshd,
        daemon,
        smtp,
        user,
        secret,
        dir,
    }
}

impl Setup {
    /// Answers the first prompt with `first` ("1" asks for a mail), the
    /// prompt for the emailed code from the newest mail.
    fn login(&self, first: &str) -> Login {
        self.login_reading(first, Some(&self.smtp.maildir))
    }

    /// Asks for a mail but answers its prompt with nothing: the code stays unused.
    fn ask_for_mail(&self) {
        let login = self.login_reading("1", None);
        assert!(!login.status.success());
    }

    fn login_reading(&self, first: &str, maildir: Option<&std::path::Path>) -> Login {
        let app_code = oathtool(&self.secret, "now");
        let password = self.user.password.clone();
        ssh_with(
            &self.dir,
            &self.sshd,
            &self.user.name,
            &password,
            first,
            &app_code,
            maildir,
        )
    }

    fn audit_has(&self, words: &[&str]) -> bool {
        self.daemon
            .audit()
            .iter()
            .any(|line| words.iter().all(|w| line.contains(w)))
    }
}

#[test]
fn an_emailed_code_logs_in_and_the_mail_is_plain_and_complete() {
    let s = setup("mail-ok", "");
    let login = s.login("1");
    assert!(
        login.logged_in_as(&s.user.name),
        "{:?}\n{}",
        login.prompts,
        s.daemon.log()
    );
    assert!(
        login.prompts[1].contains("(or 1 to email a code to m****@test.example)"),
        "{:?}",
        login.prompts
    );
    assert!(
        login.prompts[2].contains("Code from the email to m****@test.example"),
        "{:?}",
        login.prompts
    );
    assert!(s.audit_has(&[
        "method=email-code",
        "phone=\"email m****@test.example\"",
        "result=allow"
    ]));

    let mail = s.smtp.messages().pop().unwrap();
    let (headers, body) = mail.split_once("\n\n").unwrap();
    assert!(
        headers.contains("Content-Transfer-Encoding: 7bit"),
        "{headers}"
    );
    for header in [
        format!("Subject: SmartSign code for {} on", s.user.name),
        "From: SmartSign <smartsign@test.example>".into(),
        "To: mail@test.example".into(),
        "Date: ".into(),
        "Message-ID: <".into(),
    ] {
        assert!(
            headers.lines().any(|l| l.starts_with(&header)),
            "{header}\n{headers}"
        );
    }
    assert!(
        body.contains("from:     127.0.0.1") && body.contains("Expires:"),
        "{body}"
    );
    assert!(!body.contains("http"), "no links: {body}");

    // The code served its one login.
    let again = s.login(&s.smtp.last_code());
    assert!(!again.status.success());
    assert!(s.audit_has(&["method=email-code", "result=deny"]));
}

#[test]
fn a_newer_code_replaces_the_older() {
    let s = setup("mail-newer", "");
    s.ask_for_mail();
    let older = s.smtp.last_code();
    s.ask_for_mail();
    let newer = s.smtp.last_code();
    assert_ne!(
        older, newer,
        "two random codes in a row are equal once in 10^8"
    );
    assert!(
        !s.login(&older).status.success(),
        "the older code was replaced"
    );
    assert!(
        s.login(&newer).logged_in_as(&s.user.name),
        "{}",
        s.daemon.log()
    );
}

#[test]
fn an_expired_code_is_refused() {
    let s = setup("mail-expired", "code_ttl = \"2s\"\n");
    s.ask_for_mail();
    let code = s.smtp.last_code();
    std::thread::sleep(Duration::from_secs(3));
    assert!(!s.login(&code).status.success());
    assert!(
        s.audit_has(&["reason=\"that emailed code has expired\""]),
        "{}",
        s.daemon.log()
    );
}

#[test]
fn smtp_down_is_said_and_the_app_code_still_works() {
    let mut s = setup("mail-down", "");
    s.smtp.stop();
    let login = s.login("1");
    assert!(
        login.logged_in_as(&s.user.name),
        "{:?}\n{}",
        login.prompts,
        s.daemon.log()
    );
    // The message arrives with the next prompt (sshd holds info text until then).
    let last = login.prompts.last().unwrap();
    assert!(
        last.ends_with(&format!("SmartSign code for {}: ", s.user.name)),
        "{:?}",
        login.prompts
    );
    assert!(
        login
            .prompts
            .iter()
            .any(|p| p.contains("SmartSign could not email a code"))
    );
    assert!(
        s.audit_has(&[
            "method=email-code",
            "result=deny",
            "not mailed: SMTP server 127.0.0.1"
        ]),
        "{}",
        s.daemon.log()
    );
    assert!(
        login.elapsed < Duration::from_secs(20),
        "{:?}",
        login.elapsed
    );
}

#[test]
fn mails_per_hour_are_limited() {
    let s = setup("mail-limit", "max_per_hour = 2\n");
    // Root set the address without a mail, so two logins may mail.
    for _ in 0..2 {
        assert!(
            s.login("1").logged_in_as(&s.user.name),
            "{}",
            s.daemon.log()
        );
    }
    assert_eq!(s.smtp.messages().len(), 2);
    let login = s.login("1");
    assert_eq!(s.smtp.messages().len(), 2, "no third mail");
    assert!(
        s.audit_has(&["not mailed: at most 2 mails an hour"]),
        "{}",
        s.daemon.log()
    );
    assert!(
        login
            .prompts
            .iter()
            .any(|p| p.ends_with(&format!("SmartSign code for {}: ", s.user.name)))
    );
}

/// `transport = "sendmail"` through a real sendmail-compatible program:
/// msmtp, relaying into the same SMTP server.
#[test]
fn the_sendmail_transport_delivers_too() {
    require_root();
    let dir = TempDir::new("sendmail");
    let user = TestUser::new("sse2e-sendmail");
    let smtp = SmtpServer::start(&dir);
    let wrapper = dir.join("sendmail");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec msmtp --host=127.0.0.1 --port={} --auth=off --tls=off \"$@\"\n",
            smtp.port
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let config = format!(
        "[email]\nfrom = \"SmartSign <smartsign@test.example>\"\ntransport = \"sendmail\"\npath = {wrapper:?}\n"
    );
    let daemon = Daemon::start(&dir, &config);
    let secret = daemon.enroll(&user.name, "Pixel 8");
    daemon.cli(&["--user", &user.name, "email", "set", "mail@test.example"]);
    let args = format!("socket={}", daemon.socket.display());
    let sshd = Sshd::start(&dir, "sendmail", &user.name, &args);
    let app = oathtool(&secret, "now");
    let login = ssh_with(
        &dir,
        &sshd,
        &user.name,
        &user.password,
        "1",
        &app,
        Some(&smtp.maildir),
    );
    assert!(
        login.logged_in_as(&user.name),
        "{:?}\n{}",
        login.prompts,
        daemon.log()
    );
    assert!(
        daemon
            .audit()
            .iter()
            .any(|l| l.contains("method=email-code") && l.contains("result=allow"))
    );
    assert_eq!(smtp.messages().len(), 1);
}

/// A user registers an address themself: the code mailed to it, typed
/// back at the prompt, makes it theirs.
#[test]
fn a_user_confirms_their_address_from_the_mail() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;

    require_root();
    let dir = TempDir::new("mail-user");
    let user = TestUser::new("sse2e-mailuser");
    let smtp = SmtpServer::start(&dir);
    let daemon = Daemon::start(&dir, &smtp_settings(smtp.port, ""));
    // An address comes beside a phone, with a code from it.
    let secret = daemon.enroll(&user.name, "Pixel 8");
    let proof = oathtool(&secret, "now");
    let mut child = as_uid(user.uid(), SMARTSIGN)
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["email", "set", "me@test.example", "--code", &proof])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(
        line.contains("A code is on its way to m****@test.example"),
        "{line}"
    );
    writeln!(child.stdin.take().unwrap(), "{}", smtp.last_code()).unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(child.wait().unwrap().success(), "{rest}");
    let mail = smtp.messages().pop().unwrap();
    assert!(
        mail.contains("Subject: SmartSign address confirmation for sse2e-mailuser"),
        "{mail}"
    );

    let out = daemon.cli(&["--user", &user.name, "status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["email"], "me@test.example", "{status}");
}

/// `[policy] email_only`: an account with a confirmed address and no phone
/// is enrolled; its code is mailed as soon as the password is right.
#[test]
fn an_account_with_an_address_alone_logs_in_with_the_mailed_code() {
    require_root();
    let dir = TempDir::new("mail-only");
    let user = TestUser::new("sse2e-mail-only");
    let smtp = SmtpServer::start(&dir);
    let config = format!(
        "[policy]\nemail_only = true\n\n{}",
        smtp_settings(smtp.port, "")
    );
    let daemon = Daemon::start(&dir, &config);
    let out = daemon.cli(&["--user", &user.name, "email", "set", "only@test.example"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let args = format!("socket={}", daemon.socket.display());
    let sshd = Sshd::start(&dir, "mail-only", &user.name, &args);
    let login = ssh_with(
        &dir,
        &sshd,
        &user.name,
        &user.password,
        "",
        "",
        Some(&smtp.maildir),
    );
    assert!(
        login.logged_in_as(&user.name),
        "{:?}\n{}",
        login.prompts,
        daemon.log()
    );
    assert!(
        login.prompts[1].ends_with("Code from the email to o****@test.example: "),
        "{:?}",
        login.prompts
    );
    assert_eq!(smtp.messages().len(), 1);
    let audit = daemon.audit().join("\n");
    assert!(audit.contains("method=email-code"), "{audit}");
}
