"""Reading a config file into plain data, guarded: every problem is one `where: reason` line
(a ConfigError), never a traceback, a hang or a memory blow-up. Used for replwatch's config,
the exporter's web config (web.py) and the admin client's config (replwatch/admin/client.py).

- the file must exist, be readable and be UTF-8 (the offending byte's line and column);
- YAML syntax errors carry line and column;
- nesting deeper than MAX_DEPTH is refused while composing (PyYAML's composer recurses);
- aliases may not expand the document beyond MAX_EXPANDED values (or EXPANSION times what
  is written): PyYAML shares an aliased node, but everything after it (${ENV}
  interpolation, validation) walks the expansion, so a "billion laughs" document would hang
  and eat memory;
- a key given twice in one mapping is an error naming its path and both lines (YAML loaders
  silently keep the last one, so one of the two settings would be ignored).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from replwatch.errors import ConfigError

MAX_DEPTH = 50
MAX_EXPANDED = 100_000
EXPANSION = 20
_MERGE_TAG = "tag:yaml.org,2002:merge"


def read_config_text(path: str | Path) -> str:
    """The file's text. ConfigError: missing, unreadable (a directory …), not UTF-8."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(source, ["<file>: no such file"]) from None
    except OSError as exc:
        raise ConfigError(source, [f"<file>: cannot read: {exc.strerror or exc}"]) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        byte = raw[exc.start]
        raise ConfigError(
            source,
            [
                f"line {line}, column {column}: not UTF-8 text (byte 0x{byte:02x}); "
                "save the file as UTF-8"
            ],
        ) from None


class _GuardedLoader(yaml.SafeLoader):
    """SafeLoader that refuses nesting deeper than MAX_DEPTH while composing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise ComposerError(
                    None,
                    None,
                    f"nested deeper than {MAX_DEPTH} levels",
                    self.peek_event().start_mark,  # type: ignore[no-untyped-call]
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def parse_yaml(text: str, source: str) -> Any:
    """The YAML document in `text` as plain data (None when empty). ConfigError: syntax,
    nesting, alias expansion, duplicate keys."""
    loader = _GuardedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        problems = _check_node(node)
        if problems:
            raise ConfigError(source, problems)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "<file>"
        problem = getattr(exc, "problem", None) or "invalid YAML"
        context = getattr(exc, "context", None)
        if context and problem.startswith("but "):  # "…, but found another document"
            problem = f"{context}, {problem}"
        raise ConfigError(source, [f"{where}: {problem}"]) from None
    finally:
        loader.dispose()


def _check_node(root: Node) -> list[str]:
    """Duplicate keys (one line each) or, first of all, an alias expansion beyond limits."""
    walk = _Walk()
    expanded = walk.size(root, "")
    if walk.endless:
        return [
            f"{walk.endless}: a YAML alias (*name) is used inside its own anchor (&name), "
            "so the document would be endless"
        ]
    limit = max(MAX_EXPANDED, EXPANSION * len(walk.sizes))
    if expanded > limit:
        return [
            f"<file>: YAML aliases (*name) expand the document to more than {limit:,} values "
            f"({len(walk.sizes):,} written); refused (an alias bomb?)"
        ]
    return walk.duplicates


class _Walk:
    """One pass over the node graph: expanded size per node (each shared node once) and
    duplicate keys (at the path where a node is first met)."""

    def __init__(self) -> None:
        self.sizes: dict[int, int] = {}
        self.duplicates: list[str] = []
        self.endless = ""  # where an alias is met inside its own anchor
        self._open: set[int] = set()

    def size(self, node: Node, path: str) -> int:
        key = id(node)
        known = self.sizes.get(key)
        if known is not None:
            return known
        if key in self._open:  # an alias inside its own anchor: endless when expanded
            self.endless = self.endless or path or "<root>"
            return 1
        self._open.add(key)
        total = 1
        if isinstance(node, SequenceNode):
            for i, child in enumerate(node.value):
                total += self.size(child, f"{path}[{i}]")
        elif isinstance(node, MappingNode):
            self._find_duplicates(node, path)
            for k, v in node.value:
                total += self.size(k, path)
                name = str(k.value) if isinstance(k, ScalarNode) else "?"
                total += self.size(v, f"{path}.{name}" if path else name)
        self._open.discard(key)
        self.sizes[key] = total
        return total

    def _find_duplicates(self, node: MappingNode, path: str) -> None:
        first: dict[tuple[str, str], Node] = {}
        for k, _ in node.value:
            if not isinstance(k, ScalarNode) or k.tag == _MERGE_TAG:
                continue
            seen = first.setdefault((k.tag, str(k.value)), k)
            if seen is k:
                continue
            a, b = seen.start_mark.line + 1, k.start_mark.line + 1
            lines = f"on line {a}" if a == b else f"on lines {a} and {b}"
            name = f"{path}.{k.value}" if path else str(k.value)
            self.duplicates.append(
                f"{name}: given twice ({lines}); YAML would silently keep only the second: "
                "remove one"
            )
