-- The relations one neuron serves in one run: the facts of each relation that have it as a
-- knowledge neuron, and their mean score (the neuron page divides by the relation's size).
-- params: :run_id (int), :layer (int), :neuron (int)
-- columns: relation_id, label, n_facts, mean_score
WITH hits AS (
    SELECT f.relation_id, COUNT(*) AS n_facts, AVG(kn.score) AS mean_score
    FROM knowledge_neurons kn JOIN facts f ON f.id = kn.fact_id
    WHERE kn.run_id = :run_id AND kn.layer = :layer AND kn.neuron = :neuron
    GROUP BY f.relation_id
)
SELECT h.relation_id, r.label, h.n_facts, h.mean_score
FROM hits h JOIN relations r ON r.id = h.relation_id
ORDER BY h.n_facts DESC, h.relation_id
