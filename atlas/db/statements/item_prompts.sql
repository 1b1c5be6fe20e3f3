-- The prompts of a batch of facts that a model of the given kind can use (prompts.causal for
-- left-to-right LMs, prompts.masked for masked LMs), with the answer each needs.
-- params: :fact_ids (text[]), :causal (bool)
-- columns: prompt_id, fact_id, text, object
SELECT p.id AS prompt_id, p.fact_id, p.text, f.object
FROM prompts p
JOIN facts f ON f.id = p.fact_id
WHERE p.fact_id IN :fact_ids
  AND ((:causal AND p.causal) OR (NOT :causal AND p.masked))
ORDER BY p.fact_id, p.id
