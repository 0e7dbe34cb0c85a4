"""deploy/Dockerfile and .dockerignore read as data, for the tests of deploy/.

No image can be built on this machine (base images cannot be pulled), so the
tests take the Dockerfile's own instructions (the builder's wheel command, the
runtime stage's install, environment, user and command) and run them outside
a container. Reading them from the file, rather than repeating them in the
tests, keeps the two from drifting apart.
"""

import json
import os
import re
import shutil
from dataclasses import dataclass, field

from docker.utils.build import PatternMatcher, exclude_paths
from dockerfile_parse import DockerfileParser

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCKERFILE = os.path.join(ROOT, "deploy", "Dockerfile")
DOCKERIGNORE = os.path.join(ROOT, ".dockerignore")
# Where the Dockerfile sits in the build context (docker build -f deploy/Dockerfile .).
DOCKERFILE_IN_CONTEXT = "deploy/Dockerfile"

# RUN flags of BuildKit (--mount=..., --network=..., --security=...): how a
# step runs in a builder, not what it runs.
_RUN_FLAGS = re.compile(r"^(?:--[a-z]+=\S+\s+)+")


@dataclass
class Instruction:
    """One instruction: its name (RUN, ENV, ...), its value as the parser
    joined it (continuation lines become spaces), the ENV in effect at it,
    and its first line (1-based)."""

    name: str
    value: str
    env: dict
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list = field(default_factory=list)

    def all(self, name):
        return [i for i in self.instructions if i.name == name]

    def one(self, name):
        found = self.all(name)
        assert len(found) == 1, f"stage {self.name or self.base}: expected one {name}, found {len(found)}"
        return found[0]


def parser():
    return DockerfileParser(path=DOCKERFILE, cache_content=True)


def stages():
    """The stages of deploy/Dockerfile, in order; comments left out."""
    parsed = parser()
    result = []
    for item, context in zip(parsed.structure, parsed.context_structure):
        name = item["instruction"]
        if name == "FROM":
            base, _, alias = item["value"].partition(" AS ")
            result.append(Stage(base=base.strip(), name=alias.strip() or None))
        elif name != "COMMENT":
            assert result, f"{name} before the first FROM"
            env = {k: v for k, v in context.envs.items()}
            result[-1].instructions.append(Instruction(name, item["value"], env, item["startline"] + 1))
    return result


def builder_stage():
    (stage,) = [s for s in stages() if s.name == "builder"]
    return stage


def runtime_stage():
    """The last stage: the image that runs."""
    return stages()[-1]


def shell_command(instruction):
    """A RUN instruction's shell command, without BuildKit's --mount flags."""
    assert instruction.name == "RUN"
    return _RUN_FLAGS.sub("", instruction.value).strip()


def run_with(stage, text):
    """The one RUN of a stage whose command contains `text`."""
    (found,) = [i for i in stage.all("RUN") if text in shell_command(i)]
    return found


def image_env():
    """The runtime image's ENV as the container sees it, except PATH (which
    the parser cannot complete without the base image's)."""
    env = dict(runtime_stage().one("CMD").env)
    env.pop("PATH", None)
    return env


def image_user():
    """(uid, gid) of the runtime image's USER, which must be numeric."""
    user = runtime_stage().one("USER").value.strip()
    uid, _, gid = user.partition(":")
    return int(uid), int(gid or uid)


def image_home():
    """The home directory useradd gives the image's user."""
    command = run_with(runtime_stage(), "useradd")
    match = re.search(r"--home-dir\s+(\S+)", shell_command(command))
    assert match, "useradd names the user's home"
    return match.group(1)


def image_cmd():
    """The runtime image's CMD, which must be in exec form (a JSON array)."""
    value = runtime_stage().one("CMD").value
    command = json.loads(value)
    assert isinstance(command, list) and all(isinstance(part, str) for part in command)
    return command


def app_copies():
    """The runtime stage's COPY of files from the context: (sources, destination)."""
    copies = []
    for instruction in runtime_stage().all("COPY"):
        parts = instruction.value.split()
        if any(part.startswith("--from") for part in parts):
            continue
        *sources, destination = [part for part in parts if not part.startswith("--")]
        copies.append((sources, destination))
    return copies


def dockerignore_patterns():
    """The patterns of .dockerignore, read the way docker-py's build reads them."""
    with open(DOCKERIGNORE) as f:
        return [line.strip() for line in f.read().splitlines() if line.strip() and not line.strip().startswith("#")]


def ignored(path):
    """True when .dockerignore keeps `path` (relative to the root) out of the context."""
    return PatternMatcher(dockerignore_patterns()).matches(path)


def context_files(root=ROOT):
    """The relative paths (files and directories) Docker sends as the build context."""
    return exclude_paths(root, dockerignore_patterns(), dockerfile=DOCKERFILE_IN_CONTEXT)


def copy_context(destination, root=ROOT):
    """Copy the build context into `destination`, as the builder's `COPY . .` sees it."""
    for relative in sorted(context_files(root)):
        source = os.path.join(root, relative)
        target = os.path.join(destination, relative)
        if os.path.isdir(source):
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(source, target)
