//! `smartsign-mangen DIR`: writes smartsign.1 and smartsignd.8 into DIR,
//! from the same clap definitions the programs parse their arguments with.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::CommandFactory;
use smartsignd::cli::{DaemonCli, UserCli};

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: smartsign-mangen DIR");
        return ExitCode::from(2);
    };
    let pages = [
        ("smartsign.1", UserCli::command().name("smartsign"), "1"),
        ("smartsignd.8", DaemonCli::command().name("smartsignd"), "8"),
    ];
    for (file, command, section) in pages {
        let mut page = Vec::new();
        let rendered = clap_mangen::Man::new(command)
            .section(section)
            .render(&mut page);
        let written = rendered.and_then(|()| std::fs::write(dir.join(file), &page));
        if let Err(err) = written {
            eprintln!("smartsign-mangen: {file}: {err}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
