#!/usr/bin/env bash
# Build the moorage-agent and moorage-coordinator Debian packages.
#
#   packaging/build.sh [--dist DIR] [--wheelhouse DIR] [--offline | --fetch-only]
#
# Each package carries Moorage and its pinned Python dependencies
# (packaging/requirements.txt) in a private virtualenv, /usr/lib/moorage/agent or
# /usr/lib/moorage/coordinator, made with Debian's own interpreter (/usr/bin/python3.X),
# so nothing is installed into or collides with the system Python.
#
#   --dist DIR        where the .deb files go (default: dist/)
#   --wheelhouse DIR  wheels of the pinned dependencies (default: build/wheelhouse/);
#                     fetched from the package index only when something is missing
#   --offline         never contact the package index (fail if the wheelhouse is short)
#   --fetch-only      only fill the wheelhouse, build nothing
#
# Environment:
#   MOORAGE_DEB_REVISION  Debian revision: version is <pyproject version>-<revision>
#                         (default 1), e.g. MOORAGE_DEB_REVISION=2 gives 0.1.0-2
#   MOORAGE_DEB_PYTHON    the interpreter (default: what /usr/bin/python3 points to)
#   SOURCE_DATE_EPOCH     timestamp of every file (default: the last git commit's time)
#   MOORAGE_DEB_MAINTAINER  the Maintainer field ("Name <address>")
#   MOORAGE_DEB_XZ_LEVEL  xz level, 0-9 (default 6; the tests use 1, several times faster)
#
# Reproducible: the same source tree, wheelhouse and SOURCE_DATE_EPOCH give
# byte-identical packages (sorted archive members, clamped mtimes, root ownership,
# no build paths, no byte-code: the postinst compiles it).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE=$ROOT/packaging
DIST=$ROOT/dist
WHEELHOUSE=$ROOT/build/wheelhouse
MODE=build
OFFLINE=0

die() { echo "build.sh: $*" >&2; exit 1; }
log() { echo "==> [${SECONDS}s] $*" >&2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --dist) DIST=${2:?--dist needs a directory}; shift 2 ;;
    --wheelhouse) WHEELHOUSE=${2:?--wheelhouse needs a directory}; shift 2 ;;
    --offline) OFFLINE=1; shift ;;
    --fetch-only) MODE=fetch; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

umask 022
export LC_ALL=C.UTF-8 TZ=UTC PYTHONHASHSEED=0

for tool in dpkg dpkg-deb dpkg-shlibdeps gzip strip; do
  command -v "$tool" >/dev/null || die "$tool not found (apt-get install dpkg-dev)"
done

PYTHON=${MOORAGE_DEB_PYTHON:-$(readlink -f /usr/bin/python3)}
[ -x "$PYTHON" ] || die "no Debian python3 at $PYTHON (apt-get install python3)"
PYVER=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$PYTHON" = "/usr/bin/python$PYVER" ] ||
  die "$PYTHON is not Debian's /usr/bin/python$PYVER; the packages depend on python$PYVER"
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || die "python$PYVER has no venv (apt-get install python3-venv)"

UPSTREAM=$("$PYTHON" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$ROOT/pyproject.toml")
REVISION=${MOORAGE_DEB_REVISION:-1}
[[ $REVISION =~ ^[0-9A-Za-z.+~]+$ ]] || die "MOORAGE_DEB_REVISION=$REVISION is not a Debian revision"
VERSION=$UPSTREAM-$REVISION
ARCH=$(dpkg --print-architecture)
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null) ||
    die "SOURCE_DATE_EPOCH is unset and $ROOT has no git history"
