//! `billing verify`: recomputes every account's hash chain (or one
//! account's) from the stored events and names the first broken link.

use std::io::IsTerminal as _;

use billing_store::Store;
use billing_store::chain::to_hex;
use uuid::Uuid;

/// Verifies; true when every link holds.
pub async fn run(store: &Store, account: Option<Uuid>) -> anyhow::Result<bool> {
    let terminal = std::io::stderr().is_terminal();
    let report = store
        .maintenance()
        .verify_chains(account, |events| {
            if terminal {
                eprint!("\rverifying: {events} events checked\x1b[K");
            }
        })
        .await?;
    if terminal {
        eprint!("\r\x1b[K");
    }
    let scope = match account {
        Some(id) => format!("account {id}"),
        None => format!("{} accounts", report.accounts),
    };
    let before = if report.unchained > 0 {
        format!(
            " ({} events from before the chain existed carry no hash)",
            report.unchained
        )
    } else {
        String::new()
    };
    if let Some(broken) = &report.broken {
        println!(
            "BROKEN LINK: account {} version {}: {}",
            broken.account_id, broken.version, broken.problem
        );
        println!(
            "checked {} events of {scope} up to it{before}",
            report.events
        );
        return Ok(false);
    }
    println!(
        "verified {} events of {scope}: every link holds{before}",
        report.events
    );
    if account.is_none() {
        let digest = store.maintenance().chain_digest().await?;
        println!(
            "chain heads digest {} over {} accounts and {} events at {}",
            to_hex(&digest.digest),
            digest.accounts,
            digest.events,
            digest.at.to_rfc3339()
        );
    }
    Ok(true)
}
