"""WebOps rules both sides share (pure): deployment names, project types and how a
repository's file listing tells them apart, `.env.example` parsing, env keys."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

NAME_RE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9-]{0,62}[a-zA-Z0-9])?$")
"""WebOps' deployment names: no underscores, no dots, so a name is safe as a path
component, a unit name and an nginx file name."""
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
NAME_PATTERN = NAME_RE.pattern
ENV_KEY_PATTERN = ENV_KEY_RE.pattern
ENV_VALUE_PATTERN = r"^[^\n\r\x00]*$"
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
DOMAIN_PATTERN = rf"^({_LABEL})(\.{_LABEL})*$"
OPTIONAL_DOMAIN_PATTERN = rf"^$|^({_LABEL})(\.{_LABEL})*$"
DOMAIN_RE = re.compile(DOMAIN_PATTERN)
BRANCH_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._/-]{0,199}$"
"""Never an option (no leading '-'); what else git refuses fails the build."""
BRANCH_RE = re.compile(BRANCH_PATTERN)
REPO_URL_PATTERN = r"^((https?|ssh|git|file)://|[A-Za-z0-9_.-]+@[A-Za-z0-9_.-]+:)[^\x00-\x1f\x7f]*$"
REPO_URL_RE = re.compile(REPO_URL_PATTERN)
PROJECT_TYPES = ("static", "python", "django", "docker", "node")
MAX_ENV_VARS = 200
MAX_ENV_VALUE = 8192


UNIT_PREFIX = "webops-"


def unit_name(name: str, project_type: str) -> str:
    """The Moorage unit that runs a deployment."""
    return f"{UNIT_PREFIX}{name}.{'container' if project_type == 'docker' else 'service'}"


def name_problem(name: str) -> str | None:
    if not NAME_RE.fullmatch(name):
        return (
            f"invalid deployment name {name!r}: 1-64 letters, digits and '-',"
            " starting and ending with a letter or digit"
        )
    return None


def domain_problem(domain: str) -> str | None:
    if domain and (len(domain) > 253 or not DOMAIN_RE.fullmatch(domain)):
        return f"invalid domain {domain!r}: expected a host name such as app.example.com"
    return None


def branch_problem(branch: str) -> str | None:
    if not BRANCH_RE.fullmatch(branch):
        return f"invalid branch {branch!r}"
    return None


def repo_url_problem(url: str) -> str | None:
    """Any git URL the machine can reach: https/http, ssh, git, file, scp-like
    `user@host:path`. Never an option (`-...`), never control characters."""
    if len(url) <= 2048 and REPO_URL_RE.fullmatch(url):
        return None
    return f"invalid repo_url {url!r}: expected an https, http, ssh, git or file URL"


def env_problem(env: dict[str, str]) -> str | None:
    if len(env) > MAX_ENV_VARS:
        return f"too many env vars ({len(env)} > {MAX_ENV_VARS})"
    for key, value in env.items():
        if not ENV_KEY_RE.fullmatch(key):
            return f"invalid env var name {key!r}"
        if len(value) > MAX_ENV_VALUE or "\n" in value or "\r" in value or "\0" in value:
            return f"invalid value of env var {key!r}: one line of at most {MAX_ENV_VALUE} chars"
    return None


def detect_project_type(files: Iterable[str]) -> tuple[str | None, str]:
    """The project type of a repository from its top-level file names, with the reason
    (or, when none fits, what was looked for). Order: Dockerfile, Django's manage.py,
    Python (requirements.txt), Node.js (package.json), static (index.html)."""
    names = set(files)
    if "Dockerfile" in names:
        return "docker", "found Dockerfile"
    if "manage.py" in names:
        return "django", "found manage.py"
    if "requirements.txt" in names or "wsgi.py" in names or "app.py" in names:
        return "python", "found requirements.txt"
    if "package.json" in names:
        return "node", "found package.json"
    if "index.html" in names:
        return "static", "found index.html"
    return None, (
        "unknown project type: looked for Dockerfile (docker), manage.py (django),"
        " requirements.txt/wsgi.py/app.py (python), package.json (node) and index.html"
        " (static)"
    )


MAX_PACKAGE_JSON = 1 << 20


class NodePackage(NamedTuple):
    """What the agent needs from a package.json."""

    dependencies: bool
    build_script: bool
    start_script: bool
    main: str

    def main_file(self, src: Path) -> Path | None:
        """The file `node` runs without a start script (inside `src`, or None)."""
        for candidate in (self.main, "server.js", "index.js"):
            if not candidate:
                continue
            path = (src / candidate).resolve()
            if path.is_file() and path.is_relative_to(src.resolve()):
                return path
        return None


def node_package(path: Path) -> NodePackage | str:
    """The package.json's fields the build uses, or why it cannot be used."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_PACKAGE_JSON + 1)
    except OSError as exc:
        return f"cannot read package.json: {exc.strerror}"
    if len(raw) > MAX_PACKAGE_JSON:
        return "package.json is larger than 1 MiB"
    try:
        data = json.loads(raw)
    except ValueError as exc:
        return f"package.json is not valid JSON: {exc}"
    if not isinstance(data, dict):
        return "package.json is not a JSON object"
    raw_scripts, raw_main = data.get("scripts"), data.get("main")
    scripts: dict[str, object] = raw_scripts if isinstance(raw_scripts, dict) else {}
    main = raw_main if isinstance(raw_main, str) else ""
    return NodePackage(
        dependencies=bool(data.get("dependencies") or data.get("devDependencies")),
        build_script=isinstance(scripts.get("build"), str),
        start_script=isinstance(scripts.get("start"), str),
        main=main,
    )


def project_checks(project_type: str, files: Iterable[str]) -> list[tuple[bool, str, str]]:
    """What a repository of `project_type` needs: (passed, level, message) each."""
    names = set(files)
    need: dict[str, list[str]] = {
        "static": ["index.html"],
        "python": ["requirements.txt"],
        "django": ["manage.py", "requirements.txt"],
        "docker": ["Dockerfile"],
        "node": ["package.json"],
    }
    out: list[tuple[bool, str, str]] = []
    for f in need.get(project_type, []):
        ok = f in names
        out.append((ok, "info" if ok else "error", f"{f} {'present' if ok else 'missing'}"))
    if project_type == "python":
        ok = "wsgi.py" in names or "app.py" in names
        out.append(
            (
                ok,
                "info" if ok else "error",
                "WSGI entry point " + ("found" if ok else "missing (wsgi.py or app.py)"),
            )
        )
    if ".env.example" in names:
        out.append((True, "info", ".env.example present"))
    else:
        out.append((True, "warning", "no .env.example: required variables unknown"))
    return out


def parse_env_example(text: str) -> dict[str, str]:
    """`KEY=default` lines of a `.env.example` (comments, blanks and `export ` allowed);
    an empty default means the variable is required."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[7:].strip()
        key, _, value = line.partition("=")
        key = key.strip()
        if ENV_KEY_RE.fullmatch(key):
            out[key] = value.strip().strip("'\"")
    return out


def env_file_text(env: dict[str, str]) -> str:
    """systemd/docker EnvironmentFile text (values single-line by `env_problem`)."""
    return "".join(f"{k}={v}\n" for k, v in sorted(env.items()))
