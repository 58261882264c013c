//! Logins approved on the phone, and the thread that hears the answers.
//!
//! A push lives as long as the connection that asked for it: the module
//! sends `PushStart`, shows the number, then sends `PushWait` (Enter) or
//! `PushCancel` (a code typed instead) on the same connection. A
//! connection that closes first (Ctrl-C, a killed sshd child) withdraws it.

use std::time::{Duration, Instant};

use smartsign_proto::{DenyReason, ErrorKind, LoginContext, Request, Response};

use super::{Apply, Refusal, Service, time};
use crate::audit::{Method, Outcome};
use crate::config::PushConfig;
use std::sync::{Arc, OnceLock};

use crate::push::{Answer, Notification, Publisher, PushError, Pushes, Relay, Tap, new_topic};

/// How [`Relay::publish`] words a refusal by the relay.
const REFUSED: &str = " refused the notification";

/// How long a push's connection is kept after the push has ended, for
/// the module to collect the result.
const LINGER: Duration = Duration::from_secs(120);

/// Everything push needs: the relay, the pushes waiting, the settings.
pub struct PushSetup {
    pub relay: Arc<Relay>,
    pub pushes: Pushes,
    pub config: PushConfig,
    /// Started with the first push, from a thread that already has the
    /// daemon's signals blocked.
    publisher: OnceLock<Result<Publisher, PushError>>,
}

impl PushSetup {
    pub fn new(relay: Relay, config: PushConfig) -> PushSetup {
        PushSetup {
            relay: Arc::new(relay),
            pushes: Pushes::default(),
            config,
            publisher: OnceLock::new(),
        }
    }

