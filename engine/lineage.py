"""Lineage: the graph from raw inputs through every step to every published output, with staleness.

Why recipes and not only provenance: an output's provenance names the tokens of its direct
inputs, and those are often intermediate steps that the lake never stores, so provenance alone
cannot join an output to the raw data it came from. Each published output records the recipe
that made it (`recipe_path`); compiling that recipe against the lake as it is now gives the
whole chain, sources to outputs, and which outputs are stale and why (the plan's own answer,
the same `plan` prints). Outputs of different recipes join where one recipe reads another's
output from the lake. An output whose recipe is gone or no longer compiles is still shown,
joined to the inputs its provenance names where those are lake entries, with the reason.

Node keys: lake entries are `zone/name`, catalog entries outside the lake `catalog:entry`,
intermediate steps `recipe:step`.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ReplicaLakeError, UnknownEntryError, did_you_mean

if TYPE_CHECKING:
    from .plan import Plan
    from .storage import Lake


@dataclass
class Node:
    key: str
    kind: str  # "input" (a source), "step" (intermediate) or "output" (published by a recipe)
    op: str = ""
    recipe: str = ""
    status: str = ""  # outputs: "up to date", "stale" or "unknown"; inputs: "in the lake" / "missing"
    why: str = ""  # a stale output's reason (the plan's), or what could not be checked

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class Lineage:
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: set[tuple[str, str]] = field(default_factory=set)  # (input, what is made from it)

    def add(self, node: Node) -> Node:
        known = self.nodes.get(node.key)
        if known is None or (known.kind == "input" and node.kind != "input"):
            self.nodes[node.key] = node  # a recipe's view of an output beats a reader's
            return node
        return known

    def parents(self, key: str) -> list[str]:
        return sorted(a for a, b in self.edges if b == key)

    def children(self, key: str) -> list[str]:
        return sorted(b for a, b in self.edges if a == key)

    def roots(self) -> list[str]:
        made = {b for _, b in self.edges}
        return sorted(k for k in self.nodes if k not in made)

    def around(self, key: str) -> Lineage:
        """Only `key`, what it was made from and what is made from it."""
        if key not in self.nodes:
            outputs = [k for k, n in self.nodes.items() if n.kind != "step"]
            raise UnknownEntryError(
                f"lineage: no lake entry {key!r} in the lineage{did_you_mean(key, outputs)}; "
                f"expected one of {', '.join(sorted(outputs)) or 'none'}"
            )
        keep = {key} | self.upstream(key) | self.downstream(key)
        return Lineage(
            {k: n for k, n in self.nodes.items() if k in keep},
            {(a, b) for a, b in self.edges if a in keep and b in keep},
        )

    def upstream(self, key: str) -> set[str]:
        """Everything `key` was made from, to the raw inputs."""
        return self._reach(key, self.parents)

    def downstream(self, key: str) -> set[str]:
        """Everything made from `key`."""
        return self._reach(key, self.children)

    @staticmethod
    def _reach(key: str, step) -> set[str]:
        seen, pending = set(), [key]
        while pending:
            for other in step(pending.pop()):
                if other not in seen:
                    seen.add(other)
                    pending.append(other)
        return seen

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": [self.nodes[k].to_dict() for k in sorted(self.nodes)],
            "edges": [list(edge) for edge in sorted(self.edges)],
        }

    def lines(self) -> list[str]:
        """The graph as indented text, from each raw input down to every output; a node reached
        a second time is named with "(above)" instead of repeating what follows it."""
        lines: list[str] = []
        shown: set[str] = set()

        def visit(key: str, depth: int) -> None:
            node = self.nodes[key]
            again = key in shown and self.children(key)
            lines.append(
                "  " * depth + ("-> " if depth else "") + describe(node) + (" (above)" if again else "")
            )
            if again:
                return
            shown.add(key)
            for child in self.children(key):
                visit(child, depth + 1)

        for root in self.roots():
            visit(root, 0)
        return lines

    def to_html(self) -> str:
        """`lines()` as nested HTML lists (the HTML report, a notebook), stale outputs in red."""
        from html import escape

        shown: set[str] = set()

        def item(key: str) -> str:
            node = self.nodes[key]
            css = {"stale": "stale", "up to date": "fresh"}.get(node.status, "")
            colour = {"stale": "#b00", "up to date": "#070"}.get(node.status, "inherit")
            label = f"<span class='{css}' style='color:{colour}'>{escape(describe(node))}</span>"
            children = self.children(key)
            if key in shown and children:
                return f"<li>{label} (above)</li>"
            shown.add(key)
            inner = "".join(item(child) for child in children)
            return f"<li>{label}" + (f"<ul>{inner}</ul>" if inner else "") + "</li>"

        return (
            "<ul class='lineage' style='font-family:monospace'>"
            + "".join(item(root) for root in self.roots())
            + "</ul>"
        )

    def _repr_html_(self) -> str:
        return self.to_html()

    def __repr__(self) -> str:
        return "\n".join(self.lines()) or "<empty lineage>"


def describe(node: Node) -> str:
    what = {"input": "input", "step": f"step of {node.recipe}", "output": f"output of {node.recipe}"}[
        node.kind
    ]
    text = f"{node.key} [{node.op + ', ' if node.op and node.op != 'source' else ''}{what}]"
    if node.status:
        text += f": {node.status}" + (f" ({node.why})" if node.why else "")
    return text


def source_key(plan: Plan, source_id: str) -> str:
    """A source's node: its lake entry `zone/name` when it is in the lake, else `catalog:entry`."""
    source = plan.recipe.sources[source_id]
    if source.catalog == "lake":
        return source.entry
    url = str(plan.step(source_id).params.get("url", ""))
    root = plan.lake.root.rstrip("/")
    if url.startswith(root + "/"):
        return posixpath.relpath(url, root)
    return f"{source.catalog}:{source.entry}"


