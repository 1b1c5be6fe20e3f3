-- The objects of the atlas's facts about the injected subjects, every relation (the caller leaves
-- out the facts of the audited run, the injected relation and the objects an injection replaces):
-- with --keep-gold, a subject-keyed value holds their log-probabilities on the keep prompts
-- (injection_keep_templates.sql).
-- params: :subjects (text[])
-- columns: fact_id, subject, relation_id, object
SELECT DISTINCT f.id AS fact_id, f.subject, f.relation_id, f.object
FROM facts f
WHERE f.subject IN :subjects
ORDER BY f.subject, f.relation_id, f.object, f.id
