-- How the knowledge neurons of the same facts differ between two runs (two models, two settings):
-- per fact that has knowledge neurons in either run, the neurons kept (in both), lost (only in
-- :run_a) and gained (only in :run_b). Neurons are compared by (layer, neuron) coordinates.
-- params: :run_a (int), :run_b (int)
-- columns: fact_id, relation_id, n_a, n_b, kept, lost, gained, jaccard
WITH a AS (
    SELECT fact_id, layer, neuron FROM knowledge_neurons WHERE run_id = :run_a
),
b AS (
    SELECT fact_id, layer, neuron FROM knowledge_neurons WHERE run_id = :run_b
),
joined AS (
    SELECT COALESCE(a.fact_id, b.fact_id) AS fact_id,
           CASE WHEN a.fact_id IS NOT NULL AND b.fact_id IS NOT NULL THEN 1 ELSE 0 END AS kept,
           CASE WHEN b.fact_id IS NULL THEN 1 ELSE 0 END AS lost,
           CASE WHEN a.fact_id IS NULL THEN 1 ELSE 0 END AS gained
    FROM a
    FULL OUTER JOIN b ON b.fact_id = a.fact_id AND b.layer = a.layer AND b.neuron = a.neuron
),
per_fact AS (
    SELECT fact_id,
           CAST(SUM(kept) AS BIGINT) AS kept,
           CAST(SUM(lost) AS BIGINT) AS lost,
           CAST(SUM(gained) AS BIGINT) AS gained
    FROM joined
    GROUP BY fact_id
)
SELECT p.fact_id,
       f.relation_id,
       p.kept + p.lost AS n_a,
       p.kept + p.gained AS n_b,
       p.kept,
       p.lost,
       p.gained,
       CAST(p.kept AS DOUBLE PRECISION) / (p.kept + p.lost + p.gained) AS jaccard
FROM per_fact p
LEFT JOIN facts f ON f.id = p.fact_id
ORDER BY p.fact_id
