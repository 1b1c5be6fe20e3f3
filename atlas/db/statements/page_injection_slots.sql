-- The slot pairs one injection added: where each sits, which fact it holds, and its gate.
-- params: :injection_id (int)
-- columns: layer, neuron, position, threshold, slope, sharpness, dtype
SELECT layer, neuron, position, threshold, slope, sharpness, dtype
FROM injection_slots WHERE injection_id = :injection_id ORDER BY layer, neuron
