-- scripts/leaflock-schema.sql - a LeafLock-shaped schema for tests.
--
-- Modelled on what matters to a backup of LeafLock: the same table names, the
-- same extensions, UUID keys, foreign keys with cascades, and user data kept
-- as BYTEA ciphertext (encrypted by the clients or with the server key), next
-- to some plain JSONB and text. Column lists are plausible, not a copy of
-- LeafLock's. Used by scripts/generate-db.sh; runs on PostgreSQL 13 or newer
-- with the contrib extensions below installed.

CREATE EXTENSION IF NOT EXISTS "uuid-ossp";
CREATE EXTENSION IF NOT EXISTS pgcrypto;
CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- Keeps updated_at current on UPDATE.
CREATE OR REPLACE FUNCTION update_updated_at_column() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

CREATE TABLE users (
    id                      uuid PRIMARY KEY DEFAULT uuid_generate_v4(),
    email_encrypted         bytea NOT NULL,          -- server key (XChaCha20-Poly1305)
    email_hash              bytea NOT NULL UNIQUE,   -- keyed hash for look-ups
    password_hash           text NOT NULL,           -- Argon2id PHC string
    salt                    bytea NOT NULL,
    master_key_encrypted    bytea NOT NULL,          -- wrapped by the user's password key
    public_key              bytea,
    private_key_encrypted   bytea,
    mfa_enabled             boolean NOT NULL DEFAULT false,
    mfa_secret_encrypted    bytea,
    is_admin                boolean NOT NULL DEFAULT false,
    failed_attempts         integer NOT NULL DEFAULT 0,
    locked_until            timestamptz,
    last_login              timestamptz,
    storage_used            bigint NOT NULL DEFAULT 0,
    storage_limit           bigint NOT NULL DEFAULT 104857600,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER users_updated_at BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

-- Per-user key that makes the user's data unreadable once erased (GDPR).
CREATE TABLE gdpr_keys (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id         uuid NOT NULL UNIQUE REFERENCES users (id) ON DELETE CASCADE,
    email_hash      bytea NOT NULL,
    deletion_key    bytea NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE roles (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name            text NOT NULL UNIQUE,
    description     text NOT NULL DEFAULT '',
    permissions     jsonb NOT NULL DEFAULT '[]',
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE user_roles (
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role_id         uuid NOT NULL REFERENCES roles (id) ON DELETE CASCADE,
    granted_by      uuid REFERENCES users (id) ON DELETE SET NULL,
    granted_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, role_id)
);

CREATE TABLE announcements (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    title           text NOT NULL,
    content         text NOT NULL,
    visibility      text NOT NULL DEFAULT 'all'
                    CHECK (visibility IN ('all', 'logged_in', 'admins')),
    style           jsonb NOT NULL DEFAULT '{}',
    priority        integer NOT NULL DEFAULT 0,
    active          boolean NOT NULL DEFAULT true,
    starts_at       timestamptz,
    ends_at         timestamptz,
    created_by      uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER announcements_updated_at BEFORE UPDATE ON announcements
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

CREATE TABLE workspaces (
    id                          uuid PRIMARY KEY DEFAULT uuid_generate_v4(),
    name_encrypted              bytea NOT NULL,
    owner_id                    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    encryption_key_encrypted    bytea NOT NULL,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_workspaces_owner ON workspaces (owner_id);
CREATE TRIGGER workspaces_updated_at BEFORE UPDATE ON workspaces
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

CREATE TABLE folders (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    workspace_id    uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    parent_id       uuid REFERENCES folders (id) ON DELETE CASCADE,
    name_encrypted  bytea NOT NULL,
    position        integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_folders_workspace ON folders (workspace_id);
CREATE INDEX idx_folders_parent ON folders (parent_id);

CREATE TABLE notes (
    id                  uuid PRIMARY KEY DEFAULT uuid_generate_v4(),
    workspace_id        uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    folder_id           uuid REFERENCES folders (id) ON DELETE SET NULL,
    created_by          uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title_encrypted     bytea NOT NULL,
    content_encrypted   bytea NOT NULL,
    content_hash        bytea NOT NULL,
    version             integer NOT NULL DEFAULT 1,
    is_pinned           boolean NOT NULL DEFAULT false,
    is_archived         boolean NOT NULL DEFAULT false,
    deleted_at          timestamptz,                     -- trash
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_notes_workspace ON notes (workspace_id);
CREATE INDEX idx_notes_folder ON notes (folder_id);
CREATE INDEX idx_notes_created_by ON notes (created_by);
CREATE INDEX idx_notes_deleted_at ON notes (deleted_at) WHERE deleted_at IS NOT NULL;
CREATE TRIGGER notes_updated_at BEFORE UPDATE ON notes
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

CREATE TABLE note_versions (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    note_id             uuid NOT NULL REFERENCES notes (id) ON DELETE CASCADE,
    version_number      integer NOT NULL,
    title_encrypted     bytea NOT NULL,
    content_encrypted   bytea NOT NULL,
    created_by          uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (note_id, version_number)
);

-- Blind index for end-to-end encrypted search: keyed hashes of words.
CREATE TABLE search_index (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    note_id         uuid NOT NULL REFERENCES notes (id) ON DELETE CASCADE,
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    keyword_hash    bytea NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_search_index_keyword ON search_index (user_id, keyword_hash);
CREATE INDEX idx_search_index_note ON search_index (note_id);

CREATE TABLE collaborations (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    note_id         uuid NOT NULL REFERENCES notes (id) ON DELETE CASCADE,
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    permission      text NOT NULL DEFAULT 'read'
                    CHECK (permission IN ('read', 'write', 'admin')),
    key_encrypted   bytea NOT NULL,                  -- note key wrapped for the collaborator
    invited_by      uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (note_id, user_id)
);

CREATE TABLE audit_log (
    id                      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id                 uuid REFERENCES users (id) ON DELETE SET NULL,
    action                  text NOT NULL,
    resource_type           text NOT NULL,
    resource_id             uuid,
    ip_encrypted            bytea,
    user_agent_encrypted    bytea,
    details                 jsonb NOT NULL DEFAULT '{}',
    created_at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_audit_log_user_created ON audit_log (user_id, created_at);
CREATE INDEX idx_audit_log_created ON audit_log (created_at);

CREATE TABLE attachments (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    note_id             uuid NOT NULL REFERENCES notes (id) ON DELETE CASCADE,
    filename_encrypted  bytea NOT NULL,
    content_encrypted   bytea NOT NULL,
    mime_type           text NOT NULL DEFAULT 'application/octet-stream',
    size_bytes          bigint NOT NULL,
    checksum            bytea NOT NULL,
    created_by          uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_attachments_note ON attachments (note_id);

CREATE TABLE key_rotations (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    old_key_hash    bytea NOT NULL,
    new_key_hash    bytea NOT NULL,
    reason          text NOT NULL DEFAULT 'scheduled',
    rotated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tags (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name            text NOT NULL,
    color           text NOT NULL DEFAULT '#6b7280',
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, name)
);
CREATE INDEX idx_tags_name_trgm ON tags USING gin (name gin_trgm_ops);

CREATE TABLE note_tags (
    note_id         uuid NOT NULL REFERENCES notes (id) ON DELETE CASCADE,
    tag_id          uuid NOT NULL REFERENCES tags (id) ON DELETE CASCADE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (note_id, tag_id)
);
CREATE INDEX idx_note_tags_tag ON note_tags (tag_id);

CREATE TABLE templates (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id         uuid REFERENCES users (id) ON DELETE CASCADE,   -- NULL: built-in
    name            text NOT NULL,
    description     text NOT NULL DEFAULT '',
    content         text NOT NULL,                                  -- Markdown
    metadata        jsonb NOT NULL DEFAULT '{}',
    tags            text[] NOT NULL DEFAULT '{}',
    is_public       boolean NOT NULL DEFAULT false,
    usage_count     integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_templates_name_trgm ON templates USING gin (name gin_trgm_ops);

CREATE TABLE app_settings (
    key             text PRIMARY KEY,
    value           jsonb NOT NULL,
    description     text,
    updated_by      uuid REFERENCES users (id) ON DELETE SET NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE share_links (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    note_id         uuid NOT NULL REFERENCES notes (id) ON DELETE CASCADE,
    created_by      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash      bytea NOT NULL UNIQUE,
    key_encrypted   bytea NOT NULL,
    permission      text NOT NULL DEFAULT 'read' CHECK (permission IN ('read', 'write')),
    password_hash   text,
    max_uses        integer,
    use_count       integer NOT NULL DEFAULT 0,
    expires_at      timestamptz,
    revoked         boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_share_links_note ON share_links (note_id);

CREATE TABLE _migrations (
    version         text PRIMARY KEY,
    description     text NOT NULL,
    checksum        text NOT NULL,
    applied_at      timestamptz NOT NULL DEFAULT now()
);

INSERT INTO _migrations (version, description, checksum)
VALUES ('2024.09.01.001', 'initial schema',
        encode(sha256('leaflock-schema initial'::bytea), 'hex'));
