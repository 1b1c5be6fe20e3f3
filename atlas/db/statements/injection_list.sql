-- Injections, newest first; :run ('' for all) restricts them to one run (by name or id).
-- params: :run (text)
-- columns: id, run_name, run_id, model_id, status, layers, params, width_before, width_after, sha256_before, sha256_after, audit, created_at, rolled_back_at, n_facts
SELECT i.id, r.name AS run_name, i.run_id, i.model_id, i.status, i.layers, i.params, i.width_before, i.width_after,
       i.sha256_before, i.sha256_after, i.audit, i.created_at, i.rolled_back_at,
       (SELECT COUNT(*) FROM injection_facts f WHERE f.injection_id = i.id) AS n_facts
FROM injections i JOIN runs r ON r.id = i.run_id
WHERE :run = '' OR r.name = :run OR CAST(r.id AS TEXT) = :run
ORDER BY i.id DESC
