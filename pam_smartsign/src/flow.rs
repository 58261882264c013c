//! The login, step by step, against traits for the PAM handle and the daemon.

use std::time::Duration;

use smartsign_proto::{
    Client, ClientError, ErrorKind, LoginContext, Request, Response, Secret, Session,
};

use crate::args::{Args, Failmode};
use crate::outcome::Outcome;

/// The longest answer passed on to the daemon; a code is six digits.
pub const MAX_ANSWER: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Error,
    Warning,
    Info,
    Debug,
}

/// What the login needs from the PAM handle.
pub trait Pam {
    /// `PAM_USER`, asking the application for it if it is not set yet.
    fn user(&mut self) -> Result<String, Outcome>;
    fn service(&self) -> Option<String>;
    fn rhost(&self) -> Option<String>;
    fn tty(&self) -> Option<String>;
    /// Whether `answer` is the password the stack took (PAM_AUTHTOK).
    fn is_password(&self, answer: &str) -> bool;
    /// Keeps a push for the next call in this PAM transaction, as when
    /// sshd tries its next authentication method.
    fn keep_push(&mut self, push: Push);
    fn take_push(&mut self) -> Option<Push>;
    /// Asks with echo off. `Ok(None)` when the application gave no answer.
    fn prompt_hidden(&mut self, prompt: &str) -> Result<Option<Secret>, Outcome>;
    /// Tells the user something went wrong (`PAM_ERROR_MSG`).
    fn error(&mut self, text: &str);
    /// Tells the user something (`PAM_TEXT_INFO`).
    fn info(&mut self, text: &str);
    /// Logs through `pam_syslog` (LOG_AUTHPRIV).
    fn log(&mut self, priority: Priority, text: &str);
}

/// One request to smartsignd, one answer.
pub trait Daemon {
    fn call(&self, request: Request) -> Result<Response, ClientError>;
    /// A connection of its own, for a push: it lives as long as the push.
    fn open(&self) -> Result<Box<dyn Held>, ClientError>;
}

/// A connection kept open for several requests in turn.
pub trait Held {
    fn call(&mut self, request: Request, timeout: Duration) -> Result<Response, ClientError>;
}

impl Daemon for Client {
    fn call(&self, request: Request) -> Result<Response, ClientError> {
        Client::call(self, request)
    }

    fn open(&self) -> Result<Box<dyn Held>, ClientError> {
        Ok(Box::new(Client::open(self)?))
    }
}

impl Held for Session {
    fn call(&mut self, request: Request, timeout: Duration) -> Result<Response, ClientError> {
        Session::call(self, request, timeout)
    }
}

/// A push waiting for the phone, held by its connection, for this login
/// (user and service) alone.
pub struct Push {
    held: Box<dyn Held>,
    number: u8,
    expires: u64,
    login: LoginContext,
}

/// How long smartsignd may take to hand a push to the relay, on top of
/// the module's `timeout=` (its own bound is 5 seconds, and one more for
/// a publishing thread to take the job).
const PUBLISH_BOUND: Duration = Duration::from_secs(7);

/// Prompts a login may show, before it has to decide.
const MAX_PROMPTS: usize = 3;

