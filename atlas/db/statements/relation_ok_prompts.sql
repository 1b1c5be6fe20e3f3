-- Ok prompts per fact of a relation in a run (the n of refining's max(n x p, 3)).
-- params: :run_id (int), :relation_id (text)
-- columns: fact_id, n
SELECT p.fact_id, COUNT(*) AS n
FROM prompt_outputs o
JOIN prompts p ON p.id = o.prompt_id
JOIN facts f ON f.id = p.fact_id
WHERE o.run_id = :run_id AND o.status = 'ok' AND f.relation_id = :relation_id
GROUP BY p.fact_id
