//! `smartsignd`: the SmartSign daemon, in the foreground.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use smartsignd::audit::Syslog;
use smartsignd::cli::DaemonCli as Cli;
use smartsignd::config::{Config, PushConfig};
use smartsignd::mail::{MailSink, Mailer, read_secret_file};
use smartsignd::push::{Relay, new_topic};
use smartsignd::server;
use smartsignd::service::{Nss, PushSetup, Service, system_clock};
use smartsignd::store::{SqliteStore, Store};

fn main() -> ExitCode {
    let cli = Cli::parse();

    let (config, policy) = match Config::load_with_policy(&cli.config) {
        Ok(loaded) => loaded,
        Err(err) => {
            smartsignd::say!("configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        // What can be checked without starting: the SMTP password file.
        if let Some(settings) = &config.email
            && let Err(err) = Mailer::new(settings)
        {
            eprintln!("smartsignd: [email]: {err}");
            return ExitCode::from(2);
        }
        if let Some(settings) = &config.push
            && let Some(path) = &settings.token_file
            && let Err(err) = read_secret_file(path)
        {
            eprintln!("smartsignd: [push] token_file: {err}");
            return ExitCode::from(2);
        }
        println!(
            "# {}: configuration OK; effective settings:",
            cli.config.display()
        );
        print!("{}", config.to_toml());
        if let Some((at, said)) = &policy.skip_until {
            let instant = humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs((*at).max(0) as u64),
            );
            println!(
                "# skip_until ends at {said}, {instant} (a date is the start of that day here)"
            );
        }
        return ExitCode::SUCCESS;
    }

    raise_file_limit();

    // Everything smartsignd creates is its own alone; the socket is opened
    // up explicitly in server::bind.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));

    // Credentials first: a daemon that could not send mail must not start.
    let mailer = match &config.email {
        Some(settings) => match Mailer::new(settings) {
            Ok(mailer) => Some(Arc::new(mailer) as Arc<dyn MailSink>),
            Err(err) => {
                smartsignd::say!("[email]: {err}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let store = match SqliteStore::open(&config.state_dir) {
        Ok(store) => store,
        Err(err) => {
            smartsignd::say!(
                "cannot open the store in {}: {err}",
                config.state_dir.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let push = match &config.push {
        Some(settings) => match push_setup(settings, &store) {
            Ok(setup) => Some(setup),
            Err(err) => {
                smartsignd::say!("[push]: {err}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let listener = match server::bind(&config.socket) {
        Ok(listener) => listener,
        Err(err) => {
            smartsignd::say!("{err}");
            return ExitCode::FAILURE;
        }
    };
    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_else(|| "localhost".into());

    smartsignd::say!(
        "listening on {}, state in {}",
        config.socket.display(),
        config.state_dir.join(SqliteStore::FILE).display()
    );
    let service = Service::new(
        config,
        policy,
        Box::new(store),
        Box::new(Syslog::new(!stderr_is_the_journal())),
        Box::new(Nss::default()),
        system_clock(),
        hostname,
        mailer,
    );
    let service = match push {
        Some(push) => service.with_push(push),
        None => service,
    };
    let socket = service.config.socket.clone();
    let service = Arc::new(service);
    if let Err(err) = handle_signals(socket, Arc::clone(&service)) {
        smartsignd::say!("cannot set up signal handling: {err}");
        return ExitCode::FAILURE;
    }
    if let Some(push) = &service.push {
        smartsignd::say!(
            "push through {}; answers come back on topic {}",
            push.config.server,
            push.relay.response_topic()
        );
        let follower = Arc::clone(&service);
        let spawned = std::thread::Builder::new()
            .name("push-answers".into())
            .spawn(move || follower.follow_answers());
        if let Err(err) = spawned {
            smartsignd::say!("cannot start the push thread: {err}");
            return ExitCode::FAILURE;
        }
    }
    // Under systemd (Type=notify): ready once the socket is listening.
    if let Err(err) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        smartsignd::say!("telling systemd we are ready: {err}");
    }
    let err = server::serve(listener, service);
    smartsignd::say!("stopped: {err}");
    ExitCode::FAILURE
}

/// A connection per login in progress (up to server::MAX_CONNECTIONS, each
/// push holding one while it waits): raise the soft limit on open files
/// toward the hard one, which systemd sets high.
fn raise_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit to write into.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return;
    }
    let wanted = limit.rlim_max.min(8192);
    if limit.rlim_cur >= wanted {
        return;
    }
    limit.rlim_cur = wanted;
    // SAFETY: `limit` is a valid rlimit, its soft value within the hard one.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) } != 0 {
        smartsignd::say!("cannot raise the open-file limit to {wanted}");
    }
}

/// Under systemd, stderr goes to the journal, which gets the audit lines
/// from syslog already: `JOURNAL_STREAM` names stderr's device and inode then.
fn stderr_is_the_journal() -> bool {
    use std::os::unix::fs::MetadataExt;

    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// The relay with its token, and the response topic: the configured one,
/// or one made at random once and kept in the store.
fn push_setup(settings: &PushConfig, store: &SqliteStore) -> Result<PushSetup, String> {
    let token = match &settings.token_file {
        Some(path) => Some(read_secret_file(path).map_err(|err| err.to_string())?),
        None => None,
    };
    let topic = match &settings.response_topic {
        Some(topic) => topic.clone(),
        None => {
            let fresh = new_topic("smartsign-answers-").map_err(|err| err.to_string())?;
            store
                .meta_or_insert("push_response_topic", &fresh)
                .map_err(|err| err.to_string())?
        }
    };
    Ok(PushSetup::new(
        Relay::new(&settings.server, topic, token),
        settings.clone(),
    ))
}

/// SIGTERM and SIGINT stop the daemon cleanly (store written out to its
/// main file, socket removed, a line in the log); SIGHUP is logged and
/// ignored, since settings are read at start only. Call before any other
/// thread starts: the signals are blocked in every thread and taken by one
/// of its own.
fn handle_signals(socket: PathBuf, service: Arc<Service>) -> nix::Result<()> {
    use nix::sys::signal::{SigSet, Signal};

    let mut set = SigSet::empty();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(signal);
    }
    set.thread_block()?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            loop {
                match set.wait() {
                    Ok(Signal::SIGHUP) => smartsignd::say!(
                        "SIGHUP ignored: restart smartsignd to apply configuration changes"
                    ),
                    Ok(signal) => {
                        smartsignd::say!("stopping on {signal}");
                        let _ = std::fs::remove_file(&socket);
                        if let Err(err) = service.store.flush() {
                            smartsignd::say!("writing out the store: {err}");
                        }
                        std::process::exit(0);
                    }
                    Err(err) => smartsignd::say!("waiting for signals: {err}"),
                }
            }
        })
        .map(drop)
        .map_err(|_| nix::Error::EAGAIN)
}
