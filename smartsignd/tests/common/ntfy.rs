//! The ntfy relay and the phone, the two stand-ins of the end-to-end tests.
//! The relay is `tests/ntfy_standin.py`, which speaks ntfy's documented
//! HTTP API; the phone follows its topic with that API's JSON stream, as
//! the ntfy app does, checks what a notification says and taps a button.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, mpsc};
use std::time::Duration;

use super::{TempDir, wait_until};

const STANDIN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ntfy_standin.py");

pub struct Relay {
    child: Mutex<Option<Child>>,
    pub port: u16,
    cache: PathBuf,
    extra: Vec<String>,
}

impl Relay {
    /// A relay on a free loopback port, keeping its messages in `dir`
    /// across restarts; `extra` are more arguments (`--token`, ...).
    pub fn start(dir: &TempDir, extra: &[&str]) -> Relay {
        Relay::start_on(dir, super::free_port(), extra)
    }

    /// Like [`Relay::start`], on `port`.
    pub fn start_on(dir: &TempDir, port: u16, extra: &[&str]) -> Relay {
        let relay = Relay {
            child: Mutex::new(None),
            port,
            cache: dir.join("ntfy-cache.jsonl"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        relay.restart();
        relay
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn restart(&self) {
        self.stop();
        let child = Command::new("/usr/bin/python3")
            .arg(STANDIN)
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--keepalive", "1"])
            .arg("--cache")
            .arg(&self.cache)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        *self.child.lock().unwrap() = Some(child);
        let port = self.port;
        wait_until("the ntfy stand-in", Duration::from_secs(15), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Every message published to `topic` so far.
    pub fn messages(&self, topic: &str, token: &str) -> Vec<serde_json::Value> {
        let url = format!("{}/{topic}/json?poll=1&since=all", self.url());
        let body = ureq::get(&url)
            .header("Authorization", format!("Bearer {token}"))
            .call()
            .map(|r| r.into_body().read_to_string().unwrap_or_default())
            .unwrap_or_default();
        body.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A notification as the phone got it.
#[derive(Debug, Clone)]
pub struct Note {
    pub title: String,
    pub message: String,
    /// Button label, URL and body.
    pub buttons: Vec<(String, String, String)>,
}

impl Note {
    fn parse(event: &serde_json::Value) -> Note {
        let text = |key: &str| event[key].as_str().unwrap_or_default().to_owned();
        let buttons = event["actions"]
            .as_array()
            .map(|actions| {
                actions
                    .iter()
                    .map(|a| {
                        assert_eq!(a["action"], "http", "{a}");
                        let method = a["method"].as_str().unwrap_or("POST");
                        assert_eq!(method, "POST", "{a}");
                        (
                            a["label"].as_str().unwrap().to_owned(),
                            a["url"].as_str().unwrap().to_owned(),
                            a["body"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Note {
            title: text("title"),
            message: text("message"),
            buttons,
        }
    }

    /// The labels, which are the numbers on offer.
    pub fn numbers(&self) -> Vec<String> {
        self.buttons.iter().map(|(l, _, _)| l.clone()).collect()
    }

    /// What the ntfy app does when a button is tapped: the action's HTTP
    /// request, without credentials.
    pub fn tap(&self, label: &str) {
        let (_, url, body) = self
            .buttons
            .iter()
            .find(|(l, _, _)| l == label)
            .unwrap_or_else(|| panic!("no button {label:?} in {self:?}"));
        let response = ureq::post(url).send(body.as_bytes()).unwrap();
        assert!(response.status().is_success(), "{}", response.status());
    }

    /// A decoy: any button but `right`.
    pub fn decoy(&self, right: &str) -> String {
        self.numbers().into_iter().find(|n| n != right).unwrap()
    }
}

/// A phone with the ntfy app subscribed to one topic.
pub struct Phone {
    notes: mpsc::Receiver<Note>,
    child_stream: std::thread::JoinHandle<()>,
}

impl Phone {
    /// Subscribes to `url` (the relay URL plus topic, as `phone add`
    /// prints it), from now on.
    pub fn follow(url: &str, token: Option<&str>) -> Phone {
        let auth = token.map(|t| format!("Bearer {t}"));
        let (tx, notes) = mpsc::channel();
        let (opened_tx, opened) = mpsc::channel();
        let url = format!("{url}/json");
        let child_stream = std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_per_read(Some(Duration::from_secs(120)))
                .build()
                .into();
            let mut request = agent.get(&url);
            if let Some(auth) = &auth {
                request = request.header("Authorization", auth);
            }
            let Ok(response) = request.call() else {
                return;
            };
            let reader = BufReader::new(response.into_body().into_reader().take(1 << 20));
            for line in reader.lines() {
                let Ok(line) = line else { return };
                let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                match event["event"].as_str() {
                    Some("open") => {
                        let _ = opened_tx.send(());
                    }
                    Some("message") if tx.send(Note::parse(&event)).is_err() => return,
                    _ => {}
                }
            }
        });
        opened
            .recv_timeout(Duration::from_secs(10))
            .expect("the phone's subscription opened");
        Phone {
            notes,
            child_stream,
        }
    }

    /// The next notification, within `limit`.
    pub fn next(&self, limit: Duration) -> Option<Note> {
        self.notes.recv_timeout(limit).ok()
    }

    pub fn is_following(&self) -> bool {
        !self.child_stream.is_finished()
    }
}
