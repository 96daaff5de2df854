-- A reservation's account is the account whose command path made it, under
-- that account's lock: the foreign key only re-checked that, with a KEY SHARE
-- lock on the (hot) account row for every reservation inserted.
ALTER TABLE reservations DROP CONSTRAINT reservations_account_id_fkey;
