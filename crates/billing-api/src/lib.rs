//! The gRPC `billing.v1.BillingService`: validates requests, turns them into
//! domain commands, runs them through the store, and maps outcomes and
//! rejections back to protobuf. It is the only crate that knows both
//! protobuf and domain types.
//!
//! - [`BillingApi`]: the service; its handlers live by area in `accounts`
//!   (create, read, update, list, balance adjustments), `charging` (rate,
//!   holds, debits), `ledger` (balances, history), `estimate` (cost
//!   estimates, plan comparison), `watch` (live account views) and
//!   `webhooks` (customer webhooks: registration, secrets, deliveries).
//! - [`validate`]: the input rules, one per kind of field (text, numbers,
//!   times, currencies, pages).
//! - [`edge`]: message and metadata size limits, and a clear status for a
//!   body that does not decode.
//! - [`auth`]: bearer JWTs, roles and the per-RPC policy (a tower layer).
//! - `request`: what every handler does with a request (caller, metadata,
//!   idempotency, replies).
//! - `convert`: protobuf <-> domain.
//! - [`status`]: rejections and store failures -> gRPC statuses, in one place.
//! - [`telemetry`]: every call's server span (continuing the caller's trace)
//!   and its count and latency (a tower layer).

#![forbid(unsafe_code)]

mod accounts;
pub mod auth;
mod charging;
mod convert;
mod currency;
pub mod edge;
mod estimate;
mod ledger;
mod request;
pub mod status;
pub mod telemetry;
pub mod validate;
pub mod watch;
mod webhooks;

use billing_proto::v1 as pb;
use billing_proto::v1::billing_service_server::BillingService;
use billing_store::Store;
use tokio::sync::watch as signal;
use tonic::{Request, Response, Status};

pub use billing_proto::v1::billing_service_server::BillingServiceServer;

/// The billing service over a store.
#[derive(Clone, Debug)]
pub struct BillingApi {
    /// Where commands run and state is read.
    store: Store,
    /// The watchers of live account views, and the feed follower they share.
    watchers: std::sync::Arc<watch::Hub>,
    /// Turns true when the server stops, ending watch streams (a graceful
    /// shutdown waits for every stream, and a watch never ends by itself).
    stop: Option<signal::Receiver<bool>>,
}

/// The gRPC server of the billing service, with its limits and edge.
pub type Server = edge::Edge<BillingServiceServer<BillingApi>>;

impl BillingApi {
    pub fn new(store: Store) -> Self {
        Self {
            watchers: watch::Hub::new(store.clone()),
            store,
            stop: None,
        }
    }

    /// Ends `WatchAccount` streams when `stop` turns true (each with
    /// UNAVAILABLE and the version to resume after).
    pub fn with_shutdown(mut self, stop: signal::Receiver<bool>) -> Self {
        self.stop = Some(stop);
        self
    }

    /// The gRPC server for this service: messages are bounded by
    /// [`edge::MAX_REQUEST_BYTES`] and [`edge::MAX_RESPONSE_BYTES`], and a
    /// request that does not decode is INVALID_ARGUMENT.
    pub fn into_server(self) -> Server {
        edge::Edge::new(
            BillingServiceServer::new(self)
                .max_decoding_message_size(edge::MAX_REQUEST_BYTES)
                .max_encoding_message_size(edge::MAX_RESPONSE_BYTES),
        )
    }
}

#[tonic::async_trait]
impl BillingService for BillingApi {
    #[tracing::instrument(skip_all, fields(rpc = "CreateBillingAccount", account_id))]
    async fn create_billing_account(
        &self,
        request: Request<pb::CreateBillingAccountRequest>,
    ) -> Result<Response<pb::BillingAccount>, Status> {
        accounts::create(self, request).await
    }

    #[tracing::instrument(skip_all, fields(rpc = "GetBillingAccount", account_id))]
    async fn get_billing_account(
        &self,
        request: Request<pb::GetBillingAccountRequest>,
    ) -> Result<Response<pb::BillingAccount>, Status> {
        accounts::get(self, request).await
    }

    #[tracing::instrument(skip_all, fields(rpc = "UpdateBillingAccount", account_id))]
    async fn update_billing_account(
        &self,
        request: Request<pb::UpdateBillingAccountRequest>,
    ) -> Result<Response<pb::BillingAccount>, Status> {
        accounts::update(self, request).await
    }

    #[tracing::instrument(skip_all, fields(rpc = "AddBalance", account_id))]
    async fn add_balance(
        &self,
        request: Request<pb::AddBalanceRequest>,
    ) -> Result<Response<pb::AddBalanceResponse>, Status> {
        accounts::add_balance(self, request).await
    }

    #[tracing::instrument(skip_all, fields(rpc = "SubtractBalance", account_id))]
    async fn subtract_balance(
        &self,
        request: Request<pb::SubtractBalanceRequest>,
    ) -> Result<Response<pb::SubtractBalanceResponse>, Status> {
        accounts::subtract_balance(self, request).await
    }

    #[tracing::instrument(skip_all, fields(rpc = "Rate", account_id))]
    async fn rate(
        &self,
        request: Request<pb::RateRequest>,
    ) -> Result<Response<pb::RateResponse>, Status> {
        charging::rate(self, request).await
    }

