//! Spawns the real server on a free port against a fresh database.

#![allow(dead_code)]

pub mod broker;
pub mod receiver;

use billing_proto::v1 as pb;
use billing_proto::v1::billing_service_client::BillingServiceClient;
use billing_server::{Application, ServeConfig};
use billing_testkit::TestDb;
use tokio::sync::oneshot;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

/// The HS256 secret test servers verify tokens with.
pub const JWT_SECRET: &str = "test-secret-for-billing-0123456789";

pub type Client = BillingServiceClient<InterceptedService<Channel, Bearer>>;

/// Sends a bearer token (or none) with every call.
#[derive(Clone, Debug)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A token for `role`, signed with the test secret, valid for an hour.
pub fn token(subject: &str, role: &str, customer_id: Option<uuid::Uuid>) -> String {
    billing_api::auth::mint_hs256(
        JWT_SECRET.as_bytes(),
        subject,
        role,
        customer_id,
        3_600,
        None,
        None,
    )
    .unwrap()
}

/// A client of the server at `addr` sending `token` (raw, as given).
pub async fn connect(addr: impl std::fmt::Display, token: Option<&str>) -> Client {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    let header = token.map(|t| format!("Bearer {t}").parse().expect("an ASCII token"));
    BillingServiceClient::with_interceptor(channel, Bearer(header))
}

/// A client authenticated as a project super admin.
pub async fn admin(addr: impl std::fmt::Display) -> Client {
    connect(
        addr,
        Some(&token("admin-alice", "project_super_admin", None)),
    )
    .await
}

/// An address on loopback that nothing listens on (a port just freed), for
/// a server or broker a test starts itself.
pub fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A running server; stopped when dropped.
pub struct TestApp {
    pub client: Client,
    pub addr: std::net::SocketAddr,
    pub store: billing_store::Store,
    pub db: TestDb,
    stop: Option<oneshot::Sender<()>>,
}

impl TestApp {
    /// Every event in the app's database: what a refused call must not move.
    pub async fn event_count(&self) -> i64 {
        self.db
            .client()
            .await
            .query_one("SELECT count(*) FROM events", &[])
            .await
            .unwrap()
            .get(0)
    }

    pub async fn spawn() -> Self {
        let db = TestDb::new().await;
        Self::spawn_with(db, |_| {}).await
    }

    pub async fn spawn_with(db: TestDb, tweak: impl FnOnce(&mut ServeConfig)) -> Self {
        let mut config = ServeConfig::for_database(&db.url, JWT_SECRET);
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
        let client = admin(addr).await;
        Self {
            client,
            addr,
            store,
            db,
            stop: Some(stop),
        }
    }

    /// A new super-admin client on its own connection.
    pub async fn new_client(&self) -> Client {
        admin(self.addr).await
    }

    /// A client with `role`'s token.
    pub async fn client_as(&self, role: &str, customer_id: Option<uuid::Uuid>) -> Client {
        connect(
            self.addr,
            Some(&token(&format!("{role}-tester"), role, customer_id)),
        )
        .await
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

    /// Sets the account's status to frozen.
    pub async fn freeze(&self, account_id: &str) {
        let mut client = self.client.clone();
        client
            .update_billing_account(pb::UpdateBillingAccountRequest {
                id: account_id.to_owned(),
                status: Some(pb::AccountStatus::Frozen.into()),
                ..Default::default()
            })
            .await
            .expect("freeze");
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

/// Passes request and response messages through as raw bytes, so a test can
/// send what no protobuf encoder would.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self {
        *self
    }

    fn decoder(&mut self) -> Self {
        *self
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Status> {
        prost::bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        use prost::bytes::Buf as _;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// The path of a billing RPC.
pub fn rpc_path(method: &str) -> tonic::codegen::http::uri::PathAndQuery {
    format!("/billing.v1.BillingService/{method}")
        .parse()
        .expect("a path")
}

/// A super admin's request carrying `message`.
pub fn admin_request<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    let value = format!(
        "Bearer {}",
        token("admin-alice", "project_super_admin", None)
    );
    request
        .metadata_mut()
        .insert("authorization", value.parse().expect("an ASCII token"));
    request
}

/// Sends `body` as the request message of `method` (e.g. "Reserve"), as a
/// super admin, on `channel`.
pub async fn raw_call(channel: Channel, method: &str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    grpc.unary(admin_request(body), rpc_path(method), RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

/// A channel (one HTTP/2 connection) to `addr`.
pub async fn channel(addr: impl std::fmt::Display) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect")
}