    fn publisher(&self) -> Result<&Publisher, PushError> {
        self.publisher
            .get_or_init(|| {
                Publisher::start(Arc::clone(&self.relay))
                    .map_err(|err| PushError(format!("cannot start the publishing threads: {err}")))
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// The other end of a push's connection.
pub enum Next {
    /// Nothing has come.
    Quiet,
    Request(Request),
    /// The client closed the connection (or sent something unreadable).
    Gone,
}

pub trait Link {
    /// A request, if one has come; does not wait.
    fn next(&mut self) -> Next;
    /// `false` when the client can no longer be reached.
    fn send(&mut self, response: Response) -> bool;
}

/// How a push ended, once known.
struct Verdict {
    response: Response,
    /// Written when the module collects it (an approval may yet be
    /// withdrawn by a code typed instead).
    audit: Option<(Outcome, String, Option<String>)>,
    /// The login is refused whatever the user types next (a decoy was
    /// tapped: the user said this login is not theirs).
    binding: bool,
}

impl Service {
    /// Sends the push and says so on `link`. `Some` when the push now
    /// waits: [`Waiting::step`] takes it from there, on the thread that
    /// watches every waiting push (`server`'s hall).
    pub fn push_begin(
        &self,
        peer_uid: u32,
        request: Request,
        link: &mut dyn Link,
    ) -> Option<Waiting> {
        let Request::PushStart { .. } = &request else {
            link.send(Response::error(
                ErrorKind::BadRequest,
                "push_wait and push_cancel follow push_start on its connection",
            ));
            return None;
        };
        match self.push_start(peer_uid, request) {
            Started::Sent {
                login,
                id,
                number,
                phones,
                expires,
            } => {
                let unix_expires = (self.clock)() + expires.as_secs();
                if !link.send(Response::PushSent {
                    number,
                    phones,
                    expires: unix_expires,
                }) {
                    if let Some(setup) = &self.push {
                        setup.pushes.close(id);
                    }
                    let why = "withdrawn: the login stopped waiting before the push went out";
                    self.audit_push(&login, peer_uid, None, Outcome::Withdrawn, why);
                    return None;
                }
                Some(Waiting {
                    peer_uid,
                    login,
                    id,
                    give_up: Instant::now() + expires + LINGER,
                    verdict: None,
                    waiting: false,
                })
            }
            Started::Answer(response) => {
                link.send(response);
                None
            }
        }
    }

    /// The push's result, once there is one: an answer, the time running
    /// out, or the relay lost.
    fn push_verdict(
        &self,
        peer_uid: u32,
        login: &LoginContext,
        pushes: &Pushes,
        id: u64,
    ) -> Option<Verdict> {
        let now = (self.clock)();
        match pushes.answer_of(id) {
            Some(Answer::Approved { phone }) => {
                let _one_at_a_time = self.account_lock(&login.user);
                let refused = |why: &str, response| {
                    Some(Verdict {
                        response,
                        audit: Some((Outcome::Deny, why.to_owned(), Some(phone.clone()))),
                        binding: false,
                    })
                };
                // The phone may have been removed (lost, stolen) since the
                // push went out, or the account locked.
                let still_there = self.store.phones(&login.user).is_ok_and(|phones| {
                    phones
                        .iter()
                        .any(|p| p.confirmed && p.name == phone && p.push_topic.is_some())
                });
                if !still_there {
                    let why = "approved on a phone that is no longer enrolled";
                    let response = Response::Deny {
                        reason: DenyReason::PushEnded,
                    };
                    return refused(why, response);
                }
                if let Ok(Some(until)) = self.store.locked_until(&login.user, now) {
                    let why = "approved on the phone, but the account is locked out";
                    return refused(why, Response::LockedOut { until });
                }
                Some(Verdict {
                    response: Response::Allow {
                        phone: phone.clone(),
                    },
                    audit: Some((Outcome::Allow, "approved on the phone".into(), Some(phone))),
                    binding: false,
                })
            }
            Some(Answer::WrongNumber { phone, tapped }) => {
                // Counted now, whether or not the login collects it: someone
                // may be guessing, or tricking the user into tapping.
                let _one_at_a_time = self.account_lock(&login.user);
                let reason = DenyReason::WrongNumber;
                let note =
                    format!("possible attack: {tapped} tapped, not the number the login showed");
                let response = self
                    .refuse_noting(
                        peer_uid,
                        login,
                        Method::Push,
                        reason,
                        now,
                        Some(&phone),
                        &note,
                    )
                    .unwrap_or(Response::Deny { reason });
                Some(Verdict {
                    response,
                    audit: None,
                    binding: true,
                })
            }
            None if pushes.expired(id) => {
                let why = "no answer from the phone in time";
                self.audit_push(login, peer_uid, None, Outcome::Deny, why);
                Some(Verdict {
                    response: Response::Deny {
                        reason: DenyReason::NoAnswer,
                    },
                    audit: None,
                    binding: false,
                })
            }
            None => match pushes.relay_down_for() {
                Some(down) if down >= crate::push::RELAY_GIVE_UP => {
                    let why = relay_down(down);
                    self.audit_push(login, peer_uid, None, Outcome::Failed, &why);
                    Some(Verdict {
                        response: Response::error(ErrorKind::PushFailed, why),
                        audit: None,
                        binding: false,
                    })
                }
                _ => None,
            },
        }
    }

    /// Checks the login as `Begin` does, then sends the notifications.
    fn push_start(&self, peer_uid: u32, request: Request) -> Started {
        let user = match self.authorize(peer_uid, &request) {
            Ok(user) => user,
            Err(refusal) => return Started::Answer(self.refused(peer_uid, &request, refusal)),
        };
        let Request::PushStart { login } = request else {
            return Started::Answer(Response::error(ErrorKind::Internal, "not a push"));
        };
        let gids = self.login_gids(&login.user, &user);
        let login = LoginContext { user, ..login };
        let Some(setup) = &self.push else {
            return Started::Answer(Response::error(
                ErrorKind::PushFailed,
                "push is not set up on this host",
            ));
        };
        let now = (self.clock)();
        let (opened, asks) = {
            let _one_at_a_time = self.account_lock(&login.user);
            let apply = Apply::Policy {
                gids: gids.as_deref(),
            };
            let phones = match self.phones_to_ask(peer_uid, &login, Method::Push, apply) {
                Ok(Ok(phones)) => phones,
                Ok(Err(answer)) => return Started::Answer(answer),
                Err(refusal) => {
                    return Started::Answer(Response::error(refusal.kind, refusal.message));
                }
            };
            let targets: Vec<(String, String)> = phones
                .into_iter()
                .filter_map(|p| p.push_topic.map(|topic| (p.name, topic)))
                .collect();
            if targets.is_empty() {
                return Started::Answer(Response::error(
                    ErrorKind::PushFailed,
                    "no phone of this account is set up for push",
                ));
            }
            if let Some(down) = setup.pushes.relay_down_for()
                && down >= crate::push::RELAY_GIVE_UP
            {
                let why = relay_down(down);
                self.audit_push(
                    &login,
                    peer_uid,
                    None,
                    Outcome::Failed,
                    &format!("no push: {why}"),
                );
                return Started::Answer(Response::error(ErrorKind::PushFailed, why));
            }
            let opened = setup
                .pushes
                .open(&login.user, &targets, setup.config.timeout);
            if let Ok((opened, _)) = &opened
                && let Err(refusal) = self.admit_push(&login.user, now)
            {
                setup.pushes.close(opened.id);
                let why = format!("no push: {}", refusal.message);
                self.audit_push(&login, peer_uid, None, Outcome::Failed, &why);
                return Started::Answer(Response::error(refusal.kind, refusal.message));
            }
            match opened {
                Ok(opened) => opened,
                Err(PushError(why)) => {
                    let reason = format!("no push: {why}");
                    self.audit_push(&login, peer_uid, None, Outcome::Failed, &reason);
                    return Started::Answer(Response::error(ErrorKind::TooMany, why));
                }
            }
        };

        // The relay may take its time: the account is not held meanwhile.
        let title = format!("Log in as {} on {}?", login.user, self.hostname);
        let message = format!(
            "{} is logging in to {} through {} from {} at {}. \
             Tap the number the login shows. If this is not you, tap nothing \
             and tell your administrator.",
            login.user,
            self.hostname,
            login.service,
            login.rhost.as_deref().unwrap_or("this host itself"),
            time(now).replace('T', " ").replace('Z', " UTC"),
        );
        let notes = asks
            .iter()
            .map(|ask| Notification {
                topic: ask.topic.clone(),
                title: title.clone(),
                message: message.clone(),
                buttons: ask
                    .buttons
                    .iter()
                    .map(|(n, token)| (n.to_string(), ask.body(token)))
                    .collect(),
            })
            .collect();
        let results: Vec<(String, Result<(), PushError>)> = match setup.publisher() {
            Ok(publisher) => asks
                .iter()
                .map(|ask| ask.phone.clone())
                .zip(publisher.publish_all(notes))
                .collect(),
            Err(why) => asks
                .iter()
                .map(|ask| (ask.phone.clone(), Err(why.clone())))
                .collect(),
        };
        let mut sent = Vec::new();
        let mut failures = Vec::new();
        let mut failed = Vec::new();
        for (phone, result) in results {
            match result {
                Ok(()) => sent.push(phone),
                Err(err) => {
                    failures.push(format!("{phone:?}: {err}"));
                    failed.push(phone);
                }
            }
        }
        setup.pushes.forget_phones(opened.id, &failed);
        if sent.is_empty() {
            setup.pushes.close(opened.id);
            let why = failures.join("; ");
            crate::say!("push for {} failed: {why}", login.user);
            self.audit_push(
                &login,
                peer_uid,
                None,
                Outcome::Failed,
                &format!("no push: {why}"),
            );
            let refused = failures.iter().all(|f| f.contains(REFUSED));
            let said = if refused {
                "the push relay refused the request"
            } else {
                "the push relay cannot be reached"
            };
            return Started::Answer(Response::error(ErrorKind::PushFailed, said));
        }
        let mut why = format!(
            "push sent to {}; the login shows {}",
            sent.join(", "),
            opened.number
        );
        if !failures.is_empty() {
            why.push_str(&format!("; not sent to {}", failures.join("; ")));
        }
        self.audit_push(&login, peer_uid, None, Outcome::Pending, &why);
        Started::Sent {
            login,
            id: opened.id,
            number: opened.number,
            phones: sent,
            expires: setup.config.timeout,
        }
    }

    /// `smartsign phone test NAME`: one notification, no buttons.
    pub(super) fn phone_test(
        &self,
        peer_uid: u32,
        user: &str,
        name: &str,
    ) -> Result<Response, Refusal> {
        let Some(setup) = &self.push else {
            return Err(Refusal::quiet(
                ErrorKind::PushFailed,
                "push is not set up on this host (no [push] in the daemon's configuration)",
            ));
        };
        let topic = {
            let _one_at_a_time = self.account_lock(user);
            let (phones, index) = self.phone_named(user, name)?;
            let Some(topic) = phones[index].push_topic.clone() else {
                return Err(Refusal::quiet(
                    ErrorKind::PushFailed,
                    format!("{name:?} was enrolled before push; add it again to set it up"),
                ));
            };
            self.admit_push(user, (self.clock)())?;
            topic
        };
        let note = Notification {
            topic,
            title: "SmartSign test".into(),
            message: format!(
                "This phone ({name}) gets SmartSign's login requests for {user} on {}.",
                self.hostname
            ),
            buttons: Vec::new(),
        };
        let sent = setup.publisher().and_then(|publisher| {
            let results = publisher.publish_all(vec![note]);
            results
                .into_iter()
                .next()
                .unwrap_or_else(|| Err(PushError("the relay did not answer in time".into())))
        });
        match sent {
            Ok(()) => {
                self.audit_manage(peer_uid, user, Some(name), "test notification sent");
                Ok(Response::Done)
            }
            Err(PushError(why)) => {
                self.audit_manage(
                    peer_uid,
                    user,
                    Some(name),
                    &format!("test notification failed: {why}"),
                );
                Err(Refusal::quiet(ErrorKind::PushFailed, why))
            }
        }
    }

    /// A login took the phone's approval: its failures are forgiven and
    /// the phone's use is noted (not before: the user may type a code).
    fn approved(&self, login: &LoginContext, phone: &str) {
        let _one_at_a_time = self.account_lock(&login.user);
        if let Err(err) = self.store.clear_failures(&login.user) {
            crate::say!("clearing failures of {}: {err}", login.user);
        }
        if let Err(err) = self.store.mark_used(&login.user, phone, (self.clock)()) {
            crate::say!("noting the use of {phone:?}: {err}");
        }
    }

    /// Counts one notification to `user`'s phones against `max_per_hour`
    /// (a test notification too: the relay limits this host as a whole).
    /// Kept in the store, so that a restart does not reopen the way to
    /// push fatigue; root's `unlock` forgets them.
    fn admit_push(&self, user: &str, now: u64) -> Result<(), Refusal> {
        let Some(setup) = &self.push else {
            return Ok(());
        };
        let max = setup.config.max_per_hour as usize;
        let sent = self.store.pushes_since(user, now.saturating_sub(3600))?;
        if sent.len() >= max {
            let next = sent.first().map_or(now, |t| t + 3600);
            let why = format!(
                "{} pushes for {user} in the last hour, the limit; the next may go at {}",
                sent.len(),
                time(next)
            );
            return Err(Refusal::quiet(ErrorKind::TooMany, why));
        }
        self.store.record_push(user, now)?;
        Ok(())
    }

    /// A fresh push topic for a phone being added, and its subscription
    /// URL; `None` when push is not set up.
    pub(super) fn new_push_topic(&self) -> Result<Option<(String, String)>, Refusal> {
        let Some(setup) = &self.push else {
            return Ok(None);
        };
        let topic = new_topic("smartsign-phone-").map_err(|PushError(why)| {
            Refusal::quiet(ErrorKind::Internal, format!("no push topic: {why}"))
        })?;
        let url = setup.relay.topic_url(&topic);
        Ok(Some((topic, url)))
    }

    /// Follows the response topic for as long as the daemon runs.
    pub fn follow_answers(&self) {
        let Some(setup) = &self.push else { return };
        // Answers published before the first stream opens are fetched
        // with it; afterwards the relay's own clock says where to resume.
        let mut since = (self.clock)().saturating_sub(30);
        let mut seen = Recent::default();
        let mut backoff = Duration::from_millis(250);
        let mut last_error = String::new();
        loop {
            let down_before = setup.pushes.down_since();
            let mut opened: Option<Instant> = None;
            let result = setup.relay.follow(since, &mut |event| {
                opened.get_or_insert_with(Instant::now);
                if event.event != "open" && !last_error.is_empty() {
                    crate::say!("push answers: following the relay again");
                    last_error.clear();
                }
                setup.pushes.set_relay_up();
                if event.event != "open" {
                    backoff = Duration::from_millis(250);
                }
                since = since.max(event.time);
                if event.event == "message"
                    && seen.first_time(&event.id)
                    && let Some(message) = &event.message
                {
                    self.take_tap(message);
                }
            });
            // A stream that breaks within seconds of opening (a relay that
            // hangs up at once) does not count as the relay being back.
            let flapped = opened.is_none_or(|at| at.elapsed() < Duration::from_secs(5));
            let since_when = match down_before {
                Some(before) if flapped => before,
                _ => Instant::now(),
            };
            setup.pushes.set_relay_down_since(since_when);
            if let Err(PushError(err)) = result
                && err != last_error
            {
                crate::say!("push answers: {err}; trying again");
                last_error = err;
            }
            // Soon enough that a relay back after a restart is followed
            // again within seconds, not so often that a dead one is hammered.
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(4));
        }
    }

    fn take_tap(&self, message: &str) {
        let (user, phone, why) = match self.push.as_ref().map(|s| s.pushes.answer(message)) {
            None | Some(Tap::Answered) => return,
            Some(Tap::Unknown) => {
                self.note_unknown_tap();
                return;
            }
            Some(Tap::Stale { user, phone }) => (user, phone, "a tap on a push that has ended"),
            Some(Tap::Repeated { user, phone }) => {
                (user, phone, "a second answer to a push already answered")
            }
            Some(Tap::Forged { user, phone }) => (
                user,
                phone,
                "possible attack: an answer with a token the push never had",
            ),
        };
        let login = LoginContext {
            user,
            service: "smartsignd".into(),
            rhost: None,
            tty: None,
        };
        self.audit_login(&login, 0, Method::Push, Some(&phone), Outcome::Refused, why);
    }

    /// A message on the response topic that answers nothing this daemon
    /// knows: a tap on a push sent before a restart, or junk from anyone
    /// who can write to the topic. One audit line per ten seconds at most,
    /// with the count, however many come.
    fn note_unknown_tap(&self) {
        use std::sync::atomic::{AtomicU64, Ordering};
        static SINCE_LINE: AtomicU64 = AtomicU64::new(0);
        static LAST_LINE: AtomicU64 = AtomicU64::new(0);
        let count = SINCE_LINE.fetch_add(1, Ordering::Relaxed) + 1;
        let now = (self.clock)();
        let last = LAST_LINE.load(Ordering::Relaxed);
        if now < last + 10
            || LAST_LINE
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        SINCE_LINE.fetch_sub(count, Ordering::Relaxed);
        let login = LoginContext {
            user: "-".into(),
            service: "smartsignd".into(),
            rhost: None,
            tty: None,
        };
        let why = format!(
            "{count} message(s) on the response topic answering no push of this daemon \
             (sent before a restart, or not a tap); ignored"
        );
        self.audit_login(&login, 0, Method::Push, None, Outcome::Refused, &why);
    }

    fn audit_push(
        &self,
        login: &LoginContext,
        peer_uid: u32,
        phone: Option<&str>,
        outcome: Outcome,
        why: &str,
    ) {
        self.audit_login(login, peer_uid, Method::Push, phone, outcome, why);
    }
}

/// A push sent and not yet collected.
pub struct Waiting {
    peer_uid: u32,
    login: LoginContext,
    id: u64,
    /// When the connection is closed whatever happens.
    give_up: Instant,
    verdict: Option<Verdict>,
    /// The user pressed Enter: the verdict goes out as soon as there is one.
    waiting: bool,
}

impl Waiting {
    /// The push this connection holds.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// One look at the push and its connection, without waiting; `ready`
    /// says whether the connection has something to read. `false` once
    /// the push is over and the connection can be closed.
    pub fn step(&mut self, service: &Service, link: &mut dyn Link, ready: bool) -> bool {
        let Some(setup) = &service.push else {
            return false;
        };
        let pushes = &setup.pushes;
        let (login, peer_uid) = (&self.login, self.peer_uid);
        if self.verdict.is_none() {
            self.verdict = service.push_verdict(peer_uid, login, pushes, self.id);
            if self.verdict.is_some() {
                pushes.close(self.id);
            }
        }
        let next = if ready { link.next() } else { Next::Quiet };
        match next {
            Next::Quiet => {}
            Next::Request(Request::PushWait) => self.waiting = true,
            Next::Request(Request::PushCancel) => {
                pushes.close(self.id);
                if let Some(done) = self.verdict.take_if(|v| v.binding) {
                    link.send(done.response);
                    return false;
                }
                let why = match &self.verdict {
                    Some(Verdict {
                        response: Response::Allow { .. },
                        ..
                    }) => "approved on the phone, but the user answered otherwise",
                    Some(_) => "ended",
                    None => "withdrawn: the login went on without it (another answer, or it ended)",
                };
                if self.verdict.as_ref().is_none_or(|v| v.audit.is_some()) {
                    service.audit_push(login, peer_uid, None, Outcome::Withdrawn, why);
                }
                link.send(Response::Done);
                return false;
            }
            Next::Request(other) => {
                pushes.close(self.id);
                if self.verdict.as_ref().is_none_or(|v| v.audit.is_some()) {
                    let why = format!("withdrawn: {} cannot follow push_start", other.op());
                    service.audit_push(login, peer_uid, None, Outcome::Withdrawn, &why);
                }
                link.send(Response::error(
                    ErrorKind::BadRequest,
                    format!("{} cannot follow push_start", other.op()),
                ));
                return false;
            }
            Next::Gone => {
                pushes.close(self.id);
                if self.verdict.as_ref().is_none_or(|v| v.audit.is_some()) {
                    let why = "login abandoned before the answer was taken; push withdrawn";
                    service.audit_push(login, peer_uid, None, Outcome::Withdrawn, why);
                }
                return false;
            }
        }
        if self.waiting
            && let Some(done) = self.verdict.take()
        {
            if let Response::Allow { phone } = &done.response {
                service.approved(login, phone);
            }
            if let Some((outcome, why, phone)) = &done.audit {
                service.audit_push(login, peer_uid, phone.as_deref(), *outcome, why);
            }
            link.send(done.response);
            return false;
        }
        if Instant::now() >= self.give_up {
            pushes.close(self.id);
            if let Some(Verdict {
                audit: Some((_, _, phone)),
                ..
            }) = &self.verdict
            {
                let why = "withdrawn: approved on the phone, but the login never took the answer";
                service.audit_push(login, peer_uid, phone.as_deref(), Outcome::Withdrawn, why);
            }
            return false;
        }
        true
    }
}

/// Why a push cannot be waited for: the relay has been gone this long.
fn relay_down(down: Duration) -> String {
    format!(
        "the push relay has been unreachable for {} s",
        down.as_secs()
    )
}

enum Started {
    Sent {
        login: LoginContext,
        id: u64,
        number: u8,
        phones: Vec<String>,
        expires: Duration,
    },
    /// The login ends before any push (locked out, exempt, not enrolled).
    Answer(Response),
}

/// Message ids seen lately, so that a stream opened again with `since=`
/// does not hand over an answer twice.
#[derive(Default)]
struct Recent {
    order: std::collections::VecDeque<String>,
    ids: std::collections::HashSet<String>,
}

impl Recent {
    fn first_time(&mut self, id: &str) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        self.ids.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        if self.order.len() > 1024
            && let Some(old) = self.order.pop_front()
        {
            self.ids.remove(&old);
        }
        true
    }
}