/// The whole of `pam_sm_authenticate`. `now` is Unix seconds.
pub fn authenticate(pam: &mut dyn Pam, daemon: &dyn Daemon, args: &Args, now: u64) -> Outcome {
    let user = match pam.user() {
        Ok(user) => user,
        Err(outcome) => {
            pam.log(Priority::Error, "cannot get the user name");
            return outcome;
        }
    };
    let login = LoginContext {
        user,
        service: pam.service().unwrap_or_default(),
        rhost: pam.rhost(),
        tty: pam.tty(),
    };

    let (phones, mut email, skip_until, push, autopush) = match daemon.call(Request::Begin {
        login: login.clone(),
    }) {
        Ok(Response::Challenge {
            phones,
            email,
            skip_until,
            push,
            autopush,
        }) => (phones, email, skip_until, push, autopush),
        Ok(Response::NotEnrolled) => {
            if args.debug {
                pam.log(
                    Priority::Debug,
                    "user is not enrolled; the rest of the stack decides",
                );
            }
            return Outcome::Ignore;
        }
        Ok(Response::Skip { notice }) => return skip(pam, notice.as_deref()),
        Ok(Response::Deny { reason }) => {
            pam.error(&format!("SmartSign: {}.", reason.describe()));
            return Outcome::AuthErr;
        }
        Ok(Response::LockedOut { until }) => return locked_out(pam, until, now),
        Ok(other) => return odd_answer(pam, args, &other),
        Err(err) => return unavailable(pam, args, &err.to_string()),
    };
    if args.debug {
        pam.log(
            Priority::Debug,
            &format!("asking for a code from {} phone(s)", phones.len()),
        );
    }

    // One push per login: a second call in this PAM transaction (sshd's
    // next authentication method) takes up the one already sent.
    // Only for the same user and service: login(1) asks for another user
    // name in the same transaction after a failure.
    let kept = pam.take_push().filter(|kept| {
        kept.expires > now && kept.login.user == login.user && kept.login.service == login.service
    });
    let mut push = match kept {
        Some(kept) if push => Some(kept),
        _ if push => match start_push(pam, daemon, args, &login, now) {
            Ok(push) => push,
            Err(outcome) => return outcome,
        },
        _ => None,
    };
    // A greeter's service: the phone answers without a prompt first.
    if autopush && let Some(mut waiting) = push.take() {
        pam.info(&format!(
            "SmartSign: tap {} on your phone to log in.",
            waiting.number
        ));
        if let Some(outcome) = wait_for_phone(pam, args, &mut waiting, now) {
            return outcome;
        }
    }

    // Everything the user must know before answering is in the prompt
    // itself: sshd shows info messages only along with the next prompt.
    let user = printable(&login.user);
    let mut emailed_to: Option<String> = None;
    // An account enrolled by its address alone: the code is mailed at once.
    if phones.is_empty() && push.is_none() && email.is_some() {
        email = None;
        match email_code(pam, daemon, args, &login, now, "Type a backup code.") {
            Ok(to) => emailed_to = to,
            Err(outcome) => return outcome,
        }
    }
    for _ in 0..MAX_PROMPTS {
        let mut options = Vec::new();
        if let Some(to) = &email {
            options.push(format!("1 to email a code to {to}"));
        }
        if let Some(until) = &skip_until {
            options.push(format!("s to skip SmartSign, allowed until {until}"));
        }
        let prompt = match (&push, &emailed_to) {
            (Some(push), _) => {
                options.insert(0, "type a code".into());
                format!(
                    "Tap {} on your phone, then press Enter (or {}): ",
                    push.number,
                    options.join(", or ")
                )
            }
            (None, Some(to)) if phones.is_empty() => format!("Code from the email to {to}: "),
            (None, Some(to)) => format!("Code from the email to {to} (or from your phone): "),
            (None, None) if options.is_empty() => format!("SmartSign code for {user}: "),
            (None, None) => format!("SmartSign code for {user} (or {}): ", options.join(", or ")),
        };
        let answer = match ask(pam, &prompt) {
            Ok(answer) => answer,
            Err(outcome) => {
                if let Some(push) = push.take() {
                    cancel_push(pam, args, push, now);
                }
                return outcome;
            }
        };
        // An application that answers prompts itself with the password
        // (sshd's PasswordAuthentication) has no user to ask: the code is
        // for keyboard-interactive. Not a code, not counted, not sent.
        if pam.is_password(answer.expose()) {
            pam.log(
                Priority::Warning,
                "the answer to the SmartSign prompt was the password: this application \
                 answers prompts itself (sshd's PasswordAuthentication does); \
                 SmartSign needs keyboard-interactive",
            );
            pam.error("SmartSign: that is your password, not a code.");
            if let Some(push) = push.take() {
                pam.keep_push(push);
            }
            return Outcome::AuthErr;
        }
        let typed = answer.expose().trim();
        if typed.is_empty()
            && let Some(waiting) = push.as_mut()
        {
            if let Some(outcome) = wait_for_phone(pam, args, waiting, now) {
                return outcome;
            }
            push = None;
            continue;
        }
        // Enter alone, with no push to wait for, is no attempt: ask again.
        if typed.is_empty() && push.is_none() {
            continue;
        }
        // Anything else the user types ends the push first: an approval
        // must not slip in beside a code.
        if let Some(push) = push.take()
            && let Some(refused) = cancel_push(pam, args, push, now)
        {
            return refused;
        }
        if skip_until.is_some() && typed.eq_ignore_ascii_case("s") {
            return match daemon.call(Request::SkipNow { login }) {
                Ok(Response::Skip { notice }) => skip(pam, notice.as_deref()),
                Ok(Response::Deny { reason }) => {
                    pam.error(&format!("SmartSign: {}.", reason.describe()));
                    Outcome::AuthErr
                }
                Ok(Response::LockedOut { until }) => locked_out(pam, until, now),
                Ok(other) => odd_answer(pam, args, &other),
                Err(err) => unavailable(pam, args, &err.to_string()),
            };
        }
        if email.is_none() || typed != "1" {
            return verify(pam, daemon, args, login, answer, now);
        }
        email = None;
        let instead = "Type the code from your phone.";
        match email_code(pam, daemon, args, &login, now, instead) {
            Ok(to) => emailed_to = to,
            Err(outcome) => return outcome,
        }
    }
    pam.error("SmartSign: no code was given.");
    Outcome::AuthErr
}

/// Has a code mailed: `Ok(Some(masked address))` when it went, `Ok(None)`
/// when it could not (the user is told, and `instead` says what to type).
fn email_code(
    pam: &mut dyn Pam,
    daemon: &dyn Daemon,
    args: &Args,
    login: &LoginContext,
    now: u64,
    instead: &str,
) -> Result<Option<String>, Outcome> {
    match daemon.call(Request::SendEmailCode {
        login: login.clone(),
    }) {
        Ok(Response::EmailSent { to, .. }) => Ok(Some(to)),
        Ok(Response::Error {
            kind: ErrorKind::MailFailed | ErrorKind::TooMany,
            message,
        }) => {
            pam.log(
                Priority::Warning,
                &format!("no code was emailed: {message}"),
            );
            pam.error(&format!(
                "SmartSign could not email a code: {message}. {instead}"
            ));
            Ok(None)
        }
        // The daemon answered before; a mail server keeping it busy past
        // our bound leaves the other codes, not the fail mode.
        Err(ClientError::Timeout) => {
            pam.log(
                Priority::Warning,
                "no answer in time while a code was being emailed",
            );
            pam.error(&format!(
                "SmartSign could not email a code in time. {instead}"
            ));
            Ok(None)
        }
        Ok(Response::LockedOut { until }) => Err(locked_out(pam, until, now)),
        Ok(other) => Err(odd_answer(pam, args, &other)),
        Err(err) => Err(unavailable(pam, args, &err.to_string())),
    }
}

/// Sends the push; `Ok(None)` when push cannot be had this time (the user
/// is told, and types a code instead).
fn start_push(
    pam: &mut dyn Pam,
    daemon: &dyn Daemon,
    args: &Args,
    login: &LoginContext,
    now: u64,
) -> Result<Option<Push>, Outcome> {
    let no_push = |pam: &mut dyn Pam, why: &str| {
        pam.log(Priority::Warning, &format!("no push: {why}"));
        pam.error(&format!(
            "SmartSign: push is unavailable ({}). Type a code instead.",
            printable(why)
        ));
        Ok(None)
    };
    let mut held = match daemon.open() {
        Ok(held) => held,
        Err(err) => return no_push(pam, &err.to_string()),
    };
    let start = Request::PushStart {
        login: login.clone(),
    };
    // The daemon publishes before it answers, within its own bound.
    match held.call(start, args.timeout + PUBLISH_BOUND) {
        Ok(Response::PushSent {
            number, expires, ..
        }) => Ok(Some(Push {
            held,
            number,
            expires,
            login: login.clone(),
        })),
        Ok(Response::Error {
            kind: ErrorKind::PushFailed | ErrorKind::TooMany,
            message,
        }) => no_push(pam, &message),
        Ok(Response::LockedOut { until }) => Err(locked_out(pam, until, now)),
        Ok(Response::Deny { reason }) => {
            pam.error(&format!("SmartSign: {}.", reason.describe()));
            Err(Outcome::AuthErr)
        }
        Ok(Response::Skip { notice }) => Err(skip(pam, notice.as_deref())),
        Ok(Response::NotEnrolled) => Err(Outcome::Ignore),
        Ok(other) => no_push(pam, &format!("unexpected answer {other:?}")),
        Err(err) => no_push(pam, &err.to_string()),
    }
}

