-- Make every claimed item of a run pending again. Only for DuckDB, at the start of a session: the
-- file admits one writer process, so any claim found then belongs to a process that died.
-- params: :run_id (int)
UPDATE work_items
SET status = 'pending', lease_owner = NULL, lease_expires = NULL
WHERE run_id = :run_id AND status = 'claimed'
