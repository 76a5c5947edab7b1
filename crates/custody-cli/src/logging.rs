//! Log output of the binaries: `tracing` events to stderr, filtered by
//! `RUST_LOG` (else `default_filter`), coloured only when stderr is a
//! terminal, so logs redirected to a file or journald carry no ANSI escapes.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Whether log lines get ANSI colours: stderr is a terminal and `NO_COLOR` is unset.
pub fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Installs the process's log subscriber (once, at the start of `main`).
pub fn init(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour())
        .init();
}
