//! The command path's statements, prepared once per writer connection. Each
//! takes whole columns as arrays, so one statement serves a whole batch.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::document::Document;
use crate::pipeline::Param;

/// The batch's account locks, in the order given (sorted, so two writers
/// never wait on each other in a cycle). Advisory locks assign no
/// transaction id: the batch's xid comes at its first write, after the
/// previous holder committed, so per account the feed's order is version
/// order.
pub(crate) const LOCK: &str = "SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k";

/// Each account's stored version; its state and live holds only where the
/// writer's cached copy ($2, -1 for none) is not at that version. A missing
/// account comes back with a null version.
pub(crate) const LOAD_ACCOUNTS: &str = "
SELECT w.account_id, a.version,
       CASE WHEN a.version IS DISTINCT FROM w.cached THEN a.state END,
       CASE WHEN a.version IS DISTINCT FROM w.cached THEN
           (SELECT coalesce(json_agg(r.hold), '[]'::json) FROM reservations r
            WHERE r.account_id = a.account_id AND r.status = 'active')
       END
FROM unnest($1::uuid[], $2::bigint[]) AS w(account_id, cached)
LEFT JOIN accounts a ON a.account_id = w.account_id";

/// With the account view of the event a stored outcome names (outcomes are
/// stored without it: `outcome.rs`), where that event keeps one, and the
/// account and version to fold it for where not (`views.rs`).
pub(crate) const LOAD_KEYS: &str = "
SELECT k.idempotency_key, k.operation, k.request_hash, k.outcome, e.account_after,
       k.account_id, (k.outcome->>'account_version')::bigint
FROM idempotency_keys k
LEFT JOIN events e
       ON e.account_id = k.account_id
      AND e.version = (k.outcome->>'account_version')::bigint
WHERE k.idempotency_key = ANY($1::text[])";

/// With a commit's outcome, the account view of the event it names (the
/// outcome is stored without it) where that event keeps one, and the
/// account and version to fold it for where not (`views.rs`).
pub(crate) const LOAD_RESERVATIONS: &str = "
SELECT r.reservation_id, r.hold, r.status, r.commit_outcome, coalesce(r.resolved_version, 0),
       e.account_after, r.account_id, (r.commit_outcome->>'account_version')::bigint
FROM reservations r
LEFT JOIN events e
       ON e.account_id = r.account_id
      AND e.version = (r.commit_outcome->>'account_version')::bigint
WHERE r.reservation_id = ANY($1::text[])";

