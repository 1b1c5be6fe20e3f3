-- Facts of relations other than :relation_id that some run of the model :model_id scored (what the
-- atlas knows the model knows, whichever run or dataset it came from), with those prompts' texts:
-- at most :limit facts, taken round-robin over the relations (so every relation is represented,
-- not only the largest) in a fixed pseudo-random order (md5 of the fact id).
-- params: :model_id (int), :relation_id (text), :limit (int)
-- columns: fact_id, relation_id, subject, object, prompt_id, text
WITH scored AS (
    SELECT DISTINCT p.fact_id, po.prompt_id
    FROM prompt_outputs po
    JOIN runs r ON r.id = po.run_id
    JOIN prompts p ON p.id = po.prompt_id
    WHERE r.model_id = :model_id AND po.status = 'ok'
),
ranked AS (
    SELECT f.id, ROW_NUMBER() OVER (PARTITION BY f.relation_id ORDER BY md5(f.id)) AS turn
    FROM facts f
    WHERE f.relation_id <> :relation_id AND f.id IN (SELECT fact_id FROM scored)
),
chosen AS (
    SELECT id FROM ranked ORDER BY turn, md5(id) LIMIT :limit
)
SELECT f.id AS fact_id, f.relation_id, f.subject, f.object, p.id AS prompt_id, p.text
FROM chosen c
JOIN facts f ON f.id = c.id
JOIN scored s ON s.fact_id = f.id
JOIN prompts p ON p.id = s.prompt_id
ORDER BY f.relation_id, f.id, p.id
