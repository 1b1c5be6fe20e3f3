-- Suppress/amplify results of run :run_id and kind :kind per relation and neuron set: the paper's
-- relative change of P(gold), mean delta p / mean p0, over the facts probed.
-- params: :run_id (int), :kind (text)
-- columns: relation_id, neurons, n_facts, mean_p_before, mean_p_after, mean_neurons
SELECT f.relation_id, pr.neurons, COUNT(*) AS n_facts,
       AVG(CAST(pr.p_before AS DOUBLE PRECISION)) AS mean_p_before,
       AVG(CAST(pr.p_after AS DOUBLE PRECISION)) AS mean_p_after,
       AVG(CAST(pr.n_neurons AS DOUBLE PRECISION)) AS mean_neurons
FROM probe_results pr JOIN facts f ON f.id = pr.fact_id
WHERE pr.run_id = :run_id AND pr.kind = :kind
GROUP BY f.relation_id, pr.neurons
ORDER BY f.relation_id, pr.neurons
