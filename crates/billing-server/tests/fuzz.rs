//! A property-based fuzz of the API over real gRPC: generated requests to
//! every RPC, mostly valid with a few adversarial fields (extreme integers,
//! NUL, control characters and over-long strings, unknown enum values, bad
//! ids, out-of-range times), sent one at a time to the real server on a
//! fresh database. A request is generated valid-ish per RPC, then up to two
//! of its fields, any field, are given adversarial values by reflection on
//! the service's descriptors (so a field added later is fuzzed too).
//!
//! The webhook RPCs get their own strange input: URIs of every odd shape
//! (no host, spaces, `javascript:`, 10 KB, IDN hosts, userinfo, ports 0 and
//! past 65535, percent-encoded garbage), duplicate and unknown event types,
//! up to thousands of account ids, page tokens that are garbage or another
//! list's, page sizes and overlaps at the integer edges, `since` at the
//! edges of time, ids of deleted webhooks and of another customer's, sent
//! as a project super admin, as the customer's own customer_admin or as
//! another customer's. For every call:
//!
//! - the status is never INTERNAL or UNKNOWN;
//! - a refused call changes nothing (events, idempotency records,
//!   reservations, accounts and their versions, webhooks, deliveries);
//! - a customer_admin's call changes nothing of another customer's, and
//!   what it reads is its own customer's;
//! - a secret is in the replies of CreateWebhook and RotateWebhookSecret
//!   only;
//! - every stored webhook keeps its rules (an http(s) URI of at most 2,048
//!   bytes without spaces or control characters, known event types and
//!   accounts of its customer, sorted and distinct, at most 20 a customer);
//! - every account stays readable (`GetBillingAccount`, `GetBalance`), and
//!   so do the webhooks (`ListWebhooks`).
//!
//! Bounded in time: `BILLING_FUZZ_CASES` cases (default 300), stopping early
//! after `BILLING_FUZZ_SECONDS` (default 12). Seeded: `BILLING_FUZZ_SEED`
//! (a u64; the default is fixed), so a run is the same calls every time.
//! The sweeper and the dispatcher do not run, so only the calls change the
//! database.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use billing_proto::v1 as pb;
use proptest::prelude::*;
use proptest::strategy::Union;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, Value};
use support::{Client, TestApp};
use tonic::Code;
use tonic::transport::Channel;

/// One generated call.
#[derive(Clone, Debug)]
enum Call {
    Create(pb::CreateBillingAccountRequest),
    Get(pb::GetBillingAccountRequest),
    Update(pb::UpdateBillingAccountRequest),
    Add(pb::AddBalanceRequest),
    Subtract(pb::SubtractBalanceRequest),
    Rate(pb::RateRequest),
    Reserve(pb::ReserveRequest),
    Extend(pb::ExtendRequest),
    Commit(pb::CommitRequest),
    Release(pb::ReleaseRequest),
    Debit(pb::DebitRequest),
    Balance(pb::GetBalanceRequest),
    Accounts(pb::ListBillingAccountsRequest),
    Ledger(pb::ListTransactionsRequest),
    Estimate(pb::EstimateCostRequest),
    Plans(pb::ComparePlansRequest),
    CreateWebhook(pb::CreateWebhookRequest),
    GetWebhook(pb::GetWebhookRequest),
    ListWebhooks(pb::ListWebhooksRequest),
    UpdateWebhook(pb::UpdateWebhookRequest),
    DeleteWebhook(pb::DeleteWebhookRequest),
    RotateSecret(pb::RotateWebhookSecretRequest),
    Deliveries(pb::ListWebhookDeliveriesRequest),
    Retry(pb::RetryWebhookDeliveryRequest),
    Replay(pb::ReplayWebhookRequest),
}

/// Who makes a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Caller {
    /// A project super admin.
    Admin,
    /// The customer_admin of the webhooks' customer.
    Owner,
    /// The customer_admin of a customer with no accounts and no webhooks.
    Stranger,
}

fn caller() -> BoxedStrategy<Caller> {
    prop_oneof![
        6 => Just(Caller::Admin),
        3 => Just(Caller::Owner),
        1 => Just(Caller::Stranger),
    ]
    .boxed()
}

/// What the webhook calls aim at, made before the fuzz starts: a customer
/// with accounts, webhooks (one of them disabled) and deliveries in every
/// status; another customer with its own; a webhook deleted with its
/// delivery.
#[derive(Clone, Debug)]
struct Hooks {
    customer: uuid::Uuid,
    other_customer: uuid::Uuid,
    stranger: uuid::Uuid,
    /// The customer's accounts.
    accounts: Vec<String>,
    /// Accounts of other customers.
    foreign_accounts: Vec<String>,
    /// The customer's webhooks.
    webhooks: Vec<String>,
    /// More of the customer's webhooks, for DeleteWebhook (so the others
    /// live long enough to be fuzzed).
    disposable: Vec<String>,
    /// The other customer's.
    foreign_webhooks: Vec<String>,
    /// A webhook deleted before the fuzz, and a delivery of it.
    deleted_webhook: String,
    deleted_delivery: String,
    /// Deliveries of the customer's webhooks: failed, pending, delivered.
    deliveries: Vec<String>,
    /// Deliveries of the other customer's webhook.
    foreign_deliveries: Vec<String>,
}

/// Strings no field should take lightly.
fn weird_text() -> BoxedStrategy<String> {
    prop_oneof![
        Just(String::new()),
        Just("\0".to_owned()),
        Just("a\0b".to_owned()),
        Just("\u{1b}[2J\r\n".to_owned()),
        Just("\u{85}\u{7f}".to_owned()),
        Just("x".repeat(256)),
        Just("x".repeat(2_049)),
        Just("é".repeat(129)),
        // Past the request message limit.
        Just("q".repeat(70_000)),
        "\\PC{1,24}",
        any::<String>(),
    ]
    .boxed()
}

/// Mostly `valid`, sometimes weird.
fn text(valid: impl Strategy<Value = String> + 'static) -> BoxedStrategy<String> {
    prop_oneof![12 => valid, 1 => weird_text()].boxed()
}

fn weird_int() -> BoxedStrategy<i64> {
    prop_oneof![
        Just(0),
        Just(-1),
        Just(i64::MIN),
        Just(i64::MAX),
        Just(i64::MAX - 1),
        Just(1_000_000_000_000_000),
        Just(1_000_000_000_000_001),
        Just(1_000_000_001),
        Just(86_401),
        any::<i64>(),
    ]
    .boxed()
}

fn int(valid: impl Strategy<Value = i64> + 'static) -> BoxedStrategy<i64> {
    prop_oneof![12 => valid, 1 => weird_int()].boxed()
}

/// An enum field: a known value of 1..=`max`, or not.
fn enumeration(max: i32) -> BoxedStrategy<i32> {
    prop_oneof![
        20 => 1..=max,
        1 => Just(0),
        1 => prop_oneof![Just(-1), Just(max + 1), Just(i32::MAX), any::<i32>()],
    ]
    .boxed()
}

fn weird_id() -> BoxedStrategy<String> {
    prop_oneof![
        Just(String::new()),
        Just("nope".to_owned()),
        any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).to_string()),
        any::<u128>().prop_map(|n| format!("{}\0", uuid::Uuid::from_u128(n))),
        any::<u128>().prop_map(|n| format!("{{{}}}", uuid::Uuid::from_u128(n))),
        weird_text(),
    ]
    .boxed()
}

/// One of the fuzz's accounts, or an id that is not one.
fn account_id(ids: &[String]) -> BoxedStrategy<String> {
    let ids = ids.to_vec();
    prop_oneof![
        12 => proptest::sample::select(ids.clone()),
        1 => proptest::sample::select(ids).prop_map(|id| id.to_uppercase()),
        1 => weird_id(),
    ]
    .boxed()
}

/// Calls hold these few ids, so extends, commits and releases find them.
fn reservation_id() -> BoxedStrategy<String> {
    text((0..12).prop_map(|n| format!("r{n}")))
}

/// Keys, some of them often, so retries and reuses happen; or none, or a
/// weird one.
fn key() -> BoxedStrategy<String> {
    prop_oneof![
        12 => (0..1_000).prop_map(|n| format!("k{n}")),
        // Hot keys: retries, and reuses with another request.
        3 => (0..4).prop_map(|n| format!("k{n}")),
        1 => Just(String::new()),
        1 => weird_text(),
    ]
    .boxed()
}

