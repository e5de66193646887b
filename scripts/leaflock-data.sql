-- scripts/leaflock-data.sql - fill a LeafLock-shaped database with test data.
--
-- Run by scripts/generate-db.sh with psql, connected to a database that has
-- just been created with scripts/leaflock-schema.sql. psql variable:
--   target_bytes  wanted pg_database_size() in bytes
--
-- Everything is generated on the server. About 80% of the volume is random
-- "ciphertext" (BYTEA from pgcrypto's gen_random_bytes, like the output of
-- XChaCha20-Poly1305) and about 20% is compressible JSON and text. Row counts
-- scale with the target size; every table gets at least one row. A last pass
-- tops up note versions and audit entries until the database is within a few
-- per cent of the target. Progress goes to stderr (\warn); the summary to
-- stdout.

\set ON_ERROR_STOP 1
SET client_min_messages = warning;

-- gen_random_bytes() returns at most 1024 bytes per call: concatenate.
CREATE FUNCTION pg_temp.rnd(n integer) RETURNS bytea
LANGUAGE sql VOLATILE AS $$
    SELECT CASE
        WHEN n <= 1024 THEN gen_random_bytes(greatest(n, 1))
        ELSE (SELECT string_agg(gen_random_bytes(least(1024, n - i)), ''::bytea)
              FROM generate_series(0, n - 1, 1024) AS i)
    END
$$;

-- A random moment in the last two years.
CREATE FUNCTION pg_temp.ts() RETURNS timestamptz
LANGUAGE sql VOLATILE AS $$ SELECT now() - random() * interval '730 days' $$;

-- A random word; a short random phrase (compressible text).
CREATE FUNCTION pg_temp.word() RETURNS text
LANGUAGE sql VOLATILE AS $$
    SELECT (ARRAY['meeting', 'agenda', 'project', 'review', 'budget', 'travel',
                  'ideas', 'journal', 'recipe', 'reading', 'health', 'family',
                  'work', 'todo', 'draft', 'archive', 'research', 'planning',
                  'notes', 'summary', 'quarterly', 'personal', 'shopping',
                  'release', 'security', 'design'])[1 + floor(random() * 26)::int]
$$;
CREATE FUNCTION pg_temp.phrase(words integer) RETURNS text
LANGUAGE sql VOLATILE AS $$
    SELECT string_agg(pg_temp.word(), ' ') FROM generate_series(1, greatest(words, 1))
$$;

-- An encrypted value as LeafLock stores it: 24-byte nonce, ciphertext of
-- the plaintext's length, 16-byte tag.
CREATE FUNCTION pg_temp.enc(plain_len integer) RETURNS bytea
LANGUAGE sql VOLATILE AS $$ SELECT pg_temp.rnd(plain_len + 40) $$;

-- ---------------------------------------------------------------------------
-- Plan: row counts from the size budget left after the empty schema.
-- ---------------------------------------------------------------------------
CREATE TEMP TABLE gen_plan AS
WITH b AS (
    SELECT :target_bytes::bigint AS target_bytes,
           pg_database_size(current_database()) AS base_bytes
), f AS (
    SELECT *, greatest(target_bytes - base_bytes, 0) AS budget,
           -- the first pass aims below the target; the top-up closes the gap
           greatest(target_bytes - base_bytes, 0) * 0.85 AS fill
    FROM b
), r AS (
    SELECT *, fill * 0.80 AS rnd_bytes, fill * 0.20 AS text_bytes,
           budget / 1048576.0 AS budget_mib,
           least(524288, greatest(4096, fill * 0.80 * 0.30 / 3))::int AS att_max
    FROM f
)
SELECT target_bytes, base_bytes, budget, att_max, att_max / 8 AS att_min,
       greatest(3, round(budget_mib * 1.5))::int AS n_users,
       greatest(2, round(rnd_bytes * 0.28 / 6500))::int AS n_notes,
       greatest(2, round(rnd_bytes * 0.27 / 6500))::int AS n_versions,
       greatest(1, round(rnd_bytes * 0.30 / (att_max * 0.5625)))::int AS n_attachments,
       greatest(3, round(text_bytes * 0.75 / 700))::int AS n_audit,
       greatest(3, least(300, round(budget_mib)))::int AS n_templates,
       greatest(2, least(50, round(budget_mib / 20)))::int AS n_announcements
FROM r;

