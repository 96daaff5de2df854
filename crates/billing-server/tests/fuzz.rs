//! A property-based fuzz of the API over real gRPC: generated requests to
//! every RPC, mostly valid with a few adversarial fields (extreme integers,
//! NUL, control characters and over-long strings, unknown enum values, bad
//! ids, out-of-range times), sent one at a time to the real server on a
//! fresh database. A request is generated valid-ish per RPC, then up to two
//! of its fields, any field, are given adversarial values by reflection on
//! the service's descriptors (so a field added later is fuzzed too). For
//! every call:
//!
//! - the status is never INTERNAL or UNKNOWN;
//! - a refused call changes nothing (events, idempotency records,
//!   reservations, accounts and their versions);
//! - every account stays readable (`GetBillingAccount`, `GetBalance`).
//!
//! Bounded in time: `BILLING_FUZZ_CASES` cases (default 200), stopping early
//! after `BILLING_FUZZ_SECONDS` (default 12). The sweeper does not run, so
//! only the calls change the database.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use billing_proto::v1 as pb;
use proptest::prelude::*;
use proptest::strategy::Union;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, Value};
use support::{Client, TestApp};
use tonic::Code;

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
            Kind::String => Value::String(m.text.clone()),
            Kind::Int64 => Value::I64(m.int),
            Kind::Int32 => Value::I32(m.int32),
            Kind::Enum(_) => Value::EnumNumber(m.int32),
            Kind::Bool => Value::Bool(!message.get_field(field).as_bool().unwrap_or(false)),
            // Lists (usage lines) keep their generated items.
            _ if field.is_list() => continue,
            Kind::Message(timestamp) => {
                let mut t = DynamicMessage::new(timestamp);
                t.set_field_by_name("seconds", Value::I64(m.time.0));
                t.set_field_by_name("nanos", Value::I32(m.time.1));
                Value::Message(t)
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

/// Everything a command could change, in numbers.
async fn footprint(db: &tokio_postgres::Client) -> Vec<i64> {
    let row = db
        .query_one(
            "SELECT (SELECT count(*) FROM events),
                    (SELECT count(*) FROM idempotency_keys),
                    (SELECT count(*) FROM reservations),
                    (SELECT count(*) FROM reservations WHERE status = 'active'),
                    (SELECT count(*) FROM accounts),
                    (SELECT coalesce(sum(version), 0)::bigint FROM accounts)",
            &[],
        )
        .await
        .expect("the footprint query");
    (0..6).map(|i| row.get(i)).collect()
}

/// Every account answers `GetBillingAccount` and `GetBalance`.
async fn all_readable(client: &mut Client, ids: &[String]) -> Result<(), String> {
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
    Ok(())
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn generated_requests_never_fail_internally_and_refused_ones_change_nothing() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (app, db, ids) = runtime.block_on(async {
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
        (app, db, vec![rich.id, empty.id, postpaid.id])
    });
    let (app, db) = (Arc::new(app), Arc::new(db));
    let budget = Duration::from_secs(env_number("BILLING_FUZZ_SECONDS", 12));
    let cases = u32::try_from(env_number("BILLING_FUZZ_CASES", 200)).unwrap_or(200);
    let started = Instant::now();
    let mut runner = TestRunner::new(Config {
        cases,
        max_shrink_iters: 200,
        max_shrink_time: 20_000,
        failure_persistence: None,
        ..Config::default()
    });
    let (sent, refused) = (&AtomicUsize::new(0), &AtomicUsize::new(0));
    let pool = DescriptorPool::decode(billing_proto::v1::FILE_DESCRIPTOR_SET).unwrap();
    let channel = runtime.block_on(support::channel(app.addr));
    let cases_strategy = (
        calls(&ids),
        prop_oneof![3 => Just(0usize), 2 => Just(1), 1 => Just(2)]
            .prop_flat_map(|n| proptest::collection::vec(mutation(), n)),
    );
    let result = runner.run(&cases_strategy, |(call, mutations)| {
        if started.elapsed() > budget {
            return Ok(());
        }
        sent.fetch_add(1, Ordering::Relaxed);
        let (method, bytes) = call.encode();
        let request = mutate(&pool, method, &bytes, &mutations);
        let shown = show(method, &request);
        let (app, db, ids, channel) = (app.clone(), db.clone(), ids.clone(), channel.clone());
        runtime.block_on(async move {
            let before = footprint(&db).await;
            let outcome = support::raw_call(channel, method, request.encode_to_vec()).await;
            if let Err(status) = &outcome {
                refused.fetch_add(1, Ordering::Relaxed);
                prop_assert!(
                    !matches!(status.code(), Code::Internal | Code::Unknown),
                    "{shown} got {status:?}"
                );
                let after = footprint(&db).await;
                prop_assert_eq!(
                    &after,
                    &before,
                    "a refused {} ({:?}) changed something",
                    shown,
                    status
                );
            }
            let mut client = app.client.clone();
            all_readable(&mut client, &ids)
                .await
                .map_err(|e| TestCaseError::fail(format!("after {shown}: {e}")))?;
            Ok(())
        })?;
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    let (sent, refused) = (
        sent.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
    println!(
        "fuzz: {sent} calls in {:?}, {refused} refused",
        started.elapsed()
    );
    // Not degenerate: plenty of calls get through, and plenty are refused.
    assert!(sent >= 50, "only {sent} calls in the time budget");
    assert!(refused * 10 >= sent, "{refused} of {sent} refused");
    assert!(refused * 20 <= sent * 19, "{refused} of {sent} refused");
}
