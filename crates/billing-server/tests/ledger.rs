//! End to end over real gRPC: the read side (balances, ledger, account lists)
//! kept by the projector role.

mod support;

use billing_proto::v1 as pb;
use pb::ServiceType as S;
use support::{TestApp, assert_status, commit_ms, reserve};
use tonic::Code;

fn list(account_id: &str) -> pb::ListTransactionsRequest {
    pb::ListTransactionsRequest {
        account_id: account_id.to_owned(),
        ..Default::default()
    }
}

/// The whole ledger once the projector has reached `version`.
async fn ledger_at(app: &TestApp, account_id: &str, version: i64) -> Vec<pb::Transaction> {
    let mut client = app.client.clone();
    let mut all = Vec::new();
    let mut request = pb::ListTransactionsRequest {
        limit: 100,
        min_version: version,
        ..list(account_id)
    };
    loop {
        let page = client
            .list_transactions(request.clone())
            .await
            .unwrap()
            .into_inner();
        all.extend(page.transactions);
        if page.next_page_token.is_empty() {
            return all;
        }
        request.page_token = page.next_page_token;
    }
}

#[tokio::test]
async fn a_write_then_list_transactions_with_min_version_sees_the_write() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let account = app.account(0).await;
    for n in 0..5 {
        let written = app.add(&account.id, 1_000 + n, 0).await;
        let page = client
            .list_transactions(pb::ListTransactionsRequest {
                min_version: written.version,
                ..list(&account.id)
            })
            .await
            .unwrap()
            .into_inner();
        let newest = &page.transactions[0];
        assert_eq!(
            (newest.version, newest.amount_credit),
            (written.version, 1_000 + n)
        );
        assert_eq!(newest.balance_credit_after, written.balance_credit);
        assert_eq!(newest.transaction_type(), pb::TransactionType::TopUp);
    }
}

