-- Knowledge neurons of run :run_id, per fact, with the fact's relation.
-- params: :run_id (int)
-- columns: fact_id, relation_id, layer, neuron, score
SELECT kn.fact_id, f.relation_id, kn.layer, kn.neuron, kn.score
FROM knowledge_neurons kn JOIN facts f ON f.id = kn.fact_id
WHERE kn.run_id = :run_id
ORDER BY f.relation_id, kn.fact_id, kn.score DESC, kn.layer, kn.neuron
