-- Where a relation's knowledge lives: knowledge neurons per layer and relation (the paper finds
-- them mostly in the top layers). share = the layer's part of the relation's (fact, neuron) entries.
-- params: :run_id (int)
-- columns: relation_id, layer, n_entries, n_neurons, n_facts, share
WITH kn AS (
    SELECT k.fact_id, k.layer, k.neuron, f.relation_id
    FROM knowledge_neurons k
    JOIN facts f ON f.id = k.fact_id
    WHERE k.run_id = :run_id
),
rel_total AS (
    SELECT relation_id, COUNT(*) AS n FROM kn GROUP BY relation_id
)
SELECT kn.relation_id,
       kn.layer,
       COUNT(*) AS n_entries,
       COUNT(DISTINCT kn.neuron) AS n_neurons,
       COUNT(DISTINCT kn.fact_id) AS n_facts,
       CAST(COUNT(*) AS DOUBLE PRECISION) / rt.n AS share
FROM kn
JOIN rel_total rt ON rt.relation_id = kn.relation_id
GROUP BY kn.relation_id, kn.layer, rt.n
ORDER BY kn.relation_id, kn.layer
