-- One fact with its relation.
-- params: :fact_id (text)
-- columns: fact_id, relation_id, label, subject, object, dataset
SELECT f.id AS fact_id, f.relation_id, r.label, f.subject, f.object, f.dataset
FROM facts f JOIN relations r ON r.id = f.relation_id
WHERE f.id = :fact_id
