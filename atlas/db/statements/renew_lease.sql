-- Extend the lease of an item the caller holds (long batches on slow devices).
-- params: :run_id (int), :item_id (int), :owner (text), :lease_s (int)
-- columns: item_id
UPDATE work_items
SET lease_expires = now() + :lease_s * INTERVAL '1 second'
WHERE run_id = :run_id AND item_id = :item_id AND lease_owner = :owner AND status = 'claimed'
RETURNING item_id
