-- A relation's overlap with the others, neuron by neuron: for each of its :top most frequent
-- knowledge neurons, how many facts of every relation have it too (long format, zeros left out;
-- the relation page divides by each relation's size and draws the shares as a heatmap).
-- params: :run_id (int), :relation_id (text), :top (int)
-- columns: layer, neuron, relation_id, n_facts
WITH own AS (
    SELECT kn.layer, kn.neuron, COUNT(*) AS n
    FROM knowledge_neurons kn JOIN facts f ON f.id = kn.fact_id
    WHERE kn.run_id = :run_id AND f.relation_id = :relation_id
    GROUP BY kn.layer, kn.neuron
    ORDER BY n DESC, kn.layer, kn.neuron
    LIMIT :top
), hits AS (
    SELECT kn.layer, kn.neuron, f.relation_id, COUNT(*) AS n_facts
    FROM own o
    JOIN knowledge_neurons kn ON kn.run_id = :run_id AND kn.layer = o.layer AND kn.neuron = o.neuron
    JOIN facts f ON f.id = kn.fact_id
    GROUP BY kn.layer, kn.neuron, f.relation_id
)
SELECT layer, neuron, relation_id, n_facts FROM hits ORDER BY layer, neuron, relation_id
