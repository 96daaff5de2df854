//! `billing tail`: a consumer that prints each balance change once, in
//! order, deduplicating by (account_id, version) as every consumer should.

use std::collections::HashMap;

use futures::StreamExt;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use serde_json::Value;

/// A change as consumers see it: whether it is new, and its line.
#[derive(Debug, Default)]
pub struct Dedup {
    /// The highest version seen per account.
    last: HashMap<String, i64>,
}

impl Dedup {
    /// True the first time a version of an account (above the last one) is
    /// seen; false for a redelivered or older one.
    pub fn is_new(&mut self, account_id: &str, version: i64) -> bool {
        let last = self.last.entry(account_id.to_owned()).or_insert(0);
        if version > *last {
            *last = version;
            true
        } else {
            false
        }
    }
}

/// One line for an `account_updated` payload.
pub fn describe(payload: &Value) -> Option<(String, i64, String)> {
    let data = &payload["data"];
    let account = data["id"].as_str()?.to_owned();
    let version = data["version"].as_i64()?;
    let line = format!(
        "{account} v{version} {:<22} credit={} available={} reserved={} tokens={}",
        payload["cause"]["event"].as_str().unwrap_or("?"),
        data["balance_credit"],
        data["available_credit"],
        data["reserved_credit"],
        data["balance_token"],
    );
    Some((account, version, line))
}

/// Prints every change on `topic` from the beginning, until interrupted.
pub async fn run(connection: &crate::KafkaConnection, topic: &str) -> Result<(), KafkaError> {
    let consumer: StreamConsumer = connection
        .client_config()
        .set("group.id", format!("billing-tail-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        // Until the publisher creates the topic, look for it every second
        // (librdkafka's default is every 5 minutes).
        .set("topic.metadata.refresh.interval.ms", "1000")
        .create()
        .map_err(crate::connection::redacted)?;
    consumer.subscribe(&[topic])?;
    let mut dedup = Dedup::default();
    let mut stream = consumer.stream();
    let mut waiting_said = false;
    while let Some(message) = stream.next().await {
        let message = match message {
            Ok(message) => message,
            Err(KafkaError::MessageConsumption(RDKafkaErrorCode::UnknownTopicOrPartition)) => {
                if !waiting_said {
                    eprintln!("waiting for {topic} to exist (the publisher creates it)");
                    waiting_said = true;
                }
                continue;
            }
            Err(error) => return Err(error),
        };
        let Some(payload) = message
            .payload()
            .and_then(|p| serde_json::from_slice::<Value>(p).ok())
        else {
            continue;
        };
        if let Some((account, version, line)) = describe(&payload)
            && dedup.is_new(&account, version)
        {
            println!("{line}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redeliveries_and_older_versions_are_dropped() {
        let mut dedup = Dedup::default();
        let seen: Vec<bool> = [("a", 1), ("a", 2), ("a", 1), ("b", 1), ("a", 2), ("a", 3)]
            .into_iter()
            .map(|(account, version)| dedup.is_new(account, version))
            .collect();
        assert_eq!(seen, [true, true, false, true, false, true]);
    }
}
