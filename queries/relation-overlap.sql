-- The relation x relation matrix of shared relation-level neurons, long format (every ordered pair
-- of relations with neurons in the run, the diagonal included, zeros kept). A neuron belongs to a
-- relation when at least :min_facts facts and the share :min_share of the relation's facts have it.
-- params: :run_id (int), :min_facts (int, default 2), :min_share (float, default 0.0)
-- columns: relation_a, relation_b, shared, neurons_a, neurons_b, jaccard
WITH kn AS (
    SELECT k.fact_id, k.layer, k.neuron, f.relation_id
    FROM knowledge_neurons k
    JOIN facts f ON f.id = k.fact_id
    WHERE k.run_id = :run_id
),
rel_size AS (
    SELECT relation_id, COUNT(DISTINCT fact_id) AS n FROM kn GROUP BY relation_id
),
rel_neurons AS (
    SELECT kn.relation_id, kn.layer, kn.neuron
    FROM kn
    JOIN rel_size rs ON rs.relation_id = kn.relation_id
    GROUP BY kn.relation_id, kn.layer, kn.neuron, rs.n
    HAVING COUNT(*) >= :min_facts
       AND CAST(COUNT(*) AS DOUBLE PRECISION) >= CAST(:min_share AS DOUBLE PRECISION) * rs.n
),
counts AS (
    SELECT rs.relation_id, COUNT(rn.neuron) AS n
    FROM rel_size rs
    LEFT JOIN rel_neurons rn ON rn.relation_id = rs.relation_id
    GROUP BY rs.relation_id
),
shared AS (
    SELECT a.relation_id AS relation_a, b.relation_id AS relation_b, COUNT(*) AS n
    FROM rel_neurons a
    JOIN rel_neurons b ON b.layer = a.layer AND b.neuron = a.neuron
    GROUP BY a.relation_id, b.relation_id
)
SELECT ca.relation_id AS relation_a,
       cb.relation_id AS relation_b,
       COALESCE(s.n, 0) AS shared,
       ca.n AS neurons_a,
       cb.n AS neurons_b,
       CASE WHEN ca.n + cb.n - COALESCE(s.n, 0) = 0 THEN 0.0
            ELSE CAST(COALESCE(s.n, 0) AS DOUBLE PRECISION) / (ca.n + cb.n - COALESCE(s.n, 0)) END AS jaccard
FROM counts ca
CROSS JOIN counts cb
LEFT JOIN shared s ON s.relation_a = ca.relation_id AND s.relation_b = cb.relation_id
ORDER BY ca.relation_id, cb.relation_id
