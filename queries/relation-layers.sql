-- The layers where a relation's attribution lives: per layer, the relation's stored relative IG
-- mass (each stored score / its prompt's max score, summed over the relation's ok prompts) and its
-- share of the relation's mass in the layer range. The least-squares erase (`--form lsq`) edits the
-- top :top_k layers of this list.
-- params: :run_id (int), :relation_id (text), :top_k (int, default 3), :min_layer (int, default 0), :max_layer (int, default 100000)
-- columns: layer, mass, share, n_prompts
WITH rel AS (
    SELECT o.prompt_id, o.max_score
    FROM prompt_outputs o
    JOIN prompts p ON p.id = o.prompt_id
    JOIN facts f ON f.id = p.fact_id
    WHERE o.run_id = :run_id AND o.status = 'ok' AND o.max_score > 0 AND f.relation_id = :relation_id
),
per_layer AS (
    SELECT s.layer,
           SUM(CAST(s.score AS DOUBLE PRECISION) / CAST(rel.max_score AS DOUBLE PRECISION)) AS mass,
           COUNT(DISTINCT s.prompt_id) AS n_prompts
    FROM prompt_scores s
    JOIN rel ON rel.prompt_id = s.prompt_id
    WHERE s.run_id = :run_id AND s.score > 0 AND s.layer BETWEEN :min_layer AND :max_layer
    GROUP BY s.layer
)
SELECT layer, mass, mass / SUM(mass) OVER () AS share, n_prompts
FROM per_layer
ORDER BY mass DESC, layer
LIMIT :top_k
