"""`python -m tests.chaos`: run the fault suite, print a table per scenario, write JSON.

    python -m tests.chaos                      # the long run (hours: see docs/reliability.md)
    python -m tests.chaos --short              # what CI runs (minutes)
    python -m tests.chaos --scenarios agent-kill,coordinator-kill --rounds 20
    python -m tests.chaos --list

Needs root (network namespaces) and systemd (a private user manager per machine), as
the integration tests do; everything stays on loopback and the suite's own namespaces.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from tests.chaos import invariants as inv
from tests.chaos.runner import Config, run, scenarios, write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--short", action="store_true", help="CI's short version")
    parser.add_argument("--scenarios", help="comma-separated names (default: all); see --list")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--rounds", type=int, help="rounds of each kill loop (long run: 100)")
    parser.add_argument("--partitions", type=int, help="partitions of each kind and length (10)")
    parser.add_argument("--reboots", type=int, help="reboots (10)")
    parser.add_argument(
        "--partition-seconds",
        help="partition lengths, comma-separated (30,120; one past lost_after is added)",
    )
    parser.add_argument("--lost-after", type=float, help="the coordinator's lost_after (60)")
    parser.add_argument("--minutes", type=float, help="stop starting rounds after this long")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--subnet", type=int, help="third octet of the namespace's 10.231.N.0/30 (170)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/chaos.json"))
    parser.add_argument("--json", action="store_true", help="print the JSON, not the table")
    args = parser.parse_args(argv)

    config = Config.short() if args.short else Config()
    for key in ("rounds", "partitions", "reboots", "lost_after", "subnet"):
        value = getattr(args, key)
        if value is not None:
            setattr(config, key, value)
    if args.partition_seconds:
        config.partition_s = tuple(float(v) for v in args.partition_seconds.split(","))
    if args.list:
        for s in scenarios(config):
            print(s.name)
        return 0
    names = args.scenarios.split(",") if args.scenarios else None
    deadline = time.monotonic() + args.minutes * 60 if args.minutes else None
    log = (
        (lambda line: print(line, file=sys.stderr, flush=True))
        if args.json
        else (lambda line: print(line, flush=True))
    )
    try:
        outcome = run(
            config,
            names,
            seed=args.seed,
            deadline=deadline,
            log=log,
            on_round=lambda partial: write_json(partial, args.out),
        )
    except ValueError as exc:
        parser.error(str(exc))
    write_json(outcome, args.out)
    if args.json:
        print(json.dumps(outcome.to_json(), indent=2))
    else:
        print(
            f"\n{os.cpu_count()} cores, {time.time() - outcome.started:.0f} s, results in {args.out}\n"
        )
        print(inv.table(outcome.summaries()))
        for name, why in outcome.skipped.items():
            print(f"skipped {name}: {why}")
    failed = [r for rs in outcome.results.values() for r in rs if not r.ok]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
