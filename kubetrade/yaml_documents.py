"""Reading YAML documents from untrusted files: strict, bounded, one-line errors.

``yaml.safe_load`` is safe against code execution but not against everything a hostile or
broken file holds: it keeps the last of two equal keys (kubectl refuses them), recurses once per
nesting level (deep nesting ends in RecursionError), expands aliases into structures far larger
than the file ("billion laughs"), and a binary or non-UTF-8 file fails with UnicodeDecodeError.
:func:`read_documents` refuses each of these with a :class:`DocumentError` whose message is one
line saying what is wrong and where.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from kubetrade.errors import InvalidInputError

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 40
MAX_NODES = 100_000
_MERGE_TAG = "tag:yaml.org,2002:merge"


class DocumentError(InvalidInputError):
    """A file that is not a readable YAML stream; the message is one line."""


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "?"


def _one_line(error: yaml.YAMLError) -> str:
    """A YAML error as one line: what, then where (PyYAML's own text spans several lines)."""
    problem = getattr(error, "problem", None)
    mark = getattr(error, "problem_mark", None)
    if problem is None:
        return " ".join(str(error).split())
    context = getattr(error, "context", None)
    text = f"{context}, {problem}" if context else problem
    return f"not valid YAML at {_where(mark)}: {' '.join(text.split())}"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping, as kubectl does."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[tuple[str, str], Any] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, ScalarNode) and key_node.tag != _MERGE_TAG:
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key {key_node.value!r} (first given at {_where(seen[key])})",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep)


def _depth(text: str) -> int:
    """The deepest nesting of collections, from the parser's events (the parser is iterative)."""
    depth = deepest = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                mark = event.start_mark
                raise DocumentError(f"nested deeper than {MAX_DEPTH} levels at {_where(mark)}")
            deepest = max(deepest, depth)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return deepest


def _expanded_size(node: Node, memo: dict[int, int]) -> int:
    """Nodes in the document once every alias is expanded (aliases share composed nodes)."""
    if id(node) in memo:
        return memo[id(node)]
    size = 1
    if isinstance(node, SequenceNode):
        size += sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, MappingNode):
        size += sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    memo[id(node)] = size
    return size


def decode_text(data: bytes) -> str:
    """The bytes as UTF-8 text; binary or other encodings are refused, saying where."""
    if len(data) > MAX_BYTES:
        raise DocumentError(f"{len(data):,} bytes, above the {MAX_BYTES:,}-byte limit")
    nul = data.find(b"\x00")
    if nul >= 0:
        raise DocumentError(f"binary content (a NUL byte at offset {nul}), not YAML text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        bad = data[error.start : error.start + 1].hex()
        raise DocumentError(f"not UTF-8 text (byte 0x{bad} at offset {error.start})") from None


def parse_documents(text: str) -> list[Any]:
    """Every non-empty document of a YAML stream, strictly (see the module doc)."""
    try:
        _depth(text)
        loader = _StrictLoader(text)
        documents: list[Any] = []
        try:
            while loader.check_node():
                node = loader.get_node()
                if node is None:
                    continue
                size = _expanded_size(node, {})
                if size > MAX_NODES:
                    raise DocumentError(
                        f"document {len(documents) + 1} expands to {size:,} values through "
                        f"aliases, above the {MAX_NODES:,} limit"
                    )
                documents.append(loader.construct_document(node))
        finally:
            loader.dispose()
    except yaml.YAMLError as error:
        raise DocumentError(_one_line(error)) from None
    except RecursionError:
        raise DocumentError(f"nested too deeply (more than {MAX_DEPTH} levels)") from None
    return [d for d in documents if d is not None]


def read_documents(path: Path) -> list[Any]:
    """Every non-empty YAML document in the file at ``path`` (see :func:`parse_documents`)."""
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise DocumentError(f"{size:,} bytes, above the {MAX_BYTES:,}-byte limit")
        data = path.read_bytes()
    except FileNotFoundError:
        raise DocumentError("file not found") from None
    except IsADirectoryError:
        raise DocumentError("is a directory, not a file") from None
    except OSError as error:
        raise DocumentError(f"cannot be read: {error.strerror or error}") from None
    return parse_documents(decode_text(data))
