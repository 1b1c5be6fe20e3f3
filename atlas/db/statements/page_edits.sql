-- Every edit and injection, newest first, with its run and how many slots it changed.
-- columns: kind, id, run_id, run_name, target, status, created_at, rolled_back_at, n_slots, audited
SELECT e.kind, e.id, e.run_id, r.name AS run_name, e.target, e.status, e.created_at, e.rolled_back_at,
       (SELECT COUNT(*) FROM edit_slots s WHERE s.edit_id = e.id) AS n_slots,
       EXISTS (SELECT 1 FROM audit_results a WHERE a.edit_id = e.id) AS audited
FROM edits e JOIN runs r ON r.id = e.run_id
UNION ALL
SELECT 'inject' AS kind, i.id, i.run_id, r.name AS run_name,
       (SELECT MIN(fi.subject) FROM injection_facts fi WHERE fi.injection_id = i.id) AS target,
       i.status, i.created_at, i.rolled_back_at,
       (SELECT COUNT(*) FROM injection_slots s WHERE s.injection_id = i.id) AS n_slots,
       i.audit <> '{}' AS audited
FROM injections i JOIN runs r ON r.id = i.run_id
ORDER BY created_at DESC