ALTER TABLE gen_plan
    ADD COLUMN n_workspaces int, ADD COLUMN n_folders int, ADD COLUMN n_tags int,
    ADD COLUMN n_search int, ADD COLUMN n_collab int, ADD COLUMN n_share int,
    ADD COLUMN n_key_rotations int;
UPDATE gen_plan SET
    n_workspaces = n_users + n_users / 5,
    n_folders = 3 * (n_users + n_users / 5),
    n_tags = 5 * n_users,
    n_search = 4 * n_notes,
    n_collab = greatest(1, n_notes / 10),
    n_share = greatest(1, n_notes / 20),
    n_key_rotations = greatest(1, n_users / 4);

SELECT format('[generate-db] plan: empty schema %s, budget %s: %s users, %s notes, %s versions, %s attachments (%s-%s bytes), %s audit entries',
              pg_size_pretty(base_bytes), pg_size_pretty(budget), n_users, n_notes,
              n_versions, n_attachments, att_min, att_max, n_audit) AS msg
FROM gen_plan \gset
\warn :msg

-- ---------------------------------------------------------------------------
-- Users, roles, keys
-- ---------------------------------------------------------------------------
\warn '[generate-db] users, roles, GDPR keys, key rotations'
CREATE TEMP TABLE m_users AS
    SELECT g AS n, uuid_generate_v4() AS id FROM generate_series(1, (SELECT n_users FROM gen_plan)) g;
ALTER TABLE m_users ADD PRIMARY KEY (n);

INSERT INTO users (id, email_encrypted, email_hash, password_hash, salt,
                   master_key_encrypted, public_key, private_key_encrypted,
                   mfa_enabled, mfa_secret_encrypted, is_admin, last_login,
                   storage_used, created_at, updated_at)
SELECT id, pg_temp.enc(16 + (random() * 24)::int), pg_temp.rnd(32),
       '$argon2id$v=19$m=65536,t=3,p=4$' || encode(pg_temp.rnd(16), 'base64') || '$' || encode(pg_temp.rnd(32), 'base64'),
       pg_temp.rnd(32), pg_temp.enc(32), pg_temp.rnd(32), pg_temp.enc(32),
       n % 3 = 0, CASE WHEN n % 3 = 0 THEN pg_temp.enc(20) END, n = 1,
       pg_temp.ts(), (random() * 50000000)::bigint, pg_temp.ts(), now()
FROM m_users;

INSERT INTO roles (name, description, permissions) VALUES
    ('admin', 'Full administrative access',
     '["users:read","users:write","roles:write","settings:write","announcements:write","audit:read"]'),
    ('moderator', 'Manages announcements and reviews reports',
     '["users:read","announcements:write","audit:read"]'),
    ('auditor', 'Read-only access to the audit log', '["audit:read"]'),
    ('user', 'Regular account', '["notes:read","notes:write"]');

INSERT INTO user_roles (user_id, role_id, granted_by, granted_at)
SELECT u.id, r.id, (SELECT id FROM m_users WHERE n = 1), pg_temp.ts()
FROM m_users u
JOIN roles r ON r.name = 'user'
            OR (r.name = 'admin' AND u.n = 1)
            OR (r.name = 'moderator' AND u.n % 50 = 2);

INSERT INTO gdpr_keys (user_id, email_hash, deletion_key, created_at)
SELECT u.id, users.email_hash, pg_temp.rnd(32), users.created_at
FROM m_users u JOIN users ON users.id = u.id;

INSERT INTO key_rotations (user_id, old_key_hash, new_key_hash, reason, rotated_at)
SELECT u.id, pg_temp.rnd(32), pg_temp.rnd(32),
       (ARRAY['scheduled', 'password_change', 'suspected_compromise'])[1 + g % 3], pg_temp.ts()
FROM generate_series(1, (SELECT n_key_rotations FROM gen_plan)) g
JOIN m_users u ON u.n = 1 + (g - 1) % (SELECT n_users FROM gen_plan);

-- ---------------------------------------------------------------------------
-- Workspaces, folders, tags
-- ---------------------------------------------------------------------------
\warn '[generate-db] workspaces, folders, tags'
CREATE TEMP TABLE m_ws AS
    SELECT g AS n, uuid_generate_v4() AS id, 1 + (g - 1) % (SELECT n_users FROM gen_plan) AS owner_n
    FROM generate_series(1, (SELECT n_workspaces FROM gen_plan)) g;