    #[tracing::instrument(skip_all, fields(rpc = "Reserve", account_id, reservation_id))]
    async fn reserve(
        &self,
        request: Request<pb::ReserveRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        charging::reserve(self, request).await
    }

    #[tracing::instrument(skip_all, fields(rpc = "Extend", reservation_id))]
    async fn extend(
        &self,
        request: Request<pb::ExtendRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        charging::extend(self, request).await
    }

    #[tracing::instrument(skip_all, fields(rpc = "Commit", reservation_id))]
    async fn commit(
        &self,
        request: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        charging::commit(self, request).await
    }

    #[tracing::instrument(skip_all, fields(rpc = "Release", reservation_id))]
    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        charging::release(self, request).await
    }

    #[tracing::instrument(skip_all, fields(rpc = "Debit", account_id))]
    async fn debit(
        &self,
        request: Request<pb::DebitRequest>,
    ) -> Result<Response<pb::DebitResponse>, Status> {
        charging::debit(self, request).await
    }

    #[tracing::instrument(skip_all, fields(rpc = "GetBalance", account_id))]
    async fn get_balance(
        &self,
        request: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::Balance>, Status> {
        ledger::balance(self, request).await
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListBillingAccounts"))]
    async fn list_billing_accounts(
        &self,
        request: Request<pb::ListBillingAccountsRequest>,
    ) -> Result<Response<pb::ListBillingAccountsResponse>, Status> {
        accounts::list(self, request).await
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListTransactions", account_id))]
    async fn list_transactions(
        &self,
        request: Request<pb::ListTransactionsRequest>,
    ) -> Result<Response<pb::ListTransactionsResponse>, Status> {
        ledger::transactions(self, request).await
    }

    #[tracing::instrument(skip_all, fields(rpc = "EstimateCost", account_id))]
    async fn estimate_cost(
        &self,
        request: Request<pb::EstimateCostRequest>,
    ) -> Result<Response<pb::EstimateCostResponse>, Status> {
        estimate::estimate_cost(self, request).await
    }

    #[tracing::instrument(skip_all, fields(rpc = "ComparePlans"))]
    async fn compare_plans(
        &self,
        request: Request<pb::ComparePlansRequest>,
    ) -> Result<Response<pb::ComparePlansResponse>, Status> {
        estimate::compare_plans(self, request).await
    }

    type WatchAccountStream = watch::WatchStream;

    #[tracing::instrument(skip_all, fields(rpc = "WatchAccount", account_id))]
    async fn watch_account(
        &self,
        request: Request<pb::WatchAccountRequest>,
    ) -> Result<Response<Self::WatchAccountStream>, Status> {
        watch::watch_account(self, request).await
    }

    #[tracing::instrument(skip_all, fields(rpc = "CreateWebhook"))]
    async fn create_webhook(
        &self,
        request: Request<pb::CreateWebhookRequest>,
    ) -> Result<Response<pb::Webhook>, Status> {
        webhooks::create(self, request).await
    }

    #[tracing::instrument(skip_all, fields(rpc = "GetWebhook"))]
    async fn get_webhook(
        &self,
        request: Request<pb::GetWebhookRequest>,
    ) -> Result<Response<pb::Webhook>, Status> {
        webhooks::get(self, request).await
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListWebhooks"))]
    async fn list_webhooks(
        &self,
        request: Request<pb::ListWebhooksRequest>,
    ) -> Result<Response<pb::ListWebhooksResponse>, Status> {
        webhooks::list(self, request).await
    }

    #[tracing::instrument(skip_all, fields(rpc = "UpdateWebhook"))]
    async fn update_webhook(
        &self,
        request: Request<pb::UpdateWebhookRequest>,
    ) -> Result<Response<pb::Webhook>, Status> {
        webhooks::update(self, request).await
    }

    #[tracing::instrument(skip_all, fields(rpc = "DeleteWebhook"))]
    async fn delete_webhook(
        &self,
        request: Request<pb::DeleteWebhookRequest>,
    ) -> Result<Response<pb::DeleteWebhookResponse>, Status> {
        webhooks::delete(self, request).await
    }

    #[tracing::instrument(skip_all, fields(rpc = "RotateWebhookSecret"))]
    async fn rotate_webhook_secret(
        &self,
        request: Request<pb::RotateWebhookSecretRequest>,
    ) -> Result<Response<pb::Webhook>, Status> {
        webhooks::rotate_secret(self, request).await
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListWebhookDeliveries"))]
    async fn list_webhook_deliveries(
        &self,
        request: Request<pb::ListWebhookDeliveriesRequest>,
    ) -> Result<Response<pb::ListWebhookDeliveriesResponse>, Status> {
        webhooks::deliveries(self, request).await
    }

    #[tracing::instrument(skip_all, fields(rpc = "RetryWebhookDelivery"))]
    async fn retry_webhook_delivery(
        &self,
        request: Request<pb::RetryWebhookDeliveryRequest>,
    ) -> Result<Response<pb::WebhookDelivery>, Status> {
        webhooks::retry_delivery(self, request).await
    }

    #[tracing::instrument(skip_all, fields(rpc = "ReplayWebhook"))]
    async fn replay_webhook(
        &self,
        request: Request<pb::ReplayWebhookRequest>,
    ) -> Result<Response<pb::ReplayWebhookResponse>, Status> {
        webhooks::replay(self, request).await
    }
}
