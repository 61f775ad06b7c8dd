"""Application manifests: accepted, refused with the line and field, normalised."""

from __future__ import annotations

import pytest

from coordinator.manifest import Manifest, ManifestError, Rollout, parse_manifest

SEED = """\
# the core every GitOps repository can rely on
units:
  - name: web.service
    contents: |
      [Service]
      ExecStart=/usr/bin/python3 -m http.server 8080
  - name: cache.container
    contents: |
      [Container]
      Image=redis:7
"""


def test_the_documented_core_parses() -> None:
    m = parse_manifest(SEED)
    assert [u.name for u in m.units] == ["web.service", "cache.container"]
    assert m.units[0].options[0].value == "/usr/bin/python3 -m http.server 8080"
    assert m.rollout == Rollout() and m.drift_policy == "report"


def test_rollout_and_drift_keys() -> None:
    m = parse_manifest(
        SEED + "rollout:\n  batch_size: 25%\n  max_unavailable: 2\n"
        "  rollback_on_failure: true\n  min_healthy_s: 1\n  timeout_s: 60.5\n"
        "drift:\n  policy: repair\n"
    )
    assert m.rollout == Rollout(
        batch_size="25%",
        max_unavailable=2,
        rollback_on_failure=True,
        min_healthy_s=1.0,
        timeout_s=60.5,
    )
    assert m.drift_policy == "repair"


def test_comments_order_and_spacing_do_not_make_a_new_version() -> None:
    reordered = """\
units:
  - contents: |
      [Service]
      ExecStart=/usr/bin/python3 -m http.server 8080
    name: web.service   # same unit, keys swapped
  - name:    cache.container
    contents: "[Container]\\nImage=redis:7\\n"
"""
    assert parse_manifest(reordered).digest() == parse_manifest(SEED).digest()
    changed = SEED.replace("redis:7", "redis:7.2")
    assert parse_manifest(changed).digest() != parse_manifest(SEED).digest()


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ("", 0, "empty"),
        ("units: [\n", 2, "YAML"),
        ("unit:\n  - x\n", 1, "unknown key 'unit'"),
        ("units: []\n", 1, "non-empty"),
        ("units:\n  - name: a.service\n", 2, "missing 'contents'"),
        (
            "units:\n  - name: bad name.service\n    contents: |\n      [Service]\n      ExecStart=/x\n",
            2,
            "units[0]",
        ),
        (
            "units:\n  - name: a.service\n    contents: |\n      [Service]\n      no equals sign\n",
            5,
            "units[0].contents",
        ),
        (
            "units:\n  - name: a.container\n    contents: |\n      [Container]\n      Imagee=redis\n",
            2,
            "Imagee",
        ),
        (SEED + "rollout:\n  batch_size: 0\n", 12, "rollout.batch_size"),
        (SEED + "rollout:\n  speed: 3\n", 12, "unknown key 'speed'"),
        (SEED + "rollout:\n  max_unavailable: 0\n", 12, "rollout.max_unavailable"),
        (SEED + "rollout:\n  min_healthy_s: -1\n", 12, "rollout.min_healthy_s"),
        (SEED + "rollout:\n  timeout_s: fast\n", 12, "rollout.timeout_s"),
        (SEED + "drift:\n  policy: ignore\n", 12, "drift.policy"),
        (SEED + "units: []\n", 11, "appears twice"),
    ],
)
def test_refusals_name_the_line_and_field(text: str, line: int, needle: str) -> None:
    with pytest.raises(ManifestError) as err:
        parse_manifest(text)
    assert needle in str(err.value)
    assert err.value.line == line, str(err.value)


def test_duplicate_unit_names_are_refused() -> None:
    text = (
        SEED
        + "  - name: web.service\n    contents: |\n      [Service]\n      ExecStart=/bin/true\n"
    )
    with pytest.raises(ManifestError, match=r"web\.service appears twice"):
        parse_manifest(text)


def test_manifest_round_trips_as_a_struct() -> None:
    import msgspec

    m = parse_manifest(SEED)
    assert msgspec.json.decode(msgspec.json.encode(m), type=Manifest) == m
