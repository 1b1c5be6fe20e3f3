-- The facts that share at least :min_shared knowledge neurons with one fact: the facts an edit of
-- that fact's neurons is most likely to disturb. jaccard = shared / |union of the two neuron sets|;
-- weighted_overlap = the same ratio weighted by score (sum of min(scores) over shared neurons /
-- sum of max(scores) over the union, i.e. the weighted Jaccard of the two score vectors).
-- params: :run_id (int), :fact_id (text), :min_shared (int, default 2)
-- columns: fact_id, relation_id, same_relation, subject, object, shared, n_neurons, jaccard, weighted_overlap
WITH target AS (
    SELECT layer, neuron, score
    FROM knowledge_neurons
    WHERE run_id = :run_id AND fact_id = :fact_id
),
target_size AS (
    SELECT COUNT(*) AS n, SUM(CAST(score AS DOUBLE PRECISION)) AS mass FROM target
),
overlap AS (
    SELECT o.fact_id,
           COUNT(*) AS shared,
           SUM(CAST(LEAST(o.score, t.score) AS DOUBLE PRECISION)) AS shared_mass
    FROM target t
    JOIN knowledge_neurons o
      ON o.run_id = :run_id AND o.layer = t.layer AND o.neuron = t.neuron AND o.fact_id <> :fact_id
    GROUP BY o.fact_id
    HAVING COUNT(*) >= :min_shared
),
other_size AS (
    SELECT k.fact_id, COUNT(*) AS n, SUM(CAST(k.score AS DOUBLE PRECISION)) AS mass
    FROM knowledge_neurons k
    JOIN overlap ov ON ov.fact_id = k.fact_id
    WHERE k.run_id = :run_id
    GROUP BY k.fact_id
)
SELECT ov.fact_id,
       f.relation_id,
       f.relation_id = (SELECT relation_id FROM facts WHERE id = :fact_id) AS same_relation,
       f.subject,
       f.object,
       ov.shared,
       os.n AS n_neurons,
       CAST(ov.shared AS DOUBLE PRECISION) / (ts.n + os.n - ov.shared) AS jaccard,
       ov.shared_mass / (ts.mass + os.mass - ov.shared_mass) AS weighted_overlap
FROM overlap ov
JOIN other_size os ON os.fact_id = ov.fact_id
CROSS JOIN target_size ts
LEFT JOIN facts f ON f.id = ov.fact_id
ORDER BY ov.shared DESC, jaccard DESC, ov.fact_id
