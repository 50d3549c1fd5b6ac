//! Logging: rwg's crates log through `tracing`; this subscriber passes each event on to the
//! app's callback (`rwg_set_logger`) as one line with a level.
//!
//! It is installed as the process's global `tracing` subscriber the first time a callback is
//! set; if the process already has one (a Rust app with its own), that one keeps receiving
//! rwg's events and `rwg_set_logger` says [`RwgError::Unsupported`]. Spans are not reported.
//! Nothing rwg logs contains a key (DESIGN.md); the configuration errors this crate logs name
//! the line, not the value.

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};

use crate::error::RwgError;
use crate::sys::logger;
use crate::types::RwgLogLevel;

/// The most verbose level passed on ([`RwgLogLevel`] as an integer).
static MAX_LEVEL: AtomicI32 = AtomicI32::new(RwgLogLevel::Off as i32);
/// Whether our subscriber became the global one (decided once per process).
static INSTALLED: OnceLock<bool> = OnceLock::new();

fn code(level: &Level) -> i32 {
    (match *level {
        Level::ERROR => RwgLogLevel::Error,
        Level::WARN => RwgLogLevel::Warn,
        Level::INFO => RwgLogLevel::Info,
        Level::DEBUG => RwgLogLevel::Debug,
        Level::TRACE => RwgLogLevel::Trace,
    }) as i32
}

/// Makes sure our subscriber is the global one.
pub(crate) fn install() -> Result<(), RwgError> {
    if *INSTALLED.get_or_init(|| tracing::subscriber::set_global_default(Bridge).is_ok()) {
        Ok(())
    } else {
        Err(RwgError::Unsupported)
    }
}

/// Sets the most verbose level passed on.
pub(crate) fn set_max_level(level: RwgLogLevel) {
    MAX_LEVEL.store(level as i32, Ordering::Relaxed);
    // Callsites cache whether they are enabled; the hint changed.
    tracing::callsite::rebuild_interest_cache();
}

/// The subscriber.
#[derive(Debug)]
struct Bridge;

impl Subscriber for Bridge {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        // The level can change at any time: ask `enabled` every time.
        Interest::sometimes()
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.is_event() && code(metadata.level()) <= MAX_LEVEL.load(Ordering::Relaxed)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(
            match RwgLogLevel::from_code(MAX_LEVEL.load(Ordering::Relaxed)) {
                RwgLogLevel::Off => LevelFilter::OFF,
                RwgLogLevel::Error => LevelFilter::ERROR,
                RwgLogLevel::Warn => LevelFilter::WARN,
                RwgLogLevel::Info => LevelFilter::INFO,
                RwgLogLevel::Debug => LevelFilter::DEBUG,
                RwgLogLevel::Trace => LevelFilter::TRACE,
            },
        )
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut line = Line::default();
        event.record(&mut line);
        line.text.push_str(&line.fields);
        logger::emit(code(event.metadata().level()), &line.text);
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// One event as text: the message, then ` key=value` for each other field.
#[derive(Default)]
struct Line {
    text: String,
    fields: String,
}

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.text.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={}", field.name(), value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.text, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={:?}", field.name(), value);
        }
    }
}