fn time() -> BoxedStrategy<Option<prost_types::Timestamp>> {
    let at = |seconds, nanos| Some(prost_types::Timestamp { seconds, nanos });
    prop_oneof![
        6 => Just(None),
        3 => (1_700_000_000i64..1_900_000_000).prop_map(move |s| at(s, 0)),
        1 => prop_oneof![
            Just(at(i64::MAX, 0)),
            Just(at(i64::MIN, 0)),
            Just(at(-62_135_596_801, 0)),
            Just(at(253_402_300_800, 0)),
            Just(at(-219_923_510_400, 0)),
            Just(at(0, -1)),
            Just(at(0, 1_000_000_000)),
            (any::<i64>(), any::<i32>()).prop_map(move |(s, n)| at(s, n)),
        ],
    ]
    .boxed()
}

/// A usage measure: mostly one of the two fields, sometimes both or odd.
fn usage() -> BoxedStrategy<(i64, i64)> {
    prop_oneof![
        6 => (1i64..20).prop_map(|q| (0, q)),
        6 => (0i64..600_000).prop_map(|ms| (ms, 0)),
        1 => (weird_int(), weird_int()),
    ]
    .boxed()
}

fn currency() -> BoxedStrategy<String> {
    text(prop_oneof![
        Just(String::new()),
        Just("USD".to_owned()),
        Just("EUR".to_owned()),
        Just("ABC".to_owned()),
        "[A-Z]{3}",
    ])
}

fn optional<T: std::fmt::Debug + Clone + 'static>(
    s: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<Option<T>> {
    prop_oneof![2 => Just(None), 1 => s.prop_map(Some)].boxed()
}

fn name() -> BoxedStrategy<String> {
    text("[A-Za-z ]{0,20}")
}

fn calls(ids: &[String]) -> BoxedStrategy<Call> {
    let create = (
        (
            any::<u128>(),
            name(),
            text("[a-z .\n]{0,40}"),
            enumeration(4),
        ),
        (
            currency(),
            int(0i64..5_000_000),
            enumeration(2),
            any::<bool>(),
        ),
        (int(0i64..1_000_000), key(), name(), name()),
    )
        .prop_map(|(a, b, c)| {
            Call::Create(pb::CreateBillingAccountRequest {
                customer_id: uuid::Uuid::from_u128(a.0).to_string(),
                name: a.1,
                detail: a.2,
                plan_type: a.3,
                currency: b.0,
                credit_limit: b.1,
                credit_limit_type: b.2,
                is_postpaid: b.3,
                low_balance_threshold: c.0,
                idempotency_key: c.1,
                payment_type: c.2,
                payment_method: c.3,
            })
        });
    let get = prop_oneof![4 => account_id(ids), 1 => Just(String::new())]
        .prop_map(|id| Call::Get(pb::GetBillingAccountRequest { id }));
    let update = (
        (
            account_id(ids),
            optional(name()),
            optional(text("[a-z ]{0,40}")),
        ),
        (
            optional(enumeration(4)),
            optional(enumeration(2)),
            optional(enumeration(2)),
        ),
        (
            optional(int(0i64..5_000_000)),
            optional(enumeration(2)),
            optional(any::<bool>()),
        ),
        (
            optional(int(0i64..1_000_000)),
            optional(name()),
            optional(name()),
            key(),
        ),
    )
        .prop_map(|(a, b, c, d)| {
            Call::Update(pb::UpdateBillingAccountRequest {
                id: a.0,
                name: a.1,
                detail: a.2,
                plan_type: b.0,
                plan_status: b.1,
                status: b.2,
                credit_limit: c.0,
                credit_limit_type: c.1,
                is_postpaid: c.2,
                low_balance_threshold: d.0,
                payment_type: d.1,
                payment_method: d.2,
                idempotency_key: d.3,
            })
        });
    let money = || {
        (
            account_id(ids),
            int(0i64..10_000_000),
            int(0i64..50),
            prop_oneof![3 => Just(0), 1 => enumeration(12)],
            text("[a-z0-9-]{0,12}"),
            key(),
            text("[a-z ]{0,20}"),
            // The bucket: paid (0) mostly, promotional, or unknown values.
            prop_oneof![3 => Just(0), 2 => Just(1), 1 => enumeration(1)],
        )
    };
    let add = (money(), time()).prop_map(
        |((id, credit, token, r, rid, key, note, bucket), expires_at)| {
            Call::Add(pb::AddBalanceRequest {
                account_id: id,
                amount_credit: credit,
                amount_token: token,
                reference_type: r,
                reference_id: rid,
                idempotency_key: key,
                note,
                bucket,
                expires_at,
            })
        },
    );
    let subtract = money().prop_map(|(id, credit, token, r, rid, key, note, bucket)| {
        Call::Subtract(pb::SubtractBalanceRequest {
            account_id: id,
            amount_credit: credit,
            amount_token: token,
            reference_type: r,
            reference_id: rid,
            idempotency_key: key,
            note,
            bucket,
        })
    });
    let rate = (
        enumeration(10),
        usage(),
        prop_oneof![Just(String::new()), account_id(ids)],
    )
        .prop_map(|(s, (ms, q), id)| {
            Call::Rate(pb::RateRequest {
                service_type: s,
                duration_ms: ms,
                quantity: q,
                account_id: id,
            })
        });
    let reserve = (
        reservation_id(),
        account_id(ids),
        enumeration(10),
        int(1i64..10),
        any::<bool>(),
        prop_oneof![3 => Just(0), 1 => int(1i64..86_400)],
    )
        .prop_map(|(rid, id, s, units, partial, ttl)| {
            Call::Reserve(pb::ReserveRequest {
                reservation_id: rid,
                account_id: id,
                service_type: s,
                requested_units: units,
                allow_partial: partial,
                ttl_seconds: ttl,
            })
        });
    let extend = (reservation_id(), int(1i64..5), any::<bool>(), key()).prop_map(
        |(rid, units, partial, key)| {
            Call::Extend(pb::ExtendRequest {
                reservation_id: rid,
                additional_units: units,
                allow_partial: partial,
                idempotency_key: key,
            })
        },
    );
    let commit = (reservation_id(), usage()).prop_map(|(rid, (ms, q))| {
        Call::Commit(pb::CommitRequest {
            reservation_id: rid,
            used_duration_ms: ms,
            used_quantity: q,
        })
    });
    let release = reservation_id().prop_map(|rid| {
        Call::Release(pb::ReleaseRequest {
            reservation_id: rid,
        })
    });
    let debit = (
        account_id(ids),
        enumeration(10),
        usage(),
        prop_oneof![3 => Just(0), 1 => enumeration(11)],
        text("[a-z0-9-]{0,12}"),
        key(),
    )
        .prop_map(|(id, s, (ms, q), r, rid, key)| {
            Call::Debit(pb::DebitRequest {
                account_id: id,
                service_type: s,
                quantity: q,
                duration_ms: ms,
                reference_type: r,
                reference_id: rid,
                idempotency_key: key,
            })
        });
    let balance = (account_id(ids), currency(), time()).prop_map(|(id, currency, as_of)| {
        Call::Balance(pb::GetBalanceRequest {
            account_id: id,
            currency,
            as_of,
        })
    });
    let accounts = (
        prop_oneof![3 => Just(0), 1 => any::<i32>()],
        prop_oneof![3 => Just(String::new()), 1 => weird_text(), 1 => Just("a1.nope".to_owned())],
        prop_oneof![3 => Just(String::new()), 1 => weird_id()],
    )
        .prop_map(|(page_size, page_token, customer_id)| {
            Call::Accounts(pb::ListBillingAccountsRequest {
                page_size,
                page_token,
                customer_id,
            })
        });
    let ledger = (
        (account_id(ids), prop_oneof![3 => Just(0), 1 => any::<i32>()]),
        (
            prop_oneof![3 => Just(0), 1 => any::<i32>()],
            prop_oneof![3 => Just(String::new()), 1 => weird_text(), 1 => Just("v1.3".to_owned())],
        ),
        (prop_oneof![3 => Just(0), 1 => enumeration(11)], time(), time()),
        prop_oneof![4 => Just(0), 1 => Just(1), 1 => Just(-1), 1 => Just(1_000_000), 1 => Just(i64::MAX)],
    )
        .prop_map(|(a, b, c, min_version)| {
            Call::Ledger(pb::ListTransactionsRequest {
                account_id: a.0,
                limit: a.1,
                offset: b.0,
                page_token: b.1,
                reference_type: c.0,
                start_time: c.1,
                end_time: c.2,
                min_version,
            })
        });
    let usage_lines = || {
        prop::collection::vec(
            (enumeration(10), int(0i64..1_000), usage()).prop_map(|(s, count, (ms, q))| {
                pb::UsageLine {
                    service_type: s,
                    count,
                    duration_ms: ms,
                    quantity: q,
                }
            }),
            0..4,
        )
    };
    let estimate = (
        prop_oneof![Just(String::new()), account_id(ids)],
        usage_lines(),
    )
        .prop_map(|(account_id, lines)| {
            Call::Estimate(pb::EstimateCostRequest { account_id, lines })
        });
    let plans = usage_lines()
        .prop_map(|monthly_usage| Call::Plans(pb::ComparePlansRequest { monthly_usage }));
    Union::new_weighted(vec![
        (1, estimate.boxed()),
        (1, plans.boxed()),
        (1, create.boxed()),
        (1, get.boxed()),
        (2, update.boxed()),
        (3, add.boxed()),
        (2, subtract.boxed()),
        (1, rate.boxed()),
        (3, reserve.boxed()),
        (2, extend.boxed()),
        (2, commit.boxed()),
        (2, release.boxed()),
        (3, debit.boxed()),
        (2, balance.boxed()),
        (1, accounts.boxed()),
        (2, ledger.boxed()),
    ])
    .boxed()
}

