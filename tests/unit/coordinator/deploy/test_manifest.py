"""Application manifests: accepted, refused with the line and field, normalised."""

from __future__ import annotations

import pytest

from coordinator.deploy.manifest import (
    Label,
    Manifest,
    ManifestError,
    Metadata,
    Rollout,
    parse_manifest,
)
from proto.container import parse_container
from proto.units import UnitOption

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


# --- the GitOps envelope -----------------------------------------------------------------

ENVELOPE = """\
version: "1"                 # clients deploy this as the application version
type: Application
metadata:
  name: web
  description: the web tier
  clusterGroups: [edge-eu]
  labels: [demo, nginx]
  annotations:
    fleet.scalecomputing.com/cluster-groups: "edge-us, edge-eu"
  lifecycle: production
spec:
  units:
    - name: web.service
      contents: |
        [Service]
        ExecStart=/usr/bin/python3 -m http.server 8080
  rollout:
    batch_size: 2
  drift:
    policy: repair
"""

CONTAINERS = """\
version: "3"
type: Application
metadata:
  name: shop
  clusterGroup: default
  labels: {tier: front, team: 7}
spec:
  containers:
    - name: nginx
      image: nginx:1.27
      ports: ["80:80", 22:22, 8443]
      mounts:
        - {hostPath: /srv/www, mountPath: /usr/share/nginx/html, readOnly: true}
        - {hostPath: cache, mountPath: /var/cache/nginx}
      env:
        - {name: MODE, value: production}
        - {name: UMASK, value: 0755}
        - {name: GREETING, value: "hello world"}
      command: ["nginx", "-g", "daemon off;"]
      restart: always
    - name: worker.container
      image: busybox
      command: /bin/sh -c 'sleep 1000'
      args: [--verbose]
      env: {B: "2", A: 1}
"""


def test_envelope_with_units_keeps_its_metadata() -> None:
    m = parse_manifest(ENVELOPE)
    assert [u.name for u in m.units] == ["web.service"]
    assert m.version == "1" and m.drift_policy == "repair" and m.rollout.batch_size == 2
    assert m.metadata == Metadata(
        name="web",
        description="the web tier",
        cluster_groups=["edge-eu", "edge-us"],
        labels=[Label("demo"), Label("nginx")],
        annotations={"fleet.scalecomputing.com/cluster-groups": "edge-us, edge-eu"},
        lifecycle="production",
    )
    # the same units in the bare form are the same units (not the same version: the
    # envelope's metadata counts)
    bare = parse_manifest(
        "units:\n  - name: web.service\n    contents: |\n      [Service]\n"
        "      ExecStart=/usr/bin/python3 -m http.server 8080\n"
    )
    assert bare.units == m.units and bare.metadata is None


def test_containers_become_container_units() -> None:
    m = parse_manifest(CONTAINERS)
    nginx, worker = m.units
    assert nginx.name == "nginx.container" and worker.name == "worker.container"
    assert [(o.section, o.name, o.value) for o in nginx.options] == [
        ("Container", "Image", "nginx:1.27"),
        ("Container", "Exec", 'nginx -g "daemon off;"'),
        ("Container", "Environment", "MODE=production"),
        ("Container", "Environment", "UMASK=0755"),
        ("Container", "Environment", '"GREETING=hello world"'),
        ("Container", "PublishPort", "80:80"),
        ("Container", "PublishPort", "22:22"),  # not YAML 1.1's sexagesimal 1342
        ("Container", "PublishPort", "8443"),
        ("Container", "Volume", "/srv/www:/usr/share/nginx/html:ro"),
        ("Container", "Volume", "cache:/var/cache/nginx"),
        ("Service", "Restart", "always"),
    ]
    spec = parse_container(nginx.options)
    assert spec.command == ["nginx", "-g", "daemon off;"]
    assert spec.environment == {"MODE": "production", "UMASK": "0755", "GREETING": "hello world"}
    assert [(p.host_port, p.container_port) for p in spec.ports] == [(80, 80), (22, 22), (0, 8443)]
    assert spec.volumes[0].read_only and spec.restart.name == "unless-stopped"
    other = parse_container(worker.options)
    assert other.command == ["/bin/sh", "-c", "sleep 1000", "--verbose"]
    assert other.environment == {"A": "1", "B": "2"}  # a mapping: sorted by name
    assert m.metadata is not None
    assert m.metadata.cluster_groups == ["default"]
    assert m.metadata.labels == [Label("team", "7"), Label("tier", "front")]


def test_envelope_digest_ignores_comments_and_key_order_but_not_metadata() -> None:
    shuffled = """\
spec:
  drift: {policy: repair}
  rollout:
    batch_size: 2
  units:
    - contents: "[Service]\\nExecStart=/usr/bin/python3 -m http.server 8080\\n"
      name: web.service
metadata:
  lifecycle: production
  annotations: {fleet.scalecomputing.com/cluster-groups: "edge-us, edge-eu"}
  labels: [demo, nginx]
  clusterGroups: [edge-eu]
  description: the web tier
  name: web
type: Application
version: '1'
"""
    assert parse_manifest(shuffled).digest() == parse_manifest(ENVELOPE).digest()
    relabelled = ENVELOPE.replace("lifecycle: production", "lifecycle: testonly")
    assert parse_manifest(relabelled).digest() != parse_manifest(ENVELOPE).digest()
    env_order = CONTAINERS.replace('{B: "2", A: 1}', '{A: 1, B: "2"}')
    assert parse_manifest(env_order).digest() == parse_manifest(CONTAINERS).digest()


def test_the_bare_form_keeps_the_digest_it_always_had() -> None:
    """Digests are stored: an upgrade must not make an unchanged manifest a new version."""
    assert parse_manifest(SEED).digest() == (
        "5001bab481727c0dd9a32a7d4f52c09b66cee75e95a99d70bbb1b5b1ba5b9bd5"
    )


