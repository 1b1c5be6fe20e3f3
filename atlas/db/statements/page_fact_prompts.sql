-- The prompts of one fact as one run scored them: P(gold), the gold answer's rank, status.
-- params: :run_id (int), :fact_id (text)
-- columns: prompt_id, template, text, status, skip_reason, p_gold, gold_rank, n_answer_tokens, max_score
SELECT p.id AS prompt_id, p.template, p.text, po.status, po.skip_reason, po.p_gold, po.gold_rank,
       po.n_answer_tokens, po.max_score
FROM prompts p JOIN prompt_outputs po ON po.prompt_id = p.id AND po.run_id = :run_id
WHERE p.fact_id = :fact_id
ORDER BY p.id
