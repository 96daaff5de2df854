//! `billing rebuild`: projects every event into the read models again,
//! telling the operator how far it has come, how fast, and how long is left.

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

use billing_store::{RebuildProgress, Store};

/// Events per batch: one feed read and one apply each.
const BATCH: i64 = 1_000;
/// How often progress is reported when stderr is not a terminal (a log).
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Rebuilds the read models, reporting progress on stderr.
pub async fn run(store: &Store) -> anyhow::Result<()> {
    let started = Instant::now();
    let terminal = std::io::stderr().is_terminal();
    let mut last = started;
    let report = store
        .read_models()
        .rebuild_read_models_with(BATCH, |progress| {
            let now = Instant::now();
            let every = if terminal {
                Duration::from_millis(200)
            } else {
                LOG_EVERY
            };
            if now.duration_since(last) < every {
                return;
            }
            last = now;
            let line = describe(progress, now.duration_since(started));
            let mut err = std::io::stderr().lock();
            let _ = if terminal {
                write!(err, "\r{line}\x1b[K")
            } else {
                writeln!(err, "{line}")
            };
        })
        .await?;
    if terminal {
        eprint!("\r\x1b[K");
    }
    println!(
        "rebuilt the read models from {} events in {:.1} s",
        report.applied,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `rebuilding: 120000 of 1000000 events (12%), 45000 events/s, about 20 s left`.
pub fn describe(progress: RebuildProgress, elapsed: Duration) -> String {
    let RebuildProgress { done, total } = progress;
    let percent = (done * 100).checked_div(total).unwrap_or(100);
    let seconds = elapsed.as_secs_f64();
    let rate = if seconds > 0.0 {
        done as f64 / seconds
    } else {
        0.0
    };
    let left = if rate > 0.0 {
        format!(", about {:.0} s left", (total - done) as f64 / rate)
    } else {
        String::new()
    };
    format!("rebuilding: {done} of {total} events ({percent}%), {rate:.0} events/s{left}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_reads_as_done_rate_and_time_left() {
        let line = describe(
            RebuildProgress {
                done: 120_000,
                total: 1_000_000,
            },
            Duration::from_secs(4),
        );
        assert_eq!(
            line,
            "rebuilding: 120000 of 1000000 events (12%), 30000 events/s, about 29 s left"
        );
        let empty = describe(RebuildProgress { done: 0, total: 0 }, Duration::ZERO);
        assert_eq!(empty, "rebuilding: 0 of 0 events (100%), 0 events/s");
    }
}
