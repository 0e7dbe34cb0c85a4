"""Tests of deploy/ (there is no mab.deploy package): deploy/Dockerfile and
the repository's .dockerignore, read and linted without building an image.

hadolint lints the Dockerfile with every rule on; a rule may be silenced
only by a `# hadolint ignore=` pragma whose comment block says, for each
code, why. The rest checks what the lint cannot: the image's user, signals,
entry point and writable paths, and that the build context holds what the
wheel is built from and nothing else.
"""

import json
import os
import re
import subprocess
import sys

import pytest

from tests.deploy import image

HADOLINT = os.path.join(os.path.dirname(sys.executable), "hadolint")
PRAGMA = re.compile(r"^#\s*hadolint\s+ignore=(\S+)\s*$")


def hadolint(tmp_path, *args, dockerfile=image.DOCKERFILE):
    """hadolint's findings as JSON, every severity failing, with a
    configuration that ignores nothing (so no user or repository
    configuration can hide a rule)."""
    config = tmp_path / "hadolint.yaml"
    config.write_text("ignored: []\n")
    result = subprocess.run(
        [HADOLINT, "--config", str(config), "--failure-threshold", "style", "--format", "json", *args, dockerfile],
        capture_output=True, text=True, timeout=120,
    )
    findings = json.loads(result.stdout or "[]")
    assert result.returncode == (1 if findings else 0), result.stderr
    return findings


def pragmas():
    """{line after the pragma: (codes, comment lines above the pragma)}."""
    with open(image.DOCKERFILE) as f:
        lines = f.read().splitlines()
    found = {}
    for number, line in enumerate(lines, start=1):
        match = PRAGMA.match(line.strip())
        if match:
            comments = []
            above = number - 2
            while above >= 0 and lines[above].lstrip().startswith("#") and not PRAGMA.match(lines[above].strip()):
                comments.insert(0, lines[above].strip().lstrip("#").strip())
                above -= 1
            found[number + 1] = (match.group(1).split(","), comments)
    return found


def test_hadolint_finds_nothing(tmp_path):
    findings = hadolint(tmp_path)
    assert findings == [], "\n".join(f"line {f['line']}: {f['code']} {f['message']}" for f in findings)


def test_hadolint_sees_the_file(tmp_path):
    """The lint is real: the same file with its pragmas disabled has findings,
    and a known bad instruction is caught."""
    assert hadolint(tmp_path, "--disable-ignore-pragma")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim-bookworm\nRUN cd /tmp && pip install numpy\n")
    codes = {finding["code"] for finding in hadolint(tmp_path, dockerfile=str(bad))}
    assert {"DL3003", "DL3013"} <= codes, codes


def test_every_ignored_rule_is_justified_and_needed(tmp_path):
    """Each `# hadolint ignore=CODE` has a comment above it that starts a
    sentence with CODE and says why, and silences a finding that is really there."""
    unsilenced = hadolint(tmp_path, "--disable-ignore-pragma")
    silenced = {(finding["line"], finding["code"]) for finding in unsilenced}
    for line, (codes, comments) in pragmas().items():
        for code in codes:
            reasons = [text for text in comments if text.startswith(code)]
            assert reasons and len(" ".join(reasons).split()) >= 8, (
                f"line {line}: the comment above `hadolint ignore={code}` must say why, starting with {code}"
            )
            assert (line, code) in silenced, f"line {line}: `hadolint ignore={code}` silences nothing"
    assert silenced <= {(line, code) for line, (codes, _) in pragmas().items() for code in codes}


def test_two_stages_and_only_the_runtime_one_ships():
    stages = image.stages()
    assert len(stages) == 2
    builder, runtime = stages
    assert builder.name == "builder"
    assert builder.base == runtime.base, "the wheel is built for the Python it runs on"
    assert re.fullmatch(r"python:3\.1[1-9]-slim-\w+", runtime.base), runtime.base
    # The compiler stays in the builder; the runtime adds the OpenMP runtime.
    builder_apt = image.shell_command(image.run_with(builder, "apt-get install"))
    runtime_apt = image.shell_command(image.run_with(runtime, "apt-get install"))
    assert "gcc" in builder_apt.split()
    assert "libgomp1" in runtime_apt.split() and "gcc" not in runtime_apt
    for command in (builder_apt, runtime_apt):
        assert "--no-install-recommends" in command and "rm -rf /var/lib/apt/lists/*" in command
    # The builder proves the parallel build, as CI does (.ci/run).
    wheel = image.run_with(builder, "pip wheel")
    assert wheel.env.get("MAB_REQUIRE_OPENMP") == "1"
    assert "--no-deps" in image.shell_command(wheel).split()
    # The runtime installs from the builder's wheel, compiling nothing.
    install = image.shell_command(image.run_with(runtime, "pip install"))
    assert "--only-binary=:all:" in install.split() and ".whl" in install


