-- Every pair of facts (fact_a < fact_b) of a run that share at least :min_shared knowledge
-- neurons, with the overlap measures of fact-interference. The input of the interference audits.
-- params: :run_id (int), :min_shared (int, default 2)
-- columns: fact_a, fact_b, relation_a, relation_b, shared, jaccard, weighted_overlap
WITH kn AS (
    SELECT fact_id, layer, neuron, score FROM knowledge_neurons WHERE run_id = :run_id
),
sizes AS (
    SELECT fact_id, COUNT(*) AS n, SUM(CAST(score AS DOUBLE PRECISION)) AS mass
    FROM kn
    GROUP BY fact_id
),
pairs AS (
    SELECT a.fact_id AS fact_a,
           b.fact_id AS fact_b,
           COUNT(*) AS shared,
           SUM(CAST(LEAST(a.score, b.score) AS DOUBLE PRECISION)) AS shared_mass
    FROM kn a
    JOIN kn b ON b.layer = a.layer AND b.neuron = a.neuron AND a.fact_id < b.fact_id
    GROUP BY a.fact_id, b.fact_id
    HAVING COUNT(*) >= :min_shared
)
SELECT p.fact_a,
       p.fact_b,
       fa.relation_id AS relation_a,
       fb.relation_id AS relation_b,
       p.shared,
       CAST(p.shared AS DOUBLE PRECISION) / (sa.n + sb.n - p.shared) AS jaccard,
       p.shared_mass / (sa.mass + sb.mass - p.shared_mass) AS weighted_overlap
FROM pairs p
JOIN sizes sa ON sa.fact_id = p.fact_a
JOIN sizes sb ON sb.fact_id = p.fact_b
LEFT JOIN facts fa ON fa.id = p.fact_a
LEFT JOIN facts fb ON fb.id = p.fact_b
ORDER BY p.fact_a, p.fact_b