ALTER TABLE m_ws ADD PRIMARY KEY (n);

INSERT INTO workspaces (id, name_encrypted, owner_id, encryption_key_encrypted, created_at, updated_at)
SELECT w.id, pg_temp.enc(8 + (random() * 24)::int), u.id, pg_temp.enc(32), pg_temp.ts(), now()
FROM m_ws w JOIN m_users u ON u.n = w.owner_n;

-- Folder n lives in workspace 1 + (n - 1) % n_workspaces; the first round of
-- folders are top level, later ones are children of the first.
CREATE TEMP TABLE m_folders AS
    SELECT g AS n, gen_random_uuid() AS id, 1 + (g - 1) % p.n_workspaces AS ws_n,
           CASE WHEN g > p.n_workspaces THEN 1 + (g - 1) % p.n_workspaces END AS parent_n
    FROM gen_plan p CROSS JOIN generate_series(1, p.n_folders) g;
ALTER TABLE m_folders ADD PRIMARY KEY (n);

INSERT INTO folders (id, workspace_id, parent_id, name_encrypted, position, created_at, updated_at)
SELECT f.id, w.id, pf.id, pg_temp.enc(6 + (random() * 20)::int), f.n % 7, pg_temp.ts(), now()
FROM m_folders f
JOIN m_ws w ON w.n = f.ws_n
LEFT JOIN m_folders pf ON pf.n = f.parent_n
ORDER BY f.n;

CREATE TEMP TABLE m_tags AS
    SELECT g AS n, gen_random_uuid() AS id, 1 + (g - 1) % (SELECT n_users FROM gen_plan) AS user_n
    FROM generate_series(1, (SELECT n_tags FROM gen_plan)) g;
ALTER TABLE m_tags ADD PRIMARY KEY (n);

INSERT INTO tags (id, user_id, name, color, created_at)
SELECT t.id, u.id, pg_temp.word() || '-' || t.n,
       (ARRAY['#ef4444', '#f59e0b', '#10b981', '#3b82f6', '#8b5cf6', '#6b7280'])[1 + t.n % 6],
       pg_temp.ts()
FROM m_tags t JOIN m_users u ON u.n = t.user_n;

-- ---------------------------------------------------------------------------
-- Notes and everything hanging off them
-- ---------------------------------------------------------------------------
\warn '[generate-db] notes'
CREATE TEMP TABLE m_notes AS
    SELECT g AS n, uuid_generate_v4() AS id, 1 + (g - 1) % p.n_workspaces AS ws_n,
           CASE WHEN g % 5 = 0 THEN NULL
                ELSE 1 + (g - 1) % p.n_workspaces + p.n_workspaces * (g % 3) END AS folder_n
    FROM gen_plan p CROSS JOIN generate_series(1, p.n_notes) g;
ALTER TABLE m_notes ADD PRIMARY KEY (n);

-- Ciphertext sizes: 200 B to 18 KiB, most notes short (about 6 KiB on average).
INSERT INTO notes (id, workspace_id, folder_id, created_by, title_encrypted,
                   content_encrypted, content_hash, version, is_pinned,
                   is_archived, deleted_at, created_at, updated_at)
SELECT m.id, w.id, f.id, u.id, pg_temp.enc(8 + (random() * 80)::int),
       pg_temp.rnd(200 + floor(random() * random() * 18000)::int), pg_temp.rnd(32),
       1 + m.n % 4, m.n % 17 = 0, m.n % 23 = 0,
       CASE WHEN m.n % 29 = 0 THEN pg_temp.ts() END, pg_temp.ts(), pg_temp.ts()
FROM m_notes m
JOIN m_ws w ON w.n = m.ws_n
JOIN m_users u ON u.n = w.owner_n
LEFT JOIN m_folders f ON f.n = m.folder_n;

\warn '[generate-db] note versions'
INSERT INTO note_versions (note_id, version_number, title_encrypted, content_encrypted, created_by, created_at)
SELECT m.id, 1 + (g - 1) / p.n_notes, pg_temp.enc(8 + (random() * 80)::int),
       pg_temp.rnd(200 + floor(random() * random() * 18000)::int), u.id, pg_temp.ts()
