-- Every edit made on model :model_id, oldest first, with its slots (replayed to build the working copy).
-- params: :model_id (int)
-- columns: id, status, sha256_before, sha256_after, layer, neuron, original, edited, dtype
SELECT e.id, e.status, e.sha256_before, e.sha256_after, s.layer, s.neuron, s.original, s.edited, s.dtype
FROM edits e JOIN edit_slots s ON s.edit_id = e.id
WHERE e.model_id = :model_id
ORDER BY e.id, s.layer, s.neuron
