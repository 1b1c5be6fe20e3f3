-- Whether the model of a run knows each of its facts: over the fact's ok prompts, the mean
-- P(gold), how many rank the gold answer first, and its best rank.
-- params: :run_id (int)
-- columns: fact_id, n_ok, mean_p_gold, n_top1, best_rank
SELECT p.fact_id, COUNT(*) AS n_ok, AVG(po.p_gold) AS mean_p_gold,
       COUNT(CASE WHEN po.gold_rank = 1 THEN 1 END) AS n_top1, MIN(po.gold_rank) AS best_rank
FROM prompt_outputs po JOIN prompts p ON p.id = po.prompt_id
WHERE po.run_id = :run_id AND po.status = 'ok'
GROUP BY p.fact_id
