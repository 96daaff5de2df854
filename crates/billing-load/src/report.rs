//! The benchmark table: each service run next to the baseline measured at
//! the same concurrency and account distribution, and the gRPC health
//! check's ceiling at the same concurrency, all in the same `make bench`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use serde_json::{Value, json};

/// The runs of one row: (service, baseline).
type Row = (Option<Value>, Option<Value>);

fn ms(run: &Value, rpc: &str, quantile: &str) -> String {
    run["rpcs"][rpc][quantile]
        .as_f64()
        .map_or_else(|| "-".to_owned(), |us| format!("{:.1}", us / 1_000.0))
}

fn f(value: &Value) -> f64 {
    value.as_f64().unwrap_or(0.0)
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// "hot" for one account, else "uniform-N".
fn distribution(run: &Value) -> String {
    match run["accounts"].as_u64() {
        Some(1) => "hot".to_owned(),
        Some(n) => format!("uniform-{n}"),
        None => "?".to_owned(),
    }
}

fn lag(run: &Value, reader: &str) -> String {
    let l = &run["lag"][reader];
    match (l["p99_ms"].as_u64(), l["p99_events"].as_u64()) {
        (Some(ms), Some(events)) => format!("{ms}/{events}"),
        _ => "-".to_owned(),
    }
}

fn cpu(run: &Value, process: &str) -> f64 {
    f(&run["processes"][process]["us_per_change"])
}

pub fn report(dir: &Path) -> anyhow::Result<()> {
    let mut rows: BTreeMap<(String, u64), Row> = BTreeMap::new();
    let mut health: BTreeMap<u64, f64> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json")
            || path.file_name().is_some_and(|n| n == "summary.json")
        {
            continue;
        }
        let run: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
            .with_context(|| format!("parsing {}", path.display()))?;
        let concurrency = run["concurrency"].as_u64().unwrap_or(0);
        let key = (distribution(&run), concurrency);
        match run["kind"].as_str() {
            Some("health") => {
                health.insert(concurrency, f(&run["changes_per_s"]));
            }
            Some("service") => rows.entry(key).or_default().0 = Some(run),
            Some("baseline") => rows.entry(key).or_default().1 = Some(run),
            _ => {}
        }
    }
    println!(
        "{:<13} {:>4} {:>9} {:>9} {:>6} {:>9} {:>6} {:>13} {:>7} {:>7} {:>6} {:>6} {:>6} {:>6} {:>6} {:>10} {:>10} {:>5}",
        "accounts",
        "conc",
        "changes/s",
        "baseline",
        "ratio",
        "health/s",
        "of hc",
        "Reserve p50/99",
        "Cmt p99",
        "Deb p99",
        "errors",
        "api",
        "read",
        "broker",
        "pg",
        "proj lag",
        "pub lag",
        "gen%"
    );
    let mut summary = Vec::new();
    for ((distribution, concurrency), (service, baseline)) in &rows {
        let Some(service) = service else {
            continue;
        };
        let changes = f(&service["changes_per_s"]);
        let baseline_tps = baseline.as_ref().map_or(0.0, |b| f(&b["tps"]));
        let ceiling = health.get(concurrency).copied().unwrap_or(0.0);
        let errors: u64 = service["errors"]
            .as_object()
            .map_or(0, |e| e.values().filter_map(Value::as_u64).sum());
        println!(
            "{:<13} {:>4} {:>9.0} {:>9.0} {:>6.2} {:>9.0} {:>6.2} {:>13} {:>7} {:>7} {:>6} {:>6.0} {:>6.0} {:>6.0} {:>6.0} {:>10} {:>10} {:>5.0}",
            distribution,
            concurrency,
            changes,
            baseline_tps,
            ratio(changes, baseline_tps),
            ceiling,
            ratio(changes, ceiling),
            format!(
                "{}/{}",
                ms(service, "Reserve", "p50_us"),
                ms(service, "Reserve", "p99_us")
            ),
            ms(service, "Commit", "p99_us"),
            ms(service, "Debit", "p99_us"),
            errors,
            cpu(service, "api"),
            cpu(service, "readside"),
            cpu(service, "broker"),
            f(&service["postgres_cpu_us_per_change"]),
            lag(service, "projector"),
            lag(service, "publisher"),
            f(&service["loadgen_cpu_pct_of_core"]),
        );
        summary.push(json!({
            "distribution": distribution,
            "accounts": service["accounts"],
            "concurrency": concurrency,
            "service_changes_per_s": changes,
            "service_calls_per_s": service["calls_per_s"],
            "baseline_charges_per_s": baseline_tps,
            "health_checks_per_s": ceiling,
            "ratio": ratio(changes, baseline_tps),
            "ratio_to_health_ceiling": ratio(changes, ceiling),
            "errors": errors,
            "service": service,
            "baseline": baseline,
        }));
    }
    println!(
        "(latencies in ms; ratio = service changes/s over baseline charges/s; of hc = over gRPC \
         health checks/s at the same concurrency; api, read, broker, pg = CPU µs per change; \
         lag = p99 ms/events behind)"
    );
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    Ok(())
}
