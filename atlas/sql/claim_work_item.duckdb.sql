-- Claim one work item of a run with a lease (DuckDB: one writer process holds the file, so there
-- is nobody to skip past and no FOR UPDATE; otherwise the same statement as the PostgreSQL one).
-- params: run_id (int), owner (text), lease_s (int)
-- returns: item_id, relation_id, fact_ids (JSON list), attempts
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
)
RETURNING item_id, relation_id, fact_ids, attempts