/// Declares [`WriteBatch`], the arguments of `billing_write_batch`, from one
/// list of `name: type`: the struct's fields, the names the statement passes
/// them by ([`WriteBatch::NAMES`], so [`write_batch`]'s text) and the
/// parameters in the same order ([`WriteBatch::params`]) all come from it, so
/// the `$n` a value is sent as and the name it is bound to cannot disagree.
macro_rules! write_batch_arguments {
    ($($(#[$doc:meta])* $name:ident: $ty:ty,)*) => {
        /// The arguments of one call of `billing_write_batch`
        /// (`migrations/0011_write_batch_fenced_updates.sql`), each field
        /// named as the function's parameter it is passed to, in the
        /// function's order. A batch's writes fill it by name; the statement
        /// binds each value by name (`name => $n`), so two columns of one
        /// type cannot be swapped by position. A test compares the names
        /// and types with the function's in `pg_proc`.
        pub(crate) struct WriteBatch<'a> {
            $($(#[$doc])* pub(crate) $name: $ty,)*
        }

        impl<'a> WriteBatch<'a> {
            /// The function's parameter names, in the order of the values
            /// of [`Self::params`].
            pub(crate) const NAMES: &'static [&'static str] = &[$(stringify!($name)),*];

            /// The values, in the order of [`Self::NAMES`]: `$1` is the
            /// first.
            pub(crate) fn params(&self) -> Vec<Param<'_>> {
                vec![$(&self.$name),*]
            }

            /// Whether each value's Rust type can be sent as a given
            /// PostgreSQL type, in the order of [`Self::NAMES`].
            #[cfg(test)]
            pub(crate) fn accepts() -> Vec<fn(&tokio_postgres::types::Type) -> bool> {
                vec![$(<$ty as tokio_postgres::types::ToSql>::accepts),*]
            }
        }
    };
}

write_batch_arguments! {
    /// The fast path's account locks, sorted; empty on the long way.
    lock_keys: &'a [i64],
    /// The fence proper (`pipeline/fence.rs` decides what goes in it).
    fence_ids: Vec<Uuid>,
    fence_versions: Vec<i64>,
    fence_heads: Vec<Option<&'a [u8]>>,
    created_ids: Vec<Uuid>,
    created_customers: Vec<Uuid>,
    created_versions: Vec<i64>,
    created_states: Vec<Document>,
    created_due: Vec<Option<DateTime<Utc>>>,
    created_at_: Vec<DateTime<Utc>>,
    updated_ids: Vec<Uuid>,
    updated_states: Vec<Document>,
    updated_versions: Vec<i64>,
    updated_due: Vec<Option<DateTime<Utc>>>,
    updated_at_: Vec<DateTime<Utc>>,
    /// The version each update expects (its WHERE).
    updated_expected: Vec<i64>,
    /// The chain head each update expects, where the fence names one
    /// (`pipeline/fence.rs`).
    updated_heads: Vec<Option<&'a [u8]>>,
    event_schema: i32,
    event_ids: Vec<Uuid>,
    event_accounts: Vec<Uuid>,
    event_versions: Vec<i64>,
    event_types: Vec<&'a str>,
    event_times: Vec<DateTime<Utc>>,
    event_principals: Vec<&'a str>,
    event_roles: Vec<&'a str>,
    event_keys: Vec<Option<&'a str>>,
    event_traces: Vec<Option<&'a str>>,
    event_payloads: Vec<&'a Document>,
    /// The balances after each event: credit, tokens; reserved credit,
    /// tokens; available credit, tokens.
    event_bc: Vec<i64>,
    event_bt: Vec<i64>,
    event_rc: Vec<i64>,
    event_rt: Vec<i64>,
    event_ac: Vec<i64>,
    event_avt: Vec<i64>,
    /// The account view after each event, where it is kept (a snapshot:
    /// `views.rs`).
    event_views: Vec<Option<&'a Document>>,
    event_hashes: Vec<&'a [u8]>,
    event_spans: Vec<Option<&'a str>>,
    new_res_ids: Vec<&'a str>,
    new_res_accounts: Vec<Uuid>,
    new_res_statuses: Vec<&'a str>,
    new_res_holds: Vec<Option<Document>>,
    new_res_expiry: Vec<DateTime<Utc>>,
    new_res_commits: Vec<Option<Document>>,
    new_res_resolved: Vec<Option<i64>>,
    new_res_at: Vec<DateTime<Utc>>,
    res_ids: Vec<&'a str>,
    res_accounts: Vec<Uuid>,
    res_statuses: Vec<&'a str>,
    /// `None` where the stored hold stands.
    res_holds: Vec<Option<Document>>,
    res_expiry: Vec<DateTime<Utc>>,
    res_commits: Vec<Option<Document>>,
    res_resolved: Vec<Option<i64>>,
    res_at: Vec<DateTime<Utc>>,
    key_names: Vec<&'a str>,
    key_operations: Vec<&'a str>,
    key_hashes: Vec<&'a [u8]>,
    key_accounts: Vec<Uuid>,
    key_outcomes: Vec<Document>,
    key_at: Vec<DateTime<Utc>>,
}

/// A batch's writes, in one call (`migrations/0011_write_batch_fenced_updates.sql`):
/// the fast path's locks and fence, then the accounts (each update fenced by
/// the version and chain head it was decided from), events, reservations and
/// idempotency records, each as whole columns.
///
/// Every argument is passed by name (`lock_keys => $1, ...`), made from
/// [`WriteBatch::NAMES`], so `$n` is the `n`th of [`WriteBatch::params`].
/// PostgreSQL resolves the names when it parses and plans the statement,
/// once per connection (it is prepared, and planned once:
/// `plan_cache_mode = force_generic_plan`); executing it costs the same as
/// positional notation.
pub(crate) fn write_batch() -> String {
    let arguments: Vec<String> = WriteBatch::NAMES
        .iter()
        .zip(1..)
        .map(|(name, n)| format!("{name} => ${n}"))
        .collect();
    format!("SELECT billing_write_batch({})", arguments.join(", "))
}

#[cfg(test)]
mod tests {
    use tokio_postgres::types::Type;

    use super::*;

    #[test]
    fn the_call_passes_every_argument_by_name_in_the_order_of_its_values() {
        let statement = write_batch();
        assert!(statement.starts_with("SELECT billing_write_batch(lock_keys => $1, "));
        assert!(statement.ends_with(", key_at => $59)"), "{statement}");
        assert_eq!(WriteBatch::NAMES.len(), 59);
        assert_eq!(WriteBatch::accepts().len(), WriteBatch::NAMES.len());
    }

    /// Needs `BILLING_TEST_DATABASE_URL`, as every test against PostgreSQL.
    #[tokio::test]
    async fn the_names_and_types_rust_sends_are_those_of_the_function_it_calls() {
        let db = billing_testkit::TestDb::new().await;
        let client = db.client().await;

        // After migration 0012 only 0011's function is left: the one the
        // writer calls.
        let functions = client
            .query(
                "SELECT p.oid::regprocedure::text, p.proargnames,
                        array(SELECT t FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY AS a(t, n)
                              ORDER BY n),
                        array(SELECT format_type(t, NULL)
                              FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY AS a(t, n)
                              ORDER BY n)
                 FROM pg_proc p WHERE p.proname = 'billing_write_batch'",
                &[],
            )
            .await
            .unwrap();
        let signatures: Vec<String> = functions.iter().map(|r| r.get(0)).collect();
        assert_eq!(
            functions.len(),
            1,
            "one billing_write_batch after every migration, found {signatures:#?}"
        );
        let function = &functions[0];
        let sql_names: Vec<String> = function.get(1);
        let sql_types: Vec<u32> = function.get(2);
        let sql_type_names: Vec<String> = function.get(3);

        let rust = WriteBatch::NAMES;
        let accepts = WriteBatch::accepts();
        let mut diff = Vec::new();
        for n in 0..rust.len().max(sql_names.len()) {
            let (r, s) = (rust.get(n).copied(), sql_names.get(n).map(String::as_str));
            match (r, s) {
                (Some(r), Some(s)) if r == s => {
                    let ty = Type::from_oid(sql_types[n]);
                    if !ty.as_ref().is_some_and(|ty| accepts[n](ty)) {
                        diff.push(format!(
                            "  ${}: {r} is {} in SQL; its Rust type (sql::WriteBatch) cannot be sent as that",
                            n + 1,
                            sql_type_names[n]
                        ));
                    }
                }
                (r, s) => diff.push(format!(
                    "  ${}: Rust sends {:<20} the function's parameter {} is {}",
                    n + 1,
                    r.unwrap_or("(nothing)"),
                    n + 1,
                    s.map_or("(none)".to_owned(), |s| format!(
                        "{s} {}",
                        sql_type_names[n]
                    )),
                )),
            }
        }
        assert!(
            diff.is_empty(),
            "sql::WriteBatch ({} arguments) and billing_write_batch's parameters in pg_proc \
             ({}) disagree:\n{}",
            rust.len(),
            sql_names.len(),
            diff.join("\n")
        );

        // And PostgreSQL binds `$n` to the `n`th name: the statement as the
        // writer prepares it takes the function's types in that order.
        let statement = client.prepare(&write_batch()).await.unwrap();
        let prepared: Vec<u32> = statement.params().iter().map(Type::oid).collect();
        assert_eq!(prepared, sql_types);
    }
}
