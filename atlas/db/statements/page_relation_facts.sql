-- The facts of one relation in one run: prompts scored, mean P(gold), best rank, knowledge neurons,
-- facts with the most neurons first (at most :limit). One LATERAL probe per fact keeps PostgreSQL
-- on the indexes of prompts (fact_id, template) and prompt_outputs / knowledge_neurons (run_id, ...)
-- instead of scanning every prompt.
-- params: :run_id (int), :relation_id (text), :limit (int)
-- columns: fact_id, subject, object, n_prompts, n_ok, mean_p_gold, best_rank, n_neurons
SELECT f.id AS fact_id, f.subject, f.object, pr.n_prompts, pr.n_ok, pr.mean_p_gold, pr.best_rank, kn.n_neurons
FROM facts f
CROSS JOIN LATERAL (
    SELECT COUNT(*) AS n_prompts, COUNT(CASE WHEN po.status = 'ok' THEN 1 END) AS n_ok,
           AVG(po.p_gold) AS mean_p_gold, MIN(po.gold_rank) AS best_rank
    FROM prompts p JOIN prompt_outputs po ON po.prompt_id = p.id AND po.run_id = :run_id
    WHERE p.fact_id = f.id
) pr
CROSS JOIN LATERAL (
    SELECT COUNT(*) AS n_neurons FROM knowledge_neurons k WHERE k.run_id = :run_id AND k.fact_id = f.id
) kn
WHERE f.relation_id = :relation_id AND pr.n_prompts > 0
ORDER BY kn.n_neurons DESC, f.subject, f.id
LIMIT :limit
