-- Prompts of facts whose subject contains :subject without being it ("University of Chile" for
-- "Chile", "Commonwealth of the Philippines" for "Philippines"): a key read at the subject's last
-- token sees the same word there, so these are the hardest negatives of a subject-keyed slot (a
-- plain substring: "Indiana" is one of "India"'s, which costs nothing but a few rows). Causal ones
-- only when :causal is true; a fixed pseudo-random order (md5 of the text), at most :limit rows.
-- params: :subject (text), :causal (bool), :limit (int)
-- columns: fact_id, relation_id, subject, object, text
SELECT f.id AS fact_id, f.relation_id, f.subject, f.object, p.text
FROM prompts p JOIN facts f ON f.id = p.fact_id
WHERE strpos(f.subject, :subject) > 0
  AND f.subject <> :subject
  AND (p.causal OR NOT :causal)
ORDER BY md5(p.text || f.id)
LIMIT :limit
