"""A small, safe expression language for cuts and derived columns over event columns.

    Muon_pt > 20 and abs(Muon_eta) < 2.4          (per muon: a list per event)
    count(Muon) >= 2 and any(Muon_charge < 0)      (per event)
    sqrt(MET_px**2 + MET_py**2) > 30 or not triggerIsoMu24

Grammar (loosest first): `or`, `and`, `not`, comparisons (< <= > >= == !=, chainable as in
Python), + -, * /, unary -, ** (right-associative), then numbers, column names, calls and
parentheses. Functions: abs, sqrt, log, exp; min/max with two arguments (element-wise) or one
list (its smallest/largest, NaN when empty); sum, any, all of a list; count/len of a
collection or list. That is the whole language: text is tokenised and parsed here by a Pratt
parser into a small tree, and evaluated with numpy/awkward ufuncs. Python's eval, compile and
ast are never used, so a cut can read columns and nothing else.

`check` types a tree before any data is read: every name must be a known column, lists of two
different collections cannot be combined, and the result must be one value per event. Errors
show the expression with a caret under the offending position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import did_you_mean

NUM, BOOL, COLLECTION = "number", "boolean", "collection"


class ExpressionError(ValueError):
    """A malformed or ill-typed expression; the message points at the position with a caret."""

    def __init__(self, text: str, position: int, message: str):
        self.text, self.position, self.reason = text, position, message
        super().__init__(f"{message} at position {position + 1} of the expression\n    {text}\n"
                         f"    {' ' * position}^")


@dataclass(frozen=True)
class Kind:
    """What a (sub)expression yields: numbers, booleans or a whole collection; per event
    (`collection` None) or one per object of a jagged collection."""

    value: str
    collection: str | None = None

    def describe(self) -> str:
        where = "per event" if self.collection is None else f"a list per event (one per {self.collection})"
        return f"{self.value}s ({where})" if self.value != COLLECTION else f"the collection {self.collection}"


@dataclass(frozen=True)
class Node:
    """One node of the tree: `op` is 'num', 'name', 'call', a unary or a binary operator, or
    'compare' (args alternate operands and operators)."""

    op: str
    pos: int
    args: tuple = ()
    value: Any = None


_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>\*\*|<=|>=|==|!=|[-+*/<>(),])
""", re.VERBOSE)
KEYWORDS = {"and", "or", "not"}
COMPARISONS = {"<", "<=", ">", ">=", "==", "!="}
UFUNCS = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal, "==": np.equal,
          "!=": np.not_equal, "+": np.add, "-": np.subtract, "*": np.multiply, "/": np.true_divide,
          "**": np.power, "and": np.logical_and, "or": np.logical_or}
ELEMENTWISE = {"abs": np.abs, "sqrt": np.sqrt, "log": np.log, "exp": np.exp}
# Per-event reductions over a collection: awkward's functions of these names. Evaluating imports
# awkward; parsing and checking an expression (a recipe's validation) does not.
REDUCTIONS = ("sum", "any", "all", "min", "max")
FUNCTIONS = sorted([*ELEMENTWISE, *REDUCTIONS, "count", "len"])
MAX_LENGTH = 2000
# Nesting of parentheses, operators and calls. Cuts nest a few levels; parsing, checking and
# evaluating recurse per level, and 2000 characters of '(' or 'a+' would exhaust Python's stack.
MAX_DEPTH = 64
MAX_LISTED = 12  # column names listed in an error


@dataclass(frozen=True)
class Token:
    kind: str  # number, name, op, keyword, end
    text: str
    pos: int


def tokenize(text: str) -> list[Token]:
    if len(text) > MAX_LENGTH:
        raise ExpressionError(text[:60] + "...", 0, f"expected at most {MAX_LENGTH} characters, "
                              f"found {len(text)}")
    tokens, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ExpressionError(text, pos, f"unexpected character {text[pos]!r}")
        kind = match.lastgroup
        if kind != "space":
            word = match.group()
            tokens.append(Token("keyword" if kind == "name" and word in KEYWORDS else kind, word, pos))
        pos = match.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