/// An id of `ids` as given, or spelt another way `Uuid::parse_str` takes
/// (upper case, no hyphens, braces, a URN).
fn spelt(ids: &[String]) -> BoxedStrategy<String> {
    let ids = ids.to_vec();
    (proptest::sample::select(ids), 0..8u8)
        .prop_map(|(id, how)| {
            let uuid = uuid::Uuid::parse_str(&id).expect("a fixture id");
            match how {
                0 => id.to_uppercase(),
                1 => uuid.simple().to_string(),
                2 => uuid.braced().to_string(),
                3 => uuid.urn().to_string(),
                _ => id,
            }
        })
        .boxed()
}

/// A webhook id: the customer's mostly, the other customer's, a deleted
/// one, a delivery's, or none at all.
fn webhook_id(h: &Hooks) -> BoxedStrategy<String> {
    prop_oneof![
        12 => spelt(&h.webhooks),
        2 => proptest::sample::select(h.foreign_webhooks.clone()),
        2 => Just(h.deleted_webhook.clone()),
        1 => proptest::sample::select(h.deliveries.clone()),
        1 => weird_id(),
    ]
    .boxed()
}

fn delivery_id(h: &Hooks) -> BoxedStrategy<String> {
    prop_oneof![
        12 => spelt(&h.deliveries),
        2 => proptest::sample::select(h.foreign_deliveries.clone()),
        1 => Just(h.deleted_delivery.clone()),
        1 => proptest::sample::select(h.webhooks.clone()),
        1 => weird_id(),
    ]
    .boxed()
}

fn customer_id(h: &Hooks) -> BoxedStrategy<String> {
    prop_oneof![
        8 => Just(h.customer.to_string()),
        2 => Just(h.other_customer.to_string()),
        1 => Just(h.stranger.to_string()),
        2 => Just(String::new()),
        1 => Just(h.customer.to_string().to_uppercase()),
        1 => Just(h.customer.simple().to_string()),
        1 => weird_id(),
    ]
    .boxed()
}

/// URIs of every odd shape: each is refused or kept as given, never a
/// failure.
const STRANGE_URIS: &[&str] = &[
    "http://",
    "https://",
    "https:",
    "https:/",
    "https:///path",
    "https:example.com",
    "https:/\\example.com",
    "https://\\example.com",
    "https://[::1]",
    "https://[::1]:8443/hooks",
    "https://[::1",
    "https://[fe80::1%25eth0]/",
    "https://[zz]/",
    "https://a b",
    "https://exa mple.com",
    "https://example.com/ x",
    "https://example.com/\t",
    "https://example.com/\u{0}",
    "https://example.com/\u{85}",
    "https://example.com/\u{a0}",
    "https://example.com/\u{2028}",
    "https://ex\u{200b}ample.com/",
    "javascript:alert(1)",
    "JAVASCRIPT://alert(1)",
    "data:text/html,<b>hi</b>",
    "file:///etc/passwd",
    "ftp://example.com/",
    "mailto:billing@example.com",
    "ws://example.com/",
    "//example.com/hooks",
    "/hooks",
    "example.com/hooks",
    "localhost:8080/hooks",
    "http://%",
    "https://%/",
    "https://%zz/",
    "https://%00/",
    "https://ex%41mple.com/",
    "https://%C2%AD/",
    "https://%E2%80%AE.com/",
    "https://example.com/%00%0a%ff%zz%",
    "https://example.com/?q=%%%",
    "https://example.com/#%G0",
    "https://bücher.example/hooks",
    "https://xn--bcher-kva.example/",
    "https://xn--/",
    "https://xn--zz.com/",
    "https://\u{1f600}.example/",
    "https://ｅｘａｍｐｌｅ．ｃｏｍ/",
    "https://\u{ad}/",
    "https://\u{202e}moc.example/",
    "https://-.example/",
    "https://exam_ple.com/",
    "https://..",
    "https://./",
    "https://example.com./",
    "https://0x7f.1/",
    "https://127.1/",
    "https://999.999.999.999/",
    "https://4294967296/",
    "https://user:pass@example.com/",
    "https://user@example.com/",
    "https://@example.com/",
    "https://a@b@example.com/",
    "https://:pass@example.com/",
    "https://user:pass@/",
    "https://example.com:0/",
    "https://example.com:1/",
    "https://example.com:65535/",
    "https://example.com:65536/",
    "https://example.com:99999/",
    "https://example.com:-1/",
    "https://example.com:/",
    "https://example.com:port/",
    "https://example.com:443:443/",
    "https://:443/",
    "HTTPS://EXAMPLE.COM",
    "hTtP://Example.Com/Hooks",
    "https://example.com/hooks?x=1&y=\u{e9}#frag",
    "http://localhost/",
    "http://169.254.169.254/latest/meta-data/",
];

fn uri() -> BoxedStrategy<String> {
    prop_oneof![
        24 => "[a-z0-9/]{0,20}".prop_map(|path| format!("https://hooks.example.com/{path}")),
        8 => proptest::sample::select(STRANGE_URIS).prop_map(str::to_owned),
        1 => Just(format!("https://e.com/{}", "a".repeat(10_240))),
        // At the 2,048 byte bound and one past it.
        1 => Just(format!("https://e.com/{}", "a".repeat(2_048 - 14))),
        1 => Just(format!("https://e.com/{}", "a".repeat(2_048 - 13))),
        1 => Just(format!("https://{}.com/", "a".repeat(300))),
        1 => Just(format!("https://{}/", "%zz".repeat(100))),
        1 => "https://[^/ ]{0,12}/".prop_map(|s| s),
        1 => weird_text(),
    ]
    .boxed()
}

fn method() -> BoxedStrategy<String> {
    prop_oneof![
        8 => proptest::sample::select(&["", "POST", "post", "Post", "pOsT", "PUT", "put", "pUt"][..]),
        1 => proptest::sample::select(&[
            "GET", "get", "DELETE", "PATCH", "HEAD", "POST ", " PUT", "POST\0", "P\u{d3}ST",
            "ＰＯＳＴ", "po\u{17f}t", "POSTPOST",
        ][..]),
    ]
    .prop_map(str::to_owned)
    .boxed()
}

const EVENT_TYPES: [&str; 4] = [
    "account_updated",
    "balance_low",
    "balance_recovered",
    "credit_limit_exceeded",
];

/// Known event types, duplicated or not, or unknown ones; sometimes more
/// than the 100 a list may hold, or more than a request may hold.
fn event_types() -> BoxedStrategy<Vec<String>> {
    let one = prop_oneof![
        40 => proptest::sample::select(&EVENT_TYPES[..]).prop_map(str::to_owned),
        1 => proptest::sample::select(&[
            "", "balance_changed", "ACCOUNT_UPDATED", "account_updated ", "account_updated\0",
            "*", "account.updated", "balance_low,balance_recovered",
        ][..]).prop_map(str::to_owned),
        1 => weird_text(),
    ];
    prop_oneof![
        1 => Just(vec![]),
        24 => prop::collection::vec(one, 1..6),
        1 => Just(vec!["balance_low".to_owned(); 100]),
        1 => Just(vec!["balance_low".to_owned(); 101]),
        1 => Just(vec!["account_updated".to_owned(); 3_000]),
        1 => Just(vec!["account_updated".to_owned(); 10_000]),
    ]
    .boxed()
}

