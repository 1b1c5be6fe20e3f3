-- The distinct knowledge neurons of one run (every fact's), by layer.
-- params: :run_id (int)
-- columns: layer, neuron
SELECT DISTINCT layer, neuron FROM knowledge_neurons WHERE run_id = :run_id ORDER BY layer, neuron
