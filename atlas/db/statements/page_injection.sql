-- One injection with its run and model.
-- params: :injection_id (int)
-- columns: id, status, layers, params, width_before, width_after, sha256_before, sha256_after, audit, created_at, rolled_back_at, run_id, run_name, model
SELECT i.id, i.status, i.layers, i.params, i.width_before, i.width_after, i.sha256_before, i.sha256_after,
       i.audit, i.created_at, i.rolled_back_at, i.run_id, r.name AS run_name, m.name AS model
FROM injections i JOIN runs r ON r.id = i.run_id JOIN models m ON m.id = i.model_id
WHERE i.id = :injection_id
