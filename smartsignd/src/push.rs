//! Approval on the phone through an ntfy relay (ntfy.sh or self-hosted).
//!
//! A login's request goes to the topic of each of the account's phones as
//! one notification with three number buttons: the number the login shows
//! and two decoys. Each button is an ntfy `http` action that posts
//! `REQUEST.TOKEN` to the response topic; one thread follows that topic
//! with ntfy's JSON stream and hands each answer to [`Pushes::answer`].
//! smartsignd only ever makes outbound requests to the relay.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{BufRead, BufReader, Read};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// The bound on one publish, from connect to the relay's answer.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// The bound on a login's wait for its notifications to go out: a job
/// starts within a second or not at all, then takes at most the above.
pub const PUBLISH_WAIT: Duration = Duration::from_secs(6);
/// ntfy sends a keepalive every 45 seconds by default; a stream silent for
/// longer than this is taken as dead and opened again.
pub const STREAM_SILENCE: Duration = Duration::from_secs(100);
/// A relay unreachable for this long fails the pushes waiting on it, so
/// that their users can type a code instead.
pub const RELAY_GIVE_UP: Duration = Duration::from_secs(10);
/// Longest line taken from the relay's stream.
const MAX_LINE: usize = 16 * 1024;
/// Pushes waiting for an answer per account at once.
pub const MAX_PENDING_PER_ACCOUNT: usize = 2;
/// A push still open this long after its time has lost its connection.
const FORGOTTEN_AFTER: Duration = Duration::from_secs(600);
/// Ended requests remembered, so that a late tap is told from a forged one.
const ENDED_KEPT: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushError(pub String);

impl std::fmt::Display for PushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The relay and how to reach it.
pub struct Relay {
    server: String,
    response_topic: String,
    token: Option<Zeroizing<String>>,
    publisher: ureq::Agent,
    follower: ureq::Agent,
}

/// One notification to one phone.
pub struct Notification {
    pub topic: String,
    pub title: String,
    pub message: String,
    /// Button labels and the body each posts to the response topic.
    pub buttons: Vec<(String, Zeroizing<String>)>,
}

/// One line of the relay's JSON stream.
#[derive(Debug, serde::Deserialize)]
pub struct Event {
    pub id: String,
    pub time: u64,
    pub event: String,
    #[serde(default)]
    pub message: Option<String>,
}

impl Relay {
    pub fn new(server: &str, response_topic: String, token: Option<Zeroizing<String>>) -> Relay {
        let agent = |config: ureq::config::ConfigBuilder<ureq::typestate::AgentScope>| {
            config
                .http_status_as_error(false)
                .max_redirects(0)
                .user_agent(concat!("smartsignd/", env!("CARGO_PKG_VERSION")))
                .tls_config(
                    ureq::tls::TlsConfig::builder()
                        .root_certs(ureq::tls::RootCerts::PlatformVerifier)
                        .build(),
                )
                .build()
                .new_agent()
        };
        let publisher = agent(
            ureq::Agent::config_builder()
                .timeout_global(Some(PUBLISH_TIMEOUT))
                .max_response_header_size(16 * 1024),
        );
        let follower = agent(
            ureq::Agent::config_builder()
                .timeout_connect(Some(Duration::from_secs(10)))
                .timeout_recv_response(Some(Duration::from_secs(10)))
                .timeout_per_read(Some(STREAM_SILENCE))
                .max_response_header_size(16 * 1024),
        );
        Relay {
            server: server.trim_end_matches('/').to_owned(),
            response_topic,
            token,
            publisher,
            follower,
        }
    }

    /// Where a phone subscribes: the server and the phone's topic.
    pub fn topic_url(&self, topic: &str) -> String {
        format!("{}/{topic}", self.server)
    }

    pub fn response_topic(&self) -> &str {
        &self.response_topic
    }