fi
export SOURCE_DATE_EPOCH
MAINTAINER=${MOORAGE_DEB_MAINTAINER:-Moorage developers <packaging@moorage.invalid>}
VENV_ROOT=/usr/lib/moorage
XZ_LEVEL=${MOORAGE_DEB_XZ_LEVEL:-6}
[[ $XZ_LEVEL =~ ^[0-9]$ ]] || die "MOORAGE_DEB_XZ_LEVEL=$XZ_LEVEL is not 0-9"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/moorage-deb.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# pip without the machine's pip.conf or PIP_* variables: offline, from the wheelhouse only.
offline_env=(env PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 PIP_NO_CACHE_DIR=1
  PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1)
while IFS= read -r name; do
  [ -n "$name" ] && offline_env=(env -u "$name" "${offline_env[@]:1}")
done < <(compgen -e | grep '^PIP_' || true)
pip_offline() { "${offline_env[@]}" "$WORK/tools/bin/python" -m pip "$@"; }
REQS=(-r "$HERE/requirements.txt" -r "$HERE/build-requirements.txt")

log "tools virtualenv ($PYTHON)"
"$PYTHON" -m venv "$WORK/tools"

mkdir -p "$WHEELHOUSE"
WHEELHOUSE=$(cd "$WHEELHOUSE" && pwd)
if pip_offline install -q --dry-run --ignore-installed --no-deps --only-binary=:all: \
  --find-links "$WHEELHOUSE" "${REQS[@]}" >/dev/null 2>&1; then
  log "wheelhouse $WHEELHOUSE is complete"
elif [ "$OFFLINE" = 1 ]; then
  die "wheelhouse $WHEELHOUSE lacks pinned wheels and --offline was given"
else
  log "fetching pinned wheels into $WHEELHOUSE"
  "$WORK/tools/bin/python" -m pip download -q --only-binary=:all: --no-deps \
    -d "$WHEELHOUSE" "${REQS[@]}"
fi
[ "$MODE" = fetch ] && exit 0

log "moorage $UPSTREAM wheel"
mkdir -p "$WORK/src" "$WORK/wheels"
tar -C "$ROOT" --exclude=__pycache__ --exclude='*.pyc' -cf - \
  pyproject.toml README.md proto agent coordinator moorctl | tar -C "$WORK/src" -xf -
pip_offline wheel -q --no-deps --find-links "$WHEELHOUSE" -w "$WORK/wheels" "$WORK/src"
# The agent's distribution: proto/ and agent/ only, with the agent's dependencies.
mkdir -p "$WORK/src-agent"
tar -C "$ROOT" --exclude=__pycache__ --exclude='*.pyc' -cf - proto agent |
  tar -C "$WORK/src-agent" -xf -
cp "$HERE/agent/pyproject.toml" "$WORK/src-agent/"
pip_offline wheel -q --no-deps --find-links "$WHEELHOUSE" -w "$WORK/wheels" "$WORK/src-agent"

