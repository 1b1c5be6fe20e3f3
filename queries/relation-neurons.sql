-- Relation-level neurons: knowledge neurons shared by at least :min_facts facts AND at least the
-- share :min_share of one relation's facts (the paper's relation neurons: min_share 0.1).
-- Set either threshold to its trivial value (min_facts 1, min_share 0) to use the other alone.
-- relation_facts counts the relation's facts that have knowledge neurons in the run. Most frequent
-- first, ties by mean score: with min_facts 1 and min_share 0 the first k rows are the paper's
-- "k most frequent knowledge neurons" of the relation (what `atlas edit erase-relation` zeroes).
-- params: :run_id (int), :relation_id (text), :min_facts (int, default 2), :min_share (float, default 0.0)
-- columns: layer, neuron, n_facts, relation_facts, share, mean_score
WITH rel_kn AS (
    -- LATERAL ... OFFSET 0 keeps PostgreSQL on the primary key, one index probe per fact of the
    -- relation (its planner otherwise scans the whole table); DuckDB decorrelates it as usual.
    SELECT kn.fact_id, kn.layer, kn.neuron, kn.score
    FROM facts f
    CROSS JOIN LATERAL (
        SELECT k.fact_id, k.layer, k.neuron, k.score
        FROM knowledge_neurons k
        WHERE k.run_id = :run_id AND k.fact_id = f.id
        OFFSET 0
    ) kn
    WHERE f.relation_id = :relation_id
),
rel_size AS (
    SELECT COUNT(*) AS n FROM (SELECT DISTINCT fact_id FROM rel_kn) d
)
SELECT k.layer,
       k.neuron,
       COUNT(*) AS n_facts,
       s.n AS relation_facts,
       CAST(COUNT(*) AS DOUBLE PRECISION) / s.n AS share,
       AVG(CAST(k.score AS DOUBLE PRECISION)) AS mean_score
FROM rel_kn k
CROSS JOIN rel_size s
GROUP BY k.layer, k.neuron, s.n
HAVING COUNT(*) >= :min_facts
   AND CAST(COUNT(*) AS DOUBLE PRECISION) >= CAST(:min_share AS DOUBLE PRECISION) * s.n
ORDER BY n_facts DESC, mean_score DESC, k.layer, k.neuron
