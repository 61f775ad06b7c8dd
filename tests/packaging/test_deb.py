"""The Debian packages, for real: built, linted, installed, enrolled, upgraded, purged.

* ``packaging/build.sh`` builds both packages three times from one snapshot of the
  source tree: version A twice (the two must be byte-identical) and version B, for
  the upgrade. The builds run once per session.
* ``apt-get install ./…deb`` installs them system-wide. dpkg runs the real maintainer
  scripts; they call ``deb-systemd-invoke`` and ``systemctl``, for which stand-ins come
  first on PATH: they log every call and, once the services run, replay
  deb-systemd-invoke's action on the test's systemd manager. apt-get runs in a mount
  namespace where ``/run/systemd/system`` exists, so the scripts take their "systemd is
  running" branch; no real system service is ever started or stopped.
* The installed units run, with every hardening option except ``PrivateTmp=`` (the
  private manager keeps its files in /tmp), under a private ``systemd --user`` manager
  (tests/harness/systemd.py; PID 1 here is not systemd). Coordinator and agent use
  their default state directories; drop-ins point them at test configs (loopback
  ports, the private manager) and make those directories writable.
* The teardown always purges both packages, and removes the ``moorage`` system user
  if this test created it.

Needs root, dpkg, apt-get, dpkg-dev and python3-venv; lintian for the lint test.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pwd
import re
import shlex
import shutil
import stat
import subprocess
import tarfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.harness.systemd import UserSystemd, systemd_available
from tests.procs import free_port, wait_for

# Three package builds run in the first test's setup: more than the default timeout.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
PACKAGES = ("moorage-agent", "moorage-coordinator")
COMMANDS = {
    "moorage-agent": ["moorage-agent"],
    "moorage-coordinator": ["moorage-coordinator", "moorctl"],
}
UNIT_DIR = Path("/lib/systemd/system")
AGENT_STATE = Path("/var/lib/moorage/agent")
COORDINATOR_STATE = Path("/var/lib/moorage/coordinator")
PKI = COORDINATOR_STATE / "pki"
MACHINE_ID = "test-pkg"
WORKLOAD = "moorage-pkg-test.service"
JOURNAL_MARK = "hello-from-the-packaging-test"
CONFFILE_EDIT = "# edited by an operator (the packaging test)\n"
CAP_SYS_ADMIN = 1 << 21
# systemd-analyze security exposure (0 safest .. 10); the units score about 1.1 and 1.9.
MAX_EXPOSURE = {"moorage-coordinator": 1.5, "moorage-agent": 2.5}
# What the source snapshot holds: what build.sh packs, and build.sh itself.
SNAPSHOT = (
    "pyproject.toml",
    "README.md",
    "proto",
    "agent",
    "coordinator",
    "moorctl",
    "packaging",
    "docs/operations.md",
)
LOCK_FILE = "/run/lock/moorage-packaging-test.lock"
APT_ENV = {
    "DEBIAN_FRONTEND": "noninteractive",
    "NEEDRESTART_SUSPEND": "1",  # needrestart's apt hook would inspect the machine's services
}


def run(
    args: list[str], *, env: dict[str, str] | None = None, timeout: float = 300, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{shlex.join(args)} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def python_version() -> str:
    return Path(os.path.realpath("/usr/bin/python3")).name.removeprefix("python")


def cannot_build() -> str | None:
    for tool in ("dpkg", "dpkg-deb", "dpkg-shlibdeps", "strip"):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install dpkg-dev)"
    if not Path("/usr/bin/python3").exists():
        return "Debian's /usr/bin/python3 is missing (apt-get install python3)"
    if run(["/usr/bin/python3", "-c", "import ensurepip"], check=False).returncode != 0:
        return "Debian's python3 has no venv/ensurepip (apt-get install python3-venv)"
    return None


def package_status(name: str) -> str:
    proc = run(["dpkg-query", "-W", "-f", "${Status}", name], check=False)
    status = proc.stdout.strip() if proc.returncode == 0 else ""
    return "not-installed" if status in ("", "unknown ok not-installed") else status


def cannot_install() -> str | None:
    if os.geteuid() != 0:
        return "needs root: installs .deb packages system-wide"
    for tool in ("apt-get", "dpkg-query", "unshare", "mount", "systemd-analyze"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    for name in PACKAGES:
        status = package_status(name)
        if status != "not-installed":
            return f"{name} is already on this machine ({status}); refusing to replace it"
    for path in ("/var/lib/moorage", "/etc/moorage", "/usr/lib/moorage"):
        if Path(path).exists():
            return f"{path} exists; refusing to touch a machine that has Moorage state"
    return systemd_available()


# --------------------------------------------------------------------------- building


@dataclass(frozen=True)
class Build:
    version: str
    debs: dict[str, Path]


@dataclass(frozen=True)
class Builds:
    a: Build
    a_again: Build
    b: Build
    source_date_epoch: int
    snapshot: Path
    seconds: float


def _snapshot(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    dest.mkdir()
    for name in SNAPSHOT:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore, symlinks=True)
        else:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


@pytest.fixture(scope="session")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    reason = cannot_build()
    if reason is not None:
        pytest.skip(reason)
    began = time.monotonic()
    out = tmp_path_factory.mktemp("debs")
    # One snapshot for all builds, so that edits made meanwhile cannot make A and A' differ.
    snapshot = out / "src"
    _snapshot(snapshot)
    git = run(["git", "-C", str(ROOT), "log", "-1", "--format=%ct"], check=False)
    epoch = int(git.stdout.strip()) if git.returncode == 0 and git.stdout.strip() else 1700000000
    env = {
        **os.environ,
        "SOURCE_DATE_EPOCH": str(epoch),
        "MOORAGE_DEB_XZ_LEVEL": "1",  # several times faster than 6; same content
    }
    build_sh = str(snapshot / "packaging" / "build.sh")
    wheelhouse = ["--wheelhouse", str(ROOT / "build" / "wheelhouse")]
    run([build_sh, *wheelhouse, "--fetch-only"], env=env, timeout=900)
    revisions = {"a": "1", "a_again": "1", "b": "2"}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, revision in revisions.items():
            with (out / f"{name}.log").open("wb") as log:
                procs[name] = subprocess.Popen(
                    [build_sh, *wheelhouse, "--offline", "--dist", str(out / name)],
                    env={**env, "MOORAGE_DEB_REVISION": revision},
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        for name, proc in procs.items():
            if proc.wait(timeout=900) != 0:
                log_text = (out / f"{name}.log").read_text(errors="replace")
                pytest.fail(f"build {name} failed ({proc.returncode}):\n{log_text[-6000:]}")
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    arch = run(["dpkg", "--print-architecture"]).stdout.strip()

    def build(name: str) -> Build:
        version = f"{UPSTREAM}-{revisions[name]}"
        debs = {pkg: out / name / f"{pkg}_{version}_{arch}.deb" for pkg in PACKAGES}
        for deb in debs.values():
            assert deb.is_file(), f"{deb} was not built; dist has {sorted(deb.parent.iterdir())}"
        return Build(version, debs)

    seconds = time.monotonic() - began
    print(f"\nbuilt 3 x {len(PACKAGES)} packages in {seconds:.0f} s")
    return Builds(build("a"), build("a_again"), build("b"), epoch, snapshot, seconds)


def deb_field(deb: Path, name: str) -> str:
    return run(["dpkg-deb", "-f", str(deb), name]).stdout.strip()


def test_packages_are_reproducible_versioned_and_clean(builds: Builds) -> None:
    arch = run(["dpkg", "--print-architecture"]).stdout.strip()
    assert builds.a.version == f"{UPSTREAM}-1"
    run(["dpkg", "--compare-versions", builds.b.version, "gt", builds.a.version])
    leaks = [b"/tmp/moorage-deb.", str(builds.snapshot).encode(), str(ROOT).encode()]
    for pkg in PACKAGES:
        deb = builds.a.debs[pkg]
        assert sha256(deb) == sha256(builds.a_again.debs[pkg]), (
            f"{pkg}: two builds of one source tree and SOURCE_DATE_EPOCH differ"
        )
        assert deb_field(deb, "Package") == pkg
        assert deb_field(deb, "Version") == builds.a.version
        assert deb_field(builds.b.debs[pkg], "Version") == builds.b.version
        assert deb_field(deb, "Architecture") == arch
        depends = deb_field(deb, "Depends")
        assert f"python{python_version()}" in depends, depends
        assert "libc6" in depends, depends
        conffiles = run(["dpkg-deb", "-I", str(deb), "conffiles"]).stdout.split()
        assert conffiles == [f"/etc/moorage/{pkg.removeprefix('moorage-')}.toml"]

        short = pkg.removeprefix("moorage-")
        venv = f"./usr/lib/moorage/{short}"
        members: dict[str, tarfile.TarInfo] = {}
        leaked: list[str] = []
        fsys = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
        assert fsys.stdout is not None
        with tarfile.open(fileobj=fsys.stdout, mode="r|") as tar:
            for member in tar:
                members[member.name] = member
                if member.isfile():
                    handle = tar.extractfile(member)
                    assert handle is not None
                    data = handle.read()
                    leaked += [member.name for leak in leaks if leak in data]
        assert fsys.wait() == 0
        assert not leaked, f"build paths in {pkg}: {leaked[:10]}"
        wrong_owner = [m.name for m in members.values() if (m.uid, m.gid) != (0, 0)]
        assert not wrong_owner, wrong_owner[:10]
        wrong_time = [m.name for m in members.values() if m.mtime != builds.source_date_epoch]
        assert not wrong_time, wrong_time[:10]
        bytecode = [n for n in members if "__pycache__" in n or n.endswith(".pyc")]
        assert not bytecode, f"byte-code is compiled by postinst, never shipped: {bytecode[:5]}"
        writable = [m.name for m in members.values() if m.isfile() and m.mode & 0o022]
        assert not writable, writable[:10]

        for cmd in COMMANDS[pkg]:
            link = members[f"./usr/bin/{cmd}"]
            assert link.issym() and link.linkname == f"../lib/moorage/{short}/bin/{cmd}"
            assert members[f"{venv}/bin/{cmd}"].mode & stat.S_IXUSR
        if pkg == "moorage-agent":
            assert "./usr/bin/moorctl" not in members, "moorctl ships with the coordinator"
            site = f"{venv}/lib/python{python_version()}/site-packages"
            shipped = {
                n[len(site) + 1 :].split("/")[0] for n in members if n.startswith(site + "/")
            }
            assert {"agent", "proto"} <= shipped
            unwanted = shipped & {
                "coordinator",
                "moorctl",
                "aiohttp",
                "click",
                "rich",
                "yaml",
                "uvloop",
            }
            assert not unwanted, f"the agent ships only proto + agent and their needs: {unwanted}"
        interpreter = members[f"{venv}/bin/python{python_version()}"]
        assert interpreter.issym()
        assert interpreter.linkname == f"../../../../bin/python{python_version()}"
        for path in (
            f"./lib/systemd/system/{pkg}.service",
            f"./etc/moorage/{short}.toml",
            f"./usr/share/doc/{pkg}/copyright",
            f"./usr/share/doc/{pkg}/changelog.Debian.gz",
            f"./usr/share/lintian/overrides/{pkg}",
            f"{venv}/pyvenv.cfg",
        ):
            assert path in members, f"{pkg} lacks {path}"
        if pkg == "moorage-coordinator":  # the operator's guide: several coordinators, upgrades
            assert f"./usr/share/doc/{pkg}/operations.md" in members


def test_lintian_reports_no_error_or_warning(builds: Builds) -> None:
    if shutil.which("lintian") is None:
        pytest.skip("lintian not installed (apt-get install lintian)")
    debs = [str(builds.a.debs[pkg]) for pkg in PACKAGES]
    result = run(["lintian", "--display-info", "--fail-on", "error,warning", *debs], check=False)
    lines = result.stdout.splitlines()
    bad = [line for line in lines if line.startswith(("E:", "W:"))]
    bad += [line for line in lines if "unused-override" in line or "mismatched-override" in line]
    assert result.returncode == 0 and not bad, "\n".join(bad) or result.stdout + result.stderr


# --------------------------------------------------------------------------- installing

STAND_INS = {
    # deb-systemd-invoke ACTION UNIT...: log; replay on the test's manager once asked to.
    "deb-systemd-invoke": """#!/bin/sh
