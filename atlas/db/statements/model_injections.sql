-- Every injection made on model :model_id, oldest first, with its slot pairs (replayed to widen the working copy).
-- params: :model_id (int)
-- columns: id, status, width_before, width_after, sha256_before, sha256_after, layer, neuron, position, key, value, dtype, threshold, slope, sharpness
SELECT i.id, i.status, i.width_before, i.width_after, i.sha256_before, i.sha256_after,
       s.layer, s.neuron, s.position, s.key, s.value, s.dtype, s.threshold, s.slope, s.sharpness
FROM injections i JOIN injection_slots s ON s.injection_id = i.id
WHERE i.model_id = :model_id
ORDER BY i.id, s.layer, s.neuron
