-- The default layer of an injection: the weighted median layer of the knowledge neurons that run
-- :run_id found for relation :relation_id ('' = every relation of the run), i.e. the first layer
-- at or below which at least half of those neurons lie. No row: the run has no such neurons.
-- params: :run_id (int), :relation_id (text)
-- columns: layer, n_neurons, total
WITH per_layer AS (
    SELECT kn.layer, COUNT(*) AS n
    FROM knowledge_neurons kn JOIN facts f ON f.id = kn.fact_id
    WHERE kn.run_id = :run_id AND (:relation_id = '' OR f.relation_id = :relation_id)
    GROUP BY kn.layer
), running AS (
    SELECT layer, n, SUM(n) OVER (ORDER BY layer) AS below, SUM(n) OVER () AS total FROM per_layer
)
SELECT layer, n AS n_neurons, total FROM running WHERE 2 * below >= total ORDER BY layer LIMIT 1