/// Waits for the phone. `None` when the push failed and a code may still
/// be typed; the user has been told.
fn wait_for_phone(pam: &mut dyn Pam, args: &Args, push: &mut Push, now: u64) -> Option<Outcome> {
    // The daemon ends the push at `expires`; this bound is for a daemon
    // that stops answering.
    let left = push.expires.saturating_sub(now).min(600);
    let bound = Duration::from_secs(left) + args.timeout;
    match push.held.call(Request::PushWait, bound) {
        Ok(Response::Allow { phone }) => {
            if args.debug {
                pam.log(Priority::Debug, &format!("approved on {phone:?}"));
            }
            Some(Outcome::Success)
        }
        Ok(Response::Deny { reason }) => {
            pam.error(&format!("SmartSign: {}.", reason.describe()));
            Some(Outcome::AuthErr)
        }
        Ok(Response::LockedOut { until }) => Some(locked_out(pam, until, now)),
        Ok(Response::Error {
            kind: ErrorKind::PushFailed,
            message,
        }) => {
            pam.log(Priority::Warning, &format!("push failed: {message}"));
            pam.error(&format!(
                "SmartSign: push is unavailable ({}). Type a code instead.",
                printable(&message)
            ));
            None
        }
        Ok(other) => Some(odd_answer(pam, args, &other)),
        Err(err) => {
            pam.log(Priority::Warning, &format!("waiting for the phone: {err}"));
            pam.error("SmartSign: no answer about the push. Type a code instead.");
            None
        }
    }
}

/// Withdraws a push the user answered otherwise (closing its connection
/// would too; this says why). `Some` when the phone's answer refuses the
/// login all the same: a decoy tapped says this login is not the user's.
fn cancel_push(pam: &mut dyn Pam, args: &Args, mut push: Push, now: u64) -> Option<Outcome> {
    match push.held.call(Request::PushCancel, args.timeout) {
        Ok(Response::Deny { reason }) => {
            pam.error(&format!("SmartSign: {}.", reason.describe()));
            Some(Outcome::AuthErr)
        }
        Ok(Response::LockedOut { until }) => Some(locked_out(pam, until, now)),
        _ => None,
    }
}

/// One hidden prompt; an answer too long to be a code is refused here.
fn ask(pam: &mut dyn Pam, prompt: &str) -> Result<Secret, Outcome> {
    let answer = match pam.prompt_hidden(prompt) {
        Ok(Some(answer)) => answer,
        Ok(None) => {
            pam.log(
                Priority::Info,
                "the application returned no answer to the code prompt",
            );
            return Err(Outcome::AuthErr);
        }
        Err(outcome) => {
            pam.log(
                Priority::Warning,
                "the conversation failed at the code prompt",
            );
            return Err(outcome);
        }
    };
    if answer.expose().len() > MAX_ANSWER {
        pam.log(
            Priority::Warning,
            &format!("refused an answer of over {MAX_ANSWER} bytes"),
        );
        pam.error("SmartSign: that is not a code.");
        return Err(Outcome::AuthErr);
    }
    Ok(answer)
}

fn verify(
    pam: &mut dyn Pam,
    daemon: &dyn Daemon,
    args: &Args,
    login: LoginContext,
    code: Secret,
    now: u64,
) -> Outcome {
    match daemon.call(Request::VerifyCode { login, code }) {
        Ok(Response::Allow { phone }) => {
            if args.debug {
                pam.log(Priority::Debug, &format!("code accepted from {phone:?}"));
            }
            Outcome::Success
        }
        Ok(Response::Deny { reason }) => {
            pam.error(&format!("SmartSign: {}.", reason.describe()));
            Outcome::AuthErr
        }
        Ok(Response::Skip { notice }) => skip(pam, notice.as_deref()),
        Ok(Response::NotEnrolled) => Outcome::Ignore,
        Ok(Response::LockedOut { until }) => locked_out(pam, until, now),
        Ok(other) => odd_answer(pam, args, &other),
        Err(err) => unavailable(pam, args, &err.to_string()),
    }
}

/// The policy lets this login through without a second factor: never
/// PAM_SUCCESS, so that SmartSign cannot stand in for the password.
fn skip(pam: &mut dyn Pam, notice: Option<&str>) -> Outcome {
    if let Some(notice) = notice {
        pam.info(&printable(notice));
    }
    Outcome::Ignore
}

fn locked_out(pam: &mut dyn Pam, until: u64, now: u64) -> Outcome {
    let minutes = until.saturating_sub(now).div_ceil(60).max(1);
    let unit = if minutes == 1 { "minute" } else { "minutes" };
    pam.error(&format!(
        "SmartSign: too many wrong codes. Try again in {minutes} {unit}, \
         or ask your administrator to unlock your account."
    ));
    Outcome::MaxTries
}

/// SmartSign cannot decide. The fail mode says what the login does about it.
fn unavailable(pam: &mut dyn Pam, args: &Args, why: &str) -> Outcome {
    let (failmode, from) = args.resolve_failmode();
    let hint = "if smartsignd did not start, `smartsignd --check-config` says why";
    match failmode {
        Failmode::Secure => {
            pam.log(
                Priority::Error,
                &format!("failmode=secure ({from}), refusing the login: {why}; {hint}"),
            );
            pam.error(
                "SmartSign is unavailable, so the login is refused. Contact your administrator.",
            );
            Outcome::AuthInfoUnavail
        }
        Failmode::Safe => {
            pam.log(
                Priority::Error,
                &format!(
                    "failmode=safe ({from}): NO SECOND FACTOR was asked, the rest of the \
                     stack decides: {why}; {hint}"
                ),
            );
            pam.error("SmartSign is unavailable; continuing without the second factor.");
            Outcome::Ignore
        }
    }
}

