//! `smartsign-bench`: the moving parts of `bench/run`.
//!
//! - `fill` enrolls throw-away accounts straight into a stopped daemon's
//!   store (no system users needed: root may verify any name).
//! - `load` drives a running smartsignd with concurrent clients verifying
//!   codes for distinct accounts, and prints rate and latency.
//! - `pam-login` is a PAM application: it runs authentications in one
//!   process, alternating two PAM services, and prints both side by side.
//! - `hold-pushes` opens many push requests and keeps them waiting.
//!
//! Figures are printed, never judged: the targets are in the README.

use std::ffi::{CStr, CString};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use pam_client2::{ConversationHandler, ErrorCode};
use smartsign_proto::{Client, LoginContext, Request, Response, Secret};
use smartsignd::store::{SqliteStore, Store};
use smartsignd::totp;

#[derive(Parser)]
#[command(name = "smartsign-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enroll USERS accounts named PREFIX000000... into the store in STATE
    /// (smartsignd must not be running); writes "user secret" lines to OUT.
    Fill {
        #[arg(long)]
        state: PathBuf,
        #[arg(long)]
        users: usize,
        #[arg(long, default_value = "bench")]
        prefix: String,
        /// Also give each phone a push topic.
        #[arg(long)]
        push: bool,
        #[arg(long)]
        out: PathBuf,
    },
    /// Verifications per second against a running smartsignd.
    Load {
        #[arg(long)]
        socket: PathBuf,
        /// "user secret" lines, as `fill` writes them.
        #[arg(long)]
        accounts: PathBuf,
        /// Concurrent clients, one run each.
        #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
        clients: Vec<usize>,
        /// Length of each run.
        #[arg(long, default_value = "3")]
        seconds: f64,
        /// A label for the table (the store's size, say).
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Authentications through two PAM services, alternating, in this process.
    PamLogin {
        /// The PAM service of the first product, and its "user secret" lines.
        #[arg(long)]
        a: String,
        #[arg(long)]
        a_accounts: PathBuf,
        #[arg(long)]
        b: String,
        #[arg(long)]
        b_accounts: PathBuf,
        #[arg(long, default_value = "pw")]
        password: String,
        #[arg(long, default_value = "200")]
        rounds: usize,
    },
    /// Opens COUNT push requests, one connection each, and holds them.
    HoldPushes {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        accounts: PathBuf,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value = "5")]
        seconds: f64,
    },
}

fn main() {
    let result = match Cli::parse().command {
        Command::Fill {
            state,
            users,
            prefix,
            push,
            out,
        } => fill(&state, users, &prefix, push, &out),
        Command::Load {
            socket,
            accounts,
            clients,
            seconds,
            label,
        } => load(&socket, &accounts, &clients, seconds, &label),
        Command::PamLogin {
            a,
            a_accounts,
            b,
            b_accounts,
            password,
            rounds,
        } => pam_login(&a, &a_accounts, &b, &b_accounts, &password, rounds),
        Command::HoldPushes {
            socket,
            accounts,
            count,
            seconds,
        } => hold_pushes(&socket, &accounts, count, seconds),
    };
    if let Err(err) = result {
        eprintln!("smartsign-bench: {err}");
        std::process::exit(1);
    }
}

type Result<T> = std::result::Result<T, String>;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn accounts(path: &Path) -> Result<Vec<(String, String)>> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut all = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(|e| e.to_string())?;
        if let Some((user, secret)) = line.split_once(' ') {
            all.push((user.to_owned(), secret.to_owned()));
        }
    }
    if all.is_empty() {
        return Err(format!("{}: no accounts", path.display()));
    }
    Ok(all)
}

