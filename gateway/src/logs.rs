//! Log volume bounded whatever happens: each place in the code that logs (a callsite, ours or
//! a dependency's) writes at most `burst` lines per `window`; the rest are counted, and before
//! the first line from that place after the window comes one saying how many were left out.
//! A database outage, a flood of connections or a device repeating a mistake cannot fill the
//! disk through the logs (docs/security.md).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::callsite::Identifier;
use tracing::{Event, Metadata};
use tracing_subscriber::layer::{Context, Filter};

/// Lines per callsite per window, by default.
pub const BURST: u32 = 10;
pub const WINDOW: Duration = Duration::from_secs(10);

pub struct RepeatLimit {
    burst: u32,
    window: Duration,
    callsites: Mutex<HashMap<Identifier, Window>>,
    /// Where the "left out" lines go: the same place as the log (a line, no newline). They
    /// are written directly, since an event cannot be sent from inside the filter.
    report: Box<dyn Fn(&str) + Send + Sync>,
}

struct Window {
    started: Instant,
    written: u32,
    left_out: u64,
}

impl RepeatLimit {
    pub fn new(
        burst: u32,
        window: Duration,
        report: impl Fn(&str) + Send + Sync + 'static,
    ) -> RepeatLimit {
        RepeatLimit {
            burst,
            window,
            callsites: Mutex::new(HashMap::new()),
            report: Box::new(report),
        }
    }

    /// The limit of a process whose log is its standard error.
    pub fn on_stderr() -> RepeatLimit {
        RepeatLimit::new(BURST, WINDOW, |line| eprintln!("{line}"))
    }

    /// Whether a line from `metadata`'s callsite may be written now, and how many from it
    /// were left out in the window that just ended.
    fn admit(&self, metadata: &'static Metadata<'static>) -> (bool, u64) {
        let now = Instant::now();
        let mut callsites = self.callsites.lock().unwrap_or_else(|p| p.into_inner());
        let window = callsites.entry(metadata.callsite()).or_insert(Window {
            started: now,
            written: 0,
            left_out: 0,
        });
        let mut ended = 0;
        if now.duration_since(window.started) >= self.window {
            ended = std::mem::take(&mut window.left_out);
            window.started = now;
            window.written = 0;
        }
        if window.written < self.burst {
            window.written += 1;
            (true, ended)
        } else {
            window.left_out += 1;
            (false, ended)
        }
    }
}

impl<S> Filter<S> for RepeatLimit {
    fn enabled(&self, _: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _: &Context<'_, S>) -> bool {
        let metadata = event.metadata();
        let (write, left_out) = self.admit(metadata);
        if left_out > 0 {
            let now = time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            (self.report)(&format!(
                "{now}  WARN paygate::logs: {left_out} lines from {} at {}:{} were left out in the last {} s",
                metadata.target(),
                metadata.file().unwrap_or("?"),
                metadata.line().unwrap_or(0),
                self.window.as_secs_f64()
            ));
        }
        write
    }
}

/// A log line that repeats at most once per interval, saying how many times it happened since
/// it was last written: no input can fill the disk through the log.
pub struct Throttled {
    interval: Duration,
    last: Option<Instant>,
    unlogged: u64,
}

impl Throttled {
    pub fn every(interval: Duration) -> Throttled {
        Throttled {
            interval,
            last: None,
            unlogged: 0,
        }
    }

    /// Counts one occurrence; `Some(count)` when it is time to log them.
    pub fn occurred(&mut self) -> Option<u64> {
        self.unlogged += 1;
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.interval)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_repeated_without_end_is_written_a_burst_per_window_and_the_rest_counted() {
        let captured = Captured::default();
        let writer = captured.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .with_filter(RepeatLimit::new(3, Duration::from_millis(200), {
                let captured = captured.clone();
                move |line| {
                    use std::io::Write;
                    writeln!(captured.clone(), "{line}").unwrap();
                }
            }));
        let subscriber = tracing_subscriber::registry().with(layer);
        // one place in the code, called again and again
        let away = |n: u32| tracing::error!(n, "the database is away");
        tracing::subscriber::with_default(subscriber, || {
            for n in 0..10_000 {
                away(n);
                if n % 2 == 0 {
                    tracing::info!("another place");
                }
            }
            std::thread::sleep(Duration::from_millis(250));
            away(10_000);
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let repeated = lines
            .iter()
            .filter(|l| l.contains("the database is away"))
            .count();
        let other = lines.iter().filter(|l| l.contains("another place")).count();
        // three of each place in the first window, then the report and one line in the next
        assert_eq!(repeated, 4, "{text}");
        assert_eq!(other, 3, "{text}");
        let report: Vec<&&str> = lines.iter().filter(|l| l.contains("left out")).collect();
        assert_eq!(report.len(), 1, "{text}");
        assert!(
            report[0].contains(" 9997 lines from paygate_gateway::logs::tests at "),
            "{text}"
        );
        assert!(report[0].contains("logs.rs"), "{text}");
        // the report comes before the line after the window
        assert!(
            lines[6].contains("left out") && lines[7].contains("n=10000"),
            "{text}"
        );
        assert_eq!(lines.len(), 8, "{text}");
    }
}