    /// Publishes with ntfy's JSON API; `Ok` once the relay has taken it.
    pub fn publish(&self, note: &Notification) -> Result<(), PushError> {
        let actions: Vec<serde_json::Value> = note
            .buttons
            .iter()
            .map(|(label, body)| {
                serde_json::json!({
                    "action": "http",
                    "label": label,
                    "url": self.topic_url(&self.response_topic),
                    "method": "POST",
                    "body": body.as_str(),
                    "clear": true,
                })
            })
            .collect();
        let body = Zeroizing::new(
            serde_json::json!({
                "topic": note.topic,
                "title": note.title,
                "message": note.message,
                "priority": 5,
                "tags": ["lock"],
                "actions": actions,
            })
            .to_string(),
        );
        let mut request = self
            .publisher
            .post(&self.server)
            .header("Content-Type", "application/json");
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {}", token.as_str()));
        }
        let response = request
            .send(body.as_bytes())
            .map_err(|err| PushError(format!("relay {}: {err}", self.server)))?;
        let status = response.status();
        if status.is_success() {
            // ntfy answers a publish with the message it stored.
            let mut text = String::new();
            let read = response
                .into_body()
                .into_reader()
                .take(16 * 1024)
                .read_to_string(&mut text);
            let stored = read
                .ok()
                .and_then(|_| serde_json::from_str::<serde_json::Value>(&text).ok())
                .is_some_and(|v| v["id"].is_string());
            if !stored {
                return Err(PushError(format!(
                    "relay {} answered the publish with something that is not an ntfy message",
                    self.server
                )));
            }
            return Ok(());
        }
        // Its body is not logged: a proxy might echo the request, tokens
        // and all.
        Err(PushError(format!(
            "relay {} refused the notification: {status}",
            self.server
        )))
    }

    /// Follows the response topic from `since` (Unix seconds of the relay's
    /// clock) until the stream ends or fails; each event goes to `seen`.
    pub fn follow(&self, since: u64, seen: &mut dyn FnMut(Event)) -> Result<(), PushError> {
        let url = format!("{}/{}/json?since={since}", self.server, self.response_topic);
        let mut request = self.follower.get(&url);
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {}", token.as_str()));
        }
        let response = request
            .call()
            .map_err(|err| PushError(format!("relay {}: {err}", self.server)))?;
        if !response.status().is_success() {
            return Err(PushError(format!(
                "relay {} refused the subscription: {}",
                self.server,
                response.status()
            )));
        }
        let mut reader = BufReader::new(response.into_body().into_reader());
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = (&mut reader)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut line)
                .map_err(|err| PushError(format!("relay {}: {err}", self.server)))?;
            if read == 0 {
                return Err(PushError(format!(
                    "relay {} closed the stream",
                    self.server
                )));
            }
            if line.len() > MAX_LINE {
                return Err(PushError(format!(
                    "relay {} sent a line of over {MAX_LINE} bytes",
                    self.server
                )));
            }
            let text = String::from_utf8_lossy(&line);
            if text.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Event>(&text) {
                Ok(event) => seen(event),
                Err(err) => {
                    return Err(PushError(format!(
                        "relay {} sent something that is not an ntfy event: {err}",
                        self.server
                    )));
                }
            }
        }
    }
}

/// Publishes on a few threads of its own. The TLS and HTTP work is deep
/// on the stack, and a login's thread waits for its push for up to a
/// minute: done there, those stack pages would stay resident for as long,
/// a thousand times over.
pub struct Publisher {
    jobs: mpsc::Sender<PublishJob>,
}

/// A notification, the time after which nobody waits for it, and where
/// the result goes.
type PublishJob = (Notification, Instant, mpsc::Sender<Result<(), PushError>>);

/// Notifications published at once, at most.
const PUBLISHERS: usize = 8;

impl Publisher {
    pub fn start(relay: Arc<Relay>) -> std::io::Result<Publisher> {
        let (jobs, queue) = mpsc::channel::<PublishJob>();
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..PUBLISHERS {
            let queue = Arc::clone(&queue);
            let relay = Arc::clone(&relay);
            std::thread::Builder::new()
                .name("publish".into())
                .spawn(move || {
                    loop {
                        let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
                        let Ok((note, until, reply)) = job else {
                            return;
                        };
                        // Late for a login that has moved on: not sent at all.
                        let result = if Instant::now() < until {
                            relay.publish(&note)
                        } else {
                            Err(PushError("the relay was busy; not sent".into()))
                        };
                        let _ = reply.send(result);
                    }
                })?;
        }
        Ok(Publisher { jobs })
    }

