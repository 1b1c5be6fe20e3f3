-- The facts an edit is predicted to disturb, before it is applied: facts (other than the edit's
-- own targets) whose knowledge neurons include value slots the edit changes. predicted_score is
-- the share of the fact's attribution mass that lies on changed slots (sum of its scores on the
-- edit's neurons / sum of all its scores): 1 means every neuron the fact relies on is rewritten.
-- Targets are excluded: the edited fact for an update, the erased relation's facts for an erase.
-- params: :edit_id (int), :limit (int, default 50)
-- columns: fact_id, relation_id, same_relation, subject, object, shared, n_neurons, shared_score, predicted_score
WITH e AS (
    SELECT id, run_id, target,
           COALESCE((SELECT relation_id FROM facts WHERE id = edits.target), edits.target) AS target_relation
    FROM edits
    WHERE id = :edit_id
),
changed AS (
    SELECT layer, neuron FROM edit_slots WHERE edit_id = :edit_id
),
run_kn AS (
    SELECT k.fact_id, k.layer, k.neuron, CAST(k.score AS DOUBLE PRECISION) AS score
    FROM knowledge_neurons k JOIN e ON k.run_id = e.run_id
),
per_fact AS (
    SELECT fact_id, COUNT(*) AS n_neurons, SUM(score) AS mass FROM run_kn GROUP BY fact_id
),
hit AS (
    SELECT k.fact_id, COUNT(*) AS shared, SUM(k.score) AS shared_score
    FROM run_kn k JOIN changed c ON c.layer = k.layer AND c.neuron = k.neuron
    GROUP BY k.fact_id
)
SELECT h.fact_id,
       f.relation_id,
       f.relation_id = e.target_relation AS same_relation,
       f.subject,
       f.object,
       h.shared,
       pf.n_neurons,
       h.shared_score,
       CASE WHEN pf.mass > 0 THEN h.shared_score / pf.mass ELSE CAST(h.shared AS DOUBLE PRECISION) / pf.n_neurons END
           AS predicted_score
FROM hit h
JOIN per_fact pf ON pf.fact_id = h.fact_id
JOIN facts f ON f.id = h.fact_id
CROSS JOIN e
WHERE h.fact_id <> e.target AND f.relation_id <> e.target
ORDER BY predicted_score DESC, h.shared DESC, h.fact_id
LIMIT :limit