/// The customer's accounts, others', ones that do not exist, or not ids;
/// sometimes hundreds or thousands.
fn account_ids(h: &Hooks) -> BoxedStrategy<Vec<String>> {
    let one = prop_oneof![
        20 => spelt(&h.accounts),
        2 => proptest::sample::select(h.foreign_accounts.clone()),
        1 => any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).to_string()),
        1 => weird_id(),
    ];
    let own = h.accounts.clone();
    let many = |n: usize| {
        (0..n)
            .map(|i| uuid::Uuid::from_u128(i as u128 + 1).to_string())
            .collect::<Vec<_>>()
    };
    prop_oneof![
        12 => Just(vec![]),
        12 => prop::collection::vec(one, 1..4),
        1 => Just(own.iter().cycle().take(100).cloned().collect()),
        1 => Just(own.iter().cycle().take(101).cloned().collect()),
        1 => Just(many(1_000)),
        1 => Just(many(1_700)),
        1 => Just(many(5_000)),
    ]
    .boxed()
}

fn page_size() -> BoxedStrategy<i32> {
    prop_oneof![
        4 => Just(0),
        2 => 1..4i32,
        1 => proptest::sample::select(&[-1, i32::MIN, i32::MAX, 100, 101, 1_000_000][..]),
        1 => any::<i32>(),
    ]
    .boxed()
}

/// Page tokens: none, this list's, another list's or another RPC's, or
/// garbage.
fn page_token(h: &Hooks) -> BoxedStrategy<String> {
    let webhook = proptest::sample::select(h.webhooks.clone());
    let delivery = proptest::sample::select(h.deliveries.clone());
    prop_oneof![
        6 => Just(String::new()),
        2 => webhook.prop_map(|id| format!("w1.{id}")),
        2 => delivery.prop_map(|id| format!("d1.{id}")),
        1 => proptest::sample::select(&[
            "w1.", "d1.", "w1.nope", "d1.nope", "a1.nope", "v1.3", "w1.-1", "W1.0",
            "w1.00000000-0000-0000-0000-000000000000",
            "d1.ffffffff-ffff-ffff-ffff-ffffffffffff",
            "w1.{00000000-0000-0000-0000-000000000000}",
            "w1.00000000-0000-0000-0000-000000000000\0",
        ][..]).prop_map(str::to_owned),
        1 => Just(format!("w1.{}", "0".repeat(70))),
        1 => weird_text(),
    ]
    .boxed()
}

fn overlap() -> BoxedStrategy<Option<i64>> {
    prop_oneof![
        3 => Just(None),
        3 => (0i64..=604_800).prop_map(Some),
        1 => proptest::sample::select(&[
            0, 1, 86_400, 604_800, 604_801, -1, i64::MIN, i64::MAX, i64::MAX - 1,
            i64::MIN + 1, 1 << 53,
        ][..]).prop_map(Some),
        1 => any::<i64>().prop_map(Some),
    ]
    .boxed()
}

/// `since`: none, a plain past or future instant, or one at the edges.
fn since() -> BoxedStrategy<Option<prost_types::Timestamp>> {
    let at = |seconds, nanos| Some(prost_types::Timestamp { seconds, nanos });
    prop_oneof![
        1 => Just(None),
        4 => (0i64..2_000_000_000).prop_map(move |s| at(s, 0)),
        2 => proptest::sample::select(&[
            (0, 0),
            (-62_135_596_800, 0),
            (-62_135_596_801, 0),
            (253_402_300_799, 999_999_999),
            (253_402_300_800, 0),
            (i64::MAX, 0),
            (i64::MIN, 0),
            (i64::MAX, 999_999_999),
            (i64::MIN, -1),
            (0, -1),
            (0, 1_000_000_000),
            (0, i32::MAX),
            (0, i32::MIN),
            (-1, 999_999_999),
            // 2200 and 1900.
            (7_258_118_400, 0),
            (-2_208_988_800, 0),
        ][..]).prop_map(move |(s, n)| at(s, n)),
        1 => (any::<i64>(), any::<i32>()).prop_map(move |(s, n)| at(s, n)),
    ]
    .boxed()
}

fn webhook_calls(h: &Hooks) -> BoxedStrategy<Call> {
    let create = (
        (customer_id(h), name(), uri(), method()),
        (event_types(), account_ids(h), key()),
    )
        .prop_map(|(a, b)| {
            Call::CreateWebhook(pb::CreateWebhookRequest {
                customer_id: a.0,
                name: a.1,
                uri: a.2,
                method: a.3,
                event_types: b.0,
                account_ids: b.1,
                idempotency_key: b.2,
            })
        });
    let get = webhook_id(h).prop_map(|id| Call::GetWebhook(pb::GetWebhookRequest { id }));
    let list = (
        prop_oneof![3 => Just(String::new()), 3 => customer_id(h)],
        page_size(),
        page_token(h),
    )
        .prop_map(|(customer_id, page_size, page_token)| {
            Call::ListWebhooks(pb::ListWebhooksRequest {
                customer_id,
                page_size,
                page_token,
            })
        });
    let update = (
        (
            webhook_id(h),
            optional(name()),
            optional(uri()),
            optional(method()),
        ),
        (
            optional(event_types()),
            optional(account_ids(h)),
            optional(any::<bool>()),
        ),
    )
        .prop_map(|(a, b)| {
            Call::UpdateWebhook(pb::UpdateWebhookRequest {
                id: a.0,
                name: a.1,
                uri: a.2,
                method: a.3,
                event_types: b.0.map(|values| pb::WebhookEventTypes { values }),
                account_ids: b.1.map(|values| pb::WebhookAccountIds { values }),
                enabled: b.2,
            })
        });
    let delete = prop_oneof![
        6 => spelt(&h.disposable),
        1 => webhook_id(h),
    ]
    .prop_map(|id| Call::DeleteWebhook(pb::DeleteWebhookRequest { id }));
    let rotate = (webhook_id(h), overlap()).prop_map(|(id, overlap_seconds)| {
        Call::RotateSecret(pb::RotateWebhookSecretRequest {
            id,
            overlap_seconds,
        })
    });
    let deliveries = (
        webhook_id(h),
        prop_oneof![3 => Just(0), 2 => enumeration(3)],
        page_size(),
        page_token(h),
    )
        .prop_map(|(webhook_id, status, page_size, page_token)| {
            Call::Deliveries(pb::ListWebhookDeliveriesRequest {
                webhook_id,
                status,
                page_size,
                page_token,
            })
        });
    let retry = delivery_id(h)
        .prop_map(|delivery_id| Call::Retry(pb::RetryWebhookDeliveryRequest { delivery_id }));
    let replay = (webhook_id(h), since()).prop_map(|(webhook_id, since)| {
        Call::Replay(pb::ReplayWebhookRequest { webhook_id, since })
    });
    Union::new_weighted(vec![
        (5, create.boxed()),
        (3, get.boxed()),
        (3, list.boxed()),
        (5, update.boxed()),
        (2, delete.boxed()),
        (3, rotate.boxed()),
        (3, deliveries.boxed()),
        (3, retry.boxed()),
        (3, replay.boxed()),
    ])
    .boxed()
}

impl Call {
    /// The RPC and its request message, encoded.
    fn encode(&self) -> (&'static str, Vec<u8>) {
        match self {
            Self::Create(r) => ("CreateBillingAccount", r.encode_to_vec()),
            Self::Get(r) => ("GetBillingAccount", r.encode_to_vec()),
            Self::Update(r) => ("UpdateBillingAccount", r.encode_to_vec()),
            Self::Add(r) => ("AddBalance", r.encode_to_vec()),
            Self::Subtract(r) => ("SubtractBalance", r.encode_to_vec()),
            Self::Rate(r) => ("Rate", r.encode_to_vec()),
            Self::Reserve(r) => ("Reserve", r.encode_to_vec()),
            Self::Extend(r) => ("Extend", r.encode_to_vec()),
            Self::Commit(r) => ("Commit", r.encode_to_vec()),
            Self::Release(r) => ("Release", r.encode_to_vec()),
            Self::Debit(r) => ("Debit", r.encode_to_vec()),
            Self::Balance(r) => ("GetBalance", r.encode_to_vec()),
            Self::Accounts(r) => ("ListBillingAccounts", r.encode_to_vec()),
            Self::Ledger(r) => ("ListTransactions", r.encode_to_vec()),
            Self::Estimate(r) => ("EstimateCost", r.encode_to_vec()),
            Self::Plans(r) => ("ComparePlans", r.encode_to_vec()),
            Self::CreateWebhook(r) => ("CreateWebhook", r.encode_to_vec()),
            Self::GetWebhook(r) => ("GetWebhook", r.encode_to_vec()),
            Self::ListWebhooks(r) => ("ListWebhooks", r.encode_to_vec()),
            Self::UpdateWebhook(r) => ("UpdateWebhook", r.encode_to_vec()),
            Self::DeleteWebhook(r) => ("DeleteWebhook", r.encode_to_vec()),
            Self::RotateSecret(r) => ("RotateWebhookSecret", r.encode_to_vec()),
            Self::Deliveries(r) => ("ListWebhookDeliveries", r.encode_to_vec()),
            Self::Retry(r) => ("RetryWebhookDelivery", r.encode_to_vec()),
            Self::Replay(r) => ("ReplayWebhook", r.encode_to_vec()),
        }
    }
}

