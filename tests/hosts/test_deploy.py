"""deploy/systemd/*.service and deploy/env/*.env against the real programs.

- every option a unit's ExecStart gives, and every variable its env file sets, is one
  the program knows, and the program's own parser accepts them together (values too);
- secret keys reach a part only as credentials (LoadCredential, read as %d/NAME);
- `systemd-analyze verify` finds nothing wrong (on a copy whose ExecStart points at this
  venv's programs and whose EnvironmentFile is deploy/env), and `systemd-analyze security`
  rates every unit's exposure low (skipped where systemd-analyze is missing).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.core import ParameterSource

from broker.cli import main as broker_main
from gateway.cli import main as gateway_main
from stack.certs import write_key_pair
from stack.probe import main as probe_main
from workers.cli import main as worker_main

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
PROGRAMS: dict[str, click.Command] = {
    "chat-broker": broker_main, "chat-worker": worker_main, "chat-gateway": gateway_main, "chat-probe": probe_main,
}
ROLES = {"broker": "broker", "worker": "worker", "gateway": "gateway"}
MAX_EXPOSURE = 2.0  # systemd-analyze security: 0 (locked down) to 10 (exposed)


def directives(unit: Path) -> list[tuple[str, str]]:
    """(key, value) pairs of the unit, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", unit.read_text())
    pairs = []
    for line in text.splitlines():
        if line.strip() and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            pairs.append((key.strip(), value.strip()))
    return pairs


def values(unit: Path, key: str) -> list[str]:
    return [v for k, v in directives(unit) if k == key]


def exec_start(unit: Path) -> list[str]:
    (line,) = values(unit, "ExecStart")
    return shlex.split(line)


def env_file(unit: Path) -> dict[str, str]:
    (path,) = values(unit, "EnvironmentFile")
    name = Path(path).name
    assert path == f"/etc/chat/{name}"
    env = {}
    for line in (DEPLOY / "env" / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


def test_every_part_has_a_unit_and_an_env_file() -> None:
    assert [u.stem for u in UNITS] == sorted(PROGRAMS)
    for unit in UNITS:
        assert Path(exec_start(unit)[0]).name == unit.stem
        assert env_file(unit)


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.stem)
def test_the_program_takes_the_units_options_and_variables(unit: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    command = PROGRAMS[unit.stem]
    envvars = {p.envvar for p in command.params if isinstance(p.envvar, str)}
    env = env_file(unit)
    assert set(env) <= envvars, f"not read by {unit.stem}: {set(env) - envvars}"
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    for credential in values(unit, "LoadCredential"):  # stand-ins for what systemd passes
        name = credential.partition(":")[0]
        if name.endswith(".key_secret"):
            stem = name.removesuffix(".key_secret")
            write_key_pair(credentials, stem, ROLES[stem])
    if values(unit, "LoadCredential") and not (credentials / "broker.key").exists():
        write_key_pair(credentials, "broker", "broker")
    for key in [k for k in os.environ if k.startswith("CHAT_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    args = [arg.replace("%d", str(credentials)) for arg in exec_start(unit)[1:]]
    with command.make_context(unit.stem, args) as ctx:  # the program's own parser and checks
        for param in command.params:
            if param.envvar in env:  # read from the file, not shadowed by the command line
                assert ctx.get_parameter_source(param.name or "") == ParameterSource.ENVIRONMENT, param.name


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.stem)
def test_secret_keys_are_credentials(unit: Path) -> None:
    loaded = {c.partition(":")[0]: c.partition(":")[2] for c in values(unit, "LoadCredential")}
    args = exec_start(unit)
    used = {m for arg in args for m in re.findall(r"%d/(\S+)", arg)}
    assert used == set(loaded)
    assert not any(arg.endswith(".key_secret") and not arg.startswith("%d/") for arg in args)
    for name, path in loaded.items():
        assert Path(path).name == name and path.startswith("/etc/chat/keys/")
    assert "CURVE" not in " ".join(env_file(unit))  # keys are not options in the env file
    for key, value in (("DynamicUser", "yes"), ("ProtectSystem", "strict"), ("NoNewPrivileges", "yes"),
                       ("Restart", "always"), ("CapabilityBoundingSet", "")):
        assert values(unit, key) == [value], key


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("no systemd-analyze (Debian package systemd)")
    return found


@pytest.fixture
def units_here(tmp_path: Path) -> list[Path]:
    """Copies of the units that run this venv's programs with deploy/env."""
    copies = []
    for unit in UNITS:
        text = unit.read_text().replace("/opt/chat/bin/", f"{Path(sys.executable).parent}/")
        text = re.sub(r"/etc/chat/(\w+\.env)", lambda m: str(DEPLOY / "env" / m.group(1)), text)
        copy = tmp_path / unit.name
        copy.write_text(text)
        copies.append(copy)
    return copies


def test_systemd_finds_nothing_wrong(units_here: list[Path]) -> None:
    result = subprocess.run([systemd_analyze(), "verify", *map(str, units_here)], capture_output=True,
                            text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_systemd_rates_the_units_locked_down(units_here: list[Path]) -> None:
    binary = systemd_analyze()
    for unit in units_here:
        result = subprocess.run([binary, "security", "--offline=true", str(unit)], capture_output=True,
                                text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
        if "--offline" in result.stderr:
            pytest.skip("this systemd-analyze cannot rate units offline")
        match = re.search(r"exposure level for \S+: ([\d.]+)", result.stdout)
        assert match, result.stdout + result.stderr
        assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout
