-- Hand a claimed item back (the worker failed on it, or is stopping): it becomes pending again.
-- params: :run_id (int), :item_id (int), :owner (text)
UPDATE work_items
SET status = 'pending', lease_owner = NULL, lease_expires = NULL
WHERE run_id = :run_id AND item_id = :item_id AND lease_owner = :owner AND status = 'claimed'
