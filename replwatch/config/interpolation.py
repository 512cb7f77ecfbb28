"""${NAME} and ${NAME:-default} in the strings of a parsed config, from the environment given
(pure: the caller passes os.environ or a test's mapping). An unset variable without a
default is a problem naming its path."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from replwatch.config.problems import join_path

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(node: Any, path: str, env: Mapping[str, str], problems: list[str]) -> Any:
    """`node` (parsed YAML at `path`) with every ${…} replaced; problems appended to."""
    if isinstance(node, str):

        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.append(f"{path or '<root>'}: environment variable {name} is not set")
            return ""

        return _ENV_RE.sub(repl, node)
    if isinstance(node, dict):
        return {k: interpolate(v, join_path(path, str(k)), env, problems) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, f"{path}[{i}]", env, problems) for i, v in enumerate(node)]
    return node
