-- The relations of one run: facts and prompts scored, how well the model knows them (mean P(gold),
-- share ranked first), and their knowledge neurons (entries, distinct neurons, per fact).
-- params: :run_id (int)
-- columns: relation_id, label, type, n_facts, n_prompts, n_ok, mean_p_gold, top1_share, facts_with_neurons, n_entries, n_neurons, neurons_per_fact
WITH prompts_of AS (
    SELECT p.fact_id, po.status, po.p_gold, po.gold_rank
    FROM prompt_outputs po JOIN prompts p ON p.id = po.prompt_id
    WHERE po.run_id = :run_id
), by_relation AS (
    SELECT f.relation_id, COUNT(DISTINCT f.id) AS n_facts, COUNT(*) AS n_prompts,
           COUNT(CASE WHEN po.status = 'ok' THEN 1 END) AS n_ok,
           AVG(po.p_gold) AS mean_p_gold,
           AVG(CASE WHEN po.gold_rank = 1 THEN 1.0 ELSE 0.0 END) AS top1_share
    FROM prompts_of po JOIN facts f ON f.id = po.fact_id
    GROUP BY f.relation_id
), neurons_of AS (
    SELECT f.relation_id, COUNT(DISTINCT kn.fact_id) AS facts_with_neurons, COUNT(*) AS n_entries,
           COUNT(DISTINCT kn.layer * 1000000 + kn.neuron) AS n_neurons
    FROM knowledge_neurons kn JOIN facts f ON f.id = kn.fact_id
    WHERE kn.run_id = :run_id
    GROUP BY f.relation_id
)
SELECT b.relation_id, rel.label, rel.type, b.n_facts, b.n_prompts, b.n_ok, b.mean_p_gold, b.top1_share,
       COALESCE(n.facts_with_neurons, 0) AS facts_with_neurons, COALESCE(n.n_entries, 0) AS n_entries,
       COALESCE(n.n_neurons, 0) AS n_neurons,
       CAST(COALESCE(n.n_entries, 0) AS DOUBLE PRECISION) / NULLIF(n.facts_with_neurons, 0) AS neurons_per_fact
FROM by_relation b
JOIN relations rel ON rel.id = b.relation_id
LEFT JOIN neurons_of n ON n.relation_id = b.relation_id
ORDER BY b.relation_id
