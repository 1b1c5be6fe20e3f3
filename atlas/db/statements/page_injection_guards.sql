-- What each fact of one injection recorded of its guards (`info.guards`: layer, namesake positions
-- opened and shut, the guard pair's first neuron or null), for the injection page to mark them.
-- params: :injection_id (int)
-- columns: position, info
SELECT position, info
FROM injection_facts WHERE injection_id = :injection_id ORDER BY position
