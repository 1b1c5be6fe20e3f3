-- The run named (or numbered) :run and the model row it was indexed with.
SELECT r.id AS run_id, r.name AS run_name, r.params, m.id AS model_id, m.name AS model_name,
       m.source AS model_source, m.sha256 AS model_sha256
FROM runs r JOIN models m ON m.id = r.model_id
WHERE r.name = :run OR CAST(r.id AS TEXT) = :run
ORDER BY r.id
