-- The facts of injections of model :model_id (every status), in order: what a new injection must not contradict.
-- params: :model_id (int)
-- columns: injection_id, status, position, fact_id, relation_id, subject, object, prompts, heldout, info
SELECT f.injection_id, i.status, f.position, f.fact_id, f.relation_id, f.subject, f.object, f.prompts, f.heldout, f.info
FROM injection_facts f JOIN injections i ON i.id = f.injection_id
WHERE i.model_id = :model_id
ORDER BY f.injection_id, f.position