def add_plan(lineage: Lineage, plan: Plan) -> None:
    """Every source, step and output of a compiled recipe, with the plan's staleness."""
    name = plan.recipe.name
    keys = {}
    for step in plan.steps:
        if step.op == "source":
            key = source_key(plan, step.id)
            lineage.add(Node(key, "input", "source", status="in the lake"))
        elif step.output is not None:
            key = f"{step.zone}/{step.name}"
            lineage.add(
                Node(
                    key,
                    "output",
                    step.op,
                    name,
                    "up to date" if step.up_to_date else "stale",
                    step.stale_reason,
                )
            )
        else:
            key = f"{name}:{step.id}"
            lineage.add(Node(key, "step", step.op, name))
        keys[step.id] = key
        for ref in step.inputs.values():
            lineage.edges.add((keys[ref], key))


def lake_lineage(lake: Lake, catalogs: str | Path | None = None, plans: Iterable[Plan] = ()) -> Lineage:
    """The lineage of every output listed in the lake catalog (and of `plans`, already compiled)."""
    from .catalog import read_lake_catalog
    from .graph import compile_recipe
    from .ownership import recipe_location

    lineage = Lineage()
    done: set[str] = set()
    for plan in plans:
        add_plan(lineage, plan)
        done.add(recipe_location(str(plan.path)))
    entries = sorted(read_lake_catalog(lake).entries)
    provenances = {}
    for key in entries:
        zone, _, name = key.partition("/")
        provenances[key] = lake.provenance(zone, name) or {}
    failed: dict[str, str] = {}
    for key in entries:
        recipe_path = provenances[key].get("recipe_path")
        if not recipe_path or recipe_path in done or recipe_path in failed:
            continue
        if not Path(recipe_path).is_file():
            failed[recipe_path] = f"its recipe {recipe_path} is not a file here (moved or deleted)"
            continue
        try:
            add_plan(lineage, compile_recipe(recipe_path, lake, catalogs))
            done.add(recipe_path)
        except Exception as exc:  # noqa: BLE001 - another recipe's failure is a fact of the lineage
            first = str(exc).splitlines()[0] if str(exc) else ""
            kind = "" if isinstance(exc, ReplicaLakeError) else f"{type(exc).__name__}: "
            failed[recipe_path] = f"its recipe {recipe_path} does not compile: {kind}{first}"
    by_token = {p["token"]: k for k, p in provenances.items() if p.get("token")}
    for key in entries:  # the rest: raw inputs, and outputs no recipe here could explain
        provenance = provenances[key]
        if key in lineage.nodes and lineage.nodes[key].kind != "input":
            continue
        if not provenance.get("recipe"):
            lineage.add(Node(key, "input", "source", status="in the lake"))
            continue
        why = failed.get(provenance.get("recipe_path", ""), "no recipe recorded")
        lineage.add(
            Node(key, "output", str(provenance.get("op", "")), str(provenance["recipe"]), "unknown", why)
        )
        for token in (provenance.get("inputs") or {}).values():
            if token in by_token:
                lineage.edges.add((by_token[token], key))
    return lineage
