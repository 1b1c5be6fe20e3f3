-- Facts of run :run_id with the prompts the run scored (status ok: prompts its model can read,
-- left-to-right or masked), with those prompts' texts.
-- params: :run_id (int)
-- columns: fact_id, relation_id, subject, object, prompt_id, text
SELECT f.id AS fact_id, f.relation_id, f.subject, f.object, p.id AS prompt_id, p.text
FROM prompt_outputs po
JOIN prompts p ON p.id = po.prompt_id
JOIN facts f ON f.id = p.fact_id
WHERE po.run_id = :run_id AND po.status = 'ok'
ORDER BY f.relation_id, f.id, p.id
