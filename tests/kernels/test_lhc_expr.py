"""The cut language: parsing, typing with caret errors, evaluation on numpy and awkward arrays."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest

from engine.kernels.lhc_expr import (
    BOOL,
    COLLECTION,
    NUM,
    ExpressionError,
    Kind,
    check,
    evaluate,
    parse,
    per_event,
)

COLUMNS = {"met": Kind(NUM), "trigger": Kind(BOOL), "Muon": Kind(COLLECTION, "Muon"),
           "Muon_pt": Kind(NUM, "Muon"), "Muon_charge": Kind(NUM, "Muon"), "Jet_pt": Kind(NUM, "Jet")}
DATA = {"met": np.array([10.0, 50.0, 80.0]), "trigger": np.array([True, False, True]),
        "Muon": ak.Array([[{"pt": 30.0, "charge": 1}], [],
                          [{"pt": 5.0, "charge": -1}, {"pt": 25.0, "charge": 1}]])}


def lookup(name):
    if name.startswith("Muon_"):
        return DATA["Muon"][name[5:]]
    return DATA[name]


def run(text: str, result=BOOL) -> np.ndarray:
    tree = parse(text)
    check(text, tree, COLUMNS, result)
    return per_event(evaluate(tree, lookup), 3)


@pytest.mark.parametrize("text, expected", [
    ("met > 20", [False, True, True]),
    ("met > 20 and trigger", [False, False, True]),
    ("not trigger or met >= 80", [False, True, True]),
    ("20 < met <= 50", [False, True, False]),
    ("-met**2 < -1000", [False, True, True]),  # -(met**2): ** binds tighter than unary minus
    ("2 ** 3 ** 2 == 512", [True, True, True]),  # right-associative
    ("(met - 10) / 2 * 3 == 105", [False, False, True]),
    ("count(Muon) >= 1", [True, False, True]),
    ("len(Muon_pt) == 2", [False, False, True]),
    ("any(Muon_pt > 20 and Muon_charge > 0)", [True, False, True]),
    ("all(Muon_pt > 20)", [True, True, False]),  # all of nothing is true
    ("sum(Muon_charge) == 0", [False, True, True]),
    ("max(Muon_pt) > 20", [True, False, True]),  # empty list: NaN, never passes
    ("min(Muon_pt) < 10", [False, False, True]),
    ("sqrt(abs(met - 60)) < 5", [False, True, True]),
    ("max(met, 60) == 60", [True, True, False]),
    ("1.5e1 < met", [False, True, True]),
])
def test_expressions_evaluate_like_python_would(text, expected):
    np.testing.assert_array_equal(run(text), expected)


def test_numeric_results_for_histograms():
    np.testing.assert_allclose(run("met * 2 + count(Muon)", result=NUM), [21, 100, 162])


@pytest.mark.parametrize("text, message, column", [
    ("met > 20 )", "expected an operator or the end, found ')'", 9),
    ("(met > 20", "expected ')', found the end", 9),
    ("met >> 20", "expected a number, column, function or '('", 5),
    ("met > 2 0", "expected an operator or the end, found '0'", 8),
    ("__import__('os')", "unexpected character", 11),
    ("met.real > 0", "unexpected character '.'", 3),
    ("mett > 20", "unknown column 'mett' (did you mean 'met'", 0),
    ("squirt(met) > 1", "unknown function 'squirt' (did you mean 'sqrt'?)", 0),
    ("Muon_pt > 20", "expected one value per event", 8),
    ("Muon_pt > Jet_pt", "cannot combine lists of different collections", 8),
    ("met + 1", "expected booleans, found numbers (per event)", 4),
    ("met and trigger", "'and' needs booleans", 0),
    ("count(met) > 1", "counts a collection or a list per event", 0),
    ("sum(met) > 1", "reduces a list per event", 0),
    ("Muon > 1", "can only be counted", 0),
    ("any(Muon_pt) ", "needs booleans per object", 0),
    ("", "expected an expression, found nothing", 0),
])
def test_errors_point_at_the_position(text, message, column):
    with pytest.raises(ExpressionError) as info:
        check(text, parse(text), COLUMNS, BOOL)
    assert message in str(info.value)
    assert info.value.position == column
    lines = str(info.value).splitlines()
    assert lines[-1].index("^") - 4 == column and lines[-2].strip() == text.strip()


def test_eval_and_friends_are_never_reachable():
    # no attribute access, strings, subscripts or lambdas in the grammar at all
    for text in ["().__class__", "'a' == 'a'", "met[0] > 1", "lambda: 1"]:
        with pytest.raises(ExpressionError):
            check(text, parse(text), COLUMNS, BOOL)
