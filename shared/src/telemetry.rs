//! Logging setup shared by every binary.

/// Installs a `tracing` subscriber that writes to stderr, filtered by `RUST_LOG`
/// (default: `info` for souk's crates, `warn` for the rest). Safe to call twice.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,souk=info,souk_encoder=info,souk_kg=info,souk_ranker=info,souk_shared=info,soukctl=info")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
