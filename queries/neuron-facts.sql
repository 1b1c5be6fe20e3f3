-- The facts (and their relations) whose knowledge neurons include one neuron, strongest first.
-- params: :run_id (int), :layer (int), :neuron (int)
-- columns: fact_id, relation_id, relation_label, subject, object, score, n_prompts
SELECT kn.fact_id,
       f.relation_id,
       r.label AS relation_label,
       f.subject,
       f.object,
       CAST(kn.score AS DOUBLE PRECISION) AS score,
       kn.n_prompts
FROM knowledge_neurons kn
LEFT JOIN facts f ON f.id = kn.fact_id
LEFT JOIN relations r ON r.id = f.relation_id
WHERE kn.run_id = :run_id AND kn.layer = :layer AND kn.neuron = :neuron
ORDER BY kn.score DESC, kn.fact_id
