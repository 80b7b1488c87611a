//! Logging: one JSON object per line on stdout, filtered by `RUST_LOG` (default `info`).
use tracing_subscriber::EnvFilter;

/// Installs the global JSON log subscriber. Call once, first thing in `main`.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(true)
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .try_init();
}
