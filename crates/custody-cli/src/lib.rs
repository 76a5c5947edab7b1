//! The `custody` client's building blocks, shared by its subcommands and tests.
//!
//! This crate owns the command-line edge: connecting to a server, uploading
//! files (with retries), following ffmpeg's segment list, and printing human
//! or JSON output. The binaries `custodyd`, `custody` and `custody-bench` are
//! thin `main` functions over it and over `custody-server`.

pub mod audit;
pub mod certs;
pub mod client;
pub mod compliance;
pub mod evidence;
pub mod logging;
pub mod output;
pub mod play;
pub mod progress;
pub mod retention;
pub mod watch;
