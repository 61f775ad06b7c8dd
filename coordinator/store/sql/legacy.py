"""The schema's numbered history from before Alembic (SQLite only, PRAGMA
user_version 1..12): kept verbatim so a coordinator's file of that era is carried to
the last of them and then stamped as Alembic's baseline (`migrate`). Never edited,
never extended: every change since is an Alembic revision.
"""

from __future__ import annotations

LEGACY_MIGRATIONS: tuple[str, ...] = (
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
    # 6: tenants (#17). Every domain object belongs to one; what existed lives in
    # 'default'. Names are unique per tenant, so the tables whose names were unique
    # (or keys) are rebuilt (foreign keys are off while migrations run, checked before
    # the commit); placements carry the unit's tenant. Machines belong to the tenant
    # of the join token they enrolled with; what they report is scoped through them.
    """
    ALTER TABLE machines ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
    CREATE INDEX machines_by_tenant ON machines(tenant, id);
    ALTER TABLE join_tokens ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
    CREATE INDEX join_tokens_by_tenant ON join_tokens(tenant, created_at);
    ALTER TABLE api_tokens ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
    CREATE INDEX api_tokens_by_tenant ON api_tokens(tenant, id);
    CREATE INDEX unit_states_by_machine ON unit_states(machine_id);
    CREATE TABLE units_t (
        tenant TEXT NOT NULL DEFAULT 'default',
        name TEXT NOT NULL,
        options TEXT NOT NULL,
        hash TEXT NOT NULL,
        desired_state TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        pinned INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (tenant, name)
    );
    INSERT INTO units_t (tenant, name, options, hash, desired_state, created_at, updated_at,
        pinned) SELECT 'default', name, options, hash, desired_state, created_at, updated_at,
        pinned FROM units;
    CREATE TABLE placements_t (
        tenant TEXT NOT NULL DEFAULT 'default',
        unit TEXT NOT NULL,
        machine_id TEXT NOT NULL,
        PRIMARY KEY (tenant, unit, machine_id),
        FOREIGN KEY (tenant, unit) REFERENCES units(tenant, name) ON DELETE CASCADE
    );
    INSERT INTO placements_t (tenant, unit, machine_id)
        SELECT 'default', unit, machine_id FROM placements;
    DROP TABLE placements;
    DROP TABLE units;
    ALTER TABLE units_t RENAME TO units;
    ALTER TABLE placements_t RENAME TO placements;
    CREATE INDEX placements_by_machine ON placements(machine_id, tenant, unit);
    CREATE TABLE machine_groups_t (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL DEFAULT 'default',
        name TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        selector TEXT NOT NULL DEFAULT '{}',
        machines TEXT NOT NULL DEFAULT '[]',
        builtin INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        UNIQUE (tenant, name)
    );
    INSERT INTO machine_groups_t (id, tenant, name, description, selector, machines, builtin,
        created_at, updated_at) SELECT id, 'default', name, description, selector, machines,
        builtin, created_at, updated_at FROM machine_groups;
    DROP TABLE machine_groups;
    ALTER TABLE machine_groups_t RENAME TO machine_groups;
    CREATE TABLE applications_t (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL DEFAULT 'default',
        name TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        source_type TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        UNIQUE (tenant, name)
    );
    INSERT INTO applications_t (id, tenant, name, description, source_type, created_at,
        updated_at) SELECT id, 'default', name, description, source_type, created_at,
        updated_at FROM applications;
    DROP TABLE applications;
    ALTER TABLE applications_t RENAME TO applications;
    CREATE INDEX applications_by_tenant ON applications(tenant, created_at, id);
    CREATE TABLE deployments_t (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL DEFAULT 'default',
        name TEXT NOT NULL,
        application_id TEXT NOT NULL REFERENCES applications(id),
        group_id TEXT NOT NULL REFERENCES machine_groups(id),
        application_version TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL DEFAULT 'Created',
        current_release TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        UNIQUE (tenant, name)
    );
    INSERT INTO deployments_t (id, tenant, name, application_id, group_id,
        application_version, status, current_release, created_at, updated_at)
        SELECT id, 'default', name, application_id, group_id, application_version, status,
        current_release, created_at, updated_at FROM deployments;
    DROP TABLE deployments;
    ALTER TABLE deployments_t RENAME TO deployments;
    CREATE INDEX deployments_by_tenant ON deployments(tenant, created_at, id)
    """,
    # 7 (#19): batch tasks: definitions, runs, their events and logs.
    """
    CREATE TABLE task_definitions (
        definition_id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL DEFAULT 'default',
        alias TEXT NOT NULL,
        image TEXT NOT NULL,
        group_name TEXT NOT NULL DEFAULT '',
        command TEXT NOT NULL DEFAULT '',
        memory INTEGER NOT NULL DEFAULT 0,
        cpu INTEGER NOT NULL DEFAULT 0,
        env TEXT NOT NULL DEFAULT '[]',
        tags TEXT NOT NULL DEFAULT '[]',
        retries INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL DEFAULT 0,
        deleted INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX task_definitions_by_alias ON task_definitions(tenant, alias);
    CREATE TABLE task_runs (
        run_id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL DEFAULT 'default',
        definition_id TEXT NOT NULL,
        alias TEXT NOT NULL DEFAULT '',
        image TEXT NOT NULL DEFAULT '',
        group_name TEXT NOT NULL DEFAULT '',
        cluster TEXT NOT NULL DEFAULT 'default',
        status TEXT NOT NULL,
        seq INTEGER NOT NULL,
        command TEXT NOT NULL DEFAULT '',
        memory INTEGER NOT NULL DEFAULT 0,
        cpu INTEGER NOT NULL DEFAULT 0,
        env TEXT NOT NULL DEFAULT '[]',
        run_tags TEXT NOT NULL DEFAULT '{}',
        engine TEXT NOT NULL DEFAULT '',
        description TEXT NOT NULL DEFAULT '',
        machine_id TEXT NOT NULL DEFAULT '',
        machine_host TEXT NOT NULL DEFAULT '',
        exit_code INTEGER,
        exit_reason TEXT NOT NULL DEFAULT '',
        queued_at REAL NOT NULL DEFAULT 0,
        started_at REAL,
        finished_at REAL,
        acked INTEGER NOT NULL DEFAULT 0,
        stop_requested INTEGER NOT NULL DEFAULT 0,
        retries INTEGER NOT NULL DEFAULT 0,
        log_size INTEGER NOT NULL DEFAULT 0,
        log_total INTEGER NOT NULL DEFAULT -1
    );
    CREATE INDEX task_runs_by_definition ON task_runs(tenant, definition_id);
    CREATE INDEX task_runs_by_status ON task_runs(status);
    CREATE TABLE task_run_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL,
        at REAL NOT NULL,
        reason TEXT NOT NULL,
        message TEXT NOT NULL DEFAULT '',
        source TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX task_run_events_by_run ON task_run_events(run_id);
    CREATE TABLE task_logs (
        run_id TEXT NOT NULL,
        offset INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (run_id, offset)
    ) WITHOUT ROWID
    """,
    # 8 (#17): tenants (`default` always), users (argon2id hashes) in one or more
    # tenants, and the tokens users get by logging in (secrets stored as SHA-256).
    """
    CREATE TABLE IF NOT EXISTS tenants (
        name TEXT PRIMARY KEY,
        created_at REAL NOT NULL DEFAULT 0
    );
    INSERT OR IGNORE INTO tenants (name, created_at) VALUES ('default', 0);
    CREATE TABLE users (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        username TEXT NOT NULL UNIQUE,
        email TEXT NOT NULL DEFAULT '',
        password_hash TEXT NOT NULL,
        is_staff INTEGER NOT NULL DEFAULT 0,
        disabled INTEGER NOT NULL DEFAULT 0,
        permissions TEXT NOT NULL DEFAULT '[]',
        created_at REAL NOT NULL
    );
    CREATE TABLE user_tenants (
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        tenant TEXT NOT NULL REFERENCES tenants(name),
        position INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (user_id, tenant)
    );
    CREATE TABLE user_tokens (
        id TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        name TEXT NOT NULL DEFAULT '',
        tenant TEXT NOT NULL,
        permissions TEXT NOT NULL DEFAULT '[]',
        secret_hash TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        revoked INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX user_tokens_by_user ON user_tokens(user_id)
    """,
    # 9 (#17): rate limits (hits, so limits survive a restart), the audit log, tokens exempt
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
    # 10 (#18): environments, their freeze windows, target groups, targets, promotions.
    # One row per object; the body is the record's JSON (coordinator.envs.model), the
    # columns are what queries filter on.
    """
    CREATE TABLE environments (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        name TEXT NOT NULL,
        order_index INTEGER NOT NULL DEFAULT 0,
        body TEXT NOT NULL,
        UNIQUE (tenant, name)
    );
    CREATE TABLE freeze_windows (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        environment_id TEXT NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
        start_at REAL NOT NULL,
        end_at REAL NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX freeze_windows_by_env ON freeze_windows(environment_id, end_at);
    CREATE TABLE target_groups (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        environment_id TEXT NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        body TEXT NOT NULL,
        UNIQUE (environment_id, name)
    );
    CREATE TABLE env_targets (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        environment_id TEXT NOT NULL REFERENCES environments(id),
        name TEXT NOT NULL,
        machine_id TEXT NOT NULL DEFAULT '',
        body TEXT NOT NULL,
        UNIQUE (tenant, name)
    );
    CREATE INDEX env_targets_by_env ON env_targets(environment_id);
    CREATE TABLE promotions (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        environment_id TEXT NOT NULL,
        status TEXT NOT NULL,
        release_id TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX promotions_by_env ON promotions(environment_id, created_at);
    CREATE INDEX promotions_by_release ON promotions(release_id)
    """,
    # 11 (#20): WebOps deployments: a deployment per (tenant, name), its build/run state
    # and environment (this 0600 database is where env vars live), and its log items
    # (append-only; ids give the order).
    """
    CREATE TABLE webops_deployments (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant TEXT NOT NULL,
        name TEXT NOT NULL,
        repo_url TEXT NOT NULL,
        branch TEXT NOT NULL,
        project_type TEXT NOT NULL DEFAULT '',
        domain TEXT NOT NULL DEFAULT '',
        port INTEGER NOT NULL DEFAULT 0,
        machine_id TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL,
        env TEXT NOT NULL DEFAULT '{}',
        build_seq INTEGER NOT NULL DEFAULT 0,
        live_build TEXT NOT NULL DEFAULT '',
        building TEXT NOT NULL DEFAULT '',
        unit TEXT NOT NULL DEFAULT '',
        files TEXT NOT NULL DEFAULT '[]',
        env_example TEXT NOT NULL DEFAULT '{}',
        created_by TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        UNIQUE (tenant, name)
    );
    CREATE INDEX webops_by_machine ON webops_deployments(machine_id);
    CREATE TABLE webops_logs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        deployment_id INTEGER NOT NULL REFERENCES webops_deployments(id) ON DELETE CASCADE,
        level TEXT NOT NULL,
        message TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX webops_logs_by_deployment ON webops_logs(deployment_id, id)
    """,
    # 12 (#21): WebOps webhooks (the secret in the clear: HMAC signs with it; this
    # database is 0600) and their delivery log (one row per attempt); PostgreSQL
    # databases (the role's password in the clear: users with `databases` are shown it)
    # and their pg_dump backups; machines' load as a per-minute series (monitoring).
    """
    CREATE TABLE webhooks (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant TEXT NOT NULL,
        url TEXT NOT NULL,
        events TEXT NOT NULL DEFAULT '[]',
        secret TEXT NOT NULL,
        active INTEGER NOT NULL DEFAULT 1,
        created_by TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL
    );
    CREATE INDEX webhooks_by_tenant ON webhooks(tenant);
    CREATE TABLE webhook_deliveries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        webhook_id INTEGER NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
        delivery TEXT NOT NULL,
        event TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        status_code INTEGER NOT NULL DEFAULT 0,
        ok INTEGER NOT NULL DEFAULT 0,
        error TEXT NOT NULL DEFAULT '',
        duration_ms INTEGER NOT NULL DEFAULT 0,
        at REAL NOT NULL
    );
    CREATE INDEX webhook_deliveries_by_hook ON webhook_deliveries(webhook_id, id);
    CREATE TABLE webops_databases (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant TEXT NOT NULL,
        name TEXT NOT NULL,
        pg_name TEXT NOT NULL UNIQUE,
        password TEXT NOT NULL,
        host TEXT NOT NULL,
        port INTEGER NOT NULL,
        deployment_id INTEGER NOT NULL DEFAULT 0,
        created_by TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        UNIQUE (tenant, name)
    );
    CREATE TABLE webops_db_backups (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        database_id INTEGER NOT NULL,
        path TEXT NOT NULL,
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX webops_db_backups_by_db ON webops_db_backups(database_id, id);
    CREATE TABLE machine_samples (
        machine_id TEXT NOT NULL,
        minute INTEGER NOT NULL,
        tenant TEXT NOT NULL,
        cpu_percent REAL NOT NULL,
        load1 REAL NOT NULL,
        memory_total INTEGER NOT NULL,
        memory_used INTEGER NOT NULL,
        disk_total INTEGER NOT NULL,
        disk_used INTEGER NOT NULL,
        uptime_s REAL NOT NULL,
        PRIMARY KEY (machine_id, minute)
    ) WITHOUT ROWID;
    CREATE INDEX machine_samples_by_tenant ON machine_samples(tenant, minute)
    """,
)