/// An adversarial value for one field of the request, whatever its kind:
/// the field is picked by `field` when the request is known.
#[derive(Clone, Debug)]
struct Mutation {
    field: proptest::sample::Index,
    text: String,
    int: i64,
    int32: i32,
    time: (i64, i32),
}

/// Damage to the encoded request itself, past what any encoder would send:
/// it must be refused as malformed (or read as what it still says), never
/// fail the server.
#[derive(Clone, Debug)]
enum Damage {
    None,
    /// Cut short at this byte.
    Truncate(proptest::sample::Index),
    /// This byte replaced.
    Replace(proptest::sample::Index, u8),
    /// These bytes appended: fields the message may or may not have.
    Append(Vec<u8>),
}

fn damage() -> BoxedStrategy<Damage> {
    prop_oneof![
        24 => Just(Damage::None),
        1 => any::<proptest::sample::Index>().prop_map(Damage::Truncate),
        1 => (any::<proptest::sample::Index>(), any::<u8>())
            .prop_map(|(at, byte)| Damage::Replace(at, byte)),
        2 => proptest::sample::select(vec![
            // A string field 1..=7 that is not UTF-8.
            vec![0x0a, 0x02, 0xff, 0xfe],
            vec![0x12, 0x03, b'a', 0xc3, 0x28],
            vec![0x1a, 0x01, 0x80],
            vec![0x22, 0x02, 0xed, 0xa0],
            vec![0x2a, 0x01, 0xff],
            vec![0x32, 0x01, 0xff],
            vec![0x3a, 0x01, 0xff],
            // Nested: a WebhookEventTypes / WebhookAccountIds whose value is
            // not UTF-8, or is cut short.
            vec![0x2a, 0x04, 0x0a, 0x02, 0xff, 0xfe],
            vec![0x32, 0x04, 0x0a, 0x02, 0xc0, 0xaf],
            vec![0x2a, 0x03, 0x0a, 0x05, b'a'],
            // A timestamp (field 2) with a varint that never ends.
            vec![0x12, 0x03, 0x08, 0xff, 0xff],
            // Field 2 as a varint of eleven bytes, and as a fixed64.
            vec![0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            vec![0x11, 1, 2, 3, 4, 5, 6, 7, 8],
            // An unknown field, and a group.
            vec![0xf8, 0x07, 0x01],
            vec![0x0b, 0x0c],
            // A length past the end.
            vec![0x0a, 0x7f, b'x'],
            // Field number 0.
            vec![0x00, 0x01],
        ])
        .prop_map(Damage::Append),
    ]
    .boxed()
}

impl Damage {
    fn apply(&self, mut bytes: Vec<u8>) -> Vec<u8> {
        match self {
            Self::None => {}
            Self::Truncate(at) if !bytes.is_empty() => bytes.truncate(at.index(bytes.len())),
            Self::Replace(at, byte) if !bytes.is_empty() => {
                let at = at.index(bytes.len());
                bytes[at] = *byte;
            }
            Self::Append(more) => bytes.extend_from_slice(more),
            _ => {}
        }
        bytes
    }
}

fn mutation() -> BoxedStrategy<Mutation> {
    (
        any::<proptest::sample::Index>(),
        weird_text(),
        weird_int(),
        prop_oneof![
            Just(0),
            Just(-1),
            Just(99),
            Just(i32::MIN),
            Just(i32::MAX),
            any::<i32>()
        ],
        prop_oneof![
            Just((i64::MAX, 0)),
            Just((i64::MIN, 0)),
            Just((-62_135_596_801, 0)),
            Just((253_402_300_800, 0)),
            Just((-219_923_510_400, 0)),
            Just((0, -1)),
            Just((0, 1_000_000_000)),
            (any::<i64>(), any::<i32>()),
        ],
    )
        .prop_map(|(field, text, int, int32, time)| Mutation {
            field,
            text,
            int,
            int32,
            time,
        })
        .boxed()
}

/// A request of `method` with `mutations` applied to its fields, by
/// reflection on the service's own descriptors.
fn mutate(
    pool: &DescriptorPool,
    method: &str,
    bytes: &[u8],
    mutations: &[Mutation],
) -> DynamicMessage {
    let input = pool
        .get_service_by_name("billing.v1.BillingService")
        .and_then(|s| s.methods().find(|m| m.name() == method))
        .expect("a method of the service")
        .input();
    let mut message = DynamicMessage::decode(input.clone(), bytes).expect("a valid request");
    let fields: Vec<_> = input.fields().collect();
    for m in mutations {
        let field = m.field.get(&fields);
        let value = match field.kind() {
            // A list of strings (event types, account ids) gets one weird
            // entry more.
            Kind::String if field.is_list() => {
                let mut list = message
                    .get_field(field)
                    .as_list()
                    .map(<[Value]>::to_vec)
                    .unwrap_or_default();
                list.push(Value::String(m.text.clone()));
                Value::List(list)
            }
            // Lists of messages (usage lines) keep their generated items.
            _ if field.is_list() || field.is_map() => continue,
            Kind::String => Value::String(m.text.clone()),
            Kind::Int64 => Value::I64(m.int),
            Kind::Int32 => Value::I32(m.int32),
            Kind::Enum(_) => Value::EnumNumber(m.int32),
            Kind::Bool => Value::Bool(!message.get_field(field).as_bool().unwrap_or(false)),
            Kind::Message(timestamp) if timestamp.full_name() == "google.protobuf.Timestamp" => {
                let mut t = DynamicMessage::new(timestamp);
                t.set_field_by_name("seconds", Value::I64(m.time.0));
                t.set_field_by_name("nanos", Value::I32(m.time.1));
                Value::Message(t)
            }
            // A wrapper of a list (UpdateWebhook's event types and account
            // ids): set, holding one weird value.
            Kind::Message(wrapper) => {
                let Some(values) = wrapper.get_field_by_name("values") else {
                    continue;
                };
                let mut inner = DynamicMessage::new(wrapper);
                if values.is_list() && matches!(values.kind(), Kind::String) {
                    inner.set_field(&values, Value::List(vec![Value::String(m.text.clone())]));
                }
                Value::Message(inner)
            }
            _ => continue,
        };
        message.set_field(field, value);
    }
    message
}

/// A request as JSON, cut short.
fn show(method: &str, request: &DynamicMessage) -> String {
    let json = serde_json::to_string(request).unwrap_or_else(|e| e.to_string());
    let json: String = json.chars().take(800).collect();
    format!("{method} {json}")
}

/// Everything a command could change: `all` of it, and `others`, what a
/// customer_admin of `customer` may never change (everything but the
/// customer's webhooks and their deliveries).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Footprint {
    all: Vec<String>,
    others: Vec<String>,
}