    /// Publishes every notification, at once as far as the threads go;
    /// each result within [`PUBLISH_WAIT`].
    pub fn publish_all(&self, notes: Vec<Notification>) -> Vec<Result<(), PushError>> {
        let deadline = Instant::now() + PUBLISH_WAIT;
        // A job still queued after this is not worth sending.
        let start_by = Instant::now() + Duration::from_secs(1);
        let replies: Vec<_> = notes
            .into_iter()
            .map(|note| {
                let (reply, answer) = mpsc::channel();
                let queued = self.jobs.send((note, start_by, reply)).is_ok();
                (queued, answer)
            })
            .collect();
        replies
            .into_iter()
            .map(|(queued, answer)| {
                if !queued {
                    return Err(PushError("the publishing threads are gone".into()));
                }
                let left = deadline.saturating_duration_since(Instant::now());
                answer
                    .recv_timeout(left)
                    .unwrap_or_else(|_| Err(PushError("the relay did not answer in time".into())))
            })
            .collect()
    }
}

/// What a phone answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Approved { phone: String },
    WrongNumber { phone: String, tapped: u8 },
}

/// What became of one message on the response topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tap {
    /// Handed to the waiting login.
    Answered,
    /// For a request that has ended (answered, timed out or withdrawn).
    Stale { user: String, phone: String },
    /// A second answer to a request already answered.
    Repeated { user: String, phone: String },
    /// A known request with a token none of its buttons carry.
    Forged { user: String, phone: String },
    /// Not an answer to any request this daemon sent.
    Unknown,
}

/// One phone's copy of a request.
pub struct Ask {
    pub phone: String,
    pub topic: String,
    pub request: String,
    /// The three buttons: number and token.
    pub buttons: Vec<(u8, Zeroizing<String>)>,
}

impl Ask {
    /// What a button posts back: this request's id and the button's token.
    pub fn body(&self, token: &str) -> Zeroizing<String> {
        Zeroizing::new(format!("{}.{token}", self.request))
    }
}

struct Live {
    user: String,
    number: u8,
    expires: Instant,
    asks: Vec<Ask>,
    answer: Option<Answer>,
}

#[derive(Default)]
struct Book {
    live: HashMap<u64, Live>,
    /// Request id to push id, for the live ones.
    requests: HashMap<String, u64>,
    /// Ended request ids with their user and phone, oldest first.
    ended: VecDeque<(String, String, String)>,
    ended_index: HashSet<String>,
    next_id: u64,
    /// Since when the response stream has been down; `None` while it is up.
    down_since: Option<Instant>,
}

/// The pushes waiting for an answer.
pub struct Pushes {
    book: Mutex<Book>,
    /// Told of every answer, for a thread that waits in poll(2).
    waker: Mutex<Option<std::os::unix::net::UnixStream>>,
}

/// A new push, ready to be published.
pub struct Opened {
    pub id: u64,
    pub number: u8,
}

impl Default for Pushes {
    fn default() -> Self {
        Pushes {
            book: Mutex::new(Book {
                // Down until the first stream opens.
                down_since: Some(Instant::now()),
                ..Book::default()
            }),
            waker: Mutex::new(None),
        }
    }
}