fn fill(state: &Path, users: usize, prefix: &str, push: bool, out: &Path) -> Result<()> {
    let store = SqliteStore::open(state).map_err(|e| e.to_string())?;
    let mut lines = std::io::BufWriter::new(
        std::fs::File::create(out).map_err(|e| format!("{}: {e}", out.display()))?,
    );
    let started = Instant::now();
    for i in 0..users {
        let user = format!("{prefix}{i:06}");
        let secret = totp::generate_secret().map_err(|e| e.to_string())?;
        store
            .put_pending_phone(&user, "bench", &secret, now())
            .map_err(|e| e.to_string())?;
        if push {
            let topic = format!("smartsign-phone-bench{i:06}");
            store
                .set_push_topic(&user, "bench", &topic)
                .map_err(|e| e.to_string())?;
        }
        let id = store.phones(&user).map_err(|e| e.to_string())?[0].id;
        store
            .confirm_phone(id, &secret, 0)
            .map_err(|e| e.to_string())?;
        writeln!(lines, "{user} {}", secret.as_str()).map_err(|e| e.to_string())?;
    }
    store.flush().map_err(|e| e.to_string())?;
    eprintln!(
        "filled {users} accounts in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn login(user: &str) -> LoginContext {
    LoginContext {
        user: user.to_owned(),
        service: "bench".into(),
        rhost: Some("192.0.2.10".into()),
        tty: Some("bench".into()),
    }
}

/// A code that is wrong for every step: the right one with its last digit
/// changed.
fn wrong(code: &str) -> String {
    let mut digits: Vec<u8> = code.bytes().collect();
    if let Some(last) = digits.last_mut() {
        *last = if *last == b'9' { b'0' } else { *last + 1 };
    }
    String::from_utf8(digits).unwrap_or_default()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn load(
    socket: &Path,
    accounts_file: &Path,
    clients: &[usize],
    seconds: f64,
    label: &str,
) -> Result<()> {
    let all = Arc::new(accounts(accounts_file)?);
    let next = Arc::new(AtomicU64::new(0));
    println!(
        "{:<28} {:>7} {:>9} {:>10} {:>9} {:>9} {:>7} {:>7} {:>6}",
        "daemon throughput",
        "clients",
        "requests",
        "verify/s",
        "p50 ms",
        "p99 ms",
        "allow",
        "deny",
        "other"
    );
    for &count in clients {
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let started = Instant::now();
        let workers: Vec<_> = (0..count)
            .map(|_| {
                let all = Arc::clone(&all);
                let next = Arc::clone(&next);
                let client = Client::new(socket, Duration::from_secs(10));
                std::thread::spawn(move || {
                    let mut times = Vec::new();
                    let (mut allow, mut deny, mut other) = (0u64, 0u64, 0u64);
                    while Instant::now() < deadline {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        let len = all.len() as u64;
                        let (user, secret) = &all[(n % len) as usize];
                        let right = totp::code_at(secret, now()).unwrap_or_default();
                        // Half right, half wrong, and every account gets both
                        // in turn (the other half on the next pass).
                        let code = if (n + n / len).is_multiple_of(2) {
                            right
                        } else {
                            wrong(&right)
                        };
                        let request = Request::VerifyCode {
                            login: login(user),
                            code: Secret::new(code),
                        };
                        let sent = Instant::now();
                        let answer = client.call(request);
                        times.push(sent.elapsed().as_secs_f64() * 1000.0);
                        match answer {
                            Ok(Response::Allow { .. }) => allow += 1,
                            Ok(Response::Deny { .. } | Response::LockedOut { .. }) => deny += 1,
                            _ => other += 1,
                        }
                    }
                    (times, allow, deny, other)
                })
            })
            .collect();
        let mut times = Vec::new();
        let (mut allow, mut deny, mut other) = (0, 0, 0);
        for worker in workers {
            let (t, a, d, o) = worker.join().map_err(|_| "a client thread failed")?;
            times.extend(t);
            allow += a;
            deny += d;
            other += o;
        }
        let elapsed = started.elapsed().as_secs_f64();
        times.sort_by(f64::total_cmp);
        println!(
            "{:<28} {:>7} {:>9} {:>10.0} {:>9.2} {:>9.2} {:>7} {:>7} {:>6}",
            label,
            count,
            times.len(),
            times.len() as f64 / elapsed,
            percentile(&times, 50.0),
            percentile(&times, 99.0),
            allow,
            deny,
            other
        );
    }
    Ok(())
}

/// Answers the password prompt with the password and any other hidden
/// prompt with the code.
struct Answers {
    password: CString,
    code: CString,
}

impl ConversationHandler for Answers {
    fn prompt_echo_on(&mut self, _prompt: &CStr) -> std::result::Result<CString, ErrorCode> {
        Err(ErrorCode::CONV_ERR)
    }

    fn prompt_echo_off(&mut self, prompt: &CStr) -> std::result::Result<CString, ErrorCode> {
        if prompt.to_string_lossy().contains("assword") {
            Ok(self.password.clone())
        } else {
            Ok(self.code.clone())
        }
    }

    fn text_info(&mut self, _msg: &CStr) {}

    fn error_msg(&mut self, _msg: &CStr) {}
}

fn pam_login(
    a: &str,
    a_accounts: &Path,
    b: &str,
    b_accounts: &Path,
    password: &str,
    rounds: usize,
) -> Result<()> {
    let sides = [(a, accounts(a_accounts)?), (b, accounts(b_accounts)?)];
    let mut times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut failed = [0usize; 2];
    for round in 0..rounds {
        for (side, (service, users)) in sides.iter().enumerate() {
            let (user, secret) = &users[round % users.len()];
            let code = totp::code_at(secret, now()).unwrap_or_default();
            let answers = Answers {
                password: CString::new(password).map_err(|e| e.to_string())?,
                code: CString::new(code).map_err(|e| e.to_string())?,
            };
            let started = Instant::now();
            let result = pam_client2::Context::new(service, Some(user), answers)
                .and_then(|mut context| context.authenticate(pam_client2::Flag::NONE));
            let elapsed = started.elapsed().as_secs_f64() * 1000.0;
            match result {
                Ok(()) => times[side].push(elapsed),
                Err(err) => {
                    if failed[side] == 0 {
                        eprintln!("{service} for {user}: {err}");
                    }
                    failed[side] += 1;
                }
            }
        }
    }
    let mut medians = [0.0; 2];
    let mut p99s = [0.0; 2];
    for (side, (service, _)) in sides.iter().enumerate() {
        times[side].sort_by(f64::total_cmp);
        medians[side] = percentile(&times[side], 50.0);
        p99s[side] = percentile(&times[side], 99.0);
        println!(
            "in-process login  {service:<24} n={:<4} median={:.3} ms  p99={:.3} ms  failed={}",
            times[side].len(),
            medians[side],
            p99s[side],
            failed[side]
        );
    }
    println!(
        "in-process login  {a} / {b}: median ratio {:.2}, p99 ratio {:.2}",
        medians[0] / medians[1],
        p99s[0] / p99s[1]
    );
    if failed.iter().any(|f| *f > 0) {
        return Err(format!("{failed:?} authentications failed"));
    }
    Ok(())
}

fn hold_pushes(socket: &Path, accounts_file: &Path, count: usize, seconds: f64) -> Result<()> {
    let all = accounts(accounts_file)?;
    let client = Client::new(socket, Duration::from_secs(20));
    let mut held = Vec::new();
    let mut refused = 0;
    for i in 0..count {
        let (user, _) = &all[i % all.len()];
        let mut session = client.open().map_err(|e| e.to_string())?;
        match session.call(
            Request::PushStart { login: login(user) },
            Duration::from_secs(20),
        ) {
            Ok(Response::PushSent { .. }) => held.push(session),
            _ => refused += 1,
        }
    }
    println!("holding {} pushes ({refused} refused)", held.len());
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_secs_f64(seconds));
    drop(held);
    if refused > 0 {
        return Err(format!("{refused} pushes were refused"));
    }
    Ok(())
}