async fn footprint(db: &tokio_postgres::Client, customer: uuid::Uuid) -> Footprint {
    let row = db
        .query_one(
            "SELECT (SELECT count(*) FROM events)::text,
                    (SELECT count(*) FROM idempotency_keys)::text,
                    (SELECT count(*) FROM reservations)::text,
                    (SELECT count(*) FROM reservations WHERE status = 'active')::text,
                    (SELECT count(*) FROM accounts)::text,
                    (SELECT coalesce(sum(version), 0)::bigint FROM accounts)::text,
                    (SELECT count(*) || ' ' || coalesce(md5(string_agg(w::text, ',' ORDER BY w.id)), '')
                     FROM webhooks w WHERE w.customer_id = $1),
                    (SELECT count(*) || ' ' || coalesce(md5(string_agg(d::text, ',' ORDER BY d.id)), '')
                     FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id
                     WHERE w.customer_id = $1),
                    (SELECT count(*) || ' ' || coalesce(md5(string_agg(w::text, ',' ORDER BY w.id)), '')
                     FROM webhooks w WHERE w.customer_id <> $1),
                    (SELECT count(*) || ' ' || coalesce(md5(string_agg(d::text, ',' ORDER BY d.id)), '')
                     FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id
                     WHERE w.customer_id <> $1)",
            &[&customer],
        )
        .await
        .expect("the footprint query");
    let all: Vec<String> = (0..10).map(|i| row.get(i)).collect();
    let others = all[..6].iter().chain(&all[8..]).cloned().collect();
    Footprint { all, others }
}

/// Stored webhooks that break a rule of the API's, shown.
async fn broken_webhooks(db: &tokio_postgres::Client) -> Vec<String> {
    db.query(
        r#"SELECT w.id::text || ' ' || left(w.uri, 80) || ' ' || w.event_types::text
           FROM webhooks w
           WHERE octet_length(w.uri) > 2048
              OR w.uri !~* '^https?://[^/\\]'
              OR w.uri ~ '[[:space:][:cntrl:]]'
              OR octet_length(w.name) > 255 OR w.name ~ '[[:cntrl:]]'
              OR w.method NOT IN ('POST', 'PUT')
              OR cardinality(w.event_types) NOT BETWEEN 1 AND 4
              OR NOT (w.event_types <@ ARRAY['account_updated', 'balance_low',
                                             'balance_recovered', 'credit_limit_exceeded'])
              OR w.event_types <> ARRAY(SELECT DISTINCT e COLLATE "C" FROM unnest(w.event_types) e
                                        ORDER BY 1)
              OR cardinality(w.account_ids) > 100
              OR w.account_ids <> ARRAY(SELECT DISTINCT a FROM unnest(w.account_ids) a ORDER BY a)
              OR EXISTS (SELECT 1 FROM unnest(w.account_ids) a
                         WHERE NOT EXISTS (SELECT 1 FROM accounts c
                                           WHERE c.account_id = a
                                             AND c.customer_id = w.customer_id))
              OR (w.enabled AND w.disabled_reason <> '')
              OR octet_length(w.idempotency_key) > 255 OR w.idempotency_key ~ '[[:cntrl:]]'
              OR w.secret !~ '^whsec_'
              OR (SELECT count(*) FROM webhooks x WHERE x.customer_id = w.customer_id) > 20"#,
        &[],
    )
    .await
    .expect("the rules query")
    .iter()
    .map(|row| row.get(0))
    .collect()
}

