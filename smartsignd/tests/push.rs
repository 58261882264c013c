//! Push approval end to end: a real sshd and OpenSSH client, smartsignd,
//! the ntfy stand-in as the relay (with a bearer token, the response topic
//! write-only for everyone) and a simulated phone that follows its topic
//! and taps a button. Needs root (see tests/common).

mod common;

use std::time::{Duration, Instant};

use common::ntfy::{Note, Phone, Relay};
use common::*;

const TOKEN: &str = "tk_smartsigntest0123456789abcdef";
const ANSWERS: &str = "smartsign-answers-e2e";

struct Setup {
    sshd: Sshd,
    daemon: Daemon,
    relay: Relay,
    user: TestUser,
    dir: TempDir,
    name: String,
}

/// `timeout` is the push's; `more` goes into `[push]`.
fn setup(name: &str, timeout: &str, more: &str) -> Setup {
    require_root();
    let dir = TempDir::new(&format!("push-{name}"));
    let user = TestUser::new(&format!("sse2e-p{name}"));
    let relay = Relay::start(&dir, &["--token", TOKEN, "--public-write", ANSWERS]);
    let token_file = dir.join("ntfy-token");
    std::fs::write(&token_file, TOKEN).unwrap();
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let daemon = Daemon::start(
        &dir,
        &format!(
            "[push]\nserver = \"{}\"\ntoken_file = {token_file:?}\n\
             response_topic = \"{ANSWERS}\"\ntimeout = \"{timeout}\"\n{more}\n",
            relay.url()
        ),
    );
    let args = format!("socket={}", daemon.socket.display());
    let sshd = Sshd::start(&dir, &format!("p{name}"), &user.name, &args);
    Setup {
        sshd,
        daemon,
        relay,
        user,
        dir,
        name: name.to_owned(),
    }
}

impl Setup {
    /// Enrolls a phone and subscribes the simulated ntfy app to its topic.
    fn phone(&self, name: &str) -> (String, Phone) {
        let (secret, url) = self.daemon.enroll_push(&self.user.name, name);
        assert!(
            url.starts_with(&format!("{}/smartsign-", self.relay.url())),
            "{url:?}"
        );
        (secret, Phone::follow(&url, Some(TOKEN)))
    }

    /// An ssh login; `push` answers the push prompt, `code` a later code
    /// prompt. Run it in a scoped thread to play the phone meanwhile.
    fn ssh(&self, push: &str, code: &str) -> Login {
        let (user, password) = (&self.user.name, &self.user.password);
        ssh_push(
            &self.dir, &self.sshd, user, password, code, code, push, None,
        )
    }

    /// The number the login's prompt shows, once it has been shown.
    fn shown_number(&self) -> String {
        let prompts = self.dir.join("askpass").join("prompts");
        let mut number = None;
        wait_until("the push prompt", Duration::from_secs(20), || {
            let text = std::fs::read_to_string(&prompts).unwrap_or_default();
            number = text
                .lines()
                .find_map(|l| l.split_once("Tap ").map(|(_, rest)| rest))
                .and_then(|rest| rest.split(' ').next())
                .map(str::to_owned);
            number.is_some()
        });
        number.unwrap()
    }

    fn audit_has(&self, words: &[&str]) -> bool {
        self.daemon
            .audit()
            .iter()
            .any(|line| words.iter().all(|w| line.contains(w)))
    }

    fn wait_audit(&self, words: &[&str]) {
        wait_until(
            &format!("an audit line with {words:?}"),
            Duration::from_secs(15),
            || self.audit_has(words),
        );
    }

    fn explain(&self, login: &Login) -> String {
        format!(
            "prompts {:?}\nstderr {}\ndaemon {}\nsshd {}",
            login.prompts,
            login.stderr,
            self.daemon.log(),
            self.sshd.log()
        )
    }
}

fn note_within(phone: &Phone) -> Note {
    phone
        .next(Duration::from_secs(15))
        .expect("a notification reached the phone")
}

#[test]
fn the_right_number_logs_in_and_the_notification_says_who_where_when() {
    let s = setup("ok", "30s", "");
    let (_, phone) = s.phone("Pixel 8");
    std::thread::scope(|scope| {
        let login = scope.spawn(|| s.ssh("", ""));
        let note = note_within(&phone);
        let number = s.shown_number();
        assert_eq!(note.buttons.len(), 3, "{note:?}");
        assert!(note.numbers().contains(&number), "{note:?} {number}");
        assert!(note.title.contains(&s.user.name), "{note:?}");
        for words in [
            s.user.name.as_str(),
            &format!("smartsign-e2e-p{}", s.name),
            "127.0.0.1",
            "UTC",
        ] {
            assert!(note.message.contains(words), "{words:?} in {note:?}");
        }
        let started = Instant::now();
        note.tap(&number);
        let login = login.join().unwrap();
        assert!(login.logged_in_as(&s.user.name), "{}", s.explain(&login));
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(
            login.prompts[1].contains(&format!("Tap {number} on your phone, then press Enter")),
            "{:?}",
            login.prompts
        );
        assert!(s.audit_has(&["method=push", "result=allow", "phone=\"Pixel 8\""]));
        assert!(s.audit_has(&["method=push", "result=pending", &format!("shows {number}")]));
    });
}

