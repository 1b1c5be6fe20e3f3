-- Where one relation's knowledge neurons sit: entries per layer over the relation's facts.
-- params: :run_id (int), :relation_id (text)
-- columns: layer, n_entries, n_neurons
SELECT kn.layer, COUNT(*) AS n_entries, COUNT(DISTINCT kn.neuron) AS n_neurons
FROM knowledge_neurons kn JOIN facts f ON f.id = kn.fact_id
WHERE kn.run_id = :run_id AND f.relation_id = :relation_id
GROUP BY kn.layer
ORDER BY kn.layer
