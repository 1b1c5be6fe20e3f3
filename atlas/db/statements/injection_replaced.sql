-- The atlas's facts that injected ones replace: those of an injected subject in an injected
-- relation (the caller pairs them). Their objects are what the values push down, and the facts
-- that restate them (the same subject and object in another relation) are left out of the audit's
-- other facts: the injection is meant to change them.
-- params: :subjects (text[]), :relation_ids (text[])
-- columns: subject, relation_id, object
SELECT DISTINCT f.subject, f.relation_id, f.object
FROM facts f
WHERE f.subject IN :subjects
  AND f.relation_id IN :relation_ids
ORDER BY f.subject, f.relation_id, f.object
