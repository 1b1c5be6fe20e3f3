-- Hub neurons: neurons that are relation-level neurons (in at least the share :min_share of a
-- relation's facts) of at least :min_relations relations, one row per (hub, relation) with its
-- coverage of that relation. Hubs are what edits of one fact leak through into other relations.
-- params: :run_id (int), :min_relations (int, default 3), :min_share (float, default 0.1)
-- columns: layer, neuron, n_relations, total_facts, relation_id, n_facts, relation_facts, coverage
WITH kn AS (
    SELECT k.fact_id, k.layer, k.neuron, f.relation_id
    FROM knowledge_neurons k
    JOIN facts f ON f.id = k.fact_id
    WHERE k.run_id = :run_id
),
rel_size AS (
    SELECT relation_id, COUNT(DISTINCT fact_id) AS n FROM kn GROUP BY relation_id
),
per_rel AS (
    SELECT kn.layer, kn.neuron, kn.relation_id, COUNT(*) AS n_facts, rs.n AS relation_facts
    FROM kn
    JOIN rel_size rs ON rs.relation_id = kn.relation_id
    GROUP BY kn.layer, kn.neuron, kn.relation_id, rs.n
    HAVING CAST(COUNT(*) AS DOUBLE PRECISION) >= CAST(:min_share AS DOUBLE PRECISION) * rs.n
),
hubs AS (
    SELECT layer, neuron, COUNT(*) AS n_relations, CAST(SUM(n_facts) AS BIGINT) AS total_facts
    FROM per_rel
    GROUP BY layer, neuron
    HAVING COUNT(*) >= :min_relations
)
SELECT h.layer,
       h.neuron,
       h.n_relations,
       h.total_facts,
       p.relation_id,
       p.n_facts,
       p.relation_facts,
       CAST(p.n_facts AS DOUBLE PRECISION) / p.relation_facts AS coverage
FROM hubs h
JOIN per_rel p ON p.layer = h.layer AND p.neuron = h.neuron
ORDER BY h.n_relations DESC, h.total_facts DESC, h.layer, h.neuron, p.n_facts DESC, p.relation_id
