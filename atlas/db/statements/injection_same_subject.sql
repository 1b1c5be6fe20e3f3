-- Prompts of the atlas's facts whose subject is one of :subjects (every relation; the caller leaves
-- out the injected subject-relation pairs): what a subject-keyed slot might also move. Causal ones
-- only when :causal is true, none of the :kept templates (those the values' refinement keeps,
-- injection_keep_templates.sql); at most :limit rows, in a fixed order.
-- params: :subjects (text[]), :causal (bool), :kept (text[]), :limit (int)
-- columns: fact_id, relation_id, subject, object, text
SELECT f.id AS fact_id, f.relation_id, f.subject, f.object, p.text
FROM prompts p JOIN facts f ON f.id = p.fact_id
WHERE f.subject IN :subjects
  AND (p.causal OR NOT :causal)
  AND p.template NOT IN :kept
ORDER BY f.id, p.text
LIMIT :limit