#[tokio::test]
async fn the_ledger_records_every_movement_with_its_rate_actor_and_balance_after() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let account = app.account(1_000_000).await;
    client
        .reserve(reserve("call-1", &account.id, S::CallPstnOutgoing, 5))
        .await
        .unwrap();
    let done = client
        .commit(commit_ms("call-1", 150_000))
        .await
        .unwrap()
        .into_inner();
    let sms = client
        .debit(pb::DebitRequest {
            account_id: account.id.clone(),
            service_type: S::Sms.into(),
            quantity: 10,
            reference_id: "msg-9".into(),
            idempotency_key: "sms-9".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let version = sms.account.as_ref().unwrap().version;
    let ledger = ledger_at(&app, &account.id, version).await;
    let kinds: Vec<_> = ledger.iter().map(|t| t.transaction_type()).collect();
    use pb::TransactionType as T;
    assert_eq!(
        kinds,
        [T::Usage, T::Usage, T::TopUp, T::TokenGrant],
        "newest first; the hold is no entry"
    );
    let call = &ledger[1];
    assert_eq!(
        (call.reference_type(), call.reference_id.as_str()),
        (pb::ReferenceType::Call, "call-1")
    );
    assert_eq!(
        (call.service_type(), call.billable_units),
        (S::CallPstnOutgoing, 3)
    );
    assert_eq!(
        (call.rate_credit_per_unit, call.amount_credit),
        (10_000, -30_000)
    );
    assert_eq!(
        call.balance_credit_after,
        done.account.unwrap().balance_credit
    );
    assert_eq!(
        (call.actor.as_str(), call.actor_role.as_str()),
        ("admin-alice", "project_super_admin")
    );
    let credit: i64 = ledger.iter().map(|t| t.amount_credit).sum();
    let tokens: i64 = ledger.iter().map(|t| t.amount_token).sum();
    let now = app.get(&account.id).await;
    assert_eq!(
        (credit, tokens),
        (now.balance_credit, now.balance_token),
        "the ledger sums to the balance"
    );
}

#[tokio::test]
async fn pages_default_to_50_cap_at_100_skip_offsets_and_filter_by_reference_type() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let account = app.account(0).await;
    let mut last = account.clone();
    for n in 1..=130 {
        last = app.add(&account.id, 100 * n, 0).await;
    }
    let debit = client
        .debit(pb::DebitRequest {
            account_id: account.id.clone(),
            service_type: S::Sms.into(),
            quantity: 1,
            idempotency_key: "one-sms".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let version = debit.account.unwrap().version;
    assert_eq!(version, last.version + 1);
    let page = |limit, offset| pb::ListTransactionsRequest {
        limit,
        offset,
        min_version: version,
        ..list(&account.id)
    };

    let default = client
        .list_transactions(page(0, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(default.transactions.len(), 50);
    assert!(!default.next_page_token.is_empty());
    let capped = client
        .list_transactions(page(1_000, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(capped.transactions.len(), 100);
    let offset = client
        .list_transactions(page(5, 10))
        .await
        .unwrap()
        .into_inner();
    let versions: Vec<i64> = offset.transactions.iter().map(|t| t.version).collect();
    assert_eq!(
        versions,
        (version - 14..=version - 10).rev().collect::<Vec<_>>()
    );

    let sms_only = pb::ListTransactionsRequest {
        reference_type: pb::ReferenceType::Sms.into(),
        ..page(0, 0)
    };
    let sms = client
        .list_transactions(sms_only)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sms.transactions.len(), 1);
    assert_eq!(sms.transactions[0].amount_credit, -10_000);
    assert!(sms.next_page_token.is_empty());

    let err = client.list_transactions(page(-1, 0)).await.unwrap_err();
    assert_status(&err, Code::InvalidArgument, "INVALID_ARGUMENT");
    // Offsets are bounded (a page token pages at any depth): the deepest
    // allowed skips, one more is refused.
    let deepest = client.list_transactions(page(5, 10_000)).await.unwrap();
    assert!(deepest.into_inner().transactions.is_empty());
    let err = client.list_transactions(page(5, 10_001)).await.unwrap_err();
    assert_status(&err, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert!(err.message().contains("page_token"), "{}", err.message());
    let bad_token = pb::ListTransactionsRequest {
        page_token: "garbage".into(),
        ..page(0, 0)
    };
    assert_status(
        &client.list_transactions(bad_token).await.unwrap_err(),
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    let unknown = list(&uuid::Uuid::new_v4().to_string());
    assert_status(
        &client.list_transactions(unknown).await.unwrap_err(),
        Code::NotFound,
        "ACCOUNT_NOT_FOUND",
    );
}

#[tokio::test]
async fn the_keyset_cursor_neither_repeats_nor_skips_while_new_entries_arrive() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let account = app.account(0).await;
    let mut version = 0;
    for n in 1..=60 {
        version = app.add(&account.id, n, 0).await.version;
    }
    let mut request = pb::ListTransactionsRequest {
        limit: 25,
        min_version: version,
        ..list(&account.id)
    };
    let mut seen = Vec::new();
    loop {
        let page = client
            .list_transactions(request.clone())
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.transactions.iter().map(|t| t.version));
        // New entries arrive between pages.
        for n in 0..7 {
            app.add(&account.id, 1_000 + n, 0).await;
        }
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
        request.min_version = 0;
    }
    // Versions 1 (created) and 3.. are not all entries: 1 is account_created.
    let expected: Vec<i64> = (2..=version).rev().collect();
    assert_eq!(
        seen, expected,
        "every entry up to the first page's newest, once, in order"
    );
}

#[tokio::test]
async fn get_balance_is_strongly_consistent_and_as_of_reads_history() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let account = app.account(500_000).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let between = billing_api_time_now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    client
        .reserve(reserve("held", &account.id, S::CallPstnOutgoing, 4))
        .await
        .unwrap();
    app.add(&account.id, 100_000, 0).await;

    let now = client
        .get_balance(pb::GetBalanceRequest {
            account_id: account.id.clone(),
            currency: "USD".into(),
            as_of: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (now.balance, now.reserved_funds, now.available_balance),
        (600_000, 40_000, 560_000)
    );
    assert_eq!((now.balance_token, now.promotional_balance), (100, 0));
    assert_eq!(now.credit_limit_type(), pb::CreditLimitType::Hard);

    let then = client
        .get_balance(pb::GetBalanceRequest {
            account_id: account.id.clone(),
            currency: String::new(),
            as_of: Some(between),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (then.balance, then.reserved_funds, then.available_balance),
        (500_000, 0, 500_000)
    );
    assert_eq!(then.version, 3);

    let err = client
        .get_balance(pb::GetBalanceRequest {
            account_id: account.id.clone(),
            currency: "INR".into(),
            as_of: None,
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "CURRENCY_MISMATCH");
    let before = prost_types::Timestamp {
        seconds: 1,
        nanos: 0,
    };
    let err = client
        .get_balance(pb::GetBalanceRequest {
            account_id: account.id.clone(),
            currency: String::new(),
            as_of: Some(before),
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "INVALID_ARGUMENT");
}

#[tokio::test]
async fn get_balance_as_of_shows_the_limits_postpaid_and_status_the_account_had_then() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let account = app.account(500_000).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let between = billing_api_time_now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    client
        .update_billing_account(pb::UpdateBillingAccountRequest {
            id: account.id.clone(),
            status: Some(pb::AccountStatus::Frozen.into()),
            credit_limit: Some(2_000_000),
            credit_limit_type: Some(pb::CreditLimitType::Soft.into()),
            is_postpaid: Some(true),
            low_balance_threshold: Some(100_000),
            ..Default::default()
        })
        .await
        .unwrap();
    let at = |as_of| pb::GetBalanceRequest {
        account_id: account.id.clone(),
        currency: String::new(),
        as_of,
    };

    // Before the change: the settings of then, and an available balance that
    // agrees with them (prepaid: no limit counted).
    let then = client
        .get_balance(at(Some(between)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            then.credit_limit,
            then.is_postpaid,
            then.credit_limit_type(),
            then.low_balance_threshold,
            then.status()
        ),
        (
            0,
            false,
            pb::CreditLimitType::Hard,
            0,
            pb::AccountStatus::Active
        )
    );
    assert_eq!((then.balance, then.available_balance), (500_000, 500_000));

    // Now, and as of now: the new ones (postpaid: the limit counts).
    let now = client.get_balance(at(None)).await.unwrap().into_inner();
    let as_of_now = client
        .get_balance(at(Some(billing_api_time_now())))
        .await
        .unwrap()
        .into_inner();
    for b in [&now, &as_of_now] {
        assert_eq!(
            (
                b.credit_limit,
                b.is_postpaid,
                b.credit_limit_type(),
                b.low_balance_threshold,
                b.status()
            ),
            (
                2_000_000,
                true,
                pb::CreditLimitType::Soft,
                100_000,
                pb::AccountStatus::Frozen
            )
        );
        assert_eq!(b.available_balance, 2_500_000);
    }
    assert_eq!(as_of_now.version, now.version);
    assert_eq!(then.version + 1, now.version);
}

fn billing_api_time_now() -> prost_types::Timestamp {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    prost_types::Timestamp {
        seconds: now.as_secs() as i64,
        nanos: now.subsec_nanos() as i32,
    }
}

#[tokio::test]
async fn accounts_are_listed_a_page_at_a_time_and_by_customer() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let customer = uuid::Uuid::new_v4().to_string();
    let mut mine = Vec::new();
    for _ in 0..3 {
        let request = pb::CreateBillingAccountRequest {
            customer_id: customer.clone(),
            ..Default::default()
        };
        mine.push(app.account_with(0, request).await.id);
    }
    let mut everyone = mine.clone();
    for _ in 0..4 {
        everyone.push(app.account(10).await.id);
    }
    // Wait for the projector to reach every account: its slices move apart,
    // so the last account projected says nothing of the others.
    for id in &everyone {
        let version = app.get(id).await.version;
        let account: uuid::Uuid = id.parse().unwrap();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while app
            .store
            .read_models()
            .projected_version(account)
            .await
            .unwrap()
            < version
        {
            assert!(tokio::time::Instant::now() < deadline, "{id} not projected");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    let mut ids = Vec::new();
    let mut request = pb::ListBillingAccountsRequest {
        page_size: 2,
        ..Default::default()
    };
    loop {
        let page = client
            .list_billing_accounts(request.clone())
            .await
            .unwrap()
            .into_inner();
        assert!(page.billing_accounts.len() <= 2);
        ids.extend(page.billing_accounts.into_iter().map(|a| a.id));
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    assert_eq!(ids.len(), 7);
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, ids, "ordered by id, each once");

    let theirs = client
        .list_billing_accounts(pb::ListBillingAccountsRequest {
            customer_id: customer,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut listed: Vec<String> = theirs.billing_accounts.into_iter().map(|a| a.id).collect();
    listed.sort();
    mine.sort();
    assert_eq!(listed, mine);
}
