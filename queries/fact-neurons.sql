-- The knowledge neurons of one fact in one run, strongest first.
-- n_facts counts the facts of the run that have the same neuron (1: the fact's own neuron).
-- params: :run_id (int), :fact_id (text)
-- columns: layer, neuron, score, n_prompts, n_facts
SELECT kn.layer,
       kn.neuron,
       CAST(kn.score AS DOUBLE PRECISION) AS score,
       kn.n_prompts,
       (SELECT COUNT(*)
          FROM knowledge_neurons o
         WHERE o.run_id = kn.run_id AND o.layer = kn.layer AND o.neuron = kn.neuron) AS n_facts
FROM knowledge_neurons kn
WHERE kn.run_id = :run_id AND kn.fact_id = :fact_id
ORDER BY kn.score DESC, kn.layer, kn.neuron
