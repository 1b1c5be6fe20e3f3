-- The value slots one edit changed, with each slot's first-order factor.
-- params: :edit_id (int)
-- columns: layer, neuron, factor, dtype
SELECT layer, neuron, factor, dtype FROM edit_slots WHERE edit_id = :edit_id ORDER BY layer, neuron