def test_labels_as_key_value_list_and_cluster_groups_as_text() -> None:
    text = (
        "type: Application\nmetadata:\n  clusterGroups: 'a, b'\n  clusterGroup: c\n"
        "  labels:\n    - {key: k, value: v}\n    - plain\n"
        "spec:\n  containers:\n    - {name: x, image: busybox}\n"
    )
    m = parse_manifest(text)
    assert m.metadata is not None
    assert m.metadata.cluster_groups == ["a", "b", "c"]
    assert m.metadata.labels == [Label("k", "v"), Label("plain")]
    assert m.units[0].options == [UnitOption("Container", "Image", "busybox")]


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        (
            "type: ContainerDefinition\nspec:\n  containers: []\n",
            1,
            "type: 'ContainerDefinition' cannot be deployed: only type Application is",
        ),
        ("type: Application\nmetadata: {name: x}\n", 1, "missing 'spec'"),
        ("type: Application\nspec: {}\n", 2, "spec: needs 'units' and/or 'containers'"),
        ("type: Application\nunits: []\nspec: {}\n", 2, "go under 'spec'"),
        (
            "type: Application\nspec:\n  units:\n    - name: a.service\n      contents: 3\n",
            5,
            "spec.units[0].contents",
        ),
        (
            "type: Application\nspec:\n  containers:\n    - name: web\n      image: Nginx\n",
            5,
            "spec.containers[0].image: invalid image reference 'Nginx'",
        ),
        (
            "type: Application\nspec:\n  containers:\n    - name: web\n",
            4,
            "spec.containers[0]: missing 'image'",
        ),
        (
            "type: Application\nspec:\n  containers:\n    - name: web\n      image: nginx\n"
            "      ports:\n        - 80:80\n        - 99999:80\n",
            8,
            "spec.containers[0].ports[1]: invalid host port",
        ),
        (
            "type: Application\nspec:\n  containers:\n    - name: web\n      image: nginx\n"
            "      mounts:\n        - {hostPath: relative/dir, mountPath: /data}\n",
            7,
            "spec.containers[0].mounts[0]",
        ),
        (
            "type: Application\nspec:\n  containers:\n    - name: web\n      image: nginx\n"
            "      mounts:\n        - {mountPath: /data}\n",
            7,
            "spec.containers[0].mounts[0]: missing 'hostPath'",
        ),
        (
            "type: Application\nspec:\n  containers:\n    - name: web\n      image: nginx\n"
            "      env:\n        - {name: 1BAD, value: x}\n",
            7,
            "spec.containers[0].env[0]: invalid variable name '1BAD'",
        ),
        (
            "type: Application\nspec:\n  containers:\n    - name: web\n      image: nginx\n"
            "      restart: on-abort\n",
            6,
            "spec.containers[0].restart",
        ),
        (
            "type: Application\nspec:\n  containers:\n    - name: bad name\n      image: nginx\n",
            4,
            "spec.containers[0].name",
        ),
        (
            "type: Application\nspec:\n  containers:\n    - name: web\n      image: nginx\n"
            "      volumes: []\n",
            6,
            "unknown key 'volumes'",
        ),
        (
            "type: Application\nspec:\n  containers:\n    - name: web\n      image: nginx\n"
            "      network: none\n      ports: ['80:80']\n",
            4,
            "spec.containers[0]: [Container] PublishPort: ports cannot be published with Network=none",
        ),
        (
            "type: Application\nspec:\n  containers:\n    - name: web\n      image: nginx\n"
            "      network: 'a:b'\n",
            6,
            "spec.containers[0].network",
        ),
        (
            "type: Application\nspec:\n  content:\n    - {path: /etc/x, data: y}\n",
            3,
            "spec.content: files (spec.content) are not supported",
        ),
        (
            "type: Application\nspec:\n  units:\n    - name: web.container\n      contents: |\n"
            "        [Container]\n        Image=nginx\n  containers:\n    - name: web\n"
            "      image: nginx\n",
            9,
            "spec.containers[0].name: unit web.container appears twice (also spec.units[0])",
        ),
        (
            "type: Application\nmetadata:\n  lifecycle: retired\nspec:\n  containers:\n"
            "    - {name: web, image: nginx}\n",
            3,
            "metadata.lifecycle: must be one of draft, testonly, production, undeploy",
        ),
        (
            "type: Application\nmetadata:\n  owner: me\nspec:\n  containers:\n"
            "    - {name: web, image: nginx}\n",
            3,
            "unknown key 'owner'",
        ),
        (
            "type: Application\nspec:\n  containers:\n    - {name: web, image: nginx}\n"
            "  rollout:\n    batch_size: 0\n",
            6,
            "spec.rollout.batch_size",
        ),
        ("- units\n", 1, "manifest must be a mapping"),
    ],
)
def test_envelope_refusals_name_the_line_and_field_path(text: str, line: int, needle: str) -> None:
    with pytest.raises(ManifestError) as err:
        parse_manifest(text)
    assert needle in str(err.value)
    assert err.value.line == line, str(err.value)


def test_the_examples_in_docs_manifest_md_parse() -> None:
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[4] / "docs" / "manifest.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", doc, re.S)
    assert len(blocks) == 2
    envelope, bare = (parse_manifest(b) for b in blocks)
    assert [u.name for u in envelope.units] == ["web.service", "nginx.container"]
    assert envelope.metadata is not None and envelope.metadata.cluster_groups == [
        "edge-eu",
        "edge-us",
    ]
    assert bare.metadata is None and [u.name for u in bare.units] == [
        "web.service",
        "cache.container",
    ]
