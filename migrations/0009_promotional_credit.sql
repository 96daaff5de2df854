-- Promotional credit (a second credit bucket, granted with an optional
-- expiry). The sweeper's due time now covers a grant's expiry as well as the
-- monthly token reset; the ledger says which bucket each entry moved.
ALTER TABLE accounts RENAME COLUMN next_topup TO next_due;
ALTER INDEX accounts_next_topup_idx RENAME TO accounts_next_due_idx;
-- Existing accounts hold no promotional credit, so their due time is their
-- token reset, as stored.

ALTER TABLE rm_accounts ADD COLUMN balance_promotional bigint NOT NULL DEFAULT 0;

ALTER TABLE ledger_entries
    ADD COLUMN amount_promotional bigint NOT NULL DEFAULT 0,
    ADD COLUMN balance_promotional_after bigint NOT NULL DEFAULT 0;