def test_runs_as_a_fixed_non_root_user():
    uid, gid = image.image_user()
    assert uid >= 1000 and gid >= 1000
    assert f"--uid {uid}" in image.shell_command(image.run_with(image.runtime_stage(), "useradd"))
    # Kubernetes' runAsUser in deploy/k8s names the same user (test_manifests).


def test_gunicorn_is_pid_1_and_stops_gracefully_on_sigterm():
    runtime = image.runtime_stage()
    assert runtime.one("STOPSIGNAL").value.strip() == "SIGTERM"
    command = image.image_cmd()   # exec form: no shell becomes PID 1
    assert command[0] == "gunicorn", "gunicorn itself is PID 1 (no init, no shell in front)"
    assert runtime.all("ENTRYPOINT") == [], "nothing wraps the CMD"
    config_path = command[command.index("-c") + 1]
    copies = image.app_copies()
    assert any(os.path.basename(config_path) in sources and config_path.startswith(dest) for sources, dest in copies)
    assert runtime.all("HEALTHCHECK") == [], "Kubernetes probes, not a Docker HEALTHCHECK (see the comment)"


def test_the_app_files_are_copied_from_the_repository_root():
    copies = image.app_copies()
    assert copies == [(["app.py", "gunicorn.conf.py"], "/app/")]
    assert image.runtime_stage().all("WORKDIR")[-1].value == "/app", "gunicorn imports app:app from its cwd"
    for sources, _ in copies:
        for source in sources:
            assert os.path.isfile(os.path.join(image.ROOT, source))


def test_everything_the_service_writes_goes_to_tmp():
    env = image.image_env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    for key in ("MAB_CACHE_DIR", "PROMETHEUS_MULTIPROC_DIR", "XDG_RUNTIME_DIR"):
        assert env[key] == "/tmp" or env[key].startswith("/tmp/"), f"{key}={env[key]} is not under /tmp"
    # gunicorn's heartbeat files: in /dev/shm, which container runtimes mount.
    # (gunicorn.conf.py at the root runs the packaged mab/gunicorn_conf.py.)
    assert 'worker_tmp_dir = "/dev/shm"' in open(os.path.join(image.ROOT, "mab", "gunicorn_conf.py")).read()


def test_exposes_the_port_gunicorn_binds():
    env = image.image_env()
    assert image.runtime_stage().one("EXPOSE").value.strip() == env["PORT"]


# -- .dockerignore -------------------------------------------------------------


@pytest.mark.parametrize("path", [
    ".git/HEAD", ".git", ".venv/bin/python", ".venv", "data/items.csv", "bench-results/issue5-400.json",
    "build/lib.linux-x86_64-cpython-311/mab/sampling.so", "dist/mab-0.1.0.tar.gz", "mab.egg-info/PKG-INFO",
    "mab/sampling.cpython-311-x86_64-linux-gnu.so", "mab/stores/_table.cpython-311-x86_64-linux-gnu.so",
    "mab/sampling.c", "mab/stores/_table.c", "mab/__pycache__/config.cpython-311.pyc",
    "tests/test_web.py", "scripts/bench.py", "docs/benchmarks.md", ".ci/run",
])
def test_dockerignore_leaves_out(path):
    assert image.ignored(path)


def test_the_context_holds_what_the_wheel_and_the_image_need():
    tracked = subprocess.run(
        ["git", "ls-files", "mab", "pyproject.toml", "setup.py", "README.md", "app.py", "gunicorn.conf.py"],
        cwd=image.ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()
    assert "mab/openapi.json" in tracked and "mab/sampling.pyx" in tracked
    context = image.context_files()
    missing = sorted(set(tracked) - context)
    assert not missing, f"needed by the build but left out of the context: {missing}"
    # And nothing generated: only tracked files, .dockerignore and the Dockerfile.
    files = {path for path in context if os.path.isfile(os.path.join(image.ROOT, path))}
    extra = files - set(tracked) - {".dockerignore", image.DOCKERFILE_IN_CONTEXT}
    assert not extra, f"in the context but not in git: {sorted(extra)}"
