"""The agent's WebOps helpers that need no daemon: nginx text, WSGI entry points,
cgroup usage; a build sent again (a static site from a local git repository)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.webops import BuildFailed, WebOps, cgroup_usage, nginx_conf, site_conf, wsgi_entry
from proto import messages as m


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


# --- a build sent again (#25) ----------------------------------------------------------


class Sent:
    def __init__(self) -> None:
        self.messages: list[m.Message] = []

    async def __call__(self, message: m.Message) -> None:
        self.messages.append(message)

    def built(self) -> list[m.WebBuilt]:
        return [x for x in self.messages if isinstance(x, m.WebBuilt)]

    def clones(self) -> int:
        return sum(
            1 for x in self.messages if isinstance(x, m.WebLog) and x.message.startswith("cloning ")
        )


async def _no_restart(unit: str) -> None:
    del unit


def site_repo(tmp_path: Path) -> str:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "index.html").write_text("<h1>v1</h1>\n")
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "v1"]):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
            cwd=repo,
            check=True,
            capture_output=True,
        )
    return f"file://{repo}"


async def settle(ops: WebOps) -> None:
    while ops._tasks:
        await asyncio.gather(*ops._tasks)


async def test_a_good_build_sent_again_is_not_made_again_over_itself(tmp_path: Path) -> None:
    """The coordinator sends a build again when the machine connects while it has no
    outcome of it; the first outcome may have arrived meanwhile and the unit run the
    build's directory already. Rebuilding it in place took the site away for the
    length of a build (the fault suite's webops-coordinator-kill saw 5 s of 500s)."""
    sent = Sent()
    ops = WebOps(tmp_path / "state", sent, _no_restart)
    req = m.WebBuild("site", "b1", site_repo(tmp_path), project_type="static", port=8123)
    await ops.on_message(req)
    await settle(ops)
    [first] = sent.built()
    assert first.ok, first.error
    live = Path(first.workdir)
    (live / "served-now").write_text("the unit runs this directory\n")

    await ops.on_message(req)  # sent again (the coordinator restarted meanwhile)
    await settle(ops)
    assert sent.built() == [first, first]
    assert sent.clones() == 1
    assert (live / "served-now").is_file()

    # The same build id asked with something else (another port: another request, as
    # from a deployment made again under the same name): built afresh.
    other = m.WebBuild("site", "b1", req.repo_url, project_type="static", port=8124)
    await ops.on_message(other)
    await settle(ops)
    assert sent.clones() == 2 and sent.built()[-1].ok
    assert not (live / "served-now").exists()


async def test_a_build_sent_again_while_it_runs_is_made_once(tmp_path: Path) -> None:
    sent = Sent()
    ops = WebOps(tmp_path / "state", sent, _no_restart)
    req = m.WebBuild("site", "b1", site_repo(tmp_path), project_type="static", port=8123)
    await ops.on_message(req)
    await ops.on_message(req)  # while the first is cloning: its outcome answers both
    await settle(ops)
    assert sent.clones() == 1
    [built] = sent.built()
    assert built.ok, built.error


async def test_a_failed_build_sent_again_is_tried_again(tmp_path: Path) -> None:
    sent = Sent()
    ops = WebOps(tmp_path / "state", sent, _no_restart)
    req = m.WebBuild("site", "b1", site_repo(tmp_path), branch="nope", port=8123)
    for _ in range(2):
        await ops.on_message(req)
        await settle(ops)
    assert [b.ok for b in sent.built()] == [False, False]
    assert sent.clones() == 2


async def test_a_good_build_sent_again_after_its_branch_moved_is_made_again(
    tmp_path: Path,
) -> None:
    """The same build id and request, but the branch is at another commit than the one
    built (a deployment made again under its name while a remove was lost, or a
    coordinator restored from an older backup): not the same build, so made afresh."""
    sent = Sent()
    ops = WebOps(tmp_path / "state", sent, _no_restart)
    url = site_repo(tmp_path)
    req = m.WebBuild("site", "b1", url, project_type="static", port=8123)
    await ops.on_message(req)
    await settle(ops)
    (tmp_path / "repo" / "index.html").write_text("<h1>v2</h1>\n")
    await asyncio.to_thread(
        subprocess.run,
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-am", "v2"],
        cwd=tmp_path / "repo",
        check=True,
        capture_output=True,
    )
    await ops.on_message(req)
    await settle(ops)
    assert sent.clones() == 2
    [_, again] = sent.built()
    assert again.ok, again.error
    assert "v2" in (Path(again.workdir) / "index.html").read_text()
    logs = [x.message for x in sent.messages if isinstance(x, m.WebLog)]
    assert any("is at" in line and "made again" in line for line in logs), logs
