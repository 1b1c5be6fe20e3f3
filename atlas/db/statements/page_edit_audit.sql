-- The audit of one edit: per fact, the predicted change of P(gold) against the measured one.
-- predicted_sketch_dp: from the run's gradient sketches (NULL when it kept none), predicted_dp: edit-impact.
-- params: :edit_id (int)
-- columns: fact_id, relation_id, subject, role, predicted_score, predicted_dp, predicted_sketch_dp, p_before, p_after, measured_dp
SELECT a.fact_id, f.relation_id, f.subject, a.role, a.predicted_score, a.predicted_dp, a.predicted_sketch_dp,
       a.p_before, a.p_after,
       a.p_after - a.p_before AS measured_dp
FROM audit_results a JOIN facts f ON f.id = a.fact_id
WHERE a.edit_id = :edit_id
ORDER BY a.role, a.p_after - a.p_before
