"""The repository's Dockerfile, read as data: its stages and the runtime settings of the final one.

The Dockerfile is the one source of truth for the operator image. No engine builds it here, so
``sovereign_dev.images`` writes the same image itself and takes from this reading what the
final stage declares (ENV, USER, ENTRYPOINT, CMD, LABEL, WORKDIR) and where the build stage puts
the virtual environment; ``tests/unit/chart/test_dockerfile.py`` holds the file to its rules and
``tests/unit/dev/test_operator_image.py`` holds the built image to the file.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile"


class DockerfileError(ValueError):
    """The Dockerfile uses a form this reader does not understand; the message names the line."""


@dataclass
class Stage:
    """One ``FROM`` stage: its base (ARG defaults substituted), its name and its instructions."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        """The arguments of every instruction ``keyword`` (upper case), in order."""
        return [argument for instruction, argument in self.instructions if instruction == keyword]


@dataclass(frozen=True)
class Runtime:
    """What the final stage sets for the running container."""

    env: dict[str, str]
    user: str
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    labels: dict[str, str]
    working_dir: str
    #: The directory the build stage creates its virtual environment in (``python -m venv <dir>``).
    venv: str


def stages(*, path: Path = DOCKERFILE) -> list[Stage]:
    """The Dockerfile's stages, in order, with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    args: dict[str, str] = {}
    parsed: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, argument = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "ARG" and not parsed:
            name, _, default = argument.partition("=")
            args[name] = default
        elif instruction == "FROM":
            words = argument.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            parsed.append(Stage(base=base, name=words[2] if len(words) > 2 else None))
        elif not parsed:
            raise DockerfileError(f"{path}: {instruction} before the first FROM: {line}")
        else:
            parsed[-1].instructions.append((instruction, argument.strip()))
    return parsed


def runtime(*, base_env: dict[str, str], path: Path = DOCKERFILE) -> Runtime:
    """The final stage's runtime settings; ``$VAR`` in ENV expands against ``base_env`` (the base image's)."""
    all_stages = stages(path=path)
    final = all_stages[-1]
    env = dict(base_env)
    for argument in final.all("ENV"):
        for pair in shlex.split(argument):
            key, separator, value = pair.partition("=")
            if not separator:
                raise DockerfileError(f"{path}: ENV {argument}: write ENV KEY=value")
            env[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), value)
    labels: dict[str, str] = {}
    for argument in final.all("LABEL"):
        labels.update(pair.split("=", 1) for pair in shlex.split(argument))
    venvs = [match.group(1) for stage in all_stages for run in stage.all("RUN")
             if (match := re.search(r"python3? -m venv (\S+)", run))]
    if len(venvs) != 1:
        raise DockerfileError(f"{path}: expected one `python -m venv <dir>` in a RUN, found {venvs}")
    return Runtime(env=env, user=_last(final, "USER", path=path), entrypoint=_exec_form(final, "ENTRYPOINT", path=path),
                   cmd=_exec_form(final, "CMD", path=path), labels=labels,
                   working_dir=(final.all("WORKDIR") or [""])[-1], venv=venvs[0])


def _last(stage: Stage, keyword: str, *, path: Path) -> str:
    values = stage.all(keyword)
    if not values:
        raise DockerfileError(f"{path}: the final stage sets no {keyword}")
    return values[-1]


def _exec_form(stage: Stage, keyword: str, *, path: Path) -> tuple[str, ...]:
    value = _last(stage, keyword, path=path)
    try:
        words = json.loads(value)
    except ValueError as err:
        raise DockerfileError(f"{path}: {keyword} {value}: use the exec form, {keyword} [\"...\"]") from err
    return tuple(words)
