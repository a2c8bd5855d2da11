//! Where what core reports goes. Core says what went wrong beside a run (a notify command that
//! could not start, metrics that could not be written) through `tracing`, one event each. The
//! daemon logs every event with its own subscriber; every other process (a CLI command, the hook)
//! calls [`to`] first thing, so that nothing core reports is lost there either: its warnings and
//! errors, one plain line each (`troops: WHAT (FIELD=VALUE, ...): ERROR`), escaped, no timestamps.

use std::io::Write;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Sends core's warnings and errors to `out` (stderr, or the hook's pusher) for the rest of the
/// process. A process that has a subscriber already (the daemon's) keeps it.
pub fn to(out: impl Write + Send + 'static) {
    let lines = Lines(Mutex::new(Box::new(out)));
    let _ = tracing_subscriber::registry().with(lines.with_filter(LevelFilter::WARN)).try_init();
}

struct Lines(Mutex<Box<dyn Write + Send>>);

impl<S: Subscriber> Layer<S> for Lines {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut line = Line::default();
        event.record(&mut line);
        let mut out = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let _ = writeln!(out, "{}", line.render());
        let _ = out.flush();
    }
}

/// One event: its message, its error, and its other fields in order.
#[derive(Default)]
struct Line {
    message: String,
    error: Option<String>,
    fields: Vec<String>,
}

impl Line {
    fn render(&self) -> String {
        let mut line = format!("troops: {}", self.message);
        if !self.fields.is_empty() {
            line += &format!(" ({})", self.fields.join(", "));
        }
        if let Some(error) = &self.error {
            line += &format!(": {error}");
        }
        crate::model::shown::escape(&line).into_owned()
    }

    fn record(&mut self, field: &Field, value: String) {
        match field.name() {
            "message" => self.message = value,
            "error" => self.error = Some(value),
            name => self.fields.push(format!("{name}={value}")),
        }
    }
}

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record(field, format!("{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// What the layer wrote, shared with the test.
    #[derive(Clone, Default)]
    struct Written(Arc<Mutex<Vec<u8>>>);

    impl Write for Written {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn warnings_and_errors_are_one_plain_line_each_and_nothing_else_is_said() {
        let written = Written::default();
        let lines = Lines(Mutex::new(Box::new(written.clone())));
        let subscriber = tracing_subscriber::registry().with(lines.with_filter(LevelFilter::WARN));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(run = 3, "notify command succeeded");
            let e = "writing /x/troops.prom: Permission denied\n(os error 13)";
            tracing::warn!(error = %e, "metrics not updated");
            tracing::error!(run = 7, event = "failed", error = "exit status: 2", "notify command failed");
        });
        let text = String::from_utf8(written.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "troops: metrics not updated: writing /x/troops.prom: Permission denied\\n(os error 13)\n\
             troops: notify command failed (run=7, event=failed): exit status: 2\n"
        );
    }
}
