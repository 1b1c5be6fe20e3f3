-- One relation.
-- params: :relation_id (text)
-- columns: id, label, type
SELECT id, label, type FROM relations WHERE id = :relation_id