echo "deb-systemd-invoke $*" >>"$MOORAGE_TEST_CALLS"
if [ -n "${MOORAGE_TEST_REPLAY:-}" ]; then exec {systemctl} --user "$@"; fi
exit 0
""",
    # systemctl: deb-systemd-helper's offline "--root=/ preset" is real; the rest (the
    # daemon-reload of a system manager that does not exist here) is only logged.
    "systemctl": """#!/bin/sh
case " $* " in *" --root="*) exec {systemctl} "$@" ;; esac
echo "systemctl $*" >>"$MOORAGE_TEST_CALLS"
exit 0
""",
}


@dataclass
class Machine:
    """This machine, on which the test installs the packages; always purged afterwards."""

    root: Path
    calls_log: Path
    replay_env: dict[str, str] = field(default_factory=dict)
    marks: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.bin = self.root / "bin"
        self.bin.mkdir()
        systemctl = shutil.which("systemctl") or "/bin/systemctl"
        for name, text in STAND_INS.items():
            script = self.bin / name
            script.write_text(text.replace("{systemctl}", systemctl))
            script.chmod(0o755)
        self.calls_log.touch()

    def apt(self, *args: str, replay: bool = False) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            **APT_ENV,
            "MOORAGE_TEST_CALLS": str(self.calls_log),
        }
        if replay:
            env.update(self.replay_env, MOORAGE_TEST_REPLAY="1")
        namespace = (
            "mkdir -p /run/systemd && mount -t tmpfs -o mode=0755 moorage-test /run/systemd"
            ' && mkdir /run/systemd/system && exec "$@"'
        )
        return run(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                namespace,
                "sh",
                "apt-get",
                "-y",
                "-q",
                "-o",
                "DPkg::Lock::Timeout=120",
                # apt gives dpkg (and so the maintainer scripts) this PATH, not its own.
                "-o",
                f"DPkg::Path={self.bin}:/usr/sbin:/usr/bin:/sbin:/bin",
                *args,
            ],
            env=env,
            timeout=600,
        )

    def calls_since_mark(self) -> list[str]:
        lines = self.calls_log.read_text().splitlines()
        start = self.marks[-1] if self.marks else 0
        self.marks.append(len(lines))
        return lines[start:]


@contextlib.contextmanager
def machine_lock(timeout: float = 600) -> Iterator[None]:
    """One system-wide install test at a time on this machine (test runs may overlap)."""
    with open(LOCK_FILE, "w") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.skip(f"another run holds {LOCK_FILE} (installing Moorage packages)")
                time.sleep(1)
        yield


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[Machine]:
    if os.geteuid() != 0:
        pytest.skip("needs root: installs .deb packages system-wide")
    with machine_lock():
        reason = cannot_install()
        if reason is not None:
            pytest.skip(reason)
        yield from _installing(tmp_path)


def _installing(tmp_path: Path) -> Iterator[Machine]:
    had_user = _user("moorage") is not None
    box = Machine(tmp_path, tmp_path / "calls.log")
    try:
        yield box
    finally:
        installed = [p for p in PACKAGES if package_status(p) != "not-installed"]
        if installed:
            box.apt("purge", *installed)
        # Only state this test made (cannot_install() refused a machine that had any).
        for path in ("/var/lib/moorage", "/etc/moorage", "/usr/lib/moorage"):
            shutil.rmtree(path, ignore_errors=True)
        if not had_user and _user("moorage") is not None:
            run(["deluser", "--system", "moorage"], check=False)


def _user(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _exposure(unit: Path) -> float:
    result = run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)])
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout[-2000:]
    return float(match.group(1))


class Fleet:
    """The installed coordinator and agent, as units of the test's systemd manager."""

    def __init__(self, manager: UserSystemd) -> None:
        self.manager = manager
        self.api_port = free_port()
        self.hub_port = free_port()

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    def configure(self) -> None:
        """Test configs and drop-ins for the installed units.

        The configs are not written to /etc/moorage: every coordinator or agent started
        without --config on this machine would read them meanwhile.
        """
        m = self.manager
        self.coordinator_config = m.root / "coordinator.toml"
        self.coordinator_config.write_text(
            f'api_listen = "127.0.0.1:{self.api_port}"\n'
            f'hub_listen = "127.0.0.1:{self.hub_port}"\n'
            "heartbeat_s = 1.0\n"
        )
        self.agent_config = m.root / "agent.toml"
        self.agent_config.write_text(
            f'machine_id = "{MACHINE_ID}"\n'
            'systemd_scope = "user"\n'
            f'bus_address = "{m.bus_address}"\n'
            f'unit_dir = "{m.unit_dir}"\n'
            f'journal_dir = "{m.journal_dir}"\n'
            "backoff_max_s = 1.0\n"
        )
        for config in (self.coordinator_config, self.agent_config):
            config.chmod(0o644)
        # A user manager puts StateDirectory= under $XDG_CONFIG_HOME, so the state
        # directory a system manager would create is made here, as it would.
        COORDINATOR_STATE.mkdir(parents=True, mode=0o700)
        shutil.chown(COORDINATOR_STATE, "moorage", "moorage")
        # PrivateTmp= would hide the private manager's files (all under /tmp).
        common = "[Service]\nPrivateTmp=no\nRestart=no\nExecStart=\n"
        coordinator = "/usr/bin/moorage-coordinator"
        dropins = {
            "moorage-coordinator": f"{common}ExecStartPre=\n"
            f"ExecStartPre={coordinator} init --config {self.coordinator_config}\n"
            f"ExecStart={coordinator} serve --config {self.coordinator_config}\n"
            f"ReadWritePaths={COORDINATOR_STATE}\n",
            "moorage-agent": f"{common}"
            f"ExecStart=/usr/bin/moorage-agent --config {self.agent_config}\n"
            f"ReadWritePaths={AGENT_STATE} {m.unit_dir}\n",
        }
        for pkg in PACKAGES:
            shutil.copy(UNIT_DIR / f"{pkg}.service", m.unit_dir / f"{pkg}.service")
            dropin = m.unit_dir / f"{pkg}.service.d"
            dropin.mkdir(exist_ok=True)
            (dropin / "test.conf").write_text(dropins[pkg])
        m.systemctl("daemon-reload", check=True)

    def start(self, pkg: str) -> int:
        result = self.manager.systemctl("start", f"{pkg}.service")
        assert result.returncode == 0, self.why(pkg, result.stderr)
        return self.main_pid(pkg)

    def main_pid(self, pkg: str) -> int:
        pid = int(self.manager.unit_property(f"{pkg}.service", "MainPID"))
        assert pid > 0, self.why(pkg, "no main process")
        return pid

    def active(self, unit: str) -> bool:
        return self.manager.unit_property(unit, "ActiveState") == "active"

    def why(self, pkg: str, what: str) -> str:
        journal = "\n".join(self.manager.journal_lines(f"{pkg}.service")[-40:])
        return f"{pkg}: {what}\n--- journal\n{journal}"

    def moorctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(
            [
                "/usr/bin/moorctl",
                "--endpoint",
                self.endpoint,
                "--ca-file",
                str(PKI / "ca.pem"),
                "--cert-file",
                str(PKI / "admin.pem"),
                "--key-file",
                str(PKI / "admin.key"),
                *args,
            ],
            check=check,
            timeout=90,
        )

    def machines(self) -> dict[str, dict[str, Any]]:
        result = self.moorctl("--json", "list-machines", check=False)
        if result.returncode != 0:
            return {}
        return {m["id"]: m for m in msgspec.json.decode(result.stdout)}

    def connected(self) -> dict[str, Any] | None:
        machine = self.machines().get(MACHINE_ID)
        return machine if machine and machine["state"] == "connected" else None


