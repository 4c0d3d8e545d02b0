"""The YAML configuration: a full file loads, unknown keys and bad values are
errors naming the dotted key, and flags override the file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from presence_node.cli import make_config
from presence_node.config import Config, ConfigError, load

FULL = """\
node_id: edge-1
sip: 0.0.0.0:5070
admin: 127.0.0.1:9000
advertised_host: sip.example.com
domains: [Example.COM, example.org]
packages: [presence, presence.winfo, dialog, "dialog;sla"]
subscription_expiry: {min: 30, default: 1800, max: 3600}
publication_expiry:
  min: 60
  default: 3600
  max: 7200
notify:
  min_interval: 1.0
  udp_max_size: 1200
  t1: 0.5
  t2: 4
limits:
  max_body_size: 32768
  per_source_rate: 200
expiry_interval: 0.5
state_dir: /var/lib/presence
drain_timeout: 10
log_level: debug
log_format: text
"""


def write(tmp_path: Path, text: str, name: str = "node.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_full_file_loads(tmp_path):
    c = load(write(tmp_path, FULL))
    assert c.node_id == "edge-1"
    assert c.sip_address == ("0.0.0.0", 5070)
    assert c.admin_address == ("127.0.0.1", 9000)
    assert c.advertised_host == "sip.example.com"
    assert c.domains == ("example.com", "example.org")
    assert c.packages == ("presence", "presence.winfo", "dialog", "dialog;sla")
    assert (c.subscription_expiry.min, c.subscription_expiry.default, c.subscription_expiry.max) == (30, 1800, 3600)
    assert c.publication_expiry.max == 7200
    assert (c.notify.min_interval, c.notify.udp_max_size, c.notify.t2) == (1.0, 1200, 4.0)
    assert c.limits.max_body_size == 32768 and c.limits.per_source_rate == 200
    assert c.state_dir == Path("/var/lib/presence")
    assert (c.drain_timeout, c.log_level, c.log_format) == (10, "debug", "text")


def test_empty_file_gives_the_documented_defaults(tmp_path):
    c = load(write(tmp_path, ""))
    assert c == Config()
    # D10 bounds and D7 default.
    for e in (c.subscription_expiry, c.publication_expiry):
        assert (e.min, e.default, e.max) == (60, 3600, 3600)
    assert c.notify.min_interval == 0
    assert c.domains == ()


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("subscription_expiry: {mni: 5}\n", "subscription_expiry.mni"),
        ("sip_port: 5060\n", "sip_port"),
        ("notify: {min_intervall: 1}\n", "notify.min_intervall"),
        ("limits:\n  max_body: 10\n", "limits.max_body"),
    ],
)
def test_unknown_keys_are_errors_naming_the_dotted_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as err:
        load(write(tmp_path, text))
    assert key in str(err.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("subscription_expiry: {min: -1}\n", "subscription_expiry.min"),
        ("subscription_expiry: {min: soon}\n", "subscription_expiry.min"),
        ("publication_expiry: {max: 0}\n", "publication_expiry.max"),
        ("subscription_expiry: {min: 600, default: 300}\n", "subscription_expiry"),
        ("notify: {t1: 0}\n", "notify.t1"),
        ("notify: {udp_max_size: 100}\n", "notify.udp_max_size"),
        ("notify: {min_interval: -1}\n", "notify.min_interval"),
        ("sip: localhost\n", "sip"),
        ("admin: 127.0.0.1:70000\n", "admin"),
        ("packages: [presence, xcap]\n", "packages"),
        ("packages: []\n", "packages"),
        ("node_id: 'bad id!'\n", "node_id"),
        ("log_level: loud\n", "log_level"),
        ("expiry_interval: 0\n", "expiry_interval"),
        ("storage: {backend: sqlite}\n", "storage.backend"),
        ("federation: {tls_cert_file: /c.pem, tls_key_file: /k.pem}\n", "federation"),
        ("federation: {max_frame: 100}\n", "federation.max_frame"),
        ("federation: {max_unauthenticated: 4, max_unauthenticated_per_source: 8}\n", "federation"),
        ("federation: {max_frame: 1048576, max_message: 65536}\n", "federation"),
    ],
)
def test_bad_values_are_errors_naming_the_dotted_key(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load(path)
    msg = str(err.value)
    assert str(path) in msg
    assert any(line.strip().startswith(f"{key}:") for line in msg.splitlines()), msg


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "sip: [unclosed\n"])
def test_not_a_mapping_or_not_yaml_is_an_error(tmp_path, text):
    with pytest.raises(ConfigError) as err:
        load(write(tmp_path, text))
    assert "node.yaml" in str(err.value)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path / "absent.yaml")
    assert "absent.yaml" in str(err.value)


def test_flags_override_the_file(tmp_path):
    path = write(tmp_path, FULL)
    c = make_config(["--config", str(path), "--sip", "127.0.0.1:5999", "--node-id", "edge-2", "--log-level", "error",
                     "--admin-secret-file", str(tmp_path / "s")])
    assert c.sip_address == ("127.0.0.1", 5999)
    assert c.node_id == "edge-2"
    assert c.log_level == "error"
    assert c.admin_secret_file == tmp_path / "s"
    # Settings without a flag keep the file's value.
    assert c.admin_address == ("127.0.0.1", 9000)
    assert c.subscription_expiry.min == 30


def test_a_bad_flag_value_is_reported_by_key(tmp_path):
    with pytest.raises(ConfigError) as err:
        make_config(["--sip", "nowhere"])
    assert "sip:" in str(err.value)


def test_readme_numeric_defaults_are_the_models() -> None:
    """Section 4 of the README states each numeric default the model has
    (issue #12 item 15: it said 65536 for ``limits.max_body_size``)."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    table = readme[readme.index("## 4. Configuration reference") :]
    table = table[: table.index("\n## ")]
    defaults = Config()
    checked = 0
    for key, default in re.findall(r"^\| `([a-z_]+\.[a-z_0-9]+)` \| [^|]+ \| ([^|]+) \|", table, re.M):
        try:
            documented = float(default.strip(" `"))
        except ValueError:
            continue  # prose ("the node id") or several values
        section, name = key.split(".")
        assert documented == float(getattr(getattr(defaults, section), name)), key
        checked += 1
    assert checked >= 20