# --- one package ---------------------------------------------------------------------
# make_venv STAGE VENV: the private virtualenv, installed at VENV, made in STAGE/VENV
# and free of build paths.
make_venv() {
  local stage=$1 venv=$2 dist=$3 f
  "$PYTHON" -m venv --without-pip "$stage$venv"
  pip_offline --python "$stage$venv/bin/python" install -q --no-compile \
    --no-warn-script-location --find-links "$WHEELHOUSE" --find-links "$WORK/wheels" \
    -c "$HERE/requirements.txt" "$dist==$UPSTREAM"
  # What only makes sense where the venv was made: activation scripts, the creating
  # command line, the empty include dir, byte-code, an absolute interpreter link.
  rm -f "$stage$venv"/bin/activate* "$stage$venv"/bin/Activate.ps1
  sed -i '/^command = /d' "$stage$venv/pyvenv.cfg"
  find "$stage$venv" -depth -type d -name __pycache__ -exec rm -rf {} +
  find "$stage$venv" -depth -type d -empty -delete
  find "$stage$venv" -name direct_url.json -path '*.dist-info/*' -delete
  ln -sfn "$(realpath -m --relative-to="$venv/bin" "$PYTHON")" "$stage$venv/bin/python$PYVER"
  for f in "$stage$venv"/bin/*; do
    if [ -f "$f" ] && [ ! -L "$f" ] && [ "$(head -c2 "$f")" = '#!' ]; then
      sed -i "1s|^#!$stage$venv/|#!$venv/|" "$f"
    fi
  done
  # PyYAML's optional C accelerator embeds a copy of libyaml (Debian policy 4.13); the
  # pure-Python yaml.safe_load Moorage uses does not need it.
  rm -f "$stage$venv"/lib/python*/site-packages/yaml/_yaml.*.so
  rm -rf "$stage$venv"/lib/python*/site-packages/_yaml
  # Extension modules lose their debug symbols (as dh_strip does); nothing under
  # site-packages is executable.
  find "$stage$venv" -type f -name '*.so*' -exec strip --remove-section=.comment \
    --remove-section=.note --strip-unneeded {} +
  find "$stage$venv/lib" -type f -exec chmod a-x {} +
  # The RECORD files list the scripts' hashes as first written, and the files just
  # removed: bring them up to date.
  "$PYTHON" - "$stage$venv"/lib/python*/site-packages <<'PY'
import base64, csv, hashlib, io, sys
from pathlib import Path

site = Path(sys.argv[1])
for record in sorted(site.glob("*.dist-info/RECORD")):
    rows = []
    for row in csv.reader(io.StringIO(record.read_text())):
        path = (record.parent.parent / row[0]).resolve()
        if not path.exists():
            continue
        rows.append(row)
        if len(row) == 3 and row[1] and path.is_file():
            data = path.read_bytes()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            row[1], row[2] = "sha256=" + digest.decode(), str(len(data))
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    record.write_text(out.getvalue())
PY
}

# Free-form copyright: Moorage, then every bundled distribution with its license.
write_copyright() {
  local stage=$1 venv=$2
  sed "s/@YEAR@/$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y)/" "$HERE/common/copyright"
  "$PYTHON" - "$stage" "$stage$venv"/lib/python*/site-packages <<'PY'
import sys
from importlib import metadata
from pathlib import Path

stage, site = sys.argv[1], Path(sys.argv[2])
rows = []
for info in site.glob("*.dist-info"):
    dist = metadata.PathDistribution(info)
    name = dist.metadata["Name"]
    if name in ("moorage", "moorage-agent"):
        continue
    lic = dist.metadata.get("License-Expression") or ""
    if not lic:
        text = (dist.metadata.get("License") or "").strip()
        lic = text if text and "\n" not in text and len(text) < 60 else ""
    if not lic:
        classifiers = [c.rsplit(" :: ", 1)[-1] for c in dist.metadata.get_all("Classifier") or []
                       if c.startswith("License :: ")]
        lic = ", ".join(classifiers) or "see its license files"
    rows.append((name.lower(), f" {name} {dist.version}: {lic}\n  {str(info)[len(stage):]}/"))
for _, row in sorted(rows):
    print(row)
PY
}

