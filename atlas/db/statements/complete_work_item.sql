-- Mark a claimed item done, but only while the caller still holds its lease: a worker whose lease
-- expired (and whose item another worker reclaimed) must not overwrite that worker's results.
-- params: :run_id (int), :item_id (int), :owner (text)
-- columns: item_id
UPDATE work_items
SET status = 'done', lease_expires = NULL
WHERE run_id = :run_id AND item_id = :item_id AND lease_owner = :owner AND status = 'claimed'
RETURNING item_id