def sandboxing_manager() -> UserSystemd:
    """A private manager (not started yet) that can run the units' sandboxes."""
    manager = UserSystemd()
    # A system manager creates /run/systemd/inaccessible/ at boot; sandboxes mount its
    # nodes over what they hide (ProtectHome=, InaccessiblePaths=, ...). The harness
    # bind-mounts <root>/fakerun over /run/systemd, so they go there.
    inaccessible = manager.root / "fakerun" / "inaccessible"
    inaccessible.mkdir(parents=True)
    (inaccessible / "dir").mkdir()
    (inaccessible / "reg").touch()
    os.mkfifo(inaccessible / "fifo")
    os.mknod(inaccessible / "chr", stat.S_IFCHR, os.makedev(0, 0))
    os.mknod(inaccessible / "blk", stat.S_IFBLK, os.makedev(0, 0))
    for node in inaccessible.iterdir():
        node.chmod(0)
    manager.root.chmod(0o711)  # the coordinator runs as "moorage" and reads its config here
    return manager


def _identity() -> dict[str, str]:
    return {name: sha256(AGENT_STATE / name) for name in ("identity.pem", "ca.pem", "link.json")}


def _installed_version(pkg: str) -> str:
    return run(["dpkg-query", "-W", "-f", "${Version}", pkg]).stdout


