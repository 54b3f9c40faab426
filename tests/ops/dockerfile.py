"""A small Dockerfile reader, enough to check the image's instructions and replay its build."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


@dataclass(frozen=True, kw_only=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str  # the rest of the logical line, continuations joined
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON-array (exec) form of the arguments, or None for the shell form."""
        try:
            value = json.loads(self.args)
        except ValueError:
            return None
        return value if isinstance(value, list) else None


@dataclass(kw_only=True)
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [ins for ins in self.instructions if ins.keyword == keyword]


def parse(path: Path) -> list[Stage]:
    """Stages of the Dockerfile at `path`, each with its instructions (ARGs before FROM skipped)."""
    stages: list[Stage] = []
    for ins in _logical_lines(path.read_text(encoding="utf-8")):
        if ins.keyword == "FROM":
            words = ins.args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif stages:
            stages[-1].instructions.append(ins)
    return stages


def _logical_lines(text: str) -> list[Instruction]:
    result: list[Instruction] = []
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if buffer and line.startswith("#"):
            continue  # comments inside a continued instruction are dropped by Docker too
        if not buffer:
            start = number
        if line.endswith("\\"):
            buffer.append(line[:-1].strip())
            continue
        buffer.append(line)
        keyword, _, args = " ".join(part for part in buffer if part).partition(" ")
        result.append(Instruction(keyword=keyword.upper(), args=args.strip(), line=start))
        buffer = []
    return result


def env_pairs(ins: Instruction) -> list[tuple[str, str]]:
    """`ENV a=1 b="x y"` as [(a, "1"), (b, "x y")] (values not yet expanded)."""
    pairs = []
    for word in shlex.split(ins.args):
        key, sep, value = word.partition("=")
        if not sep:
            raise ValueError(f"line {ins.line}: use ENV KEY=VALUE, not the legacy form")
        pairs.append((key, value))
    return pairs


def expand(value: str, env: dict[str, str]) -> str:
    """Docker's `$VAR` / `${VAR}` substitution (unknown variables become empty)."""
    return _VAR.sub(lambda m: env.get(m.group(1) or m.group(2), ""), value)


def dockerignore_keeps(ignore_file: Path, relative: str) -> bool:
    """Whether the build context keeps `relative` under a `**` + `!path` style .dockerignore.

    Only the style used by this project is understood: exclude everything, re-include by path.
    """
    lines = [
        line.strip()
        for line in ignore_file.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if lines[:1] != ["**"]:
        raise ValueError(".dockerignore must start with '**' (allow-list style)")
    wanted = relative.rstrip("/")
    for line in lines[1:]:
        if line.startswith("!"):
            kept = line[1:].rstrip("/")
            if wanted == kept or wanted.startswith(kept + "/"):
                return True
    return False
