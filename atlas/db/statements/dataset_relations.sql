-- The relations that have facts in a dataset.
-- params: :dataset (text)
-- columns: relation_id
SELECT DISTINCT f.relation_id
FROM dataset_facts d
JOIN facts f ON f.id = d.fact_id
WHERE d.dataset = :dataset
ORDER BY f.relation_id
