-- Every pair of facts (fact_a < fact_b) of a run that share at least :min_shared knowledge
-- neurons, with the overlap measures of fact-interference. The input of the interference audits.
-- How: joining facts through single shared neurons would enumerate every pair sharing ONE neuron
-- (tens of millions at PARAREL scale, through hub neurons); instead each fact's neuron PAIRS are
-- joined, which only meets fact pairs that share two or more: a pair sharing s neurons meets
-- s(s-1)/2 times, from which s (and, since each shared neuron sits in s-1 of those neuron pairs,
-- the summed min scores) follow exactly. So min_shared below 2 acts as 2.
-- params: :run_id (int), :min_shared (int, default 2)
-- columns: fact_a, fact_b, relation_a, relation_b, shared, jaccard, weighted_overlap
WITH numbered AS (
    SELECT fact_id,
           DENSE_RANK() OVER (ORDER BY fact_id) AS fno,
           CAST(layer AS BIGINT) * 4294967296 + neuron AS unit,
           CAST(score AS DOUBLE PRECISION) AS score
    FROM knowledge_neurons
    WHERE run_id = :run_id
),
sizes AS (
    SELECT fno, MIN(fact_id) AS fact_id, COUNT(*) AS n, SUM(score) AS mass
    FROM numbered
    GROUP BY fno
),
neuron_pairs AS (
    SELECT x.fno, x.unit AS u, y.unit AS v, x.score AS su, y.score AS sv
    FROM numbered x
    JOIN numbered y ON y.fno = x.fno AND x.unit < y.unit
),
met AS (
    SELECT a.fno AS fno_a,
           b.fno AS fno_b,
           COUNT(*) AS n_met,
           SUM(LEAST(a.su, b.su) + LEAST(a.sv, b.sv)) AS met_mass
    FROM neuron_pairs a
    JOIN neuron_pairs b ON b.u = a.u AND b.v = a.v AND a.fno < b.fno
    GROUP BY a.fno, b.fno
),
pairs AS (
    SELECT fno_a, fno_b, shared, met_mass / (shared - 1) AS shared_mass
    FROM (SELECT fno_a, fno_b, met_mass,
                 CAST(ROUND((1 + SQRT(CAST(1 + 8 * n_met AS DOUBLE PRECISION))) / 2) AS BIGINT) AS shared
          FROM met) m
    WHERE shared >= :min_shared
)
SELECT sa.fact_id AS fact_a,
       sb.fact_id AS fact_b,
       fa.relation_id AS relation_a,
       fb.relation_id AS relation_b,
       p.shared,
       CAST(p.shared AS DOUBLE PRECISION) / (sa.n + sb.n - p.shared) AS jaccard,
       p.shared_mass / (sa.mass + sb.mass - p.shared_mass) AS weighted_overlap
FROM pairs p
JOIN sizes sa ON sa.fno = p.fno_a
JOIN sizes sb ON sb.fno = p.fno_b
LEFT JOIN facts fa ON fa.id = sa.fact_id
LEFT JOIN facts fb ON fb.id = sb.fact_id
ORDER BY p.fno_a, p.fno_b
