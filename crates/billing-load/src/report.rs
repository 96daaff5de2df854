//! The benchmark table: service runs next to the baseline measured at the
//! same concurrency and account distribution, in the same `make bench`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use serde_json::{Value, json};

/// (distribution, concurrency) -> (service run, baseline run).
type Pairs = BTreeMap<(String, u64), (Option<Value>, Option<Value>)>;

fn ms(run: &Value, rpc: &str, quantile: &str) -> String {
    run["rpcs"][rpc][quantile]
        .as_f64()
        .map_or_else(|| "-".to_owned(), |us| format!("{:.1}", us / 1_000.0))
}

pub fn report(dir: &Path) -> anyhow::Result<()> {
    let mut pairs = Pairs::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json")
            || path.file_name().is_some_and(|n| n == "summary.json")
        {
            continue;
        }
        let run: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
            .with_context(|| format!("parsing {}", path.display()))?;
        let key = (
            run["distribution"].as_str().unwrap_or("?").to_owned(),
            run["concurrency"].as_u64().unwrap_or(0),
        );
        let slot = pairs.entry(key).or_default();
        match run["kind"].as_str() {
            Some("service") => slot.0 = Some(run),
            Some("baseline") => slot.1 = Some(run),
            _ => {}
        }
    }
    println!(
        "{:<8} {:>4} {:>10} {:>8} {:>13} {:>13} {:>11} {:>10} {:>6} {:>7} {:>9} {:>9} {:>8}",
        "accounts",
        "conc",
        "changes/s",
        "calls/s",
        "Reserve p50/99",
        "Commit p50/99",
        "Debit p99",
        "baseline/s",
        "ratio",
        "errors",
        "svc us/ch",
        "pg us/ch",
        "gen %cpu"
    );
    let mut rows = Vec::new();
    for ((distribution, concurrency), (service, baseline)) in &pairs {
        let (Some(service), Some(baseline)) = (service, baseline) else {
            continue;
        };
        let changes = service["changes_per_s"].as_f64().unwrap_or(0.0);
        let baseline_tps = baseline["tps"].as_f64().unwrap_or(0.0);
        let ratio = if baseline_tps > 0.0 {
            changes / baseline_tps
        } else {
            0.0
        };
        let errors: u64 = service["errors"]
            .as_object()
            .map_or(0, |e| e.values().filter_map(Value::as_u64).sum());
        println!(
            "{:<8} {:>4} {:>10.0} {:>8.0} {:>13} {:>13} {:>11} {:>10.0} {:>6.2} {:>7} {:>9.0} {:>9.0} {:>8.0}",
            distribution,
            concurrency,
            changes,
            service["calls_per_s"].as_f64().unwrap_or(0.0),
            format!(
                "{}/{}",
                ms(service, "Reserve", "p50_us"),
                ms(service, "Reserve", "p99_us")
            ),
            format!(
                "{}/{}",
                ms(service, "Commit", "p50_us"),
                ms(service, "Commit", "p99_us")
            ),
            ms(service, "Debit", "p99_us"),
            baseline_tps,
            ratio,
            errors,
            service["server_cpu_us_per_change"].as_f64().unwrap_or(0.0),
            service["postgres_cpu_us_per_change"]
                .as_f64()
                .unwrap_or(0.0),
            service["loadgen_cpu_pct_of_core"].as_f64().unwrap_or(0.0),
        );
        rows.push(json!({
            "distribution": distribution,
            "concurrency": concurrency,
            "service_changes_per_s": changes,
            "service_calls_per_s": service["calls_per_s"],
            "baseline_charges_per_s": baseline_tps,
            "ratio": ratio,
            "errors": errors,
            "service": service,
            "baseline": baseline,
        }));
    }
    println!(
        "(latencies in ms; ratio = service changes/s / baseline charges/s, measured in the same run)"
    );
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_string_pretty(&rows)?,
    )?;
    Ok(())
}
