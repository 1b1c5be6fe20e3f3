-- One model's shape and origin.
-- params: :model_id (int)
-- columns: id, name, source, architecture, n_layers, n_neurons, sha256
SELECT id, name, source, architecture, n_layers, n_neurons, sha256 FROM models WHERE id = :model_id
