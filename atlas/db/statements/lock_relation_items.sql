-- Serialise finalisers of one relation (PostgreSQL): two workers finishing the relation's last
-- items at the same moment would otherwise both delete+insert its knowledge neurons.
-- params: :run_id (int), :relation_id (text)
-- columns: item_id
SELECT item_id FROM work_items
WHERE run_id = :run_id AND relation_id = :relation_id
ORDER BY item_id
FOR UPDATE