impl Pushes {
    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens a request for `user` to each phone (name, topic), within the
    /// account's limit of waiting pushes. The three numbers on offer are
    /// new to the account's other waiting pushes: a tap meant for one login
    /// can neither approve nor refuse another. Errors are for the user.
    pub fn open(
        &self,
        user: &str,
        phones: &[(String, String)],
        timeout: Duration,
    ) -> Result<(Opened, Vec<Ask>), PushError> {
        self.sweep();
        let mut book = self.book();
        let others: Vec<&Live> = book.live.values().filter(|l| l.user == user).collect();
        if others.len() >= MAX_PENDING_PER_ACCOUNT {
            return Err(PushError(format!(
                "{} push requests for {user} are already waiting",
                others.len()
            )));
        }
        let taken: HashSet<u8> = others
            .iter()
            .flat_map(|l| l.asks.iter())
            .flat_map(|a| a.buttons.iter().map(|(n, _)| *n))
            .collect();
        let mut numbers = Vec::with_capacity(3);
        while numbers.len() < 3 {
            let n = random_number(10, 99)?;
            if !taken.contains(&n) && !numbers.contains(&n) {
                numbers.push(n);
            }
        }
        let number = numbers[0];
        let mut asks = Vec::with_capacity(phones.len());
        for (phone, topic) in phones {
            let mut order = numbers.clone();
            shuffle(&mut order)?;
            let buttons = order
                .into_iter()
                .map(|n| Ok((n, random_hex(16)?)))
                .collect::<Result<_, PushError>>()?;
            asks.push(Ask {
                phone: phone.clone(),
                topic: topic.clone(),
                request: random_hex(12)?.to_string(),
                buttons,
            });
        }
        book.next_id += 1;
        let id = book.next_id;
        for ask in &asks {
            book.requests.insert(ask.request.clone(), id);
        }
        let copies = asks
            .iter()
            .map(|a| Ask {
                phone: a.phone.clone(),
                topic: a.topic.clone(),
                request: a.request.clone(),
                buttons: a.buttons.clone(),
            })
            .collect();
        book.live.insert(
            id,
            Live {
                user: user.to_owned(),
                number,
                expires: Instant::now() + timeout,
                asks: copies,
                answer: None,
            },
        );
        Ok((Opened { id, number }, asks))
    }

    /// Ends pushes long past their time whose connection went away without
    /// ending them (a request that failed half way): they would hold the
    /// account's places for waiting pushes forever.
    fn sweep(&self) {
        let now = Instant::now();
        let stale: Vec<u64> = self
            .book()
            .live
            .iter()
            .filter(|(_, l)| now > l.expires + FORGOTTEN_AFTER)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            self.close(id);
        }
    }

    /// Takes back the requests of phones whose notification did not go
    /// out: their tokens are no use to anyone, and may have been seen.
    pub fn forget_phones(&self, id: u64, phones: &[String]) {
        let mut book = self.book();
        let Some(live) = book.live.get_mut(&id) else {
            return;
        };
        let (gone, kept): (Vec<Ask>, Vec<Ask>) =
            live.asks.drain(..).partition(|a| phones.contains(&a.phone));
        live.asks = kept;
        for ask in gone {
            book.requests.remove(&ask.request);
        }
    }

    /// Ends a push: later taps on it are stale.
    pub fn close(&self, id: u64) {
        let mut book = self.book();
        let Some(live) = book.live.remove(&id) else {
            return;
        };
        for ask in live.asks {
            book.requests.remove(&ask.request);
            book.ended_index.insert(ask.request.clone());
            book.ended
                .push_back((ask.request, live.user.clone(), ask.phone));
        }
        while book.ended.len() > ENDED_KEPT {
            if let Some((request, _, _)) = book.ended.pop_front() {
                book.ended_index.remove(&request);
            }
        }
    }

    /// Takes one message from the response topic.
    pub fn answer(&self, message: &str) -> Tap {
        let Some((request, token)) = message.trim().split_once('.') else {
            return Tap::Unknown;
        };
        let mut book = self.book();
        let Some(&id) = book.requests.get(request) else {
            if book.ended_index.contains(request) {
                let found = book.ended.iter().find(|(r, _, _)| r == request);
                if let Some((_, user, phone)) = found {
                    return Tap::Stale {
                        user: user.clone(),
                        phone: phone.clone(),
                    };
                }
            }
            return Tap::Unknown;
        };
        let Some(live) = book.live.get_mut(&id) else {
            return Tap::Unknown;
        };
        let Some(ask) = live.asks.iter().find(|a| a.request == request) else {
            return Tap::Unknown;
        };
        // Every button is compared, in constant time each.
        let mut tapped = None;
        for (number, expected) in &ask.buttons {
            if bool::from(expected.as_bytes().ct_eq(token.as_bytes())) {
                tapped = Some(*number);
            }
        }
        let phone = ask.phone.clone();
        let Some(tapped) = tapped else {
            return Tap::Forged {
                user: live.user.clone(),
                phone,
            };
        };
        if live.answer.is_some() {
            return Tap::Repeated {
                user: live.user.clone(),
                phone,
            };
        }
        live.answer = Some(if tapped == live.number {
            Answer::Approved { phone }
        } else {
            Answer::WrongNumber { phone, tapped }
        });
        drop(book);
        self.wake();
        Tap::Answered
    }

    /// The push's answer, if it has one (and is still open).
    pub fn answer_of(&self, id: u64) -> Option<Answer> {
        self.book().live.get(&id).and_then(|l| l.answer.clone())
    }

    pub fn expired(&self, id: u64) -> bool {
        self.book()
            .live
            .get(&id)
            .is_none_or(|l| Instant::now() >= l.expires)
    }

    /// The stream to the relay is up.
    pub fn set_relay_up(&self) {
        self.book().down_since = None;
    }

    /// `stream` (non-blocking) gets a byte at every answer.
    pub fn set_waker(&self, stream: std::os::unix::net::UnixStream) {
        *self.waker.lock().unwrap_or_else(PoisonError::into_inner) = Some(stream);
    }

    fn wake(&self) {
        use std::io::Write;
        if let Some(stream) = self
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            // A full pipe has a wake-up in it already.
            let _ = stream.write(&[1]);
        }
    }

    /// Since when the stream has been down; `None` while it is up.
    pub fn down_since(&self) -> Option<Instant> {
        self.book().down_since
    }

    /// The stream failed; it has been down since `since`.
    pub fn set_relay_down_since(&self, since: Instant) {
        self.book().down_since = Some(since);
    }

    /// How long the response stream has been down, if it is.
    pub fn relay_down_for(&self) -> Option<Duration> {
        self.book().down_since.map(|since| since.elapsed())
    }
}

