-- For each fact of a relation in a run: in how many of its ok prompts each neuron is coarse
-- (score >= t x the prompt's max score, max > 0), and the sum of those scores - all that refining
-- needs (indexer.refine.FactTally), aggregated here instead of shipping every coarse score.
-- The test is made in double precision on both backends, as indexer.refine makes it in Python.
-- params: :run_id (int), :relation_id (text), :t (float)
-- columns: fact_id, layer, neuron, n_prompts, score_sum
SELECT p.fact_id, s.layer, s.neuron, COUNT(*) AS n_prompts, SUM(CAST(s.score AS DOUBLE PRECISION)) AS score_sum
FROM prompt_outputs o
JOIN prompts p ON p.id = o.prompt_id
JOIN facts f ON f.id = p.fact_id
JOIN prompt_scores s ON s.run_id = o.run_id AND s.prompt_id = o.prompt_id
WHERE o.run_id = :run_id AND o.status = 'ok' AND f.relation_id = :relation_id AND o.max_score > 0
  AND CAST(s.score AS DOUBLE PRECISION) >= :t * CAST(o.max_score AS DOUBLE PRECISION)
GROUP BY p.fact_id, s.layer, s.neuron
ORDER BY p.fact_id, s.layer, s.neuron