#[test]
fn a_wrong_number_refuses_counts_and_is_logged_as_an_attack() {
    let s = setup("wrong", "30s", "");
    let (_, phone) = s.phone("Pixel 8");
    std::thread::scope(|scope| {
        let login = scope.spawn(|| s.ssh("", ""));
        let note = note_within(&phone);
        let number = s.shown_number();
        note.tap(&note.decoy(&number));
        let login = login.join().unwrap();
        assert!(!login.status.success(), "{}", s.explain(&login));
        assert!(s.audit_has(&["method=push", "result=deny", "possible attack"]));
        let status = s.daemon.cli(&["--user", &s.user.name, "status", "--json"]);
        let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        assert_eq!(status["recent_failures"], 1, "{status}");
    });
}

#[test]
fn no_answer_refuses_after_the_timeout() {
    let s = setup("quiet", "3s", "");
    let (_, phone) = s.phone("Pixel 8");
    let started = Instant::now();
    std::thread::scope(|scope| {
        let login = scope.spawn(|| s.ssh("", ""));
        let _ignored = note_within(&phone);
        let login = login.join().unwrap();
        assert!(!login.status.success(), "{}", s.explain(&login));
        assert!(started.elapsed() < Duration::from_secs(20));
        assert!(s.audit_has(&[
            "method=push",
            "result=deny",
            "no answer from the phone in time"
        ]));
    });
}

#[test]
fn two_phones_get_it_the_second_approves_and_a_late_tap_is_refused() {
    let s = setup("two", "30s", "");
    let (_, pixel) = s.phone("Pixel 8");
    let (_, iphone) = s.phone("work iPhone");
    std::thread::scope(|scope| {
        let login = scope.spawn(|| s.ssh("", ""));
        let first = note_within(&pixel);
        let second = note_within(&iphone);
        let number = s.shown_number();
        assert_ne!(
            first.buttons[0].2, second.buttons[0].2,
            "each phone has its own tokens"
        );
        second.tap(&number);
        let login = login.join().unwrap();
        assert!(login.logged_in_as(&s.user.name), "{}", s.explain(&login));
        assert!(s.audit_has(&["method=push", "result=allow", "phone=\"work iPhone\""]));

        // The login is over: the other phone's tap changes nothing.
        first.tap(&number);
        s.wait_audit(&[
            "phone=\"Pixel 8\"",
            "result=refused",
            "a tap on a push that has ended",
        ]);
    });
}

#[test]
fn a_code_typed_instead_logs_in_and_withdraws_the_push() {
    let s = setup("code", "30s", "");
    let (secret, phone) = s.phone("Pixel 8");
    let code = oathtool(&secret, "now");
    std::thread::scope(|scope| {
        let login = scope.spawn(|| s.ssh(&code, ""));
        let note = note_within(&phone);
        let login = login.join().unwrap();
        assert!(login.logged_in_as(&s.user.name), "{}", s.explain(&login));
        assert!(s.audit_has(&["method=app-code", "result=allow"]));
        assert!(s.audit_has(&["method=push", "result=withdrawn", "went on without it"]));
        let number = s.shown_number();
        note.tap(&number);
        s.wait_audit(&["result=refused", "a tap on a push that has ended"]);
    });
}

#[test]
fn relay_down_at_the_start_leaves_the_code() {
    let s = setup("down", "30s", "");
    let (secret, _phone) = s.phone("Pixel 8");
    s.relay.stop();
    let login = s.ssh("", &oathtool(&secret, "now"));
    assert!(login.logged_in_as(&s.user.name), "{}", s.explain(&login));
    assert!(
        login
            .prompts
            .iter()
            .any(|p| p.contains("SmartSign code for")),
        "{}",
        s.explain(&login)
    );
    assert!(s.audit_has(&["method=push", "result=failed", "no push"]));
}

