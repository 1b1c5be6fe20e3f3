-- A fact's attribution across its prompts: the scores of its top :top neurons (its knowledge
-- neurons first, then the neurons with the largest summed score) in every prompt of the fact that
-- has scores in the run, long format (score NULL where the prompt stored none). Feeds `atlas plot fact`.
-- params: :run_id (int), :fact_id (text), :top (int, default 20)
-- columns: prompt_id, template, neuron_rank, layer, neuron, is_knowledge_neuron, score
WITH ps AS (
    SELECT s.prompt_id, s.layer, s.neuron, s.score
    FROM prompt_scores s
    JOIN prompts p ON p.id = s.prompt_id
    WHERE s.run_id = :run_id AND p.fact_id = :fact_id
),
totals AS (
    SELECT ps.layer,
           ps.neuron,
           SUM(CAST(ps.score AS DOUBLE PRECISION)) AS total,
           MAX(CASE WHEN kn.fact_id IS NULL THEN 0 ELSE 1 END) AS is_kn
    FROM ps
    LEFT JOIN knowledge_neurons kn
      ON kn.run_id = :run_id AND kn.fact_id = :fact_id AND kn.layer = ps.layer AND kn.neuron = ps.neuron
    GROUP BY ps.layer, ps.neuron
),
top_neurons AS (
    SELECT layer, neuron, is_kn,
           ROW_NUMBER() OVER (ORDER BY is_kn DESC, total DESC, layer, neuron) AS neuron_rank
    FROM totals
),
fact_prompts AS (
    SELECT DISTINCT ps.prompt_id, p.template
    FROM ps
    JOIN prompts p ON p.id = ps.prompt_id
)
SELECT fp.prompt_id,
       fp.template,
       t.neuron_rank,
       t.layer,
       t.neuron,
       t.is_kn = 1 AS is_knowledge_neuron,
       CAST(ps.score AS DOUBLE PRECISION) AS score
FROM fact_prompts fp
CROSS JOIN top_neurons t
LEFT JOIN ps ON ps.prompt_id = fp.prompt_id AND ps.layer = t.layer AND ps.neuron = t.neuron
WHERE t.neuron_rank <= :top
ORDER BY fp.prompt_id, t.neuron_rank
