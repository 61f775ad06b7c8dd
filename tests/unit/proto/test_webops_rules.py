"""The WebOps rules both sides share (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from proto import webops as w


@pytest.mark.parametrize("name", ["a", "my-app", "A1", "x" * 64])
def test_good_names(name: str) -> None:
    assert w.name_problem(name) is None


@pytest.mark.parametrize("name", ["", "-a", "a-", "my_app", "a.b", "../x", "x" * 65, "a/b", "ä"])
def test_bad_names_are_named(name: str) -> None:
    problem = w.name_problem(name)
    assert problem is not None and repr(name) in problem


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/u/r",
        "http://h/r.git",
        "ssh://git@h/r",
        "git://h/r",
        "file:///tmp/r",
        "git@github.com:u/r.git",
    ],
)
def test_repo_urls_of_every_kind(url: str) -> None:
    assert w.repo_url_problem(url) is None


@pytest.mark.parametrize("url", ["", "-uhttp://x", "/tmp/r", "ftp://h/r", "http://h/\nr"])
def test_bad_repo_urls(url: str) -> None:
    assert w.repo_url_problem(url) is not None


@pytest.mark.parametrize("branch", ["-x", "a b", "", "main\n", "ä"])
def test_bad_branches(branch: str) -> None:
    assert w.branch_problem(branch) is not None


def test_branches() -> None:
    assert w.branch_problem("main") is None
    assert w.branch_problem("release/1.2") is None


@pytest.mark.parametrize(
    ("files", "kind"),
    [
        (["Dockerfile", "index.html"], "docker"),
        (["manage.py", "requirements.txt"], "django"),
        (["requirements.txt", "wsgi.py"], "python"),
        (["app.py"], "python"),
        (["package.json", "server.js", "index.html"], "node"),
        (["index.html", "style.css"], "static"),
    ],
)
def test_detection(files: list[str], kind: str) -> None:
    assert w.detect_project_type(files)[0] == kind


def test_unknown_type_names_what_was_looked_for() -> None:
    kind, why = w.detect_project_type(["README.md"])
    assert kind is None
    for looked in ("Dockerfile", "manage.py", "requirements.txt", "package.json", "index.html"):
        assert looked in why


def test_env_example_parsing() -> None:
    text = "# comment\n\nexport A=1\nB=\nC='quoted'\nnot a line\n1BAD=x\n"
    assert w.parse_env_example(text) == {"A": "1", "B": "", "C": "quoted"}


def test_env_problems() -> None:
    assert w.env_problem({"A": "1"}) is None
    assert w.env_problem({"1A": "x"}) is not None
    assert w.env_problem({"A": "x\ny"}) is not None
    assert w.env_problem({f"K{i}": "" for i in range(w.MAX_ENV_VARS + 1)}) is not None


def test_project_checks() -> None:
    results = w.project_checks("python", ["requirements.txt"])
    assert (False, "error", "WSGI entry point missing (wsgi.py or app.py)") in results
    assert all(ok for ok, _, _ in w.project_checks("static", ["index.html", ".env.example"]))


def test_what_a_node_build_reads_from_package_json(tmp_path: Path) -> None:
    pkg = tmp_path / "package.json"
    pkg.write_text('{"scripts": {"start": "node server.js", "build": "tsc"}, "dependencies": {}}')
    got = w.node_package(pkg)
    assert got == w.NodePackage(dependencies=False, build_script=True, start_script=True, main="")
    pkg.write_text('{"main": "../../etc/passwd", "devDependencies": {"x": "1"}}')
    got = w.node_package(pkg)
    assert isinstance(got, w.NodePackage) and got.dependencies and not got.start_script
    assert got.main_file(tmp_path) is None  # outside the checkout: never run
    (tmp_path / "index.js").write_text("")
    assert got.main_file(tmp_path) == (tmp_path / "index.js").resolve()
    pkg.write_text("[1, 2]")
    assert w.node_package(pkg) == "package.json is not a JSON object"
    pkg.write_text("{nope")
    assert str(w.node_package(pkg)).startswith("package.json is not valid JSON")
    pkg.write_bytes(b" " * (w.MAX_PACKAGE_JSON + 1))
    assert w.node_package(pkg) == "package.json is larger than 1 MiB"
    assert "cannot read" in str(w.node_package(tmp_path / "missing.json"))