#[test]
fn relay_killed_while_waiting_fails_clearly_and_a_code_still_works() {
    let s = setup("killed", "60s", "");
    let (secret, phone) = s.phone("Pixel 8");
    let code = oathtool(&secret, "now");
    let started = Instant::now();
    std::thread::scope(|scope| {
        let login = scope.spawn(|| s.ssh("", &code));
        let _note = note_within(&phone);
        // Killed once smartsignd has the relay's answer to the publish, not
        // between the phone getting the notification and that answer.
        s.wait_audit(&["method=push", "result=pending"]);
        s.relay.stop();
        let login = login.join().unwrap();
        assert!(login.logged_in_as(&s.user.name), "{}", s.explain(&login));
        assert!(
            started.elapsed() < Duration::from_secs(45),
            "within the push timeout: {:?}",
            started.elapsed()
        );
        assert!(
            login
                .prompts
                .iter()
                .any(|p| p.contains("SmartSign code for")),
            "{}",
            s.explain(&login)
        );
        assert!(
            s.audit_has(&["method=push", "unreachable"]),
            "{}",
            s.explain(&login)
        );
    });
}

#[test]
fn an_answer_given_while_the_relay_restarts_is_not_lost() {
    let s = setup("restart", "60s", "");
    let (_, phone) = s.phone("Pixel 8");
    std::thread::scope(|scope| {
        let login = scope.spawn(|| s.ssh("", ""));
        let note = note_within(&phone);
        let number = s.shown_number();
        s.relay.restart();
        // The tap reaches the new relay before smartsignd has followed again.
        note.tap(&number);
        let login = login.join().unwrap();
        assert!(login.logged_in_as(&s.user.name), "{}", s.explain(&login));
        assert!(s.audit_has(&["method=push", "result=allow"]));
    });
}