/// An answer other than the ones a login expects. A refusal of this
/// request (not our account, a bad user name) is a denial whatever the fail
/// mode: failmode=safe is for a daemon that cannot answer, not for one that
/// said no. Anything else means SmartSign cannot decide.
fn odd_answer(pam: &mut dyn Pam, args: &Args, response: &Response) -> Outcome {
    match response {
        Response::Error {
            kind: ErrorKind::Internal | ErrorKind::UnsupportedVersion,
            message,
        } => unavailable(pam, args, &format!("smartsignd failed: {message}")),
        Response::Error { kind, message } => {
            pam.log(
                Priority::Error,
                &format!("smartsignd refused the login ({kind:?}): {message}"),
            );
            pam.error("SmartSign refused this login. Contact your administrator.");
            Outcome::AuthErr
        }
        other => unavailable(
            pam,
            args,
            &format!("unexpected answer from smartsignd: {other:?}"),
        ),
    }
}

/// The user name as it may appear in a prompt: no control characters.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use smartsign_proto::DenyReason;
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::rc::Rc;

    const NOW: u64 = 1_800_000_000;

    #[derive(Default)]
    struct ScriptedPam {
        user: Option<String>,
        answers: VecDeque<Result<Option<Secret>, Outcome>>,
        prompts: Vec<String>,
        errors: Vec<String>,
        infos: Vec<String>,
        logs: Vec<(Priority, String)>,
        password: Option<String>,
        kept: Option<Push>,
    }

    impl ScriptedPam {
        fn alice(answers: &[&str]) -> Self {
            Self {
                user: Some("alice".into()),
                answers: answers.iter().map(|a| Ok(Some(Secret::from(*a)))).collect(),
                ..Self::default()
            }
        }
    }

    impl Pam for ScriptedPam {
        fn user(&mut self) -> Result<String, Outcome> {
            self.user.clone().ok_or(Outcome::SystemErr)
        }
        fn service(&self) -> Option<String> {
            Some("sshd".into())
        }
        fn rhost(&self) -> Option<String> {
            Some("192.0.2.7".into())
        }
        fn tty(&self) -> Option<String> {
            Some("ssh".into())
        }
        fn is_password(&self, answer: &str) -> bool {
            self.password.as_deref() == Some(answer)
        }
        fn keep_push(&mut self, push: Push) {
            self.kept = Some(push);
        }
        fn take_push(&mut self) -> Option<Push> {
            self.kept.take()
        }
        fn prompt_hidden(&mut self, prompt: &str) -> Result<Option<Secret>, Outcome> {
            self.prompts.push(prompt.into());
            self.answers.pop_front().expect("an unexpected prompt")
        }
        fn error(&mut self, text: &str) {
            self.errors.push(text.into());
        }
        fn info(&mut self, text: &str) {
            self.infos.push(text.into());
        }
        fn log(&mut self, priority: Priority, text: &str) {
            self.logs.push((priority, text.into()));
        }
    }

    type Script = Rc<RefCell<VecDeque<(&'static str, Result<Response, ClientError>)>>>;

    /// Answers each expected request in turn and checks that all were asked.
    /// Requests on held connections (pushes) come from the same script.
    struct ScriptedDaemon {
        script: Script,
        codes: Rc<RefCell<Vec<String>>>,
    }

    impl ScriptedDaemon {
        fn new(script: Vec<(&'static str, Result<Response, ClientError>)>) -> Self {
            Self {
                script: Rc::new(RefCell::new(script.into())),
                codes: Rc::default(),
            }
        }
    }

    fn answer(
        script: &Script,
        codes: &RefCell<Vec<String>>,
        request: &Request,
    ) -> Result<Response, ClientError> {
        let (op, answer) = script
            .borrow_mut()
            .pop_front()
            .unwrap_or_else(|| panic!("an unexpected {}", request.op()));
        assert_eq!(request.op(), op);
        if let Request::VerifyCode { login, code } = request {
            assert_eq!(login.service, "sshd");
            assert_eq!(login.rhost.as_deref(), Some("192.0.2.7"));
            codes.borrow_mut().push(code.expose().into());
        }
        answer
    }

    struct ScriptedHeld {
        script: Script,
        codes: Rc<RefCell<Vec<String>>>,
    }

    impl Held for ScriptedHeld {
        fn call(&mut self, request: Request, _: Duration) -> Result<Response, ClientError> {
            answer(&self.script, &self.codes, &request)
        }
    }

    impl Daemon for ScriptedDaemon {
        fn call(&self, request: Request) -> Result<Response, ClientError> {
            answer(&self.script, &self.codes, &request)
        }

        fn open(&self) -> Result<Box<dyn Held>, ClientError> {
            Ok(Box::new(ScriptedHeld {
                script: Rc::clone(&self.script),
                codes: Rc::clone(&self.codes),
            }))
        }
    }

    impl Drop for ScriptedDaemon {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                assert!(
                    self.script.borrow().is_empty(),
                    "expected calls were not made"
                );
            }
        }
    }

    fn challenge() -> Result<Response, ClientError> {
        Ok(Response::Challenge {
            phones: vec!["Pixel 8".into()],
            email: None,
            skip_until: None,
            push: false,
            autopush: false,
        })
    }

    /// A daemon that asks for a code, then answers it with `verdict`.
    fn challenge_then(verdict: Response) -> ScriptedDaemon {
        ScriptedDaemon::new(vec![("begin", challenge()), ("verify_code", Ok(verdict))])
    }

    fn run(pam: &mut ScriptedPam, daemon: &ScriptedDaemon, args: &Args) -> Outcome {
        authenticate(pam, daemon, args, NOW)
    }

    #[test]
    fn right_code_succeeds() {
        let mut pam = ScriptedPam::alice(&["123456"]);
        let daemon = ScriptedDaemon::new(vec![
            ("begin", challenge()),
            (
                "verify_code",
                Ok(Response::Allow {
                    phone: "Pixel 8".into(),
                }),
            ),
        ]);
        assert_eq!(run(&mut pam, &daemon, &Args::default()), Outcome::Success);
        assert_eq!(pam.prompts, ["SmartSign code for alice: "]);
        assert_eq!(*daemon.codes.borrow(), ["123456"]);
        assert!(pam.errors.is_empty());
    }

    #[test]
    fn wrong_code_is_auth_err_with_a_message() {
        let mut pam = ScriptedPam::alice(&["000000"]);
        let daemon = challenge_then(Response::Deny {
            reason: DenyReason::WrongCode,
        });
        assert_eq!(run(&mut pam, &daemon, &Args::default()), Outcome::AuthErr);
        assert_eq!(pam.errors, ["SmartSign: wrong code."]);
    }

    #[test]
    fn lockout_is_maxtries_before_or_after_the_prompt() {
        let mut pam = ScriptedPam::alice(&[]);
        let daemon =
            ScriptedDaemon::new(vec![("begin", Ok(Response::LockedOut { until: NOW + 90 }))]);
        assert_eq!(run(&mut pam, &daemon, &Args::default()), Outcome::MaxTries);
        assert!(pam.prompts.is_empty());
        assert!(
            pam.errors[0].contains("Try again in 2 minutes"),
            "{:?}",
            pam.errors
        );

        let mut pam = ScriptedPam::alice(&["111111"]);
        let daemon = ScriptedDaemon::new(vec![
            ("begin", challenge()),
            ("verify_code", Ok(Response::LockedOut { until: NOW + 5 })),
        ]);
        assert_eq!(run(&mut pam, &daemon, &Args::default()), Outcome::MaxTries);
        assert!(
            pam.errors[0].contains("Try again in 1 minute,"),
            "{:?}",
            pam.errors
        );
    }

    #[test]
    fn not_enrolled_leaves_it_to_the_stack() {
        let mut pam = ScriptedPam::alice(&[]);
        let daemon = ScriptedDaemon::new(vec![("begin", Ok(Response::NotEnrolled))]);
        assert_eq!(run(&mut pam, &daemon, &Args::default()), Outcome::Ignore);
        assert!(pam.prompts.is_empty());
    }

    fn daemon_down() -> Result<Response, ClientError> {
        Err(ClientError::NotRunning {
            path: "/run/smartsign/smartsignd.sock".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        })
    }

    #[test]
    fn daemon_down_follows_the_failmode() {
        let mut pam = ScriptedPam::alice(&[]);
        let daemon = ScriptedDaemon::new(vec![("begin", daemon_down())]);
        assert_eq!(
            run(&mut pam, &daemon, &Args::default()),
            Outcome::AuthInfoUnavail
        );
        assert!(pam.errors[0].contains("unavailable"));
        assert!(
            pam.logs
                .iter()
                .any(|(p, l)| *p == Priority::Error && l.contains("failmode=secure"))
        );

        let safe = Args {
            failmode: Some(Failmode::Safe),
            ..Args::default()
        };
        let mut pam = ScriptedPam::alice(&[]);
        let daemon = ScriptedDaemon::new(vec![("begin", daemon_down())]);
        assert_eq!(run(&mut pam, &daemon, &safe), Outcome::Ignore);
        assert!(pam.errors[0].contains("unavailable"));
        assert!(pam.logs.iter().any(|(_, l)| l.contains("failmode=safe")));
    }

    #[test]
    fn daemon_lost_after_the_prompt_follows_the_failmode() {
        let mut pam = ScriptedPam::alice(&["123456"]);
        let daemon = ScriptedDaemon::new(vec![
            ("begin", challenge()),
            ("verify_code", Err(ClientError::Timeout)),
        ]);
        assert_eq!(
            run(&mut pam, &daemon, &Args::default()),
            Outcome::AuthInfoUnavail
        );
    }

    #[test]
    fn a_refusal_or_odd_answer_is_never_success() {
        let safe = Args {
            failmode: Some(Failmode::Safe),
            ..Args::default()
        };
        let cases = [
            (
                Response::error(ErrorKind::Refused, "not yours"),
                Outcome::AuthErr,
                Outcome::AuthErr,
            ),
            (
                Response::error(ErrorKind::BadRequest, "bad name"),
                Outcome::AuthErr,
                Outcome::AuthErr,
            ),
            (
                Response::error(ErrorKind::Internal, "store unreadable"),
                Outcome::AuthInfoUnavail,
                Outcome::Ignore,
            ),
            (Response::Done, Outcome::AuthInfoUnavail, Outcome::Ignore),
            (
                Response::Allow { phone: "x".into() },
                Outcome::AuthInfoUnavail,
                Outcome::Ignore,
            ),
        ];
        for (answer, secure_outcome, safe_outcome) in cases {
            for (args, expected) in [
                (Args::default(), secure_outcome),
                (safe.clone(), safe_outcome),
            ] {
                let mut pam = ScriptedPam::alice(&[]);
                let daemon = ScriptedDaemon::new(vec![("begin", Ok(answer.clone()))]);
                assert_eq!(
                    run(&mut pam, &daemon, &args),
                    expected,
                    "{answer:?} {args:?}"
                );
                assert!(!pam.errors.is_empty(), "the user is told: {answer:?}");
            }
        }
    }

    #[test]
    fn an_overlong_answer_is_refused_without_asking_the_daemon() {
        let long = "9".repeat(MAX_ANSWER + 1);
        let mut pam = ScriptedPam::alice(&[&long]);
        let daemon = ScriptedDaemon::new(vec![("begin", challenge())]);
        assert_eq!(run(&mut pam, &daemon, &Args::default()), Outcome::AuthErr);
        assert!(pam.logs.iter().any(|(_, l)| l.contains("over 256 bytes")));
    }

    #[test]
    fn no_answer_or_a_broken_conversation_fails() {
        let mut pam = ScriptedPam::alice(&[]);
        pam.answers.push_back(Ok(None));
        let daemon = ScriptedDaemon::new(vec![("begin", challenge())]);
        assert_eq!(run(&mut pam, &daemon, &Args::default()), Outcome::AuthErr);

        let mut pam = ScriptedPam::alice(&[]);
        pam.answers.push_back(Err(Outcome::ConvErr));
        let daemon = ScriptedDaemon::new(vec![("begin", challenge())]);
        assert_eq!(run(&mut pam, &daemon, &Args::default()), Outcome::ConvErr);
    }

    #[test]
    fn no_user_is_an_error_without_calling_the_daemon() {
        let mut pam = ScriptedPam {
            user: None,
            ..ScriptedPam::default()
        };
        let daemon = ScriptedDaemon::new(vec![]);
        assert_eq!(run(&mut pam, &daemon, &Args::default()), Outcome::SystemErr);
    }

    #[test]
    fn control_characters_never_reach_the_prompt() {
        let mut pam = ScriptedPam::alice(&["123456"]);
        pam.user = Some("ali\x1b[2Jce\n".into());
        let daemon = challenge_then(Response::Deny {
            reason: DenyReason::WrongCode,
        });
        assert_eq!(run(&mut pam, &daemon, &Args::default()), Outcome::AuthErr);
        assert_eq!(pam.prompts, ["SmartSign code for ali?[2Jce?: "]);
    }

    /// The FFI layer runs this same function inside `guarded`; a panic from
    /// any part of the login (here the daemon client) must not escape.
    #[test]
    fn a_panic_inside_the_login_is_contained() {
        struct Exploding;
        impl Daemon for Exploding {
            fn call(&self, _: Request) -> Result<Response, ClientError> {
                panic!("daemon client bug");
            }
            fn open(&self) -> Result<Box<dyn Held>, ClientError> {
                panic!("daemon client bug");
            }
        }
        let code = crate::outcome::guarded(|| {
            let mut pam = ScriptedPam::alice(&[]);
            authenticate(&mut pam, &Exploding, &Args::default(), NOW)
        });
        assert_eq!(code, pam::constants::PamResultCode::PAM_SYSTEM_ERR);
    }

    #[test]
    fn the_real_client_times_out_within_the_bound() {
        let dir = std::env::temp_dir().join(format!("pam-smartsign-flow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("silent.sock");
        let _ = std::fs::remove_file(&path);
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let args = Args {
            socket: path,
            timeout: Duration::from_secs(1),
            ..Args::default()
        };
        let client = Client::new(&args.socket, args.timeout);
        let mut pam = ScriptedPam::alice(&[]);
        let started = std::time::Instant::now();
        assert_eq!(
            authenticate(&mut pam, &client, &args, NOW),
            Outcome::AuthInfoUnavail
        );
        assert!(started.elapsed() < Duration::from_secs(3));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn challenge_with_email() -> Result<Response, ClientError> {
        Ok(Response::Challenge {
            phones: vec!["Pixel 8".into()],
            email: Some("a****@example.org".into()),
            skip_until: None,
            push: false,
            autopush: false,
        })
    }

    #[test]
    fn the_email_option_is_in_the_prompt_and_its_code_is_asked_next() {
        let mut pam = ScriptedPam::alice(&["1", "01234567"]);
        let daemon = ScriptedDaemon::new(vec![
            ("begin", challenge_with_email()),
            (
                "send_email_code",
                Ok(Response::EmailSent {
                    to: "a****@example.org".into(),
                    expires: NOW + 600,
                }),
            ),
            (
                "verify_code",
                Ok(Response::Allow {
                    phone: "email a****@example.org".into(),
                }),
            ),
        ]);
        assert_eq!(run(&mut pam, &daemon, &Args::default()), Outcome::Success);
        assert_eq!(
            pam.prompts,
            [
                "SmartSign code for alice (or 1 to email a code to a****@example.org): ",
                "Code from the email to a****@example.org (or from your phone): ",
            ]
        );
        assert_eq!(*daemon.codes.borrow(), ["01234567"]);
    }

    #[test]
    fn a_mail_that_fails_leaves_the_app_code() {
        let mut pam = ScriptedPam::alice(&["1", "123456"]);
        let daemon = ScriptedDaemon::new(vec![
            ("begin", challenge_with_email()),
            (
                "send_email_code",
                Ok(Response::error(
                    ErrorKind::MailFailed,
                    "the SMTP server did not answer",
                )),
            ),
            (
                "verify_code",
                Ok(Response::Allow {
                    phone: "Pixel 8".into(),
                }),
            ),
        ]);
        assert_eq!(run(&mut pam, &daemon, &Args::default()), Outcome::Success);
        assert_eq!(pam.prompts[1], "SmartSign code for alice: ");
        assert!(pam.errors[0].contains("could not email a code: the SMTP server did not answer"));
    }

    #[test]
    fn one_email_per_login_then_the_answer_is_a_code() {
        // A second "1" is not another request for mail: it goes to the daemon as a code.
        let mut pam = ScriptedPam::alice(&["1", "1"]);
        let daemon = ScriptedDaemon::new(vec![
            ("begin", challenge_with_email()),
            (
                "send_email_code",
                Ok(Response::EmailSent {
                    to: "a****@example.org".into(),
                    expires: NOW + 600,
                }),
            ),
            (
                "verify_code",
                Ok(Response::Deny {
                    reason: DenyReason::MalformedCode,
                }),
            ),
        ]);
        assert_eq!(run(&mut pam, &daemon, &Args::default()), Outcome::AuthErr);
        assert_eq!(pam.prompts.len(), 2);
    }

    #[test]
    fn a_slow_mail_leaves_the_app_code_under_either_failmode() {
        for failmode in [Failmode::Secure, Failmode::Safe] {
            let args = Args {
                failmode: Some(failmode),
                ..Args::default()
            };
            let mut pam = ScriptedPam::alice(&["1", "000000"]);
            let daemon = ScriptedDaemon::new(vec![
                ("begin", challenge_with_email()),
                ("send_email_code", Err(ClientError::Timeout)),
                (
                    "verify_code",
                    Ok(Response::Deny {
                        reason: DenyReason::WrongCode,
                    }),
                ),
            ]);
            assert_eq!(
                run(&mut pam, &daemon, &args),
                Outcome::AuthErr,
                "{failmode:?}"
            );
            assert_eq!(pam.prompts[1], "SmartSign code for alice: ");
        }
    }

    #[test]
    fn policy_skips_are_ignore_with_the_notice_and_denials_are_errors() {
        let mut pam = ScriptedPam::alice(&[]);
        let notice =
            "SmartSign becomes required on 1 April 2027; enroll with: smartsign phone add NAME";
        let daemon = ScriptedDaemon::new(vec![(
            "begin",
            Ok(Response::Skip {
                notice: Some(notice.into()),
            }),
        )]);
        assert_eq!(run(&mut pam, &daemon, &Args::default()), Outcome::Ignore);
        assert_eq!(pam.infos, [notice]);
        assert!(pam.prompts.is_empty());

        let mut pam = ScriptedPam::alice(&[]);
        let daemon = ScriptedDaemon::new(vec![(
            "begin",
            Ok(Response::Deny {
                reason: DenyReason::NotEnrolled,
            }),
        )]);
        assert_eq!(run(&mut pam, &daemon, &Args::default()), Outcome::AuthErr);
        assert!(
            pam.errors[0].contains("ask your administrator"),
            "{:?}",
            pam.errors
        );
    }

    #[test]
    fn enrolled_users_may_skip_before_the_deadline() {
        let mut pam = ScriptedPam::alice(&["s"]);
        let daemon = ScriptedDaemon::new(vec![
            (
                "begin",
                Ok(Response::Challenge {
                    phones: vec!["Pixel 8".into()],
                    email: Some("a****@example.org".into()),
                    skip_until: Some("1 April 2027".into()),
                    push: false,
                    autopush: false,
                }),
            ),
            ("skip_now", Ok(Response::Skip { notice: None })),
        ]);
        assert_eq!(run(&mut pam, &daemon, &Args::default()), Outcome::Ignore);
        assert_eq!(
            pam.prompts,
            [
                "SmartSign code for alice (or 1 to email a code to a****@example.org, \
              or s to skip SmartSign, allowed until 1 April 2027): "
            ]
        );
    }

    fn challenge_push(autopush: bool) -> Result<Response, ClientError> {
        Ok(Response::Challenge {
            phones: vec!["Pixel 8".into(), "iPhone".into()],
            email: None,
            skip_until: None,
            push: true,
            autopush,
        })
    }

    fn sent() -> Result<Response, ClientError> {
        Ok(Response::PushSent {
            number: 47,
            phones: vec!["Pixel 8".into(), "iPhone".into()],
            expires: NOW + 60,
        })
    }

    #[test]
    fn enter_waits_for_the_phone_and_its_number_is_in_the_prompt() {
        let mut pam = ScriptedPam::alice(&[""]);
        let daemon = ScriptedDaemon::new(vec![
            ("begin", challenge_push(false)),
            ("push_start", sent()),
            (
                "push_wait",
                Ok(Response::Allow {
                    phone: "iPhone".into(),
                }),
            ),
        ]);
        assert_eq!(run(&mut pam, &daemon, &Args::default()), Outcome::Success);
        assert_eq!(
            pam.prompts,
            ["Tap 47 on your phone, then press Enter (or type a code): "]
        );
    }

    #[test]
    fn a_wrong_number_or_no_answer_refuses() {
        for reason in [DenyReason::WrongNumber, DenyReason::NoAnswer] {
            let mut pam = ScriptedPam::alice(&[""]);
            let daemon = ScriptedDaemon::new(vec![
                ("begin", challenge_push(false)),
                ("push_start", sent()),
                ("push_wait", Ok(Response::Deny { reason })),
            ]);
            assert_eq!(run(&mut pam, &daemon, &Args::default()), Outcome::AuthErr);
            assert_eq!(pam.errors, [format!("SmartSign: {}.", reason.describe())]);
        }
    }

    #[test]
    fn a_typed_code_withdraws_the_push_before_it_is_checked() {
        let mut pam = ScriptedPam::alice(&["123 456"]);
        let daemon = ScriptedDaemon::new(vec![
            ("begin", challenge_push(false)),
            ("push_start", sent()),
            ("push_cancel", Ok(Response::Done)),
            (
                "verify_code",
                Ok(Response::Allow {
                    phone: "Pixel 8".into(),
                }),
            ),
        ]);
        assert_eq!(run(&mut pam, &daemon, &Args::default()), Outcome::Success);
        assert_eq!(*daemon.codes.borrow(), ["123 456"]);
    }

    #[test]
    fn push_unavailable_falls_back_to_the_code() {
        // At the start: the relay would not take it.
        let mut pam = ScriptedPam::alice(&["123456"]);
        let daemon = ScriptedDaemon::new(vec![
            ("begin", challenge_push(false)),
            (
                "push_start",
                Ok(Response::error(
                    ErrorKind::PushFailed,
                    "the push relay did not take the request",
                )),
            ),
            (
                "verify_code",
                Ok(Response::Allow {
                    phone: "Pixel 8".into(),
                }),
            ),
        ]);
        assert_eq!(run(&mut pam, &daemon, &Args::default()), Outcome::Success);
        assert_eq!(pam.prompts, ["SmartSign code for alice: "]);
        assert!(
            pam.errors[0].contains("push is unavailable"),
            "{:?}",
            pam.errors
        );

        // While waiting: the relay went away.
        let mut pam = ScriptedPam::alice(&["", "123456"]);
        let daemon = ScriptedDaemon::new(vec![
            ("begin", challenge_push(false)),
            ("push_start", sent()),
            (
                "push_wait",
                Ok(Response::error(
                    ErrorKind::PushFailed,
                    "the push relay has been unreachable for 10 s",
                )),
            ),
            (
                "verify_code",
                Ok(Response::Allow {
                    phone: "Pixel 8".into(),
                }),
            ),
        ]);
        assert_eq!(run(&mut pam, &daemon, &Args::default()), Outcome::Success);
        assert_eq!(pam.prompts.len(), 2);
        assert_eq!(pam.prompts[1], "SmartSign code for alice: ");
    }

    #[test]
    fn autopush_waits_at_once_and_shows_the_number_first() {
        let mut pam = ScriptedPam::alice(&[]);
        let daemon = ScriptedDaemon::new(vec![
            ("begin", challenge_push(true)),
            ("push_start", sent()),
            (
                "push_wait",
                Ok(Response::Allow {
                    phone: "Pixel 8".into(),
                }),
            ),
        ]);
        assert_eq!(run(&mut pam, &daemon, &Args::default()), Outcome::Success);
        assert!(pam.prompts.is_empty());
        assert_eq!(pam.infos, ["SmartSign: tap 47 on your phone to log in."]);
    }

    #[test]
    fn a_failed_conversation_withdraws_the_push() {
        let mut pam = ScriptedPam::alice(&[]);
        pam.answers.push_back(Err(Outcome::ConvErr));
        let daemon = ScriptedDaemon::new(vec![
            ("begin", challenge_push(false)),
            ("push_start", sent()),
            ("push_cancel", Ok(Response::Done)),
        ]);
        assert_eq!(run(&mut pam, &daemon, &Args::default()), Outcome::ConvErr);
    }

    /// sshd's PasswordAuthentication answers every prompt with the
    /// password; its keyboard-interactive method then calls again, in the
    /// same PAM transaction, and must get the same push, not a second one.
    #[test]
    fn the_password_as_answer_is_no_code_and_the_push_waits_for_the_next_call() {
        let mut pam = ScriptedPam::alice(&["hunter2", ""]);
        pam.password = Some("hunter2".into());
        let daemon = ScriptedDaemon::new(vec![
            ("begin", challenge_push(false)),
            ("push_start", sent()),
            ("begin", challenge_push(false)),
            // The same push: no second push_start.
            (
                "push_wait",
                Ok(Response::Allow {
                    phone: "Pixel 8".into(),
                }),
            ),
        ]);
        assert_eq!(run(&mut pam, &daemon, &Args::default()), Outcome::AuthErr);
        assert!(
            daemon.codes.borrow().is_empty(),
            "the password never reaches the daemon"
        );
        assert_eq!(
            pam.errors,
            ["SmartSign: that is your password, not a code."]
        );
        assert!(pam.kept.is_some());

        assert_eq!(run(&mut pam, &daemon, &Args::default()), Outcome::Success);
        assert!(pam.prompts[1].starts_with("Tap 47 "), "{:?}", pam.prompts);
    }

    #[test]
    fn an_expired_kept_push_is_not_taken_up() {
        let mut pam = ScriptedPam::alice(&[""]);
        let daemon = ScriptedDaemon::new(vec![]);
        pam.kept = Some(Push {
            held: daemon.open().unwrap(),
            number: 12,
            expires: NOW - 1,
            login: LoginContext {
                user: "alice".into(),
                service: "sshd".into(),
                rhost: None,
                tty: None,
            },
        });
        drop(daemon);
        let daemon = ScriptedDaemon::new(vec![
            ("begin", challenge_push(false)),
            ("push_start", sent()),
            (
                "push_wait",
                Ok(Response::Allow {
                    phone: "Pixel 8".into(),
                }),
            ),
        ]);
        assert_eq!(run(&mut pam, &daemon, &Args::default()), Outcome::Success);
        assert!(pam.prompts[0].starts_with("Tap 47 "), "{:?}", pam.prompts);
    }

    #[test]
    fn an_account_with_an_address_alone_gets_its_code_mailed_at_once() {
        let mut pam = ScriptedPam::alice(&["12345678"]);
        let daemon = ScriptedDaemon::new(vec![
            (
                "begin",
                Ok(Response::Challenge {
                    phones: vec![],
                    email: Some("a****@example.org".into()),
                    skip_until: None,
                    push: false,
                    autopush: false,
                }),
            ),
            (
                "send_email_code",
                Ok(Response::EmailSent {
                    to: "a****@example.org".into(),
                    expires: NOW + 600,
                }),
            ),
            (
                "verify_code",
                Ok(Response::Allow {
                    phone: "email a****@example.org".into(),
                }),
            ),
        ]);
        assert_eq!(run(&mut pam, &daemon, &Args::default()), Outcome::Success);
        assert_eq!(pam.prompts, ["Code from the email to a****@example.org: "]);
    }

    #[test]
    fn enter_alone_without_a_push_asks_again_and_counts_nothing() {
        let mut pam = ScriptedPam::alice(&["", "", ""]);
        let daemon = ScriptedDaemon::new(vec![("begin", challenge())]);
        assert_eq!(run(&mut pam, &daemon, &Args::default()), Outcome::AuthErr);
        assert_eq!(pam.prompts.len(), 3);
        assert_eq!(pam.errors, ["SmartSign: no code was given."]);
    }

    #[test]
    fn a_decoy_tapped_refuses_the_login_even_if_a_code_follows() {
        let mut pam = ScriptedPam::alice(&["123456"]);
        let daemon = ScriptedDaemon::new(vec![
            ("begin", challenge_push(false)),
            ("push_start", sent()),
            (
                "push_cancel",
                Ok(Response::Deny {
                    reason: DenyReason::WrongNumber,
                }),
            ),
        ]);
        assert_eq!(run(&mut pam, &daemon, &Args::default()), Outcome::AuthErr);
        assert!(
            daemon.codes.borrow().is_empty(),
            "the code is not even tried"
        );
        assert_eq!(
            pam.errors,
            ["SmartSign: the wrong number was tapped on the phone."]
        );
    }

    /// login(1) asks for a user name again after a failure, in the same
    /// PAM transaction: a push kept for one user must not answer for another.
    #[test]
    fn a_kept_push_is_for_its_own_user_only() {
        let mut pam = ScriptedPam::alice(&["hunter2", ""]);
        pam.password = Some("hunter2".into());
        let daemon = ScriptedDaemon::new(vec![
            ("begin", challenge_push(false)),
            ("push_start", sent()),
            ("begin", challenge_push(false)),
            // Not the kept one: a push of bob's own.
            (
                "push_start",
                Ok(Response::PushSent {
                    number: 12,
                    phones: vec!["Pixel 8".into()],
                    expires: NOW + 60,
                }),
            ),
            (
                "push_wait",
                Ok(Response::Allow {
                    phone: "Pixel 8".into(),
                }),
            ),
        ]);
        assert_eq!(run(&mut pam, &daemon, &Args::default()), Outcome::AuthErr);
        pam.user = Some("bob".into());
        assert_eq!(run(&mut pam, &daemon, &Args::default()), Outcome::Success);
        assert!(pam.prompts[1].starts_with("Tap 12 "), "{:?}", pam.prompts);
    }

    #[test]
    fn an_address_alone_and_no_mail_leaves_a_backup_code() {
        let mut pam = ScriptedPam::alice(&["ABCD-EFGH-JK"]);
        let daemon = ScriptedDaemon::new(vec![
            (
                "begin",
                Ok(Response::Challenge {
                    phones: vec![],
                    email: Some("a****@example.org".into()),
                    skip_until: None,
                    push: false,
                    autopush: false,
                }),
            ),
            (
                "send_email_code",
                Ok(Response::error(
                    ErrorKind::TooMany,
                    "at most 5 mails an hour",
                )),
            ),
            (
                "verify_code",
                Ok(Response::Allow {
                    phone: "backup code".into(),
                }),
            ),
        ]);
        assert_eq!(run(&mut pam, &daemon, &Args::default()), Outcome::Success);
        assert!(
            pam.errors[0].contains("Type a backup code"),
            "{:?}",
            pam.errors
        );
    }
}
