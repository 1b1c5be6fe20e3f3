-- Every (relation, neuron) pair of one run: how many of the relation's facts have the neuron as a
-- knowledge neuron, and their mean score. Read once per done run by `atlas serve` (RunSummaries):
-- relation pages (relation-level neurons, layers, overlap) and neuron pages are drawn from it.
-- params: :run_id (int)
-- columns: relation_id, layer, neuron, n_facts, mean_score
SELECT f.relation_id, kn.layer, kn.neuron, COUNT(*) AS n_facts, AVG(CAST(kn.score AS DOUBLE PRECISION)) AS mean_score
FROM knowledge_neurons kn JOIN facts f ON f.id = kn.fact_id
WHERE kn.run_id = :run_id
GROUP BY f.relation_id, kn.layer, kn.neuron