/// `bytes` random bytes as lowercase hex.
pub fn random_hex(bytes: usize) -> Result<Zeroizing<String>, PushError> {
    let mut raw = Zeroizing::new(vec![0u8; bytes]);
    getrandom::fill(raw.as_mut_slice()).map_err(|err| PushError(format!("randomness: {err}")))?;
    let mut text = Zeroizing::new(String::with_capacity(bytes * 2));
    for byte in raw.iter() {
        text.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
        text.push(char::from(b"0123456789abcdef"[usize::from(byte & 15)]));
    }
    Ok(text)
}

/// A new, unguessable ntfy topic: 128 random bits.
pub fn new_topic(prefix: &str) -> Result<String, PushError> {
    Ok(format!("{prefix}{}", random_hex(16)?.as_str()))
}

/// Uniform in `low..=high` (a span of at most 256).
fn random_number(low: u8, high: u8) -> Result<u8, PushError> {
    let span = u16::from(high - low) + 1;
    // Rejection sampling keeps every value equally likely.
    let limit = 256 - 256 % span;
    loop {
        let mut byte = [0u8; 1];
        getrandom::fill(&mut byte).map_err(|err| PushError(format!("randomness: {err}")))?;
        let value = u16::from(byte[0]);
        if value < limit {
            return Ok(low + (value % span) as u8);
        }
    }
}

