-- The facts one injection added, in the order they were built.
-- params: :injection_id (int)
-- columns: position, fact_id, relation_id, subject, object
SELECT position, fact_id, relation_id, subject, object
FROM injection_facts WHERE injection_id = :injection_id ORDER BY position
