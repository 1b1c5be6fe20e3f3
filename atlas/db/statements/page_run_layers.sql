-- Knowledge neurons of one run per layer: entries (fact, neuron) and distinct neurons.
-- params: :run_id (int)
-- columns: layer, n_entries, n_neurons, n_facts
SELECT layer, COUNT(*) AS n_entries, COUNT(DISTINCT neuron) AS n_neurons, COUNT(DISTINCT fact_id) AS n_facts
FROM knowledge_neurons
WHERE run_id = :run_id
GROUP BY layer
ORDER BY layer
