"""The calculator tool: right answers for the allowed grammar, None (without evaluating) for the rest."""

import ast
import builtins
import math
import time

import pytest

from nanochat import calculator
from nanochat.calculator import use_calculator


@pytest.mark.parametrize("expr, expected", [
    ("1+2", 1 + 2),
    ("12*(3+4)", 12 * (3 + 4)),
    ("2+3*4", 2 + 3 * 4),  # precedence
    ("(2+3)*4", (2 + 3) * 4),
    ("10-4-3", 10 - 4 - 3),  # left associative
    ("2**3**2", 2 ** 3 ** 2),  # right associative
    ("-3**2", -3 ** 2),  # power binds tighter than unary minus
    ("-5+2", -5 + 2),
    ("--5", --5),
    ("-(2+3)", -(2 + 3)),
    ("+7", +7),
    ("7//2", 7 // 2),
    ("-7//2", -7 // 2),
    ("-7%3", -7 % 3),
    ("17 % 5 * 2", 17 % 5 * 2),
    ("2**10", 2 ** 10),
    ("2**1000", 2 ** 1000),
    ("123456789*987654321", 123456789 * 987654321),
    ("1_000 + 1", 1_000 + 1),
])
def test_integer_arithmetic_matches_python(expr, expected):
    assert use_calculator(expr) == str(expected)


@pytest.mark.parametrize("expr, expected", [
    ("10/4", 10 / 4),
    ("1/3", 1 / 3),
    ("2**0.5", 2 ** 0.5),
    ("2**-3", 2 ** -3),
    ("3.5*2.25", 3.5 * 2.25),
    ("1e-5*3", 1e-5 * 3),
    ("7.5//2", 7.5 // 2),
    ("5.5%2", 5.5 % 2),
])
def test_float_arithmetic_matches_python(expr, expected):
    assert float(use_calculator(expr)) == pytest.approx(expected, rel=1e-11)


@pytest.mark.parametrize("expr, text", [
    ("6/3", "2"),  # an integral float prints without .0
    ("3.0", "3"),
    ("-0.0", "0"),
    ("0.1+0.2", "0.3"),  # rounded to 12 significant digits
    ("1/3", "0.333333333333"),
    ("1e20", "1e+20"),
    ("  2 + 2  ", "4"),  # surrounding whitespace from the model is fine
])
def test_results_are_formatted_for_reading(expr, text):
    assert use_calculator(expr) == text


@pytest.mark.parametrize("expr", ["1/0", "1//0", "1%0", "1.5/0", "0**-1", "10.0**400", "1e308*10",
                                  "(-8)**0.5", "(2**4000)/3"])
def test_division_by_zero_overflow_and_complex_give_none(expr):
    assert use_calculator(expr) is None


@pytest.mark.parametrize("expr, expected", [
    ("'strawberry'.count('r')", "strawberry".count("r")),
    ('"banana".count("an")', "banana".count("an")),
    ("'a b c'.count(' ')", "a b c".count(" ")),
    ("'mississippi'.count('z')", 0),
    ("'strawberry'.count('r') * 2 + 1", "strawberry".count("r") * 2 + 1),
])
def test_string_count_form_works(expr, expected):
    assert use_calculator(expr) == str(expected)


@pytest.mark.parametrize("expr", [
    "__import__('os')",
    "__import__('os').system('echo hi')",
    "().__class__",
    "().__class__.__bases__[0].__subclasses__()",
    "x",
    "x + 1",
    "True + 1",
    "None",
    "open('x')",
    "print(1)",
    "abs(-3)",
    "lambda: 1",
    "(lambda: 1)()",
    "[1, 2][0]",
    "'abc'[0]",
    "[x for x in (1, 2)]",
    "{1: 2}",
    "(1, 2)",
    "1,000",
    "'abc'",
    "'abc' * 3",
    "'a' + 'b'",
    "'abc'.upper()",
    "'abc'.count(x)",
    "'abc'.count('a', 1)",
    "'abc'.count(sub='a')",
    "'abc'.count",
    "1 < 2",
    "1 if 1 else 2",
    "1 and 2",
    "~5",
    "5 & 3",
    "1 << 100000",
    "a := 3",
    "1; 2",
    "",
    "   ",
    "1+",
    "1" * 201,  # longer than MAX_EXPRESSION_CHARS
])
def test_disallowed_expressions_give_none(expr):
    assert use_calculator(expr) is None


def test_huge_powers_are_refused_before_being_computed(monkeypatch):
    calls = []

    def pow_canary(base, exponent):
        calls.append((base, exponent))
        too_big = abs(exponent) > 10_000 or (
            isinstance(base, int) and abs(base) > 1 and exponent * math.log2(abs(base)) > 10_000)
        if too_big:  # fail fast instead of hanging on the computation
            raise AssertionError(f"the calculator tried to compute {base!r} ** {exponent!r}")
        return base ** exponent

    monkeypatch.setitem(calculator._BINARY_OPERATORS, ast.Pow, pow_canary)
    started = time.perf_counter()
    assert use_calculator("9**9**9") is None
    # the inner 9**9 is small and fine; the outer 9**387420489 must never reach the operator
    assert calls == [(9, 9)]
    for tower in ["2**100000", "10**10**10", "2**20000", "(10**1000)**10", "-2**100001",
                  "2.0**1e9", "(2**4000)**(2**4000)"]:
        calls.clear()
        assert use_calculator(tower) is None, tower
    assert time.perf_counter() - started < 0.5


def test_huge_products_are_refused():
    assert use_calculator("(2**4000)*(2**4000)") is None


def test_calculator_never_uses_eval_exec_import_or_open(monkeypatch):
    touched = []

    def canary(name):
        def called(*args, **kwargs):
            touched.append(name)
            raise AssertionError(f"the calculator called {name}")
        return called

    # (compile stays: ast.parse uses it to build the tree, which runs nothing)
    for name in ("eval", "exec", "open"):
        monkeypatch.setattr(builtins, name, canary(name))
    real_import = builtins.__import__

    def import_canary(name, *args, **kwargs):
        if name == "os":
            touched.append("__import__('os')")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", import_canary)
    results = [use_calculator(e) for e in ["1+2", "'ab'.count('a')", "__import__('os')",
                                           "open('x')", "eval('1')", "exec('1')"]]
    monkeypatch.undo()
    assert results == ["3", "1", None, None, None, None]
    assert touched == []
