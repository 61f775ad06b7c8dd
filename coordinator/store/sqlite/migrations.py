"""The schema's single history: numbered migrations applied in order under
`PRAGMA user_version`, every table of every aggregate (machines, units, tokens,
deployments, reports) in one place, so the order of changes is never in doubt.

A migration is never edited once released; a change is one more entry.
"""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: machines, enrolment and API tokens, certificate revocation.
    """
    CREATE TABLE machines (
        id TEXT PRIMARY KEY,
        hostname TEXT NOT NULL DEFAULT '',
        primary_ip TEXT NOT NULL DEFAULT '',
        metadata TEXT NOT NULL DEFAULT '{}',
        capabilities TEXT NOT NULL DEFAULT '[]',
        state TEXT NOT NULL DEFAULT 'disconnected',
        state_since REAL NOT NULL DEFAULT 0,
        last_seen REAL NOT NULL DEFAULT 0,
        enrolled_at REAL NOT NULL,
        cert_serial TEXT NOT NULL DEFAULT '',
        cert_not_after REAL NOT NULL DEFAULT 0,
        revoked INTEGER NOT NULL DEFAULT 0,
        agent_version TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE join_tokens (
        id TEXT PRIMARY KEY,
        secret_hash TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        used_at REAL,
        used_by TEXT NOT NULL DEFAULT '',
        description TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE api_tokens (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        secret_hash TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL,
        revoked INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE issued_certs (
        serial TEXT PRIMARY KEY,
        machine_id TEXT NOT NULL,
        issued_at REAL NOT NULL,
        not_after REAL NOT NULL
    );
    CREATE TABLE revoked_certs (
        serial TEXT PRIMARY KEY,
        machine_id TEXT NOT NULL,
        revoked_at REAL NOT NULL
    );
    """,
    # 2: units, where they are placed, what machines report, per-machine revisions.
    """
    CREATE TABLE units (
        name TEXT PRIMARY KEY,
        options TEXT NOT NULL,
        hash TEXT NOT NULL,
        desired_state TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE placements (
        unit TEXT NOT NULL REFERENCES units(name) ON DELETE CASCADE,
        machine_id TEXT NOT NULL,
        PRIMARY KEY (unit, machine_id)
    );
    CREATE INDEX placements_by_machine ON placements(machine_id);
    CREATE TABLE unit_states (
        name TEXT NOT NULL,
        machine_id TEXT NOT NULL,
        hash TEXT NOT NULL DEFAULT '',
        load_state TEXT NOT NULL DEFAULT '',
        active_state TEXT NOT NULL DEFAULT '',
        sub_state TEXT NOT NULL DEFAULT '',
        main_pid INTEGER NOT NULL DEFAULT 0,
        image_digest TEXT NOT NULL DEFAULT '',
        message TEXT NOT NULL DEFAULT '',
        updated_at REAL NOT NULL,
        PRIMARY KEY (name, machine_id)
    );
    ALTER TABLE machines ADD COLUMN desired_revision INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE machines ADD COLUMN applied_revision INTEGER NOT NULL DEFAULT 0
    """,
    # 3: fleet's currentState needs what the agent did; PATCHed metadata; pinned units.
    """
    ALTER TABLE unit_states ADD COLUMN target_state TEXT NOT NULL DEFAULT '';
    ALTER TABLE machines ADD COLUMN metadata_patch TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE units ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0
    """,
    # 4: machine groups, applications and their versions, deployments, releases with
    # their per-machine jobs, which release each machine runs, stickers, drift.
    """
    CREATE TABLE machine_groups (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        description TEXT NOT NULL DEFAULT '',
        selector TEXT NOT NULL DEFAULT '{}',
        machines TEXT NOT NULL DEFAULT '[]',
        builtin INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    INSERT INTO machine_groups (id, name, description, builtin, created_at, updated_at)
        VALUES ('c9a3f5e2-5d0b-5c1e-9a57-0f2f3c1d0e01', 'default', 'Every machine of the fleet',
                1, CAST(strftime('%s','now') AS REAL), CAST(strftime('%s','now') AS REAL));
    CREATE TABLE applications (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        description TEXT NOT NULL DEFAULT '',
        source_type TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE application_versions (
        application_id TEXT NOT NULL REFERENCES applications(id) ON DELETE CASCADE,
        number INTEGER NOT NULL,
        label TEXT NOT NULL,
        source_config TEXT NOT NULL,
        digest TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (application_id, number),
        UNIQUE (application_id, label)
    );
    CREATE TABLE deployments (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        application_id TEXT NOT NULL REFERENCES applications(id),
        group_id TEXT NOT NULL REFERENCES machine_groups(id),
        application_version TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL DEFAULT 'Created',
        current_release TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE releases (
        id TEXT PRIMARY KEY,
        deployment_id TEXT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        body TEXT NOT NULL,
        status TEXT NOT NULL,
        batch INTEGER NOT NULL DEFAULT 0,
        message TEXT NOT NULL DEFAULT '',
        rolled_back INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        finished_at REAL NOT NULL DEFAULT 0,
        UNIQUE (deployment_id, seq)
    );
    CREATE TABLE release_jobs (
        id TEXT PRIMARY KEY,
        release_id TEXT NOT NULL REFERENCES releases(id) ON DELETE CASCADE,
        machine_id TEXT NOT NULL,
        batch INTEGER NOT NULL,
        status TEXT NOT NULL DEFAULT 'Created',
        message TEXT NOT NULL DEFAULT '',
        started_at REAL NOT NULL DEFAULT 0,
        healthy_since REAL NOT NULL DEFAULT 0,
        finished_at REAL NOT NULL DEFAULT 0,
        UNIQUE (release_id, machine_id)
    );
    CREATE TABLE deployment_targets (
        deployment_id TEXT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
        machine_id TEXT NOT NULL,
        release_id TEXT NOT NULL,
        PRIMARY KEY (deployment_id, machine_id)
    );
    CREATE INDEX deployment_targets_by_machine ON deployment_targets(machine_id);
    CREATE TABLE machine_stickers (
        machine_id TEXT NOT NULL,
        deployment TEXT NOT NULL,
        body TEXT NOT NULL,
        reported_at REAL NOT NULL,
        PRIMARY KEY (machine_id, deployment)
    );
    CREATE TABLE machine_drift (
        machine_id TEXT PRIMARY KEY,
        entries TEXT NOT NULL,
        checked_at REAL NOT NULL,
        reported_at REAL NOT NULL
    )
    """,
    # 5: a join token may be bound to one machine id (re-enrolment of that machine).
    """
    ALTER TABLE join_tokens ADD COLUMN machine_id TEXT NOT NULL DEFAULT ''
    """,
    # rate limits (hits, so limits survive a restart), the audit log, tokens exempt
    # from the general limit.
    """
    CREATE TABLE rate_limit_hits (
        class TEXT NOT NULL,
        key TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX rate_limit_hits_by_time ON rate_limit_hits(class, at);
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        kind TEXT NOT NULL,
        principal_kind TEXT NOT NULL DEFAULT '',
        principal TEXT NOT NULL DEFAULT '',
        tenant TEXT NOT NULL DEFAULT '',
        method TEXT NOT NULL DEFAULT '',
        route TEXT NOT NULL DEFAULT '',
        path TEXT NOT NULL DEFAULT '',
        target TEXT NOT NULL DEFAULT '{}',
        status INTEGER NOT NULL DEFAULT 0,
        client_ip TEXT NOT NULL DEFAULT '',
        event TEXT NOT NULL DEFAULT '',
        subject TEXT NOT NULL DEFAULT '',
        actor TEXT NOT NULL DEFAULT '',
        data TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX audit_log_by_time ON audit_log(at);
    CREATE INDEX audit_log_by_principal ON audit_log(principal);
    ALTER TABLE api_tokens ADD COLUMN unlimited INTEGER NOT NULL DEFAULT 0
    """,
)
