-- Prompts of the namesakes of an injected subject: facts whose subject contains the subject's last
-- word :word without being the subject :subject ("Benson Glacier" for "Egbert Benson", "University
-- of Chile" for "Chile", "Kingdom of Prussia" for "United Kingdom"). A key read at the subject's
-- last token sees the same word there, so a subject-keyed slot opens on them too (a plain
-- substring: "Indiana" is one of "India"'s, which costs nothing but a few rows; in any letter case,
-- since SmolLM2 opened the slot of "patent troll" at "roll" of "Trollhunter"). Causal ones only
-- when :causal is true; at most :limit rows, those holding the word in its own case first (a short
-- word in any case is in many names: "lt" of "Teo LT" in 360 subjects of PARAREL), each group in a
-- fixed pseudo-random order (md5 of the text).
-- params: :subject (text), :word (text), :causal (bool), :limit (int)
-- columns: fact_id, relation_id, subject, object, text
SELECT f.id AS fact_id, f.relation_id, f.subject, f.object, p.text
FROM prompts p JOIN facts f ON f.id = p.fact_id
WHERE strpos(lower(f.subject), lower(:word)) > 0
  AND f.subject <> :subject
  AND (p.causal OR NOT :causal)
ORDER BY strpos(f.subject, :word) = 0, md5(p.text || f.id)
LIMIT :limit
