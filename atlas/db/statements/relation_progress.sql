-- Per relation of a run: how many work items there are and how many are done, and whether the
-- relation has been finalised (its relation_thresholds row exists).
-- params: :run_id (int)
-- columns: relation_id, n_items, n_done, finalized
SELECT w.relation_id,
       COUNT(*) AS n_items,
       SUM(CASE WHEN w.status = 'done' THEN 1 ELSE 0 END) AS n_done,
       MAX(CASE WHEN t.relation_id IS NULL THEN 0 ELSE 1 END) AS finalized
FROM work_items w
LEFT JOIN relation_thresholds t ON t.run_id = w.run_id AND t.relation_id = w.relation_id
WHERE w.run_id = :run_id
GROUP BY w.relation_id
ORDER BY w.relation_id