FROM gen_plan p CROSS JOIN generate_series(1, p.n_versions) g
JOIN m_notes m ON m.n = 1 + (g - 1) % p.n_notes
JOIN m_ws w ON w.n = m.ws_n
JOIN m_users u ON u.n = w.owner_n;

\warn '[generate-db] attachments'
INSERT INTO attachments (note_id, filename_encrypted, content_encrypted, mime_type,
                         size_bytes, checksum, created_by, created_at)
SELECT a.note_id, pg_temp.enc(12 + (random() * 30)::int), pg_temp.rnd(a.size), a.mime,
       a.size, pg_temp.rnd(32), a.user_id, pg_temp.ts()
FROM (
    SELECT m.id AS note_id, u.id AS user_id,
           p.att_min + floor(random() * (p.att_max - p.att_min + 1))::int AS size,
           (ARRAY['image/png', 'image/jpeg', 'application/pdf', 'text/plain',
                  'application/octet-stream'])[1 + g % 5] AS mime
    FROM gen_plan p CROSS JOIN generate_series(1, p.n_attachments) g
    JOIN m_notes m ON m.n = 1 + ((g - 1) * 7) % p.n_notes
    JOIN m_ws w ON w.n = m.ws_n
    JOIN m_users u ON u.n = w.owner_n
) a;

\warn '[generate-db] search index, tags on notes, collaborations, share links'
INSERT INTO search_index (note_id, user_id, keyword_hash, created_at)
SELECT m.id, u.id, pg_temp.rnd(32), pg_temp.ts()
FROM gen_plan p CROSS JOIN generate_series(1, p.n_search) g
JOIN m_notes m ON m.n = 1 + (g - 1) % p.n_notes
JOIN m_ws w ON w.n = m.ws_n
JOIN m_users u ON u.n = w.owner_n;

-- One or two tags per note.
INSERT INTO note_tags (note_id, tag_id, created_at)
SELECT m.id, t.id, pg_temp.ts()
FROM gen_plan p
JOIN m_notes m ON true
CROSS JOIN generate_series(0, 1) j
JOIN m_tags t ON t.n = 1 + (m.n * 7 + j) % p.n_tags
WHERE j = 0 OR m.n % 2 = 0;

INSERT INTO collaborations (note_id, user_id, permission, key_encrypted, invited_by, created_at)
SELECT m.id, c.id, (ARRAY['read', 'write', 'admin'])[1 + g % 3], pg_temp.enc(32), o.id, pg_temp.ts()
FROM gen_plan p CROSS JOIN generate_series(1, p.n_collab) g
JOIN m_notes m ON m.n = 1 + ((g - 1) * 10) % p.n_notes
JOIN m_ws w ON w.n = m.ws_n
JOIN m_users o ON o.n = w.owner_n
JOIN m_users c ON c.n = 1 + w.owner_n % p.n_users;

INSERT INTO share_links (note_id, created_by, token_hash, key_encrypted, permission,
                         password_hash, max_uses, use_count, expires_at, revoked, created_at)
SELECT m.id, o.id, pg_temp.rnd(32), pg_temp.enc(32),
       CASE WHEN g % 4 = 0 THEN 'write' ELSE 'read' END,
       CASE WHEN g % 3 = 0 THEN '$argon2id$v=19$m=65536,t=3,p=4$' || encode(pg_temp.rnd(16), 'base64') || '$' || encode(pg_temp.rnd(32), 'base64') END,
       CASE WHEN g % 2 = 0 THEN 10 END, g % 7, now() + (g % 30) * interval '1 day', g % 11 = 0, pg_temp.ts()
FROM gen_plan p CROSS JOIN generate_series(1, p.n_share) g
JOIN m_notes m ON m.n = 1 + ((g - 1) * 20) % p.n_notes
JOIN m_ws w ON w.n = m.ws_n
JOIN m_users o ON o.n = w.owner_n;

