-- Prompts of the atlas's facts whose subject is one of :subjects (every relation; the caller leaves
-- out the injected subject-relation pairs): what a subject-keyed slot might also move. Causal ones
-- only when :causal is true; at most :limit rows, in a fixed order.
-- params: :subjects (text[]), :causal (bool), :limit (int)
-- columns: fact_id, relation_id, subject, object, text
SELECT f.id AS fact_id, f.relation_id, f.subject, f.object, p.text
FROM prompts p JOIN facts f ON f.id = p.fact_id
WHERE f.subject IN :subjects
  AND (p.causal OR NOT :causal)
ORDER BY f.id, p.text
LIMIT :limit