/// A reply that says more than the caller may see, or shows a secret
/// where none belongs: `customer` is a customer_admin caller's customer.
async fn check_reply(
    db: &tokio_postgres::Client,
    method: &str,
    reply: &[u8],
    customer: Option<uuid::Uuid>,
) -> Result<(), String> {
    let own = |id: &str| match customer {
        Some(c) if id != c.to_string() => Err(format!("a reply of customer {id}'s")),
        _ => Ok(()),
    };
    let secret = |w: &pb::Webhook, shown: bool| {
        if shown == w.secret.starts_with("whsec_") && (shown || w.secret.is_empty()) {
            Ok(())
        } else {
            Err(format!(
                "secret {:?} in a {method} reply",
                w.secret.get(..10)
            ))
        }
    };
    let decode = |e: prost::DecodeError| format!("the reply does not decode: {e}");
    match method {
        "CreateWebhook" | "RotateWebhookSecret" | "GetWebhook" | "UpdateWebhook" => {
            let w = pb::Webhook::decode(reply).map_err(decode)?;
            own(&w.customer_id)?;
            secret(
                &w,
                matches!(method, "CreateWebhook" | "RotateWebhookSecret"),
            )?;
        }
        "ListWebhooks" => {
            let list = pb::ListWebhooksResponse::decode(reply).map_err(decode)?;
            for w in &list.webhooks {
                own(&w.customer_id)?;
                secret(w, false)?;
            }
        }
        "ListWebhookDeliveries" | "RetryWebhookDelivery" => {
            let deliveries = if method == "RetryWebhookDelivery" {
                vec![pb::WebhookDelivery::decode(reply).map_err(decode)?]
            } else {
                pb::ListWebhookDeliveriesResponse::decode(reply)
                    .map_err(decode)?
                    .deliveries
            };
            for d in &deliveries {
                let webhook: uuid::Uuid = d.webhook_id.parse().map_err(|e| format!("{e}"))?;
                let owner: Option<uuid::Uuid> = db
                    .query_opt(
                        "SELECT customer_id FROM webhooks WHERE id = $1",
                        &[&webhook],
                    )
                    .await
                    .map_err(|e| e.to_string())?
                    .map(|r| r.get(0));
                own(&owner.map(|o| o.to_string()).unwrap_or_default())?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Every account answers `GetBillingAccount` and `GetBalance`, and, when
/// `customer` is given, the webhooks are listed (every one of the
/// customer's).
async fn all_readable(
    client: &mut Client,
    db: &tokio_postgres::Client,
    ids: &[String],
    customer: Option<uuid::Uuid>,
) -> Result<(), String> {
    for id in ids {
        client
            .get_billing_account(pb::GetBillingAccountRequest { id: id.clone() })
            .await
            .map_err(|s| format!("GetBillingAccount {id}: {s:?}"))?;
        client
            .get_balance(pb::GetBalanceRequest {
                account_id: id.clone(),
                ..Default::default()
            })
            .await
            .map_err(|s| format!("GetBalance {id}: {s:?}"))?;
    }
    let Some(customer) = customer else {
        return Ok(());
    };
    let listed = client
        .list_webhooks(pb::ListWebhooksRequest {
            customer_id: customer.to_string(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .map_err(|s| format!("ListWebhooks: {s:?}"))?
        .into_inner()
        .webhooks
        .len();
    let stored: i64 = db
        .query_one(
            "SELECT count(*) FROM webhooks WHERE customer_id = $1",
            &[&customer],
        )
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    if i64::try_from(listed) != Ok(stored) {
        return Err(format!("ListWebhooks shows {listed} of {stored} webhooks"));
    }
    client
        .list_webhooks(pb::ListWebhooksRequest::default())
        .await
        .map_err(|s| format!("ListWebhooks of every customer: {s:?}"))?;
    Ok(())
}

/// Sends `body` as the request message of `method` with `token`.
async fn call_as(
    channel: Channel,
    method: &str,
    body: Vec<u8>,
    token: &str,
) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut request = tonic::Request::new(body);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("an ASCII token"),
    );
    grpc.unary(request, support::rpc_path(method), support::RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

/// A delivery row as the dispatcher would write it, made `age_s` seconds
/// ago; its id.
async fn insert_delivery(
    db: &tokio_postgres::Client,
    webhook_id: &str,
    (account_id, version, event_type): (&str, i64, &str),
    status: &str,
    age_s: f64,
) -> String {
    let id = uuid::Uuid::now_v7();
    let webhook_id: uuid::Uuid = webhook_id.parse().unwrap();
    let account_id: uuid::Uuid = account_id.parse().unwrap();
    db.execute(
        "INSERT INTO webhook_deliveries (id, webhook_id, message_id, event_type, account_id,
             account_version, status, attempts, last_status_code, last_error,
             next_attempt_at, delivered_at, created_at)
         VALUES ($1, $2, 'msg_' || $1::uuid::text, $3, $4, $5, $6,
                 CASE $6 WHEN 'pending' THEN 0 ELSE 8 END,
                 CASE $6 WHEN 'pending' THEN NULL WHEN 'delivered' THEN 200 ELSE 500 END,
                 CASE $6 WHEN 'failed' THEN 'HTTP 500: oops' ELSE '' END,
                 CASE $6 WHEN 'pending' THEN now() + interval '1 hour' END,
                 CASE $6 WHEN 'delivered' THEN now() END,
                 now() - $7 * interval '1 second')",
        &[
            &id,
            &webhook_id,
            &event_type,
            &account_id,
            &version,
            &status,
            &age_s,
        ],
    )
    .await
    .expect("insert a delivery");
    id.to_string()
}

/// The webhooks' fixture (see [`Hooks`]).
async fn hooks(app: &TestApp, db: &tokio_postgres::Client, accounts: &[String]) -> Hooks {
    let (customer, other_customer, stranger) = (
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
    );
    let account_of = |customer: uuid::Uuid| {
        app.account_with(
            0,
            pb::CreateBillingAccountRequest {
                customer_id: customer.to_string(),
                ..Default::default()
            },
        )
    };
    let own = vec![account_of(customer).await.id, account_of(customer).await.id];
    let foreign = account_of(other_customer).await.id;
    let mut admin = app.client.clone();
    let mut webhook = async |customer: uuid::Uuid, n: usize, account_ids: Vec<String>| {
        admin
            .create_webhook(pb::CreateWebhookRequest {
                customer_id: customer.to_string(),
                name: format!("fuzz {n}"),
                uri: format!("https://hooks.example.com/{n}"),
                event_types: EVENT_TYPES[..=n % 4]
                    .iter()
                    .map(|&t| t.to_owned())
                    .collect(),
                account_ids,
                ..Default::default()
            })
            .await
            .expect("create a webhook")
            .into_inner()
            .id
    };
    let webhooks = vec![
        webhook(customer, 0, vec![]).await,
        webhook(customer, 1, vec![own[0].clone()]).await,
        webhook(customer, 2, own.clone()).await,
        webhook(customer, 3, vec![]).await,
    ];
    let mut disposable = Vec::new();
    for n in 10..18 {
        disposable.push(webhook(customer, n, vec![]).await);
    }
    let foreign_webhooks = vec![webhook(other_customer, 4, vec![]).await];
    let deleted_webhook = webhook(customer, 5, vec![]).await;
    let deleted_delivery = insert_delivery(
        db,
        &deleted_webhook,
        (&own[0], 1, "account_updated"),
        "failed",
        60.0,
    )
    .await;
    let mut admin = app.client.clone();
    admin
        .delete_webhook(pb::DeleteWebhookRequest {
            id: deleted_webhook.clone(),
        })
        .await
        .expect("delete a webhook");
    admin
        .update_webhook(pb::UpdateWebhookRequest {
            id: webhooks[3].clone(),
            enabled: Some(false),
            ..Default::default()
        })
        .await
        .expect("disable a webhook");
    let mut deliveries = Vec::new();
    for (w, account, version, event, status, age) in [
        (0, 0, 1, "account_updated", "failed", 3_600.0),
        (0, 0, 2, "balance_low", "failed", 1_800.0),
        (0, 1, 1, "account_updated", "pending", 600.0),
        (0, 0, 3, "account_updated", "delivered", 60.0),
        (1, 0, 1, "account_updated", "failed", 7_200.0),
        (2, 1, 2, "account_updated", "delivered", 30.0),
        (3, 1, 3, "account_updated", "failed", 10.0),
    ] {
        deliveries.push(
            insert_delivery(
                db,
                &webhooks[w],
                (&own[account], version, event),
                status,
                age,
            )
            .await,
        );
    }
    let mut foreign_deliveries = Vec::new();
    for (version, status) in [(1, "failed"), (2, "delivered")] {
        foreign_deliveries.push(
            insert_delivery(
                db,
                &foreign_webhooks[0],
                (&foreign, version, "account_updated"),
                status,
                120.0,
            )
            .await,
        );
    }
    let mut foreign_accounts = accounts.to_vec();
    foreign_accounts.push(foreign);
    Hooks {
        customer,
        other_customer,
        stranger,
        accounts: own,
        foreign_accounts,
        webhooks,
        disposable,
        foreign_webhooks,
        deleted_webhook,
        deleted_delivery,
        deliveries,
        foreign_deliveries,
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Calls, refusals and the codes they got, per RPC.
#[derive(Debug, Default)]
struct Tally {
    sent: usize,
    refused: usize,
    per_rpc: BTreeMap<&'static str, BTreeMap<String, usize>>,
}

#[test]
fn generated_requests_never_fail_internally_and_refused_ones_change_nothing() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (app, db, ids, hooks) = runtime.block_on(async {
        let db = billing_testkit::TestDb::new().await;
        let app = TestApp::spawn_with(db, |config| {
            config.roles = vec![billing_server::Role::Api, billing_server::Role::Projector];
        })
        .await;
        let rich = app.account(1_000_000_000).await;
        let empty = app.account(0).await;
        let postpaid = app
            .account_with(
                50_000,
                pb::CreateBillingAccountRequest {
                    is_postpaid: true,
                    credit_limit: 1_000_000,
                    credit_limit_type: pb::CreditLimitType::Soft.into(),
                    plan_type: pb::PlanType::Unlimited.into(),
                    ..Default::default()
                },
            )
            .await;
        let db = app.db.client().await;
        let ids = vec![rich.id, empty.id, postpaid.id];
        let hooks = hooks(&app, &db, &ids).await;
        (app, db, ids, hooks)
    });
    let (app, db) = (Arc::new(app), Arc::new(db));
    let budget = Duration::from_secs(env_number("BILLING_FUZZ_SECONDS", 12));
    let cases = u32::try_from(env_number("BILLING_FUZZ_CASES", 300)).unwrap_or(300);
    let seed = env_number("BILLING_FUZZ_SEED", 0x00b1_11ed_f022);
    let started = Instant::now();
    let mut runner = TestRunner::new(Config {
        cases,
        max_shrink_iters: 200,
        max_shrink_time: 20_000,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        ..Config::default()
    });
    let tally = &Mutex::new(Tally::default());
    let pool = DescriptorPool::decode(billing_proto::v1::FILE_DESCRIPTOR_SET).unwrap();
    let channel = runtime.block_on(support::channel(app.addr));
    let tokens = [
        (
            Caller::Admin,
            support::token("admin-alice", "project_super_admin", None),
            None,
        ),
        (
            Caller::Owner,
            support::token("fuzz-owner", "customer_admin", Some(hooks.customer)),
            Some(hooks.customer),
        ),
        (
            Caller::Stranger,
            support::token("fuzz-stranger", "customer_admin", Some(hooks.stranger)),
            Some(hooks.stranger),
        ),
    ];
    // The webhook calls' own strategies are strange enough: fewer of them
    // get a field set adversarially on top.
    let mutations = |none: u32| {
        prop_oneof![none => Just(0usize), 2 => Just(1), 1 => Just(2)]
            .prop_flat_map(|n| proptest::collection::vec(mutation(), n))
    };
    let cases_strategy = prop_oneof![
        1 => (calls(&ids), Just(Caller::Admin), mutations(3), Just(Damage::None)),
        1 => (webhook_calls(&hooks), caller(), mutations(6), damage()),
    ];
    let customer = hooks.customer;
    let result = runner.run(&cases_strategy, |(call, caller, mutations, damage)| {
        if started.elapsed() > budget {
            return Ok(());
        }
        let (method, bytes) = call.encode();
        let request = mutate(&pool, method, &bytes, &mutations);
        let shown = format!("{caller:?}: {} {damage:?}", show(method, &request));
        let body = damage.apply(request.encode_to_vec());
        let (_, token, caller_customer) = tokens
            .iter()
            .find(|(c, _, _)| *c == caller)
            .expect("a token per caller");
        let (app, db, ids, channel) = (app.clone(), db.clone(), ids.clone(), channel.clone());
        runtime.block_on(async move {
            // A customer_admin's own customer; a super admin's is the
            // fuzz's.
            let own = caller_customer.unwrap_or(customer);
            let before = footprint(&db, own).await;
            let outcome = call_as(channel, method, body, token).await;
            let after = footprint(&db, own).await;
            {
                let mut tally = tally.lock().unwrap();
                tally.sent += 1;
                let code = outcome
                    .as_ref()
                    .err()
                    .map_or_else(|| "OK".to_owned(), |s| format!("{:?}", s.code()));
                *tally
                    .per_rpc
                    .entry(method)
                    .or_default()
                    .entry(code)
                    .or_default() += 1;
                tally.refused += usize::from(outcome.is_err());
            }
            match &outcome {
                Err(status) => {
                    prop_assert!(
                        !matches!(status.code(), Code::Internal | Code::Unknown),
                        "{shown} got {status:?}"
                    );
                    prop_assert_eq!(
                        &after,
                        &before,
                        "a refused {} ({:?}) changed something",
                        shown,
                        status
                    );
                }
                Ok(reply) => {
                    check_reply(&db, method, reply, *caller_customer)
                        .await
                        .map_err(|e| TestCaseError::fail(format!("{shown}: {e}")))?;
                }
            }
            if caller != Caller::Admin {
                prop_assert_eq!(
                    &after.others,
                    &before.others,
                    "{} changed what is not the caller's ({:?})",
                    shown,
                    outcome.as_ref().err()
                );
            }
            // What a call changed keeps the rules (a refused one changed
            // nothing).
            let changed_webhooks = after.all[6..] != before.all[6..];
            if changed_webhooks {
                let broken = broken_webhooks(&db).await;
                prop_assert!(
                    broken.is_empty(),
                    "after {}: webhooks break the rules: {:?}",
                    shown,
                    broken
                );
            }
            let mut client = app.client.clone();
            all_readable(&mut client, &db, &ids, changed_webhooks.then_some(customer))
                .await
                .map_err(|e| TestCaseError::fail(format!("after {shown}: {e}")))?;
            Ok(())
        })?;
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure} (BILLING_FUZZ_SEED={seed})");
    }
    let tally = tally.lock().unwrap();
    let (sent, refused) = (tally.sent, tally.refused);
    println!(
        "fuzz: {sent} calls in {:?}, {refused} refused (seed {seed})",
        started.elapsed()
    );
    for (rpc, codes) in &tally.per_rpc {
        println!("  {rpc}: {codes:?}");
    }
    // Not degenerate: plenty of calls get through, and plenty are refused.
    assert!(sent >= 50, "only {sent} calls in the time budget");
    assert!(refused * 10 >= sent, "{refused} of {sent} refused");
    assert!(refused * 20 <= sent * 19, "{refused} of {sent} refused");
    // Every webhook RPC was called, and answered both ways, when the run
    // was not cut short.
    if sent >= usize::try_from(cases).unwrap_or(usize::MAX) {
        for rpc in [
            "CreateWebhook",
            "GetWebhook",
            "ListWebhooks",
            "UpdateWebhook",
            "DeleteWebhook",
            "RotateWebhookSecret",
            "ListWebhookDeliveries",
            "RetryWebhookDelivery",
            "ReplayWebhook",
        ] {
            let codes = tally.per_rpc.get(rpc);
            assert!(
                codes.is_some_and(|c| c.len() >= 2),
                "{rpc} was not fuzzed both ways: {codes:?}"
            );
        }
    }
}

/// The same webhook calls at once, as retries, double clicks and two
/// operators make them: each is answered or refused with a clear status,
/// never INTERNAL. Rounds of identical replays, retries of one delivery,
/// keyed creations with one key, deletions of one webhook, and every RPC on
/// one webhook together.
#[test]
fn the_same_webhook_calls_at_once_never_fail_internally() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let db = billing_testkit::TestDb::new().await;
        let app = TestApp::spawn_with(db, |config| {
            config.roles = vec![billing_server::Role::Api];
        })
        .await;
        let db = app.db.client().await;
        let customer = uuid::Uuid::new_v4();
        let account = app
            .account_with(
                0,
                pb::CreateBillingAccountRequest {
                    customer_id: customer.to_string(),
                    ..Default::default()
                },
            )
            .await
            .id;
        let create = |n: usize, key: &str| pb::CreateWebhookRequest {
            customer_id: customer.to_string(),
            name: format!("at once {n}"),
            uri: format!("https://hooks.example.com/{n}"),
            event_types: vec!["account_updated".into()],
            idempotency_key: key.to_owned(),
            ..Default::default()
        };
        let codes = Mutex::new(BTreeMap::<String, usize>::new());
        let at_once = async |what: &str, calls: Vec<(&'static str, Vec<u8>)>| {
            let calls = calls.into_iter().map(|(method, body)| {
                let mut client = app.client.clone();
                async move {
                    let outcome = match method {
                        "CreateWebhook" => client
                            .create_webhook(pb::CreateWebhookRequest::decode(&body[..]).unwrap())
                            .await
                            .map(drop),
                        "UpdateWebhook" => client
                            .update_webhook(pb::UpdateWebhookRequest::decode(&body[..]).unwrap())
                            .await
                            .map(drop),
                        "DeleteWebhook" => client
                            .delete_webhook(pb::DeleteWebhookRequest::decode(&body[..]).unwrap())
                            .await
                            .map(drop),
                        "RotateWebhookSecret" => client
                            .rotate_webhook_secret(
                                pb::RotateWebhookSecretRequest::decode(&body[..]).unwrap(),
                            )
                            .await
                            .map(drop),
                        "ListWebhookDeliveries" => client
                            .list_webhook_deliveries(
                                pb::ListWebhookDeliveriesRequest::decode(&body[..]).unwrap(),
                            )
                            .await
                            .map(drop),
                        "RetryWebhookDelivery" => client
                            .retry_webhook_delivery(
                                pb::RetryWebhookDeliveryRequest::decode(&body[..]).unwrap(),
                            )
                            .await
                            .map(drop),
                        "ReplayWebhook" => client
                            .replay_webhook(pb::ReplayWebhookRequest::decode(&body[..]).unwrap())
                            .await
                            .map(drop),
                        other => unreachable!("{other}"),
                    };
                    (method, outcome)
                }
            });
            for (method, outcome) in futures::future::join_all(calls).await {
                let code = outcome
                    .as_ref()
                    .err()
                    .map_or_else(|| "OK".to_owned(), |s| format!("{:?}", s.code()));
                *codes
                    .lock()
                    .unwrap()
                    .entry(format!("{method} {code}"))
                    .or_default() += 1;
                if let Err(status) = outcome {
                    assert!(
                        !matches!(status.code(), Code::Internal | Code::Unknown),
                        "{what}: {method} got {status:?}"
                    );
                }
            }
        };
        let since_epoch = Some(prost_types::Timestamp {
            seconds: 0,
            nanos: 0,
        });
        for round in 0..4 {
            let mut admin = app.client.clone();
            let webhook = admin
                .create_webhook(create(round, ""))
                .await
                .expect("a webhook")
                .into_inner()
                .id;
            let mut failed = Vec::new();
            for version in 1..=5 {
                failed.push(
                    insert_delivery(
                        &db,
                        &webhook,
                        (&account, version, "account_updated"),
                        "failed",
                        60.0,
                    )
                    .await,
                );
            }
            let replay = pb::ReplayWebhookRequest {
                webhook_id: webhook.clone(),
                since: since_epoch,
            };
            at_once(
                "replays of one webhook",
                vec![("ReplayWebhook", replay.encode_to_vec()); 8],
            )
            .await;
            let retry = pb::RetryWebhookDeliveryRequest {
                delivery_id: failed[0].clone(),
            };
            at_once(
                "retries of one delivery",
                vec![("RetryWebhookDelivery", retry.encode_to_vec()); 8],
            )
            .await;
            let key = format!("at-once-{round}");
            at_once(
                "creations with one key",
                vec![("CreateWebhook", create(100 + round, &key).encode_to_vec()); 8],
            )
            .await;
            let id = |id: &str| pb::DeleteWebhookRequest { id: id.to_owned() };
            at_once(
                "everything on one webhook",
                vec![
                    ("ReplayWebhook", replay.encode_to_vec()),
                    ("ReplayWebhook", replay.encode_to_vec()),
                    (
                        "RetryWebhookDelivery",
                        pb::RetryWebhookDeliveryRequest {
                            delivery_id: failed[1].clone(),
                        }
                        .encode_to_vec(),
                    ),
                    (
                        "UpdateWebhook",
                        pb::UpdateWebhookRequest {
                            id: webhook.clone(),
                            enabled: Some(false),
                            ..Default::default()
                        }
                        .encode_to_vec(),
                    ),
                    (
                        "UpdateWebhook",
                        pb::UpdateWebhookRequest {
                            id: webhook.clone(),
                            enabled: Some(true),
                            account_ids: Some(pb::WebhookAccountIds {
                                values: vec![account.clone()],
                            }),
                            ..Default::default()
                        }
                        .encode_to_vec(),
                    ),
                    (
                        "RotateWebhookSecret",
                        pb::RotateWebhookSecretRequest {
                            id: webhook.clone(),
                            overlap_seconds: Some(60),
                        }
                        .encode_to_vec(),
                    ),
                    (
                        "ListWebhookDeliveries",
                        pb::ListWebhookDeliveriesRequest {
                            webhook_id: webhook.clone(),
                            ..Default::default()
                        }
                        .encode_to_vec(),
                    ),
                    ("DeleteWebhook", id(&webhook).encode_to_vec()),
                    ("DeleteWebhook", id(&webhook).encode_to_vec()),
                ],
            )
            .await;
        }
        println!("at once: {:?}", codes.lock().unwrap());
    });
}