def _leftovers() -> list[str]:
    patterns = [
        "/usr/lib/moorage",
        "/etc/moorage",
        "/var/lib/moorage",
        "/usr/bin/moorctl",
        "/usr/bin/moorage-agent",
        "/usr/bin/moorage-coordinator",
        "/lib/systemd/system/moorage-*",
        "/usr/lib/systemd/system/moorage-*",
        "/etc/systemd/system/moorage-*",
        "/etc/systemd/system/*.wants/moorage-*",
        "/var/lib/systemd/deb-systemd-helper-enabled/**/moorage-*",
        "/var/lib/systemd/deb-systemd-helper-masked/moorage-*",
        "/usr/share/doc/moorage-*",
        "/usr/share/man/man*/moor*",
        "/usr/share/lintian/overrides/moorage-*",
    ]
    found: list[str] = []
    for pattern in patterns:
        found += [str(p) for p in Path("/").glob(pattern.lstrip("/"))]
    return found


def test_install_enrol_upgrade_remove_purge(builds: Builds, machine: Machine) -> None:
    a = [str(builds.a.debs[p]) for p in PACKAGES]
    b = [str(builds.b.debs[p]) for p in PACKAGES]

    # --- install A -------------------------------------------------------------------
    machine.apt("install", *a)
    calls = machine.calls_since_mark()
    for pkg in PACKAGES:
        assert _installed_version(pkg) == builds.a.version
        assert f"deb-systemd-invoke start {pkg}.service" in calls, calls
        assert Path(f"/etc/systemd/system/multi-user.target.wants/{pkg}.service").is_symlink()
        for cmd in COMMANDS[pkg]:
            version = run([f"/usr/bin/{cmd}", "--version"]).stdout
            assert UPSTREAM in version, version
        unit = UNIT_DIR / f"{pkg}.service"
        verify = run(["systemd-analyze", "verify", str(unit)], check=False)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        exposure = _exposure(unit)
        print(f"{pkg}.service: systemd-analyze security exposure {exposure}")
        assert exposure <= MAX_EXPOSURE[pkg]
        site = next(Path(f"/usr/lib/moorage/{pkg.removeprefix('moorage-')}/lib").glob("*/site-*"))
        # both packages ship proto/ (the agent has no coordinator/)
        assert list(site.glob("proto/__pycache__/*.pyc")), "postinst byte-compiles"
    assert not [c for c in calls if " stop " in f"{c} "], calls
    user = _user("moorage")
    assert user is not None and user.pw_uid < 1000, "postinst creates a system user"

    # --- run it: the hardened units under a real systemd manager ---------------------
    manager = sandboxing_manager()
    with manager:
        fleet = Fleet(manager)
        fleet.configure()
        machine.replay_env = {
            k: manager.env[k] for k in ("XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS", "HOME")
        }

        # Not enrolled: the agent's unit is skipped, not crash-looping.
        assert fleet.manager.systemctl("start", "moorage-agent.service").returncode == 0
        assert fleet.manager.unit_property("moorage-agent.service", "ConditionResult") == "no"
        assert not fleet.active("moorage-agent.service")

        fleet.start("moorage-coordinator")
        wait_for(
            lambda: fleet.moorctl("list-machines", check=False).returncode == 0,
            timeout=30,
            what="coordinator API",
        )
        sandbox = _status(fleet.main_pid("moorage-coordinator"))
        assert sandbox["Uid"].split()[0] == str(user.pw_uid)
        assert sandbox["NoNewPrivs"] == "1" and sandbox["Seccomp"] == "2"
        assert int(sandbox["CapBnd"], 16) == 0 and int(sandbox["CapEff"], 16) == 0
        assert stat.S_IMODE(PKI.stat().st_mode) == 0o700 and PKI.stat().st_uid == user.pw_uid

        token = fleet.moorctl("token", "create").stdout.strip()
        agent_cli = ["/usr/bin/moorage-agent", "--config", str(fleet.agent_config)]
        run([*agent_cli, "enroll", "--coordinator", fleet.endpoint, "--token", token])
        identity = _identity()
        agent_pid = fleet.start("moorage-agent")
        machine_before = wait_for(fleet.connected, timeout=30, what="agent connected")
        sandbox = _status(agent_pid)
        assert sandbox["Uid"].split()[0] == "0"
        assert sandbox["NoNewPrivs"] == "1" and sandbox["Seccomp"] == "2"
        assert int(sandbox["CapBnd"], 16) == CAP_SYS_ADMIN

        workload = manager.root / WORKLOAD
        workload.write_text(
            "[Unit]\nDescription=packaging test\n[Service]\n"
            f"ExecStart=/bin/sh -c 'echo {JOURNAL_MARK}; exec sleep 600'\n"
        )
        workload.chmod(0o644)
        fleet.moorctl("start", str(workload))
        wait_for(lambda: fleet.active(WORKLOAD), timeout=30, what="workload active")
        workload_pid = int(manager.unit_property(WORKLOAD, "MainPID"))
        # The journal through the sandboxed agent (it runs journalctl under its filters).
        wait_for(
            lambda: JOURNAL_MARK in fleet.moorctl("journal", WORKLOAD, check=False).stdout,
            timeout=30,
            interval=0.5,
            what="the workload's journal through moorctl",
        )

        # --- upgrade to B: maintainer scripts act on the running units -------------------
        with Path("/etc/moorage/agent.toml").open("a") as conffile:
            conffile.write(CONFFILE_EDIT)
        machine.apt("install", *b, replay=True)
        calls = machine.calls_since_mark()
        for pkg in PACKAGES:
            assert _installed_version(pkg) == builds.b.version
            assert f"deb-systemd-invoke restart {pkg}.service" in calls, calls
        assert not [c for c in calls if " stop " in f"{c} "], f"upgrade stopped something: {calls}"
        assert CONFFILE_EDIT in Path("/etc/moorage/agent.toml").read_text(), (
            "the operator's configuration survives the upgrade"
        )
        assert not list(Path("/etc/moorage").glob("*.dpkg-*"))
        wait_for(lambda: fleet.active("moorage-agent.service"), timeout=30, what="agent back")
        assert fleet.main_pid("moorage-agent") != agent_pid, "postinst restarted the agent"
        machine_after = wait_for(fleet.connected, timeout=30, what="agent reconnected")
        assert _identity() == identity, "the upgrade kept the agent's identity"
        assert machine_after["state_since"] > machine_before["state_since"], "a new session"
        assert machine_after["cert_serial"] == machine_before["cert_serial"]
        assert fleet.active(WORKLOAD)
        assert int(manager.unit_property(WORKLOAD, "MainPID")) == workload_pid, (
            "upgrading never stops or restarts a managed unit"
        )

        # --- remove: services stop, units they manage keep running, state stays -----------
        machine.apt("remove", *PACKAGES, replay=True)
        calls = machine.calls_since_mark()
        for pkg in PACKAGES:
            assert f"deb-systemd-invoke stop {pkg}.service" in calls, calls
            assert package_status(pkg) == "deinstall ok config-files"
            assert not Path(f"/usr/bin/{COMMANDS[pkg][0]}").exists()
        assert not fleet.active("moorage-agent.service")
        assert (
            fleet.active(WORKLOAD)
            and int(manager.unit_property(WORKLOAD, "MainPID")) == workload_pid
        )
        assert _identity() == identity, "remove keeps the state"
        assert (PKI / "ca.key").exists()
        assert Path("/etc/moorage/coordinator.toml").exists()

        # --- purge: nothing left ------------------------------------------------------
        machine.apt("purge", *PACKAGES)
        for pkg in PACKAGES:
            assert package_status(pkg) == "not-installed"
        assert _leftovers() == []
        assert fleet.active(WORKLOAD), "even purging the agent leaves the workloads alone"
