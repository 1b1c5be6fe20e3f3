-- One template of each relation of the atlas: the first in text order among those a left-to-right LM
-- can read when :causal is true. Filled with an injected subject, they are prompts whose next-token
-- distributions a subject-keyed value is refined to keep (--keep-weight); the audit's same-subject
-- group leaves them out, so that it measures templates the refinement never saw.
-- params: :causal (bool)
-- columns: relation_id, template
SELECT f.relation_id, MIN(p.template) AS template
FROM prompts p JOIN facts f ON f.id = p.fact_id
WHERE p.causal OR NOT :causal
GROUP BY f.relation_id
ORDER BY f.relation_id
