-- Every run with its model, newest first (the runs page; its counts come from the run summaries).
-- columns: id, name, model, dataset, method, status, created_at, finished_at, stats
SELECT r.id, r.name, m.name AS model, r.dataset, r.method, r.status, r.created_at, r.finished_at, r.stats
FROM runs r JOIN models m ON m.id = r.model_id
ORDER BY r.id DESC
