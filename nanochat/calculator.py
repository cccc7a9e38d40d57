"""
The calculator tool. When the model writes `<|python_start|>12*(3+4)<|python_end|>`, the engine
passes the text in between to `use_calculator` and forces the answer back into the sequence as
`<|output_start|>84<|output_end|>`.

    use_calculator("12*(3+4)")                  # "84"
    use_calculator("10/4")                      # "2.5"
    use_calculator("'strawberry'.count('r')")  # "3"
    use_calculator("__import__('os')")          # None

Only two kinds of expression are accepted:
  - arithmetic on int/float literals: + - * / // % **, unary + and -, parentheses;
  - the string-count form: 'some text'.count('x') (a string literal, .count, one string literal),
    which may also appear inside arithmetic.
Anything else (names, other calls or attributes, subscripts, lambdas, ...) gives None.

Nothing here calls eval. The text is parsed with `ast` and the tree is evaluated by the small
walker below, which knows only the node types listed above. That is what makes "9**9**9" safe:
every power is checked *before* it is computed, and anything that would be too big is refused.
"""

import ast
import warnings
import math
import operator

MAX_EXPRESSION_CHARS = 200
MAX_INT_BITS = 4096  # ~1233 decimal digits; every intermediate integer must stay below this
MAX_EXPONENT = 10_000  # |exponent| of a power; also keeps float powers cheap
FLOAT_SIGNIFICANT_DIGITS = 12

_BINARY_OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY_OPERATORS = {ast.USub: operator.neg, ast.UAdd: operator.pos}


class _Refused(Exception):
    """The expression is outside the calculator's grammar or its result would be too big."""


def use_calculator(expr: str) -> str | None:
    """Evaluate an arithmetic or string-count expression; the result as text, or None."""
    if not isinstance(expr, str):
        return None
    expr = expr.strip()
    if not expr or len(expr) > MAX_EXPRESSION_CHARS:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)  # e.g. "1a" from a confused model
            tree = ast.parse(expr, mode="eval")
        value = _evaluate(tree.body)
    except (_Refused, SyntaxError, ValueError, ArithmeticError, RecursionError, MemoryError):
        # ArithmeticError covers ZeroDivisionError and OverflowError (e.g. 10.0**400)
        return None
    return _format_number(value)


def _evaluate(node):
    """Evaluate one node of the allowed grammar; raise _Refused for anything else."""
    if isinstance(node, ast.Constant):
        # bool is an int subclass, so compare types exactly: True + 1 is not arithmetic here
        if type(node.value) in (int, float):
            return node.value
        raise _Refused("only int and float literals are numbers")
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY_OPERATORS:
        return _UNARY_OPERATORS[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPERATORS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        result = _BINARY_OPERATORS[type(node.op)](left, right)
        return _check_result(result)
    if isinstance(node, ast.Call):
        return _evaluate_count(node)
    raise _Refused(f"{type(node).__name__} is not allowed")


def _evaluate_count(node):
    """'text'.count('x'): exactly this shape, string literals only."""
    function = node.func
    if not (isinstance(function, ast.Attribute) and function.attr == "count"
            and _is_string_literal(function.value)
            and len(node.args) == 1 and _is_string_literal(node.args[0]) and not node.keywords):
        raise _Refused("the only call allowed is 'text'.count('x')")
    return function.value.value.count(node.args[0].value)


def _is_string_literal(node):
    return isinstance(node, ast.Constant) and type(node.value) is str


def _check_power(base, exponent):
    """Refuse a power whose result would be huge, before computing it."""
    if abs(exponent) > MAX_EXPONENT:
        raise _Refused("exponent too large")
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        # |base|**exponent has about exponent * log2|base| bits
        if exponent * math.log2(abs(base)) > MAX_INT_BITS:
            raise _Refused("result would be too large")


def _check_result(value):
    if isinstance(value, complex):  # e.g. (-8) ** 0.5
        raise _Refused("complex results are not supported")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise _Refused("result too large")
    if isinstance(value, float) and not math.isfinite(value):
        raise _Refused("result is not a finite number")
    return value


def _format_number(value):
    """Integers as they are; floats without a trailing .0 and rounded to 12 significant digits."""
    if isinstance(value, int):
        return str(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return format(value, f".{FLOAT_SIGNIFICANT_DIGITS}g")