class _Parser:
    """Pratt parser: each binary operator has a binding power; higher binds tighter."""

    BINARY = {"or": 1, "and": 2, **dict.fromkeys(COMPARISONS, 4), "+": 5, "-": 5, "*": 6, "/": 6}
    NOT_POWER, NEGATE_POWER, POWER_POWER = 3, 7, 8

    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.at = 0
        self.nesting = 0

    def peek(self) -> Token:
        return self.tokens[self.at]

    def take(self) -> Token:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def expect(self, text: str) -> Token:
        token = self.take()
        if token.text != text:
            raise ExpressionError(self.text, token.pos, f"expected {text!r}, found {_show(token)}")
        return token

    def parse(self) -> Node:
        if self.peek().kind == "end":
            raise ExpressionError(self.text, 0, "expected an expression, found nothing")
        node = self.expression(0)
        token = self.peek()
        if token.kind != "end":
            raise ExpressionError(self.text, token.pos,
                                  f"expected an operator or the end, found {_show(token)}")
        deepest = _deeper_than(node, MAX_DEPTH)  # a chain like a+a+...: deep, built by a loop
        if deepest is not None:
            raise _too_deep(self.text, deepest.pos)
        return node

    def expression(self, min_power: int) -> Node:
        """The operators binding tighter than `min_power`, nested at most MAX_DEPTH deep (a
        failed parse is abandoned, so the count needs no unwinding on errors)."""
        self.nesting += 1
        if self.nesting > MAX_DEPTH:
            raise _too_deep(self.text, self.peek().pos)
        node = self._operators(min_power)
        self.nesting -= 1
        return node

    def _operators(self, min_power: int) -> Node:
        left = self.prefix()
        while True:
            token = self.peek()
            power = self.BINARY.get(token.text) if token.kind in ("op", "keyword") else None
            if token.text == "**":
                self.take()
                left = Node("**", token.pos, (left, self.expression(self.POWER_POWER)))
                continue
            if power is None or power <= min_power:
                return left
            self.take()
            if token.text in COMPARISONS:
                left = self.comparison(left, token)
            else:
                left = Node(token.text, token.pos, (left, self.expression(power)))

    def comparison(self, left: Node, token: Token) -> Node:
        """a < b <= c: all operands and operators in one node, evaluated pairwise and and-ed."""
        args = [left, token.text, self.expression(4)]
        while self.peek().text in COMPARISONS:
            args += [self.take().text, self.expression(4)]
        return Node("compare", token.pos, tuple(args))

    def prefix(self) -> Node:
        token = self.take()
        if token.kind == "number":
            value = float(token.text)
            if not np.isfinite(value):
                raise ExpressionError(self.text, token.pos, f"expected a finite number, found {token.text!r}")
            return Node("num", token.pos, value=value)
        if token.text == "-":
            return Node("neg", token.pos, (self.expression(self.NEGATE_POWER),))
        if token.text == "+":
            return self.expression(self.NEGATE_POWER)
        if token.text == "not":
            return Node("not", token.pos, (self.expression(self.NOT_POWER),))
        if token.text == "(":
            node = self.expression(0)
            self.expect(")")
            return node
        if token.kind == "name":
            if self.peek().text == "(":
                return self.call(token)
            return Node("name", token.pos, value=token.text)
        raise ExpressionError(self.text, token.pos, f"expected a number, column, function or '(', "
                              f"found {_show(token)}")

    def call(self, name: Token) -> Node:
        if name.text not in FUNCTIONS:
            raise ExpressionError(self.text, name.pos, f"unknown function {name.text!r}"
                                  f"{did_you_mean(name.text, FUNCTIONS)}; functions: {', '.join(FUNCTIONS)}")
        self.expect("(")
        args = []
        if self.peek().text != ")":
            args.append(self.expression(0))
            while self.peek().text == ",":
                self.take()
                args.append(self.expression(0))
        self.expect(")")
        return Node("call", name.pos, tuple(args), name.text)


def _too_deep(text: str, position: int) -> ExpressionError:
    return ExpressionError(text, position, f"expected at most {MAX_DEPTH} nested levels of "
                           "parentheses, operators and calls, found more")


def _deeper_than(node: Node, limit: int) -> Node | None:
    """The first node below `limit` levels of the tree, found without recursion (it guards
    the recursive checker and evaluator)."""
    stack = [(node, 1)]
    while stack:
        current, depth = stack.pop()
        if depth > limit:
            return current
        stack += [(arg, depth + 1) for arg in current.args if isinstance(arg, Node)]
    return None


def _show(token: Token) -> str:
    return "the end of the expression" if token.kind == "end" else repr(token.text)


def parse(text: str) -> Node:
    """The tree of `text`, or ExpressionError pointing at the first problem."""
    return _Parser(text).parse()


def names(node: Node) -> list[Node]:
    """Every column name node of the tree, in reading order."""
    if node.op == "name":
        return [node]
    return [found for arg in node.args if isinstance(arg, Node) for found in names(arg)]


# -- typing -------------------------------------------------------------------------------------
def check(text: str, node: Node, columns: dict[str, Kind], result: str | None = BOOL,
          lists: bool = False) -> Kind:
    """The kind of `node` given the kinds of the columns; raise ExpressionError where it cannot
    work. `result` is what the whole expression must give (None: anything), per event unless
    `lists` allows one value per object of a collection."""
    kind = _Typer(text, columns).kind(node)
    if kind.collection is not None and not lists:
        raise ExpressionError(text, node.pos, f"expected one value per event, found {kind.describe()}; "
                              "reduce it with any(), all(), count(), min(), max() or sum()")
    if result is not None and kind.value != result:
        raise ExpressionError(text, node.pos, f"expected {result}s, found {kind.describe()}")
    return kind


