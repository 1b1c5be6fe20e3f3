-- The cached vocabulary projection of one neuron's value slot (`atlas vocab`): its top tokens.
-- params: :model_id (int), :layer (int), :neuron (int)
-- columns: rank, token_id, token, logit
SELECT rank, token_id, token, logit
FROM neuron_tokens
WHERE model_id = :model_id AND layer = :layer AND neuron = :neuron
ORDER BY rank
