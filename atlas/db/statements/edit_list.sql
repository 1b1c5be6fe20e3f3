-- Edits, newest first; :run ('' for all) restricts them to one run (by name or id).
-- params: :run (text)
-- columns: id, run_name, kind, target, status, params, metrics, sha256_before, sha256_after, created_at, rolled_back_at, n_slots
SELECT e.id, r.name AS run_name, e.kind, e.target, e.status, e.params, e.metrics,
       e.sha256_before, e.sha256_after, e.created_at, e.rolled_back_at,
       (SELECT COUNT(*) FROM edit_slots s WHERE s.edit_id = e.id) AS n_slots
FROM edits e JOIN runs r ON r.id = e.run_id
WHERE :run = '' OR r.name = :run OR CAST(r.id AS TEXT) = :run
ORDER BY e.id DESC
