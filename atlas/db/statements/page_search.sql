-- Facts and relations whose id, subject, object or label matches: exact ids first, then
-- case-insensitive substring matches (:pattern is '%text%'), at most :limit rows.
-- params: :q (text), :pattern (text), :limit (int)
-- columns: kind, fact_id, relation_id, subject, object, label
SELECT kind, fact_id, relation_id, subject, object, label FROM (
    SELECT 'relation' AS kind, CAST(NULL AS TEXT) AS fact_id, r.id AS relation_id, '' AS subject, '' AS object, r.label,
           CASE WHEN r.id = :q THEN 0 ELSE 1 END AS exact
    FROM relations r
    WHERE r.id = :q OR r.id ILIKE :pattern ESCAPE '\' OR r.label ILIKE :pattern ESCAPE '\'
    UNION ALL
    SELECT 'fact' AS kind, f.id AS fact_id, f.relation_id, f.subject, f.object, '' AS label,
           CASE WHEN f.id = :q THEN 0 ELSE 1 END AS exact
    FROM facts f
    WHERE f.id = :q OR f.subject ILIKE :pattern ESCAPE '\' OR f.object ILIKE :pattern ESCAPE '\'
) m
ORDER BY exact, kind DESC, subject, fact_id
LIMIT :limit
