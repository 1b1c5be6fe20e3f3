-- The facts a run indexes: members of a dataset, in the chosen relations, at most N per relation
-- (the first N by fact id, so a selection is reproducible), that have at least one prompt usable
-- by the model kind.
-- params: :dataset (text), :relations (text[]), :limit_per_relation (int), :causal (bool)
-- columns: relation_id, fact_id
SELECT relation_id, fact_id
FROM (
    SELECT f.relation_id, f.id AS fact_id,
           ROW_NUMBER() OVER (PARTITION BY f.relation_id ORDER BY f.id) AS rn
    FROM dataset_facts d
    JOIN facts f ON f.id = d.fact_id
    WHERE d.dataset = :dataset
      AND f.relation_id IN :relations
      AND EXISTS (
          SELECT 1 FROM prompts p
          WHERE p.fact_id = f.id AND ((:causal AND p.causal) OR (NOT :causal AND p.masked))
      )
) ranked
WHERE rn <= :limit_per_relation
ORDER BY relation_id, fact_id
