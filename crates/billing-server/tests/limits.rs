//! The transport edge: a body that does not decode is INVALID_ARGUMENT, a
//! message or metadata over the size limit is RESOURCE_EXHAUSTED, and a
//! request whose metadata is over the limit fails alone, never the other
//! calls on its connection.

mod support;

use billing_api::BillingApi;
use billing_api::auth::{AuthLayer, Authenticator, VerifyingKey};
use billing_api::edge::{HTTP2_MAX_HEADER_LIST_BYTES, MAX_METADATA_BYTES, MAX_REQUEST_BYTES};
use billing_proto::v1 as pb;
use prost::Message as _;
use support::{RawCodec, TestApp, assert_status};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Code;
use tonic_types::StatusExt as _;
use tower::Layer as _;

#[tokio::test]
async fn a_body_that_does_not_decode_is_invalid_argument_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let account = app.account(100_000).await;
    let before = app.event_count().await;
    let channel = support::channel(app.addr).await;

    // Not protobuf at all.
    let err = support::raw_call(channel.clone(), "Reserve", vec![0xff; 8])
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "MALFORMED_REQUEST");

    // A `string` field (reservation_id, field 1) that is not UTF-8.
    let mut body = vec![0x0a, 2, 0xc3, 0x28];
    body.extend(
        pb::ReserveRequest {
            account_id: account.id.clone(),
            service_type: pb::ServiceType::Sms.into(),
            requested_units: 1,
            ..Default::default()
        }
        .encode_to_vec(),
    );
    let err = support::raw_call(channel.clone(), "Reserve", body)
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "MALFORMED_REQUEST");
    let details = err.get_error_details();
    let field = &details.error_info().unwrap().metadata["field"];
    assert_eq!(field, "reservation_id", "{err:?}");

    // A truncated message: a length prefix promising more than is there.
    let err = support::raw_call(channel.clone(), "AddBalance", vec![0x0a, 40, b'x'])
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "MALFORMED_REQUEST");

    // No message at all.
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let err = grpc
        .client_streaming(
            support::admin_request(futures::stream::empty::<Vec<u8>>()),
            support::rpc_path("Debit"),
            RawCodec,
        )
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "MALFORMED_REQUEST");

    // A well-formed message over the size limit.
    let huge = pb::AddBalanceRequest {
        account_id: account.id.clone(),
        amount_credit: 1,
        idempotency_key: "huge".into(),
        note: "n".repeat(MAX_REQUEST_BYTES),
        ..Default::default()
    };
    let err = support::raw_call(channel.clone(), "AddBalance", huge.encode_to_vec())
        .await
        .unwrap_err();
    assert_status(&err, Code::ResourceExhausted, "REQUEST_TOO_LARGE");

    // The same connection still serves well-formed calls.
    let get = pb::GetBillingAccountRequest {
        id: account.id.clone(),
    };
    let reply = support::raw_call(channel, "GetBillingAccount", get.encode_to_vec())
        .await
        .unwrap();
    let read = pb::BillingAccount::decode(reply.as_slice()).unwrap();
    assert_eq!(read, app.get(&account.id).await);
    assert_eq!(app.event_count().await, before, "nothing was appended");
}

/// The API served as the binary serves it, on `billing_api::edge::transport()`.
async fn serve_on_the_edge_transport(db: &billing_testkit::TestDb) -> std::net::SocketAddr {
    let store = billing_store::Store::connect(&db.url, 4, billing_domain::RateTable::default())
        .expect("a store");
    let authenticator = Authenticator::new(
        &VerifyingKey::Hs256(support::JWT_SECRET.as_bytes().to_vec()),
        None,
        None,
    )
    .expect("an authenticator");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let api = AuthLayer::new(authenticator).layer(BillingApi::new(store).into_server());
    tokio::spawn(
        billing_api::edge::transport()
            .add_service(api)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

#[tokio::test]
async fn metadata_over_the_limit_fails_that_call_alone_not_its_connection() {
    let db = billing_testkit::TestDb::new().await;
    let addr = serve_on_the_edge_transport(&db).await;
    let mut admin = support::admin(addr).await;
    let account = admin
        .create_billing_account(pb::CreateBillingAccountRequest {
            customer_id: uuid::Uuid::new_v4().to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let channel = support::channel(addr).await;
    let limit = MAX_METADATA_BYTES;
    // Over the service's limit; over HTTP/2's; just under HTTP/2's abuse limit.
    let http2 = HTTP2_MAX_HEADER_LIST_BYTES as usize;
    for size in [limit + 1_000, 2 * http2, 4 * http2 - 8 * 1024] {
        // A call in flight on the connection: its message is held back.
        let (release, gate) = tokio::sync::oneshot::channel::<()>();
        let body = pb::GetBillingAccountRequest {
            id: account.id.clone(),
        }
        .encode_to_vec();
        let in_flight = {
            let channel = channel.clone();
            tokio::spawn(async move {
                let mut grpc = tonic::client::Grpc::new(channel);
                grpc.ready().await.unwrap();
                let message = futures::stream::once(async move {
                    let _ = gate.await;
                    body
                });
                grpc.client_streaming(
                    support::admin_request(message),
                    support::rpc_path("GetBillingAccount"),
                    RawCodec,
                )
                .await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;

        let mut big = support::admin_request(
            pb::GetBillingAccountRequest {
                id: account.id.clone(),
            }
            .encode_to_vec(),
        );
        big.metadata_mut()
            .insert("x-padding", "a".repeat(size).parse().unwrap());
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let refused = grpc
            .unary(big, support::rpc_path("GetBillingAccount"), RawCodec)
            .await;
        match refused {
            Ok(_) => panic!("{size} bytes of metadata were accepted"),
            Err(status) if size < http2 => {
                assert_status(&status, Code::ResourceExhausted, "METADATA_TOO_LARGE");
            }
            Err(_) => {}
        }

        let _ = release.send(());
        let reply = in_flight.await.unwrap();
        assert!(
            reply.is_ok(),
            "{size} bytes of metadata on another call failed the one in flight: {reply:?}"
        );
    }
    // Metadata within the limit is fine.
    let mut fine = support::admin_request(
        pb::GetBillingAccountRequest {
            id: account.id.clone(),
        }
        .encode_to_vec(),
    );
    fine.metadata_mut()
        .insert("x-padding", "a".repeat(limit - 2_048).parse().unwrap());
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc.unary(fine, support::rpc_path("GetBillingAccount"), RawCodec)
        .await
        .unwrap();
}
