//! Health that means something: the gRPC health service reports each role
//! this process runs under the role's name (`api`, `sweeper`, `projector`,
//! `publisher`, as `BILLING_ROLES` spells them), the API also under
//! `billing.v1.BillingService`, and the process as a whole under `""`
//! (SERVING only while every role is).
//!
//! Every role needs the database: while it does not answer, every role is
//! NOT_SERVING, and SERVING again once it does. The publisher also needs a
//! Kafka broker. Checks run on connections of their own, so a pool busy with
//! commands never makes the service look down.

use std::time::Duration;

use billing_api::{BillingApi, BillingServiceServer};
use billing_publisher::KafkaConnection;
use billing_publisher::probe::BrokerProbe;
use billing_store::{DatabaseProbe, Store};
use tokio::sync::watch;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::Role;

/// The probes a monitor asks.
struct Checks {
    database: DatabaseProbe,
    broker: Broker,
}

/// The publisher's brokers, as far as health goes.
enum Broker {
    /// No publisher here: nothing to check.
    None,
    /// A publisher whose Kafka client cannot even be made: never healthy.
    Unusable,
    Probe(BrokerProbe),
}

impl Checks {
    fn new(database: DatabaseProbe, brokers: Option<&KafkaConnection>) -> Self {
        let broker = match brokers.map(BrokerProbe::new) {
            None => Broker::None,
            Some(Ok(probe)) => Broker::Probe(probe),
            Some(Err(error)) => {
                tracing::warn!(%error, "health: cannot make a Kafka client; the publisher is not serving");
                Broker::Unusable
            }
        };
        Self { database, broker }
    }
}

/// How long one check may wait for an answer.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The health service name of a role.
pub fn service_name(role: Role) -> &'static str {
    match role {
        Role::Api => "api",
        Role::Sweeper => "sweeper",
        Role::Projector => "projector",
        Role::Publisher => "publisher",
        Role::Dispatcher => "dispatcher",
    }
}

/// What the monitor checks, and how often.
#[derive(Debug)]
pub struct Monitor {
    pub store: Store,
    pub roles: Vec<Role>,
    /// The publisher's brokers (and its credentials, so that wrong ones
    /// show here), when this process runs it.
    pub brokers: Option<KafkaConnection>,
    pub interval: Duration,
}

impl Monitor {
    /// Checks once and reports (so that health is true from the first call
    /// the server answers), then goes on checking every `interval`, in a
    /// task of its own, until `stop` turns true.
    pub async fn start(
        self,
        reporter: HealthReporter,
        mut stop: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let mut checks = Checks::new(self.store.database_probe(), self.brokers.as_ref());
        let mut reported = self.check(&mut checks, &reporter, None).await;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.wait_for(|stopped| *stopped) => break,
                    () = tokio::time::sleep(self.interval) => {}
                }
                reported = self.check(&mut checks, &reporter, Some(reported)).await;
            }
        })
    }

    /// One round: each role's state, reported when it changed.
    async fn check(
        &self,
        checks: &mut Checks,
        reporter: &HealthReporter,
        reported: Option<Vec<bool>>,
    ) -> Vec<bool> {
        let database_up = match checks.database.check(CHECK_TIMEOUT).await {
            Ok(()) => true,
            Err(error) => {
                if reported.as_ref().is_none_or(|r| r.iter().any(|up| *up)) {
                    tracing::warn!(%error, "health: the database does not answer");
                }
                false
            }
        };
        let broker_up = match &checks.broker {
            Broker::None => true,
            Broker::Unusable => false,
            Broker::Probe(probe) => match probe.check(CHECK_TIMEOUT).await {
                Ok(()) => true,
                Err(error) => {
                    tracing::debug!(%error, "health: no Kafka broker answers");
                    false
                }
            },
        };
        let states: Vec<bool> = self
            .roles
            .iter()
            .map(|role| database_up && (*role != Role::Publisher || broker_up))
            .collect();
        if reported.as_ref() != Some(&states) {
            self.report(reporter, &states).await;
        }
        states
    }

    /// Sets every role's status, and the process's.
    async fn report(&self, reporter: &HealthReporter, states: &[bool]) {
        let status = |up: bool| {
            if up {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            }
        };
        for (role, up) in self.roles.iter().zip(states) {
            let name = service_name(*role);
            reporter.set_service_status(name, status(*up)).await;
            if *role == Role::Api {
                reporter
                    .set_service_status(
                        <BillingServiceServer<BillingApi> as NamedService>::NAME,
                        status(*up),
                    )
                    .await;
            }
            metrics::gauge!("billing_health_serving", "service" => name).set(f64::from(*up));
        }
        let all = states.iter().all(|up| *up);
        reporter.set_service_status("", status(all)).await;
        metrics::gauge!("billing_health_serving", "service" => "").set(f64::from(all));
        let summary: Vec<String> = self
            .roles
            .iter()
            .zip(states)
            .map(|(role, up)| {
                let word = if *up { "serving" } else { "NOT serving" };
                format!("{} {word}", service_name(*role))
            })
            .collect();
        if all {
            tracing::info!(roles = %summary.join(", "), "health: serving");
        } else {
            tracing::warn!(roles = %summary.join(", "), "health: not serving");
        }
    }
}