build_package() {
  local pkg=$1 name=moorage-$1 venv=$VENV_ROOT/$1 stage=$WORK/stage/moorage-$1
  local src=$HERE/$1 doc=$WORK/stage/moorage-$1/usr/share/doc/moorage-$1
  log "$name $VERSION"
  mkdir -p "$stage/DEBIAN" "$doc" "$stage/usr/bin" "$stage/lib/systemd/system" \
    "$stage/etc/moorage" "$stage/usr/share/lintian/overrides"
  local dist=moorage
  [ "$pkg" = agent ] && dist=moorage-agent
  make_venv "$stage" "$venv" "$dist"
  log "$name: virtualenv done"
  if grep -rlF -e "$WORK" -e "$ROOT" "$stage" >"$WORK/leaks"; then
    die "build paths leaked into $name: $(head -5 "$WORK/leaks")"
  fi

  local cmd
  while read -r cmd; do
    ln -s "../lib/moorage/$pkg/bin/$cmd" "$stage/usr/bin/$cmd"
  done <"$src/commands"
  install -m644 "$src/$name.service" "$stage/lib/systemd/system/"
  install -m644 "$src/$pkg.toml" "$stage/etc/moorage/"
  echo "/etc/moorage/$pkg.toml" >"$stage/DEBIAN/conffiles"
  local page section
  for page in "$src"/*.[1-8]; do
    section=${page##*.}
    mkdir -p "$stage/usr/share/man/man$section"
    gzip -9nc "$page" >"$stage/usr/share/man/man$section/$(basename "$page").gz"
  done
  install -m644 "$src/lintian-overrides" "$stage/usr/share/lintian/overrides/$name"
  install -m644 "$src/README.Debian" "$doc/"
  # the operator's guide (several coordinators, backups, upgrades) ships with the server
  if [ "$pkg" = coordinator ]; then install -m644 "$ROOT/docs/operations.md" "$doc/"; fi
  write_copyright "$stage" "$venv" >"$doc/copyright"
  {
    printf 'moorage (%s) unstable; urgency=medium\n\n' "$VERSION"
    printf '  * Built with packaging/build.sh from the Moorage source tree.\n\n'
    printf ' -- %s  %s\n' "$MAINTAINER" "$(date -u -R -d "@$SOURCE_DATE_EPOCH")"
  } | gzip -9n >"$doc/changelog.Debian.gz"
  local script
  for script in postinst prerm postrm; do
    install -m755 "$src/$script" "$stage/DEBIAN/$script"
  done

  # Shared-library dependencies of the bundled extension modules.
  local shlibs
  mkdir -p "$WORK/shlibs/debian"
  printf 'Source: moorage\n\nPackage: %s\nArchitecture: any\n' "$name" >"$WORK/shlibs/debian/control"
  mapfile -t sos < <(find "$stage$venv" -type f -name '*.so*' | LC_ALL=C sort)
  shlibs=$(cd "$WORK/shlibs" && dpkg-shlibdeps --warnings=0 -O "${sos[@]/#/-e}" |
    sed -n 's/^shlibs:Depends=//p')

  # Deterministic tree: modes, then mtimes (after every file is in place).
  find "$stage" -type d -exec chmod 0755 {} +
  find "$stage" -type f -exec chmod u+w,go-w {} +
  find "$stage" -type f -name '*.so*' -exec chmod 0644 {} +
  (cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z |
    xargs -0r md5sum) >"$stage/DEBIAN/md5sums"
  local size
  size=$(cd "$stage" && find . -path ./DEBIAN -prune -o ! -path . -printf '%y %s\n' |
    awk '$1 == "f" || $1 == "l" { s += int(($2 + 1023) / 1024); next } { s += 1 } END { print s }')
  sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@SIZE@/$size/" \
    -e "s/@PYTHON@/python$PYVER/" -e "s/@SHLIBS@/$shlibs/" -e "s/@MAINTAINER@/$MAINTAINER/" \
    "$src/control" >"$stage/DEBIAN/control"
  chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/md5sums" "$stage/DEBIAN/conffiles"
  find "$stage" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

  log "$name: dpkg-deb"
  # One compression thread: multi-threaded xz output depends on the thread count.
  DPKG_DEB_THREADS_MAX=1 dpkg-deb --root-owner-group -Zxz -z"$XZ_LEVEL" \
    --build "$stage" "$WORK/out/${name}_${VERSION}_$ARCH.deb" >/dev/null
}

mkdir -p "$WORK/out"
build_package agent
build_package coordinator
mkdir -p "$DIST"
for deb in "$WORK"/out/*.deb; do
  mv -f "$deb" "$DIST/"
  (cd "$DIST" && sha256sum "$(basename "$deb")")
done
