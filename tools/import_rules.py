#!/usr/bin/env python3
"""Checks the project's import rules (the architecture's 'nevers') with ast, from the checkout root.

Usage: import_rules.py [--strict] RULES.json

The repository's copy of ../shared/tools/import-rules.py (same rules, same walk, same
output), so a clone without ../shared checks them too; `./run test` runs it. On top of
the shared checker it knows:

* "never": [[from_prefix, to_prefix, reason], ...], dotted module paths ("agent",
  "coordinator.api"); "except": [[from_module, to_prefix]] lifts a rule for good.
* "only": [[module, [importer_prefix, ...], reason], ...]: only these may import the
  module (a database driver: only the store).
* "pending": [[from_prefix, to_prefix, note], ...]: imports known to break a rule until
  an open issue moves them. They are printed but do not fail the check, and an entry
  that no longer matches a broken import fails it, so the list only shrinks. --strict
  counts them as broken, as the shared checker does.

Prints each broken rule with file:line and exits 1 if any; else prints the count kept.
Standard library only: it runs before the virtualenv exists.
"""

from __future__ import annotations

import ast
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SKIPPED_DIRS = frozenset({".venv", "tests", "bench", "build", "dist", ".git"})


@dataclass(frozen=True)
class Rules:
    never: list[tuple[str, str, str]]
    allowed: set[tuple[str, str]]
    only: list[tuple[str, tuple[str, ...], str]] = field(default_factory=list)
    pending: list[tuple[str, str, str]] = field(default_factory=list)

    @classmethod
    def from_json(cls, cfg: dict[str, Any]) -> Rules:
        return cls(
            never=[(s, d, w) for s, d, w in cfg["never"]],
            allowed={(f, t) for f, t in cfg.get("except", [])},
            only=[(m, tuple(who), w) for m, who, w in cfg.get("only", [])],
            pending=[(f, t, n) for f, t, n in cfg.get("pending", [])],
        )


@dataclass(frozen=True)
class Broken:
    path: str
    line: int
    module: str
    target: str
    rule: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line} {self.module} -> {self.target}  ({self.rule})"


@dataclass(frozen=True)
class Report:
    broken: list[Broken]
    """Broken imports no pending entry covers."""
    pending: list[Broken]
    """Broken imports a pending entry covers."""
    stale: list[tuple[str, str, str]]
    """Pending entries that match no broken import any more."""
    files: int
    rules: int

    @property
    def ok(self) -> bool:
        return not self.broken and not self.stale


def module_of(path: Path) -> str:
    parts = list(path.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def under(mod: str, prefix: str) -> bool:
    return mod == prefix or mod.startswith(prefix + ".")


def imports(path: Path, mod: str) -> Iterator[tuple[int, str]]:
    """Every module (and, for `from X import y`, every `X.y`) a file imports, with its line."""
    tree = ast.parse(path.read_text(), str(path))
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            yield node.lineno, base
            for a in node.names:
                yield node.lineno, f"{base}.{a.name}" if base else a.name


def source_files(root: Path) -> Iterator[Path]:
    """The shipped code: everything but tests, benchmarks, build output and dot-dirs."""
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(p in SKIPPED_DIRS or p.startswith(".") for p in rel.parts[:-1]):
            continue
        yield rel


def check(root: Path, rules: Rules) -> Report:
    broken: set[Broken] = set()
    files = 0
    for rel in source_files(root):
        files += 1
        mod = module_of(rel)
        for line, target in imports(root / rel, mod):
            for src, dst, why in rules.never:
                if (
                    under(mod, src)
                    and under(target, dst)
                    and not under(mod, dst)
                    and not any(under(mod, f) and under(target, t) for f, t in rules.allowed)
                ):
                    broken.add(Broken(str(rel), line, mod, target, f"never {src} -> {dst}: {why}"))
            for only, importers, why in rules.only:
                if under(target, only) and not any(under(mod, p) for p in importers):
                    who = ", ".join(importers)
                    broken.add(Broken(str(rel), line, mod, target, f"only {who} -> {only}: {why}"))

    def covered(b: Broken, entry: tuple[str, str, str]) -> bool:
        return under(b.module, entry[0]) and under(b.target, entry[1])

    ordered = sorted(broken, key=str)
    return Report(
        broken=[b for b in ordered if not any(covered(b, e) for e in rules.pending)],
        pending=[b for b in ordered if any(covered(b, e) for e in rules.pending)],
        stale=[e for e in rules.pending if not any(covered(b, e) for b in ordered)],
        files=files,
        rules=len(rules.never) + len(rules.only),
    )


def main(argv: list[str]) -> int:
    strict = "--strict" in argv
    args = [a for a in argv if a != "--strict"]
    if len(args) != 1:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    rules = Rules.from_json(json.loads(Path(args[0]).read_text()))
    if strict:
        rules = Rules(rules.never, rules.allowed, rules.only)
    report = check(Path("."), rules)
    for b in report.broken:
        print(b)
    for f, t, note in report.stale:
        print(f"pending {f} -> {t} ({note}) no longer happens: remove it from {args[0]}")
    if report.pending:
        print(f"known to break the rules, pending in {args[0]} (the list must only shrink):")
        for f, t, note in rules.pending:
            hits = [b for b in report.pending if under(b.module, f) and under(b.target, t)]
            where = sorted({f"{b.path}:{b.line}" for b in hits})
            if where:
                print(f"  {f} -> {t} ({note}): {', '.join(where)}")
    if report.broken:
        print(
            f"{len(report.broken)} imports break the architecture's rules "
            f"({report.rules} rules, {report.files} files)"
        )
    if not report.ok:
        return 1
    entries = len(rules.pending)
    but = f", but for the {entries} pending entries above" if report.pending else ""
    print(f"all {report.rules} import rules hold over {report.files} files{but}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
