-- Stored prompt-level scores of every ok prompt of a relation's facts in a run, with each prompt's
-- max score: enough to rebuild the coarse neuron sets (score >= t * max_score) without the model.
-- Only scores >= min_ratio * max_score come back (the caller passes a ratio a hair below t and
-- applies the exact test itself); prompts without any such score still come back once, with NULLs.
-- params: run_id (int), relation_id (text), min_ratio (float)
-- returns: fact_id, prompt_id, max_score, layer, neuron, score
SELECT p.fact_id, o.prompt_id, o.max_score, s.layer, s.neuron, s.score
FROM prompt_outputs o
JOIN prompts p ON p.id = o.prompt_id
JOIN facts f ON f.id = p.fact_id
LEFT JOIN prompt_scores s
       ON s.run_id = o.run_id AND s.prompt_id = o.prompt_id AND s.score >= :min_ratio * o.max_score
WHERE o.run_id = :run_id AND o.status = 'ok' AND f.relation_id = :relation_id
ORDER BY p.fact_id, o.prompt_id, s.layer, s.neuron