#[test]
fn phone_test_says_whether_the_relay_took_it() {
    let s = setup("test", "30s", "");
    let (_, phone) = s.phone("Pixel 8");
    let out = s
        .daemon
        .cli(&["--user", &s.user.name, "phone", "test", "Pixel 8"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let note = note_within(&phone);
    assert_eq!(note.title, "SmartSign test");
    assert!(note.buttons.is_empty(), "{note:?}");

    let out = s
        .daemon
        .cli(&["--user", &s.user.name, "phone", "test", "no such"]);
    assert_eq!(out.status.code(), Some(5), "not found");

    s.relay.stop();
    let out = s
        .daemon
        .cli(&["--user", &s.user.name, "phone", "test", "Pixel 8"]);
    assert_eq!(out.status.code(), Some(11), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("relay"),
        "{out:?}"
    );
    assert!(s.audit_has(&["test notification failed"]));
}

#[test]
fn the_push_topic_is_shown_once_and_only_to_its_enroller() {
    let s = setup("once", "30s", "");
    let (_, _phone) = s.phone("Pixel 8");
    let list = s
        .daemon
        .cli(&["--user", &s.user.name, "phone", "list", "--json"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(!text.contains("smartsign-phone-"), "{text}");
    let status = s.daemon.cli(&["--user", &s.user.name, "status", "--json"]);
    assert!(!String::from_utf8_lossy(&status.stdout).contains("smartsign-phone-"));
}

#[test]
fn a_relay_that_refuses_the_token_leaves_the_code() {
    let s = setup("token", "30s", "");
    let (secret, _phone) = s.phone("Pixel 8");
    // Another token on the relay side: every publish is refused with 401.
    s.relay.stop();
    let relay = Relay::start_on(&s.dir, s.relay.port, &["--token", "tk_other"]);
    let login = s.ssh("", &oathtool(&secret, "now"));
    assert!(login.logged_in_as(&s.user.name), "{}", s.explain(&login));
    assert!(
        s.audit_has(&["method=push", "no push", "401"]),
        "{}",
        s.daemon.log()
    );
    drop(relay);
}

/// With PasswordAuthentication on (against the README's advice), sshd runs
/// the PAM stack once for the password method, answering every prompt with
/// the password, and again for keyboard-interactive: still one push, and
/// the password is neither sent as a code nor counted. (sshd then fails
/// the login at pam_setcred, since libpam replays the failed password run
/// for it; so the login's outcome is not what this test checks.)
#[test]
fn sshds_second_method_takes_up_the_push_of_the_first() {
    let s = setup("twice", "30s", "");
    let (_, phone) = s.phone("Pixel 8");
    let args = format!("socket={}", s.daemon.socket.display());
    let methods = "KbdInteractiveAuthentication yes\nPasswordAuthentication yes\n";
    let sshd = Sshd::start_with(&s.dir, "ptwicem", &s.user.name, &args, methods);
    std::thread::scope(|scope| {
        let login = scope.spawn(|| {
            let (user, password) = (&s.user.name, &s.user.password);
            let both = "password,keyboard-interactive";
            ssh_methods(&s.dir, &sshd, user, password, "", "", "", None, both)
        });
        let note = note_within(&phone);
        let number = s.shown_number();
        note.tap(&number);
        let login = login.join().unwrap();
        assert!(
            login.prompts.iter().any(|p| p.contains("'s password: ")),
            "the password method ran first: {}",
            s.explain(&login)
        );
        assert!(
            phone.next(Duration::from_millis(500)).is_none(),
            "a second notification for one login"
        );
        let pending = s
            .daemon
            .audit()
            .iter()
            .filter(|l| l.contains("result=pending"))
            .count();
        assert_eq!(pending, 1, "{}", s.daemon.log());
        assert!(s.audit_has(&["method=push", "result=allow"]));
        assert!(
            !s.audit_has(&["result=deny"]),
            "the password was not counted as a wrong code: {}",
            s.daemon.log()
        );
    });
}

/// A decoy tap says the login is not the user's: a code typed afterwards
/// (by whoever has it) does not save it.
#[test]
fn a_decoy_tap_then_a_code_is_still_refused() {
    let s = setup("decoy", "30s", "");
    let (secret, phone) = s.phone("Pixel 8");
    // The askpass answers the push prompt with the code, after the tap.
    let code = oathtool(&secret, "now");
    let askpass = s.dir.join("askpass");
    std::thread::scope(|scope| {
        let login = scope.spawn(|| s.ssh("wait-for-tap", ""));
        let note = note_within(&phone);
        let number = s.shown_number();
        note.tap(&note.decoy(&number));
        s.wait_audit(&["possible attack"]);
        std::fs::write(askpass.join("push-ready"), &code).unwrap();
        let login = login.join().unwrap();
        assert!(!login.status.success(), "{}", s.explain(&login));
        assert!(
            !s.audit_has(&["method=app-code", "result=allow"]),
            "{}",
            s.daemon.log()
        );
    });
}

#[test]
fn the_hourly_push_limit_survives_a_restart_and_unlock_clears_it() {
    let mut s = setup("limit", "30s", "max_per_hour = 1");
    let (_, _phone) = s.phone("Pixel 8");
    let test = |s: &Setup| {
        s.daemon
            .cli(&["--user", &s.user.name, "phone", "test", "Pixel 8"])
    };
    assert!(test(&s).status.success());
    let again = test(&s);
    assert_eq!(again.status.code(), Some(10), "{again:?}");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("the next may go at"),
        "{again:?}"
    );
    s.daemon.restart();
    assert_eq!(
        test(&s).status.code(),
        Some(10),
        "still counted after a restart"
    );
    let unlock = s.daemon.cli(&["--user", &s.user.name, "unlock"]);
    assert!(unlock.status.success());
    assert!(test(&s).status.success(), "unlock clears the count");
}

/// One thread watches every waiting push: a client that sends half a
/// request and stops must not hold up another login's push.
#[test]
fn a_stalled_client_holds_up_no_other_push() {
    use std::io::{Read, Write};

    let s = setup("stall", "30s", "");
    let (_, phone) = s.phone("Pixel 8");
    let mut stalled = std::os::unix::net::UnixStream::connect(&s.daemon.socket).unwrap();
    let start = format!(
        r#"{{"v":1,"request":{{"op":"push_start","login":{{"user":"{}","service":"stall"}}}}}}"#,
        s.user.name
    );
    stalled
        .write_all(&(start.len() as u32).to_be_bytes())
        .unwrap();
    stalled.write_all(start.as_bytes()).unwrap();
    let mut head = [0u8; 4];
    stalled.read_exact(&mut head).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(head) as usize];
    stalled.read_exact(&mut body).unwrap();
    assert!(String::from_utf8_lossy(&body).contains("push_sent"));
    let _first = note_within(&phone);
    // Half of the next frame's length, then nothing.
    stalled.write_all(&[0, 0]).unwrap();

    std::thread::scope(|scope| {
        let login = scope.spawn(|| s.ssh("", ""));
        let note = note_within(&phone);
        let number = s.shown_number();
        let tapped = Instant::now();
        note.tap(&number);
        let login = login.join().unwrap();
        assert!(login.logged_in_as(&s.user.name), "{}", s.explain(&login));
        assert!(tapped.elapsed() < Duration::from_secs(5));
    });
    drop(stalled);
    s.wait_audit(&["service=stall", "result=withdrawn"]);
}

/// A phone removed (lost, stolen) while its push waits cannot approve it.
#[test]
fn a_phone_removed_meanwhile_cannot_approve() {
    let s = setup("removed", "30s", "");
    let (_, phone) = s.phone("Pixel 8");
    let (_, _other) = s.phone("work iPhone");
    std::thread::scope(|scope| {
        let login = scope.spawn(|| s.ssh("", ""));
        let note = note_within(&phone);
        let number = s.shown_number();
        let out = s
            .daemon
            .cli(&["--user", &s.user.name, "phone", "remove", "Pixel 8"]);
        assert!(out.status.success(), "{out:?}");
        note.tap(&number);
        let login = login.join().unwrap();
        assert!(!login.status.success(), "{}", s.explain(&login));
        assert!(s.audit_has(&["result=deny", "no longer enrolled"]));
    });
}
