-- Prompts of facts whose subject is not one of :subjects, for an injection's hard negatives: those of
-- the relations :relation_ids when :same is true, of every other relation otherwise; causal ones
-- only when :causal is true. A fixed pseudo-random order (md5 of the text), at most :limit rows.
-- params: :relation_ids (text[]), :subjects (text[]), :same (bool), :causal (bool), :limit (int)
-- columns: fact_id, relation_id, subject, object, text
SELECT f.id AS fact_id, f.relation_id, f.subject, f.object, p.text
FROM prompts p JOIN facts f ON f.id = p.fact_id
WHERE f.subject NOT IN :subjects
  AND (f.relation_id IN :relation_ids) = :same
  AND (p.causal OR NOT :causal)
ORDER BY md5(p.text || f.id)
LIMIT :limit