/// Fisher-Yates with the OS random source.
fn shuffle(items: &mut [u8]) -> Result<(), PushError> {
    for i in (1..items.len()).rev() {
        let j = random_number(0, i as u8)?;
        items.swap(i, usize::from(j));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(pushes: &Pushes, user: &str) -> (Opened, Vec<Ask>) {
        let phones = [
            ("Pixel".to_owned(), "t1".to_owned()),
            ("iPhone".to_owned(), "t2".to_owned()),
        ];
        pushes.open(user, &phones, Duration::from_secs(60)).unwrap()
    }

    fn button(ask: &Ask, right: bool, number: u8) -> Zeroizing<String> {
        let (_, token) = ask
            .buttons
            .iter()
            .find(|(n, _)| (*n == number) == right)
            .unwrap();
        ask.body(token)
    }

    #[test]
    fn three_distinct_numbers_one_of_them_right() {
        let pushes = Pushes::default();
        let (opened, asks) = open(&pushes, "alice");
        assert!((10..=99).contains(&opened.number));
        for ask in &asks {
            let mut numbers: Vec<u8> = ask.buttons.iter().map(|(n, _)| *n).collect();
            assert!(numbers.contains(&opened.number));
            numbers.sort_unstable();
            numbers.dedup();
            assert_eq!(numbers.len(), 3);
        }
        assert_ne!(asks[0].request, asks[1].request);
        assert_ne!(asks[0].buttons[0].1, asks[1].buttons[0].1);
    }

    #[test]
    fn the_right_number_approves_and_names_the_phone() {
        let pushes = Pushes::default();
        let (opened, asks) = open(&pushes, "alice");
        assert_eq!(pushes.answer_of(opened.id), None);
        assert_eq!(
            pushes.answer(&button(&asks[1], true, opened.number)),
            Tap::Answered
        );
        assert_eq!(
            pushes.answer_of(opened.id),
            Some(Answer::Approved {
                phone: "iPhone".into()
            })
        );
        // The first answer wins; a second tap changes nothing.
        let again = pushes.answer(&button(&asks[0], false, opened.number));
        assert!(matches!(again, Tap::Repeated { .. }), "{again:?}");
        pushes.close(opened.id);
        let late = pushes.answer(&button(&asks[1], true, opened.number));
        assert_eq!(
            late,
            Tap::Stale {
                user: "alice".into(),
                phone: "iPhone".into()
            }
        );
    }

    #[test]
    fn a_decoy_is_a_wrong_number() {
        let pushes = Pushes::default();
        let (opened, asks) = open(&pushes, "alice");
        pushes.answer(&button(&asks[0], false, opened.number));
        match pushes.answer_of(opened.id) {
            Some(Answer::WrongNumber { phone, tapped }) => {
                assert_eq!(phone, "Pixel");
                assert_ne!(tapped, opened.number);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn forged_and_garbage_answers_change_nothing() {
        let pushes = Pushes::default();
        let (opened, asks) = open(&pushes, "alice");
        let forged = format!("{}.{}", asks[0].request, "0".repeat(32));
        assert!(matches!(pushes.answer(&forged), Tap::Forged { .. }));
        for garbage in ["", ".", "x", "nope.nope", &"9".repeat(5000), "\0.\0"] {
            assert_eq!(pushes.answer(garbage), Tap::Unknown);
        }
        // A token of another request does not answer this one.
        let (other, other_asks) = open(&pushes, "bob");
        let crossed = format!(
            "{}.{}",
            asks[0].request,
            other_asks[0].buttons[0].1.as_str()
        );
        assert!(matches!(pushes.answer(&crossed), Tap::Forged { .. }));
        assert_eq!(pushes.answer_of(opened.id), None);
        assert_eq!(pushes.answer_of(other.id), None);
    }

    #[test]
    fn two_pending_per_account_and_no_number_shared_between_them() {
        for _ in 0..200 {
            let pushes = Pushes::default();
            let (a, a_asks) = open(&pushes, "alice");
            let (_, b_asks) = open(&pushes, "alice");
            let numbers = |asks: &[Ask]| -> HashSet<u8> {
                asks.iter()
                    .flat_map(|a| a.buttons.iter().map(|(n, _)| *n))
                    .collect()
            };
            assert_eq!(numbers(&a_asks).len(), 3, "the same three on every phone");
            assert!(numbers(&a_asks).is_disjoint(&numbers(&b_asks)));
            let phones = [("Pixel".to_owned(), "t".to_owned())];
            let third = pushes.open("alice", &phones, Duration::from_secs(60));
            assert!(third.is_err(), "two are waiting already");
            assert!(pushes.open("bob", &phones, Duration::from_secs(60)).is_ok());
            pushes.close(a.id);
            assert!(
                pushes
                    .open("alice", &phones, Duration::from_secs(60))
                    .is_ok()
            );
        }
    }

    #[test]
    fn an_answer_wakes_the_watcher() {
        use std::io::Read;
        let pushes = Pushes::default();
        let (watcher, waker) = std::os::unix::net::UnixStream::pair().unwrap();
        pushes.set_waker(waker);
        let (opened, asks) = open(&pushes, "alice");
        pushes.answer(&button(&asks[0], true, opened.number));
        watcher
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut byte = [0u8; 1];
        assert_eq!((&watcher).read(&mut byte).unwrap(), 1);
    }

    #[test]
    fn random_numbers_cover_the_range() {
        let mut seen = [false; 100];
        for _ in 0..5000 {
            seen[usize::from(random_number(10, 99).unwrap())] = true;
        }
        assert!(seen[10..=99].iter().all(|s| *s));
        assert!(seen[..10].iter().all(|s| !*s));
    }
}
