"""The agent's WebOps helpers that need no daemon: nginx text, WSGI entry points,
cgroup usage."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.webops import BuildFailed, cgroup_usage, nginx_conf, site_conf, wsgi_entry


def test_usage_from_cgroup_v2_files(tmp_path: Path) -> None:
    d = tmp_path / "user.slice" / "x.service"
    d.mkdir(parents=True)
    (d / "cgroup.procs").write_text("")
    (d / "memory.current").write_text("4096\n")
    (d / "cpu.stat").write_text("usage_usec 7\nuser_usec 5\n")
    assert cgroup_usage("/user.slice/x.service", (tmp_path,)) == (4096, 7000)


def test_usage_from_member_processes(tmp_path: Path) -> None:
    d = tmp_path / "x.service"
    d.mkdir()
    (d / "cgroup.procs").write_text(f"{os.getpid()}\n")
    memory, cpu = cgroup_usage("/x.service", (tmp_path,))
    assert memory > 1 << 20 and cpu > 0  # this test process itself


def test_usage_refuses_traversal(tmp_path: Path) -> None:
    assert cgroup_usage("/../etc", (tmp_path,)) == (0, 0)
    assert cgroup_usage("/missing", (tmp_path,)) == (0, 0)


def test_nginx_texts(tmp_path: Path) -> None:
    conf = nginx_conf(tmp_path, "127.0.0.1:8080")
    assert f"pid {tmp_path}/nginx/nginx.pid;" in conf
    assert "listen 127.0.0.1:8080 default_server; return 404;" in conf
    site = site_conf("127.0.0.1:8080", "a.example", 8001)
    assert "server_name a.example;" in site and "proxy_pass http://127.0.0.1:8001;" in site


def test_wsgi_entry_points(tmp_path: Path) -> None:
    (tmp_path / "wsgi.py").write_text("application = object()\n")
    assert wsgi_entry(tmp_path, "python") == "wsgi:application"
    (tmp_path / "wsgi.py").unlink()
    (tmp_path / "app.py").write_text("from flask import Flask\napp = Flask(__name__)\n")
    assert wsgi_entry(tmp_path, "python") == "app:app"
    with pytest.raises(BuildFailed, match="django project without"):
        wsgi_entry(tmp_path, "django")
    (tmp_path / "site1").mkdir()
    (tmp_path / "site1" / "wsgi.py").write_text("application = 1\n")
    assert wsgi_entry(tmp_path, "django") == "site1.wsgi:application"
