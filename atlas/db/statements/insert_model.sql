-- Register a model unless its weights (sha256) or its name are already there: concurrent
-- `atlas index` processes all run this at once, and none may fail; each then reads the row back.
-- params: :name (text), :source (text), :architecture (text), :n_layers (int), :n_neurons (int), :sha256 (text)
-- columns: id
INSERT INTO models (name, source, architecture, n_layers, n_neurons, sha256)
VALUES (:name, :source, :architecture, :n_layers, :n_neurons, :sha256)
ON CONFLICT DO NOTHING
RETURNING id
