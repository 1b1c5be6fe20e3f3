-- Each fact's predicted change of P(gold) under an edit, from the atlas alone (first order): IG is
-- complete per layer (a layer's scores sum to P(gold) minus P(gold) with its activations at 0), so
-- writing away the share f of a slot's own direction (edit_slots.factor = (v . dv) / |v|^2: -1 for
-- a zeroed slot, -(1 - F) for one damped by F) changes a prompt's P(gold) by about f x its stored
-- score on that slot. predicted_dp = the mean over the fact's ok prompts of the sum of score x factor
-- over the edit's slots (prompts without a stored score on them count 0); predicted_rel divides by
-- the fact's stored P(gold). Only facts the edit touches are listed, most affected first.
-- params: :edit_id (int), :limit (int, default 100)
-- columns: fact_id, relation_id, n_prompts, p_before, predicted_dp, predicted_rel, n_slots_hit
WITH e AS (
    SELECT id, run_id FROM edits WHERE id = :edit_id
),
slots AS (
    SELECT layer, neuron, CAST(factor AS DOUBLE PRECISION) AS factor
    FROM edit_slots
    WHERE edit_id = :edit_id AND factor IS NOT NULL AND factor <> 0
),
ok AS (
    SELECT o.prompt_id, p.fact_id, CAST(o.p_gold AS DOUBLE PRECISION) AS p_gold
    FROM prompt_outputs o
    JOIN e ON o.run_id = e.run_id
    JOIN prompts p ON p.id = o.prompt_id
    WHERE o.status = 'ok'
),
hits AS (
    SELECT s.prompt_id, SUM(CAST(s.score AS DOUBLE PRECISION) * sl.factor) AS dp, COUNT(*) AS n_hit
    FROM prompt_scores s
    JOIN e ON s.run_id = e.run_id
    JOIN slots sl ON sl.layer = s.layer AND sl.neuron = s.neuron
    GROUP BY s.prompt_id
),
per_fact AS (
    SELECT ok.fact_id,
           COUNT(*) AS n_prompts,
           AVG(ok.p_gold) AS p_before,
           SUM(COALESCE(h.dp, 0.0)) / COUNT(*) AS predicted_dp,
           MAX(COALESCE(h.n_hit, 0)) AS n_slots_hit
    FROM ok
    LEFT JOIN hits h ON h.prompt_id = ok.prompt_id
    GROUP BY ok.fact_id
)
SELECT pf.fact_id,
       f.relation_id,
       pf.n_prompts,
       pf.p_before,
       pf.predicted_dp,
       CASE WHEN pf.p_before > 0 THEN pf.predicted_dp / pf.p_before END AS predicted_rel,
       pf.n_slots_hit
FROM per_fact pf
JOIN facts f ON f.id = pf.fact_id
WHERE pf.n_slots_hit > 0
ORDER BY ABS(pf.predicted_dp) DESC, pf.fact_id
LIMIT :limit
