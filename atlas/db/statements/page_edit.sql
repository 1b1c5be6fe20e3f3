-- One edit with its run and model.
-- params: :edit_id (int)
-- columns: id, kind, target, status, params, metrics, sha256_before, sha256_after, created_at, rolled_back_at, run_id, run_name, model
SELECT e.id, e.kind, e.target, e.status, e.params, e.metrics, e.sha256_before, e.sha256_after,
       e.created_at, e.rolled_back_at, e.run_id, r.name AS run_name, m.name AS model
FROM edits e JOIN runs r ON r.id = e.run_id JOIN models m ON m.id = e.model_id
WHERE e.id = :edit_id
