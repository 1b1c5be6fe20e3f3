-- The gradient sketches of one layer for every ok prompt of run :run_id (runs indexed with a sketch
-- rank; `indexer.attribution.sketch` packs them), with the prompt's fact and unedited P(gold).
-- params: :run_id (int), :layer (int)
-- columns: prompt_id, fact_id, p_gold, sketch
SELECT k.prompt_id, p.fact_id, o.p_gold, k.sketch
FROM prompt_sketches k
JOIN prompt_outputs o ON o.run_id = k.run_id AND o.prompt_id = k.prompt_id
JOIN prompts p ON p.id = k.prompt_id
WHERE k.run_id = :run_id AND k.layer = :layer AND o.status = 'ok'
ORDER BY k.prompt_id
