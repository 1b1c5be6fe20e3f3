-- A relation's most specific neurons: those many of its facts use and few facts of any other
-- relation do. A fact uses a neuron when the neuron is a coarse neuron (score >= :coarse_t x the
-- prompt's max) in at least the share :min_prompt_share of the fact's ok prompts; share = facts
-- using it / facts of the relation with ok prompts. specificity = share - other_share, where
-- other_share is the largest share among the other relations of the run (other_relation names it).
-- Hub exclusion: other_share <= :max_other_share. Read from the stored prompt scores, so relations
-- whose facts have too few prompts for knowledge neurons (< 3) have specific neurons too.
-- params: :run_id (int), :relation_id (text), :max_other_share (float, default 0.05), :min_facts (int, default 2), :top_k (int, default 20), :min_layer (int, default 0), :max_layer (int, default 100000), :coarse_t (float, default 0.2), :min_prompt_share (float, default 0.5)
-- columns: layer, neuron, n_facts, share, other_share, other_relation, specificity
WITH ok AS (
    SELECT o.prompt_id, p.fact_id, f.relation_id, o.max_score
    FROM prompt_outputs o
    JOIN prompts p ON p.id = o.prompt_id
    JOIN facts f ON f.id = p.fact_id
    WHERE o.run_id = :run_id AND o.status = 'ok' AND o.max_score > 0
),
fact_prompts AS (
    SELECT fact_id, relation_id, COUNT(*) AS n FROM ok GROUP BY fact_id, relation_id
),
rel_size AS (
    SELECT relation_id, COUNT(*) AS n FROM fact_prompts GROUP BY relation_id
),
coarse AS (
    SELECT ok.fact_id, s.layer, s.neuron, COUNT(*) AS n_prompts
    FROM prompt_scores s
    JOIN ok ON ok.prompt_id = s.prompt_id
    WHERE s.run_id = :run_id
      AND CAST(s.score AS DOUBLE PRECISION) >= CAST(:coarse_t AS DOUBLE PRECISION) * CAST(ok.max_score AS DOUBLE PRECISION)
    GROUP BY ok.fact_id, s.layer, s.neuron
),
shares AS (
    SELECT fp.relation_id, c.layer, c.neuron, COUNT(*) AS n_facts,
           CAST(COUNT(*) AS DOUBLE PRECISION) / MAX(rs.n) AS share
    FROM coarse c
    JOIN fact_prompts fp ON fp.fact_id = c.fact_id
    JOIN rel_size rs ON rs.relation_id = fp.relation_id
    WHERE c.n_prompts >= CAST(:min_prompt_share AS DOUBLE PRECISION) * fp.n
    GROUP BY fp.relation_id, c.layer, c.neuron
),
others AS (
    SELECT layer, neuron, relation_id, share,
           ROW_NUMBER() OVER (PARTITION BY layer, neuron ORDER BY share DESC, relation_id) AS rn
    FROM shares
    WHERE relation_id <> :relation_id
)
SELECT m.layer,
       m.neuron,
       m.n_facts,
       m.share,
       COALESCE(o.share, 0.0) AS other_share,
       o.relation_id AS other_relation,
       m.share - COALESCE(o.share, 0.0) AS specificity
FROM shares m
LEFT JOIN others o ON o.layer = m.layer AND o.neuron = m.neuron AND o.rn = 1
WHERE m.relation_id = :relation_id
  AND m.n_facts >= :min_facts
  AND COALESCE(o.share, 0.0) <= :max_other_share
  AND m.layer BETWEEN :min_layer AND :max_layer
ORDER BY specificity DESC, m.share DESC, m.layer, m.neuron
LIMIT :top_k
