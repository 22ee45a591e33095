"""Which Kafka topics each service's code reads (as a consumer group) and writes, found in its source.

The chart's KafkaUsers (deploy/helm/member-export/templates/kafkausers.yaml) must grant exactly these: a table
written by hand next to the chart drifted once (the notifier produced follower run requests it had no Write ACL
for), so the test derives the table from the code instead.

A service's code is every module of its package (``services/<service>``) and the ``shared`` modules they import,
transitively. Of a ``shared`` module, only the functions the service may call count: those whose name the service's
code (or a function already counted) refers to. A topic is a ``Topics`` attribute taken of something named
``topics`` (``settings.topics.run_events``, ``self.topics.member_batches_for(priority)``); a reference is
- a read: given as ``topic=`` or ``priority_topics=`` (a consumer loop's topics), or to a reading call
  (:data:`READERS`);
- nothing: inside an f-string or a dict (span names and attributes) or as ``source_topic=`` (a dead letter's
  record of where it came from);
- a write otherwise: given to ``Outgoing``, ``dead_letter_topic=`` or a publisher, returned, kept in an attribute.
A reference assigned to a local name takes the kind of that name's uses.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from shared.topics import Topics

ROOT = Path(__file__).resolve().parents[1]
#: ``Topics`` members naming one topic, or (the calls) the member-batch topics.
TOPIC_ATTRIBUTES = {"run_requests", "run_events", "dead_letters", "member_batches"}
TOPIC_CALLS = {"member_batches_for", "member_batch_topics"}
#: Calls that only read the topics they are given.
READERS = {"read_whole_topic", "read_topic_unless", "partitions_for_topic", "make_consumer"}
#: Keywords naming topics read (a consumer loop's) or only recorded (a dead letter's source).
READ_KEYWORDS = {"topic", "priority_topics"}
IGNORED_KEYWORDS = {"source_topic"}


@dataclass
class TopicUse:
    """The topic names (without prefix) a service's code reads as a consumer and writes, and where each is written."""

    reads: set[str] = field(default_factory=set)
    writes: dict[str, set[str]] = field(default_factory=dict)

    def write(self, topics: set[str], where: str) -> None:
        for topic in topics:
            self.writes.setdefault(topic, set()).add(where)


def topic_use(service: str) -> TopicUse:
    own = sorted((ROOT / "services" / service).rglob("*.py"))
    shared = _shared_imports(own)
    use = TopicUse()
    names: set[str] = set()
    for path in own:
        tree = _parse(path)
        names |= _referred_names(tree)
        _collect(tree, path, use)
    functions = [(path, f) for path in shared for f in ast.walk(_parse(path)) if isinstance(f, _FUNCTIONS)]
    reached: set[int] = set()
    while True:
        new = [(p, f) for p, f in functions if id(f) not in reached and f.name in names]
        if not new:
            break
        for path, function in new:
            reached.add(id(function))
            names |= _referred_names(function)
            _collect(function, path, use)
    return use


_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)
_TREES: dict[Path, ast.Module] = {}


def _parse(path: Path) -> ast.Module:
    if path not in _TREES:
        _TREES[path] = ast.parse(path.read_text(), str(path))
    return _TREES[path]


def _shared_imports(modules: list[Path]) -> list[Path]:
    """The ``shared`` modules ``modules`` import, transitively (packages' ``__init__`` included)."""
    seen: set[Path] = set()
    todo = list(modules)
    while todo:
        for node in ast.walk(_parse(todo.pop())):
            if isinstance(node, ast.Import):
                dotted = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                dotted = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            for name in dotted:
                if not name.startswith("shared"):
                    continue
                parts = name.split(".")
                for n in range(1, len(parts) + 1):
                    base = ROOT.joinpath(*parts[:n])
                    for path in (base.with_suffix(".py"), base / "__init__.py"):
                        if path.is_file() and path not in seen:
                            seen.add(path)
                            todo.append(path)
    return sorted(seen - {ROOT / "shared" / "topics.py"})


def _referred_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
    return names


def _topics_of(node: ast.AST) -> set[str] | None:
    """The topics (without prefix) ``node`` names, if it takes a ``Topics`` attribute of something named topics."""
    call = isinstance(node, ast.Call)
    attribute = node.func if isinstance(node, ast.Call) else node
    if not isinstance(attribute, ast.Attribute) or not _named_topics(attribute.value):
        return None
    topics = Topics("")
    if call and attribute.attr in TOPIC_CALLS:
        return set(topics.member_batch_topics())
    if not call and attribute.attr in TOPIC_ATTRIBUTES:
        return {getattr(topics, attribute.attr)}
    return None


def _named_topics(node: ast.expr) -> bool:
    return (isinstance(node, ast.Name) and node.id == "topics") or (
        isinstance(node, ast.Attribute) and node.attr == "topics"
    )


def _parents(tree: ast.AST) -> dict[int, ast.AST]:
    return {id(child): parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}


def _collect(tree: ast.AST, path: Path, use: TopicUse) -> None:
    parents = _parents(tree)
    where = str(path.relative_to(ROOT))
    for node in ast.walk(tree):
        parent = parents.get(id(node))
        if isinstance(parent, ast.Call) and parent.func is node:
            continue  # the call itself is the reference
        topics = _topics_of(node)
        if topics is None or not isinstance(node, ast.expr):
            continue
        for kind in _kinds(node, parents, tree):
            if kind == "read":
                use.reads |= topics
            elif kind == "write":
                use.write(topics, f"{where}:{node.lineno}")


def _kinds(node: ast.AST, parents: dict[int, ast.AST], tree: ast.AST) -> Iterator[str]:
    parent = parents.get(id(node))
    if isinstance(parent, ast.JoinedStr | ast.FormattedValue | ast.Dict):
        return
    if isinstance(parent, ast.keyword):
        if parent.arg in READ_KEYWORDS:
            yield "read"
        elif parent.arg not in IGNORED_KEYWORDS:
            yield "write"
        return
    if isinstance(parent, ast.Call) and node in parent.args and _called(parent) in READERS:
        yield "read"
        return
    if isinstance(parent, ast.Assign) and all(isinstance(t, ast.Name) for t in parent.targets):
        names = {t.id for t in parent.targets if isinstance(t, ast.Name)}
        scope = next((p for p in _ancestors(parent, parents) if isinstance(p, _FUNCTIONS)), tree)
        for use in ast.walk(scope):
            if isinstance(use, ast.Name) and use.id in names and isinstance(use.ctx, ast.Load):
                yield from _kinds(use, parents, tree)
        return
    yield "write"


def _ancestors(node: ast.AST, parents: dict[int, ast.AST]) -> Iterator[ast.AST]:
    while id(node) in parents:
        node = parents[id(node)]
        yield node


def _called(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