-- ---------------------------------------------------------------------------
-- Audit log, templates, announcements, settings (the compressible part)
-- ---------------------------------------------------------------------------
\warn '[generate-db] audit log'
CREATE FUNCTION pg_temp.audit_rows(n_rows integer) RETURNS integer
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit_log (user_id, action, resource_type, resource_id, ip_encrypted,
                           user_agent_encrypted, details, created_at)
    SELECT u.id, a.action, a.resource_type, m.id, pg_temp.enc(4 + 12 * (g % 2)),
           pg_temp.enc(60 + g % 60),
           jsonb_build_object(
               'component', 'api',
               'request_id', gen_random_uuid(),
               'method', a.method,
               'path', '/api/v1/' || a.resource_type || 's/' || m.id,
               'status', (ARRAY[200, 200, 200, 201, 204, 400, 401, 403, 404, 429])[1 + g % 10],
               'latency', round((random() * 250)::numeric, 3) || 'ms',
               'client', jsonb_build_object('app', 'leaflock-web', 'version', '1.' || g % 9 || '.' || g % 5,
                                            'platform', (ARRAY['linux', 'macos', 'windows', 'ios', 'android'])[1 + g % 5]),
               'changes', jsonb_build_object('fields', to_jsonb(ARRAY['title', 'content', 'folder_id']),
                                             'size_before', (random() * 20000)::int,
                                             'size_after', (random() * 20000)::int),
               'message', a.action || ' ' || a.resource_type || ' ' || pg_temp.phrase(4)),
           pg_temp.ts()
    FROM generate_series(1, n_rows) g
    CROSS JOIN gen_plan p
    JOIN m_users u ON u.n = 1 + (g - 1) % p.n_users
    JOIN m_notes m ON m.n = 1 + (g * 13) % p.n_notes
    JOIN (VALUES (0, 'note.create', 'note', 'POST'), (1, 'note.update', 'note', 'PUT'),
                 (2, 'note.read', 'note', 'GET'), (3, 'note.delete', 'note', 'DELETE'),
                 (4, 'auth.login', 'session', 'POST'), (5, 'auth.logout', 'session', 'DELETE'),
                 (6, 'share.create', 'share_link', 'POST'), (7, 'attachment.upload', 'attachment', 'POST'),
                 (8, 'mfa.verify', 'session', 'POST'), (9, 'note.update', 'note', 'PATCH'))
         AS a (k, action, resource_type, method) ON a.k = g % 10;
    RETURN n_rows;
END;
$$;
SELECT pg_temp.audit_rows(n_audit) FROM gen_plan \gset

\warn '[generate-db] templates, announcements, settings'
INSERT INTO templates (user_id, name, description, content, metadata, tags, is_public, usage_count, created_at, updated_at)
SELECT CASE WHEN g % 4 = 0 THEN NULL ELSE u.id END,
       initcap(pg_temp.phrase(2)) || ' template ' || g,
       'A template for ' || pg_temp.phrase(6),
       (SELECT string_agg(format(E'## %s\n\n%s.\n\n- [ ] %s\n- [ ] %s\n- [x] %s\n\n',
                                 initcap(pg_temp.phrase(3)), initcap(pg_temp.phrase(25)),
                                 pg_temp.phrase(5), pg_temp.phrase(4), pg_temp.phrase(6)), '')
        FROM generate_series(1, 3 + (g * 7) % 12 + 0 * g)),
       jsonb_build_object('category', pg_temp.word(), 'icon', 'file-text', 'version', 1 + g % 3),
       ARRAY[pg_temp.word(), pg_temp.word()], g % 4 = 0, (random() * 500)::int, pg_temp.ts(), now()
FROM gen_plan p CROSS JOIN generate_series(1, p.n_templates) g
JOIN m_users u ON u.n = 1 + (g - 1) % p.n_users;

INSERT INTO announcements (title, content, visibility, style, priority, active, starts_at, ends_at, created_by, created_at)
SELECT initcap(pg_temp.phrase(4)), initcap(pg_temp.phrase(60)) || '.',
       (ARRAY['all', 'logged_in', 'admins'])[1 + g % 3],
       jsonb_build_object('variant', (ARRAY['info', 'warning', 'success'])[1 + g % 3], 'dismissible', g % 2 = 0),
       g % 5, g % 3 <> 0, now() - g * interval '3 days', now() + g * interval '5 days',
       (SELECT id FROM m_users WHERE n = 1), pg_temp.ts()
FROM gen_plan p CROSS JOIN generate_series(1, p.n_announcements) g;

