//! What a run measures besides the load itself: latency tallies, the CPU of
//! named processes and of PostgreSQL, and the read side's lag.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// An RPC at least this slow counts as slow in its second of the
/// timeline: the bound on Reserve p99.
const SLOW: Duration = Duration::from_millis(10);

/// What one worker measured.
pub struct Tally {
    pub latencies: BTreeMap<&'static str, Histogram<u64>>,
    pub errors: BTreeMap<String, u64>,
    pub calls: u64,
    pub changes: u64,
    /// Per second of the measured window (by when each RPC started), so a
    /// tail can be told apart as steady or as a stretch.
    pub seconds: Vec<Second>,
    measure_from: Instant,
}

/// One second of the measured window.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Second {
    /// RPCs started in this second.
    pub rpcs: u64,
    /// Of them, those that took [`SLOW`] or longer.
    pub slow: u64,
}

impl Tally {
    /// An empty tally of a window that starts at `measure_from`.
    pub fn since(measure_from: Instant) -> Self {
        Self {
            latencies: BTreeMap::new(),
            errors: BTreeMap::new(),
            calls: 0,
            changes: 0,
            seconds: Vec::new(),
            measure_from,
        }
    }

    /// Records one RPC; true when it succeeded.
    pub fn record(
        &mut self,
        rpc: &'static str,
        started: Instant,
        result: &Result<(), tonic::Status>,
    ) -> bool {
        let took = started.elapsed();
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        let _ = self
            .latencies
            .entry(rpc)
            .or_insert_with(histogram)
            .record(micros.min(120_000_000));
        let second = started
            .saturating_duration_since(self.measure_from)
            .as_secs();
        let second = usize::try_from(second).unwrap_or(usize::MAX);
        if second < 3_600 {
            if self.seconds.len() <= second {
                self.seconds.resize(second + 1, Second::default());
            }
            self.seconds[second].rpcs += 1;
            self.seconds[second].slow += u64::from(took >= SLOW);
        }
        match result {
            Ok(()) => true,
            Err(status) => {
                *self
                    .errors
                    .entry(format!("{rpc}:{:?}", status.code()))
                    .or_default() += 1;
                false
            }
        }
    }

    pub fn merge(&mut self, other: Tally) {
        for (rpc, h) in other.latencies {
            match self.latencies.get_mut(rpc) {
                Some(mine) => {
                    let _ = mine.add(&h);
                }
                None => {
                    self.latencies.insert(rpc, h);
                }
            }
        }
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
        self.calls += other.calls;
        self.changes += other.changes;
        if self.seconds.len() < other.seconds.len() {
            self.seconds.resize(other.seconds.len(), Second::default());
        }
        for (mine, theirs) in self.seconds.iter_mut().zip(other.seconds) {
            mine.rpcs += theirs.rpcs;
            mine.slow += theirs.slow;
        }
    }

    pub fn latency_report(&self) -> BTreeMap<String, Latency> {
        self.latencies
            .iter()
            .map(|(rpc, h)| ((*rpc).to_owned(), Latency::of(h)))
            .collect()
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        Self {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p95_us: h.value_at_quantile(0.95),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// CPU seconds (user + system) of a process, from /proc.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU seconds of every PostgreSQL process on the machine.
pub fn postgres_cpu_seconds() -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "postgres")
        })
        .filter_map(|pid| cpu_seconds(&pid))
        .sum()
}

/// A process to report the CPU of: `NAME=PID`.
#[derive(Clone, Debug)]
pub struct Process {
    pub name: String,
    pub pid: u32,
}

impl std::str::FromStr for Process {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, pid) = s.split_once('=').ok_or("expected NAME=PID")?;
        Ok(Self {
            name: name.to_owned(),
            pid: pid
                .parse()
                .map_err(|_| format!("`{pid}` is not a process id"))?,
        })
    }
}

/// CPU used by a named process over the measured window.
#[derive(Debug, Serialize)]
pub struct ProcessCpu {
    pub cpu_s: f64,
    pub us_per_change: f64,
}

/// CPU seconds of each process now, to subtract later.
pub fn cpu_snapshot(processes: &[Process]) -> BTreeMap<String, f64> {
    processes
        .iter()
        .filter_map(|p| Some((p.name.clone(), cpu_seconds(&p.pid.to_string())?)))
        .collect()
}

/// The CPU each process used since `before`, per change.
pub fn cpu_since(
    processes: &[Process],
    before: &BTreeMap<String, f64>,
    changes: f64,
) -> BTreeMap<String, ProcessCpu> {
    cpu_snapshot(processes)
        .into_iter()
        .filter_map(|(name, after)| {
            let cpu_s = after - before.get(&name)?;
            Some((
                name,
                ProcessCpu {
                    cpu_s,
                    us_per_change: cpu_s * 1e6 / changes.max(1.0),
                },
            ))
        })
        .collect()
}

/// How far one feed reader was behind while measuring.
#[derive(Debug, Default, Serialize)]
pub struct LagReport {
    pub samples: u64,
    pub p99_events: u64,
    pub max_events: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
}

/// Samples the lag of the projector's and the publisher's checkpoints every
/// 250 ms until `end`.
pub async fn sample_lag(
    database_url: String,
    end: Instant,
) -> anyhow::Result<BTreeMap<&'static str, LagReport>> {
    let store =
        billing_store::Store::connect(&database_url, 2, billing_domain::RateTable::default())?;
    let readers = [
        ("projector", billing_store::READ_MODELS),
        ("publisher", "kafka"),
    ];
    let mut events: Vec<Histogram<u64>> = readers.iter().map(|_| histogram()).collect();
    let mut ms: Vec<Histogram<u64>> = readers.iter().map(|_| histogram()).collect();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    while Instant::now() < end {
        tick.tick().await;
        for (n, (_, checkpoint)) in readers.iter().enumerate() {
            let lag = store.feed().feed_lag(checkpoint).await?;
            // Shifted by one: the histogram's floor is 1, and 0 means caught up.
            let events_behind = u64::try_from(lag.events).unwrap_or(0);
            let _ = events[n].record(events_behind.saturating_add(1).min(100_000_000));
            let _ = ms[n].record(((lag.seconds * 1_000.0) as u64 + 1).min(100_000_000));
        }
    }
    Ok(readers
        .iter()
        .enumerate()
        .map(|(n, (name, _))| {
            let floor = |v: u64| v.saturating_sub(1);
            (
                *name,
                LagReport {
                    samples: events[n].len(),
                    p99_events: floor(events[n].value_at_quantile(0.99)),
                    max_events: floor(events[n].max()),
                    p99_ms: floor(ms[n].value_at_quantile(0.99)),
                    max_ms: floor(ms[n].max()),
                },
            )
        })
        .collect())
}