class _Typer:
    def __init__(self, text: str, columns: dict[str, Kind]):
        self.text, self.columns = text, columns

    def fail(self, node: Node, message: str):
        raise ExpressionError(self.text, node.pos, message)

    def kind(self, node: Node) -> Kind:
        if node.op == "num":
            return Kind(NUM)
        if node.op == "name":
            if node.value not in self.columns:
                usable = sorted(self.columns)
                shown = ", ".join(usable[:MAX_LISTED]) + (f", ... ({len(usable)} in all)"
                                                          if len(usable) > MAX_LISTED else "")
                self.fail(node, f"unknown column {node.value!r}{did_you_mean(node.value, usable)}; "
                          f"columns: {shown or 'none'}")
            return self.columns[node.value]
        args = [self.kind(a) if isinstance(a, Node) else a for a in node.args]
        if node.op == "call":
            return self.call(node, args)
        operands = [a for a in args if isinstance(a, Kind)]
        for arg, kind in zip([a for a in node.args if isinstance(a, Node)], operands, strict=True):
            if kind.value == COLLECTION:
                self.fail(arg, f"a whole collection ({kind.collection}) can only be counted: "
                          f"count({kind.collection})")
        collection = self.common(node, operands)
        if node.op in ("and", "or", "not"):
            for arg, kind in zip(node.args, operands, strict=True):
                if kind.value != BOOL:
                    self.fail(arg, f"{node.op!r} needs booleans (a comparison), found {kind.describe()}")
            return Kind(BOOL, collection)
        return Kind(BOOL if node.op == "compare" else NUM, collection)

    def common(self, node: Node, kinds: list[Kind]) -> str | None:
        jagged = {k.collection for k in kinds if k.collection is not None}
        if len(jagged) > 1:
            self.fail(node, f"cannot combine lists of different collections ({', '.join(sorted(jagged))}) "
                      "object by object; reduce each to one value per event first")
        return jagged.pop() if jagged else None

    def call(self, node: Node, args: list[Kind]) -> Kind:
        name = node.value
        wanted = 2 if name in ("min", "max") and len(args) == 2 else 1
        if len(args) != wanted:
            takes = "one or two arguments" if name in ("min", "max") else "one argument"
            self.fail(node, f"{name}() takes {takes}, found {len(args)}")
        first = args[0]
        if name in ("count", "len"):
            if first.collection is None:
                self.fail(node, f"{name}() counts a collection or a list per event, found {first.describe()}")
            return Kind(NUM)
        if first.value == COLLECTION or (wanted == 2 and args[1].value == COLLECTION):
            self.fail(node, f"{name}() needs values, found {first.describe()}; use count() to count objects")
        if name in ELEMENTWISE or wanted == 2:
            return Kind(NUM, self.common(node, args))
        if first.collection is None:
            self.fail(node, f"{name}() of one argument reduces a list per event, found {first.describe()}")
        if name in ("any", "all") and first.value != BOOL:
            self.fail(node, f"{name}() needs booleans per object (a comparison), found {first.describe()}")
        return Kind(BOOL if name in ("any", "all") else NUM)


# -- evaluation ---------------------------------------------------------------------------------
def evaluate(node: Node, lookup) -> Any:
    """Value of a checked tree; `lookup(name)` gives a column as numpy or awkward array."""
    with np.errstate(all="ignore"):
        return _evaluate(node, lookup)


def _evaluate(node: Node, lookup) -> Any:
    op = node.op
    if op == "num":
        return node.value
    if op == "name":
        return lookup(node.value)
    if op == "call":
        return _call(node, [_evaluate(a, lookup) for a in node.args])
    if op == "compare":
        values = [_evaluate(a, lookup) if isinstance(a, Node) else a for a in node.args]
        result = None
        for i in range(1, len(values), 2):
            step = UFUNCS[values[i]](values[i - 1], values[i + 1])
            result = step if result is None else np.logical_and(result, step)
        return result
    values = [_evaluate(a, lookup) for a in node.args]
    if op == "neg":
        return np.negative(values[0])
    if op == "not":
        return np.logical_not(values[0])
    return UFUNCS[op](*values)


def _call(node: Node, values: list) -> Any:
    import awkward as ak

    name = node.value
    if name in ("count", "len"):
        return ak.num(values[0], axis=1)
    if len(values) == 2:
        return (np.minimum if name == "min" else np.maximum)(*values)
    if name in ELEMENTWISE:
        return ELEMENTWISE[name](values[0])
    if name in ("min", "max"):
        return ak.fill_none(getattr(ak, name)(values[0], axis=1, mask_identity=True), np.nan)
    return getattr(ak, name)(values[0], axis=1)


def per_event(values: Any, length: int, dtype=None) -> np.ndarray:
    """An evaluated per-event result as a 1-D numpy array of `length` (constants broadcast)."""
    import awkward as ak

    if isinstance(values, ak.Array):
        values = ak.to_numpy(ak.fill_none(values, False if dtype is bool else np.nan))
    array = np.broadcast_to(np.asarray(values), (length,))
    return array.astype(dtype) if dtype is not None else np.array(array)
