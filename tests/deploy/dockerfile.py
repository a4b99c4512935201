"""A small Dockerfile reader for the tests that replay contrib/docker/Dockerfile without a container engine.

Why our own: the tests only need the instructions of each stage (continuation lines joined, comments
dropped, ENV pairs and exec-form JSON decoded), and no maintained Python package parses Dockerfiles
with BuildKit's ``RUN --mount`` flags.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Instruction:
    keyword: str  #: upper case, e.g. "ENV"
    args: str  #: the rest of the (joined) line


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [i.args for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> list[tuple[str, str]]:
        """ENV pairs in order (values still hold their ``$VAR`` references)."""
        out: list[tuple[str, str]] = []
        for args in self.all("ENV"):
            for word in shlex.split(args, posix=True):
                key, sep, value = word.partition("=")
                if not sep:
                    raise ValueError(f"legacy `ENV key value` form is not supported: ENV {args}")
                out.append((key, value))
        return out

    def exec_form(self, keyword: str) -> list[str]:
        """ENTRYPOINT/CMD in exec form (a JSON array); a shell form is an error here."""
        args = self.last(keyword)
        if args is None:
            return []
        value = json.loads(args)
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ValueError(f"{keyword} is not in exec form: {args}")
        return value


@dataclass
class Dockerfile:
    args: dict[str, str]  #: global ARGs (before the first FROM) and their defaults
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1].rstrip() + " "
            continue
        current += stripped
        if current.strip():
            lines.append(current.strip())
        current = ""
    if current.strip():
        lines.append(current.strip())
    return lines


def parse(path: Path) -> Dockerfile:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text(encoding="utf-8")):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "FROM":
            words = rest.split()
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), ""), words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(image=image, name=name))
        elif not stages:
            if keyword == "ARG":
                key, _, default = rest.partition("=")
                args[key] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, rest))
    return Dockerfile(args=args, stages=stages)
