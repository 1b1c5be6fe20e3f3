-- Knowledge neurons of relation :relation in run :run_id with the share of the relation's facts
-- that have them: the update rule drops neurons above 10 %, erasing takes the most frequent.
WITH rel AS (
    SELECT kn.fact_id, kn.layer, kn.neuron, kn.score
    FROM knowledge_neurons kn JOIN facts f ON f.id = kn.fact_id
    WHERE kn.run_id = :run_id AND f.relation_id = :relation
), n AS (SELECT COUNT(DISTINCT fact_id) AS n_facts FROM rel)
SELECT rel.layer, rel.neuron, COUNT(*) AS n_facts, SUM(rel.score) AS score_sum,
       CAST(COUNT(*) AS DOUBLE PRECISION) / MAX(n.n_facts) AS share
FROM rel CROSS JOIN n
GROUP BY rel.layer, rel.neuron
ORDER BY n_facts DESC, score_sum DESC, rel.layer, rel.neuron
