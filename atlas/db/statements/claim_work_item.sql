-- Claim one work item of a run with a lease (PostgreSQL: many workers, many machines).
-- An item is claimable when pending, or claimed under a lease that has expired (its worker died).
-- FOR UPDATE SKIP LOCKED makes concurrent claimers pass over each other's rows: no double claims.
-- DuckDB has no row locks (and needs none: one process writes a DuckDB file), so that line is
-- marked for PostgreSQL only.
-- params: :run_id (int), :owner (text), :lease_s (int)
-- columns: item_id, relation_id, fact_ids, attempts
UPDATE work_items
SET status = 'claimed',
    lease_owner = :owner,
    lease_expires = now() + :lease_s * INTERVAL '1 second',
    attempts = attempts + 1
WHERE (run_id, item_id) IN (
    SELECT run_id, item_id
    FROM work_items
    WHERE run_id = :run_id
      AND (status = 'pending' OR (status = 'claimed' AND lease_expires < now()))
    ORDER BY item_id
    LIMIT 1
    FOR UPDATE SKIP LOCKED  -- postgresql only
)
RETURNING item_id, relation_id, fact_ids, attempts
