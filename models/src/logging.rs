//! The log subscriber every binary of the workspace installs: library code logs through
//! `tracing`, and a binary decides where it goes. Warnings and progress go to stderr as plain
//! lines (no timestamps, no module paths), because tests and users read them there;
//! `RUST_LOG` overrides the level (`RUST_LOG=debug engine score ...`).

use tracing_subscriber::EnvFilter;

/// Installs the subscriber; a second call (a test that runs two mains) keeps the first.
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .with_level(false)
        .try_init();
}