INSERT INTO app_settings (key, value, description, updated_by) VALUES
    ('registration_enabled', 'true', 'Allow new sign-ups', NULL),
    ('registration_mode', '"invite"', 'open, invite or closed', NULL),
    ('max_attachment_bytes', '10485760', 'Largest attachment accepted', NULL),
    ('default_storage_limit', '104857600', 'Quota for new accounts', NULL),
    ('trash_retention_days', '30', 'Days before trashed notes are purged', NULL),
    ('session_timeout_minutes', '1440', 'Idle session lifetime', NULL),
    ('mfa_required_for_admins', 'true', 'Admins must enable MFA', NULL),
    ('password_policy', '{"min_length": 12, "require_symbols": true, "argon2": {"m": 65536, "t": 3, "p": 4}}', 'Password rules', NULL),
    ('rate_limits', '{"login": {"per_minute": 5}, "api": {"per_minute": 300}}', 'Per-client limits', NULL),
    ('maintenance_banner', '{"enabled": false, "text": ""}', 'Banner shown during maintenance', NULL),
    ('gdpr', '{"deletion_grace_days": 30, "backup_cleanup_days": 30}', 'Data-protection promises', NULL),
    ('search', '{"blind_index": true, "min_word_length": 3}', 'Encrypted search settings', NULL);
UPDATE app_settings SET updated_by = (SELECT id FROM m_users WHERE n = 1);

-- ---------------------------------------------------------------------------
-- Top up to the target with more note versions (ciphertext) and audit
-- entries (JSON), 80/20, measuring the real size after each round.
-- ---------------------------------------------------------------------------
\warn '[generate-db] topping up to the target size'
DO $$
DECLARE
    p gen_plan%ROWTYPE;
    cur bigint;
    gap bigint;
    n_ver integer;
    base integer;
    rounds integer := 0;
BEGIN
    SELECT * INTO p FROM gen_plan;
    LOOP
        cur := pg_database_size(current_database());
        gap := p.target_bytes - cur;
        EXIT WHEN gap < p.target_bytes * 0.03 OR rounds >= 8;
        rounds := rounds + 1;
        -- about 6.7 KB on disk per version row, 0.7 KB per audit row
        n_ver := greatest(1, (gap * 0.80 / 6700)::int);
        SELECT coalesce(max(version_number), 0) INTO base FROM note_versions;
        INSERT INTO note_versions (note_id, version_number, title_encrypted, content_encrypted, created_by, created_at)
        SELECT m.id, base + 1 + (g - 1) / p.n_notes, pg_temp.enc(8 + (random() * 80)::int),
               pg_temp.rnd(200 + floor(random() * random() * 18000)::int), u.id, pg_temp.ts()
        FROM generate_series(1, n_ver) g
        JOIN m_notes m ON m.n = 1 + (g - 1) % p.n_notes
        JOIN m_ws w ON w.n = m.ws_n
        JOIN m_users u ON u.n = w.owner_n;
        PERFORM pg_temp.audit_rows(greatest(1, (gap * 0.20 / 700)::int));
    END LOOP;
END;
$$;

ANALYZE;

-- ---------------------------------------------------------------------------
-- Summary (stdout)
-- ---------------------------------------------------------------------------
SELECT format('database %s: %s (%s bytes); tables with indexes and TOAST %s bytes, of which BYTEA values %s bytes (%s%%)',
              current_database(), pg_size_pretty(pg_database_size(current_database())),
              pg_database_size(current_database()), t.table_bytes, b.bytea_bytes,
              round(100.0 * b.bytea_bytes / nullif(t.table_bytes, 0))) AS summary_line
FROM (SELECT sum(pg_total_relation_size(c.oid)) AS table_bytes
      FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace
      WHERE s.nspname = 'public' AND c.relkind = 'r') t,
     -- bytes held in BYTEA columns: the random "ciphertext"
     (SELECT sum((xpath('/row/b/text()',
                  query_to_xml(format('SELECT coalesce(sum(octet_length(%I)), 0) AS b FROM %I.%I',
                                      column_name, table_schema, table_name), false, true, '')))[1]::text::bigint)
             AS bytea_bytes
      FROM information_schema.columns
      WHERE table_schema = 'public' AND data_type = 'bytea') b
\gset
\echo :summary_line
\pset footer off
SELECT c.relname AS "table",
       (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I', s.nspname, c.relname),
                                            false, true, '')))[1]::text::bigint AS "rows",
       pg_size_pretty(pg_total_relation_size(c.oid)) AS "size"
FROM pg_class c
JOIN pg_namespace s ON s.oid = c.relnamespace
WHERE s.nspname = 'public' AND c.relkind = 'r'
ORDER BY c.relname;
