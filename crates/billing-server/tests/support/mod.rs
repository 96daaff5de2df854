//! Spawns the real server on a free port against a fresh database.

#![allow(dead_code)]

use billing_proto::v1 as pb;
use billing_proto::v1::billing_service_client::BillingServiceClient;
use billing_server::{Application, ServeConfig};
use billing_testkit::TestDb;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

pub type Client = BillingServiceClient<Channel>;

/// A running server; stopped when dropped.
pub struct TestApp {
    pub client: Client,
    pub addr: std::net::SocketAddr,
    pub store: billing_store::Store,
    pub db: TestDb,
    stop: Option<oneshot::Sender<()>>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        let db = TestDb::new().await;
        Self::spawn_with(db, |_| {}).await
    }

    pub async fn spawn_with(db: TestDb, tweak: impl FnOnce(&mut ServeConfig)) -> Self {
        let mut config = ServeConfig::for_database(&db.url);
        tweak(&mut config);
        let app = Application::build(config)
            .await
            .expect("build the application");
        let addr = app.local_addr().expect("the API is bound");
        let store = app.store().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(app.run(async move {
            let _ = stopped.await;
        }));
        let client = BillingServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("connect");
        Self {
            client,
            addr,
            store,
            db,
            stop: Some(stop),
        }
    }

    /// A new client on its own connection.
    pub async fn new_client(&self) -> Client {
        BillingServiceClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect")
    }

    /// A prepaid free-plan account with `credit` micros (and 100 tokens).
    pub async fn account(&self, credit: i64) -> pb::BillingAccount {
        self.account_with(credit, pb::CreateBillingAccountRequest::default())
            .await
    }

    pub async fn account_with(
        &self,
        credit: i64,
        mut request: pb::CreateBillingAccountRequest,
    ) -> pb::BillingAccount {
        let mut client = self.client.clone();
        if request.customer_id.is_empty() {
            request.customer_id = uuid::Uuid::new_v4().to_string();
        }
        let account = client
            .create_billing_account(request)
            .await
            .expect("create")
            .into_inner();
        if credit == 0 {
            return account;
        }
        self.add(&account.id, credit, 0).await
    }

    pub async fn add(&self, account_id: &str, credit: i64, token: i64) -> pb::BillingAccount {
        let mut client = self.client.clone();
        client
            .add_balance(pb::AddBalanceRequest {
                account_id: account_id.to_owned(),
                amount_credit: credit,
                amount_token: token,
                idempotency_key: uuid::Uuid::new_v4().to_string(),
                ..Default::default()
            })
            .await
            .expect("add balance")
            .into_inner()
            .account
            .expect("account")
    }

    pub async fn get(&self, account_id: &str) -> pb::BillingAccount {
        let mut client = self.client.clone();
        client
            .get_billing_account(pb::GetBillingAccountRequest {
                id: account_id.to_owned(),
            })
            .await
            .expect("get")
            .into_inner()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Asserts a status's code and ErrorInfo reason.
pub fn assert_status(status: &Status, code: Code, reason: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    let details = status.get_error_details();
    let info = details
        .error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo on {status:?}"));
    assert_eq!(info.reason, reason, "{status:?}");
    assert_eq!(info.domain, "billing.v1");
}

pub fn reserve(
    id: &str,
    account_id: &str,
    service: pb::ServiceType,
    units: i64,
) -> pb::ReserveRequest {
    pb::ReserveRequest {
        reservation_id: id.to_owned(),
        account_id: account_id.to_owned(),
        service_type: service.into(),
        requested_units: units,
        allow_partial: false,
        ttl_seconds: 0,
    }
}

pub fn commit_ms(id: &str, ms: i64) -> pb::CommitRequest {
    pb::CommitRequest {
        reservation_id: id.to_owned(),
        used_duration_ms: ms,
        used_quantity: 0,
    }
}
