-- The facts of one relation in one run: prompts scored, mean P(gold), best rank, knowledge neurons.
-- params: :run_id (int), :relation_id (text), :limit (int)
-- columns: fact_id, subject, object, n_prompts, n_ok, mean_p_gold, best_rank, n_neurons
WITH fact_prompts AS (
    SELECT p.fact_id, COUNT(*) AS n_prompts, COUNT(CASE WHEN po.status = 'ok' THEN 1 END) AS n_ok,
           AVG(po.p_gold) AS mean_p_gold, MIN(po.gold_rank) AS best_rank
    FROM facts f
    JOIN prompts p ON p.fact_id = f.id
    JOIN prompt_outputs po ON po.prompt_id = p.id AND po.run_id = :run_id
    WHERE f.relation_id = :relation_id
    GROUP BY p.fact_id
), fact_neurons AS (
    SELECT kn.fact_id, COUNT(*) AS n_neurons
    FROM knowledge_neurons kn JOIN facts f ON f.id = kn.fact_id
    WHERE kn.run_id = :run_id AND f.relation_id = :relation_id
    GROUP BY kn.fact_id
)
SELECT f.id AS fact_id, f.subject, f.object, fp.n_prompts, fp.n_ok, fp.mean_p_gold, fp.best_rank,
       COALESCE(fn.n_neurons, 0) AS n_neurons
FROM fact_prompts fp
JOIN facts f ON f.id = fp.fact_id
LEFT JOIN fact_neurons fn ON fn.fact_id = fp.fact_id
ORDER BY COALESCE(fn.n_neurons, 0) DESC, f.subject, f.id
LIMIT :limit
