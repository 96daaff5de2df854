-- The command path writes a whole batch with one statement per table. A
-- fenced update that touches fewer rows than it was given means another
-- writer moved a row first: this turns that into a serialization failure,
-- which aborts the batch's transaction (so its pipelined COMMIT rolls back)
-- and makes the writer retry.
CREATE FUNCTION billing_expect_rows(what text, expected bigint, actual bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    IF expected IS DISTINCT FROM actual THEN
        RAISE EXCEPTION '% rows of % expected, % written', expected, what, actual
            USING ERRCODE = 'serialization_failure';
    END IF;
    RETURN actual;
END;
$$;
