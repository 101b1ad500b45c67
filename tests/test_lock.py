"""requirements.lock (what the Docker image installs, hashes checked) pins
every runtime dependency of pyproject.toml at a version its specifier
allows, and nothing from the dev or test extras. requirements-test.lock
(the constraints scripts/test.sh installs the test extras with, so a new
release of a test tool cannot turn a clean clone red) pins every runtime
and test dependency within its range, the runtime ones as the image has them."""
from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import ROOT


def locked() -> dict[str, Version]:
    text = (ROOT / "requirements.lock").read_text()
    pins = dict(re.findall(r"^([A-Za-z0-9._-]+)==([^\s\\]+)", text, re.M))
    assert pins and all(f"{name}=={version} \\" in text for name, version in pins.items())
    for block in re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2]):  # every pin carries its hashes
        if block.strip() and not block.startswith("#"):
            assert "--hash=sha256:" in block, block[:80]
    return {canonicalize_name(n): Version(v) for n, v in pins.items()}


def test_every_runtime_dependency_is_locked_within_its_specifier():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = locked()
    for spec in project["dependencies"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in requirements.lock"
        assert pins[name] in req.specifier, f"{req.name}=={pins[name]} does not satisfy {req.specifier}"
    for extra in ("pytest", "playwright", "schemathesis", "tqdm"):  # test and train extras stay out of the image
        assert canonicalize_name(extra) not in pins, extra


def test_the_test_lock_pins_every_dependency_as_the_image_does():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    text = (ROOT / "requirements-test.lock").read_text()
    pins = {canonicalize_name(n): Version(v) for n, v in re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", text, re.M)}
    for spec in project["dependencies"] + project["optional-dependencies"]["test"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in requirements-test.lock"
        assert pins[name] in req.specifier, f"{req.name}=={pins[name]} does not satisfy {req.specifier}"
    image = locked()
    assert {n: v for n, v in pins.items() if n in image} == image  # same versions the image runs
    assert "-c requirements-test.lock" in (ROOT / "scripts" / "test.sh").read_text()
