"""Kubernetes resource quantities ("500m", "1Gi", "1e3") as exact numbers.

The grammar is the one of ``k8s.io/apimachinery`` ``resource.Quantity``::

    <quantity>        ::= <signedNumber><suffix>
    <suffix>          ::= <binarySI> | <decimalExponent> | <decimalSI>
    <binarySI>        ::= Ki | Mi | Gi | Ti | Pi | Ei
    <decimalSI>       ::= n | u | m | "" | k | M | G | T | P | E
    <decimalExponent> ::= "e" <signedInteger> | "E" <signedInteger>
    <signedNumber>    ::= <sign><number>
    <number>          ::= <digits> | <digits>.<digits> | <digits>. | .<digits>
    <sign>            ::= "+" | "-" | ""

Suffixes are case-sensitive ("k" is kilo, "K" and "ki" are errors; "E" alone
is exa, "E3" an exponent).  Values are parsed into :class:`~decimal.Decimal`
exactly, so that summing requests over containers loses nothing before the
final conversion to ``float``.  Surrounding whitespace is ignored, as the API
server does when it decodes JSON.  See docs/components/kubernetes-accounting.md.
"""

from __future__ import annotations

import math
import re
from decimal import MAX_EMAX, MIN_EMIN, Decimal, localcontext

__all__ = ["QuantityError", "parse_quantity", "resource_quantity"]

_EXAMPLES = "examples: 500m, 2, 1.5Gi, 1e3"

_QUANTITY = re.compile(
    r"(?P<sign>[+-]?)(?P<int>[0-9]*)(?:\.(?P<frac>[0-9]*))?"
    r"(?:(?P<exp>[eE][+-]?[0-9]+)|(?P<bin>[KMGTPE]i)|(?P<dec>[numkMGTPE]?))"
)

_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}  # powers of 1024
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}  # powers of 10
_INT32 = 2**31


class QuantityError(ValueError):
    """A value that is not a Kubernetes quantity; the message quotes it and shows valid forms."""

    def __init__(self, value: object, reason: str) -> None:
        shown = value if isinstance(value, str) else repr(value)
        super().__init__(f'invalid Kubernetes quantity "{shown}": {reason} ({_EXAMPLES})')
        self.value = value
        self.reason = reason


def parse_quantity(value: str | int | float) -> Decimal:
    """Parse a quantity exactly: ``"500m"`` -> ``Decimal("0.5")``, ``"1Ki"`` -> ``Decimal(1024)``.

    Integers and finite floats are accepted as plain numbers (a YAML ``cpu: 2``);
    booleans, NaN, infinities and anything outside the grammar raise
    :class:`QuantityError`.
    """
    if isinstance(value, bool):
        raise QuantityError(value, "a boolean is not a quantity")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise QuantityError(value, "not a finite number")
        return Decimal(repr(value))
    if not isinstance(value, str):
        raise QuantityError(value, f"expected a string or a number, got {type(value).__name__}")
    text = value.strip()
    if not text:
        raise QuantityError(value, "empty")
    match = _QUANTITY.fullmatch(text)
    if match is None:
        raise QuantityError(value, _why_not(text))
    integer, fraction = match["int"], match["frac"] or ""
    if not integer and not fraction:
        raise QuantityError(value, "no digits in the number")
    mantissa = f"{match['sign']}{integer or '0'}.{fraction or '0'}"
    if match["bin"]:
        # 1024**6 has 19 digits: give the product room so that it is exact.
        with localcontext() as ctx:
            ctx.prec = len(integer) + len(fraction) + 25
            ctx.Emax, ctx.Emin = MAX_EMAX, MIN_EMIN
            return Decimal(mantissa) * (1024 ** _BINARY[match["bin"]])
    if match["exp"]:
        exponent = int(match["exp"][1:])
        if not -_INT32 <= exponent < _INT32:
            raise QuantityError(value, "exponent out of range")
    else:
        exponent = _DECIMAL[match["dec"]]
    # Built from a string, a Decimal is exact whatever the context's precision.
    return Decimal(f"{mantissa}E{exponent}")


def resource_quantity(value: str | int | float) -> float:
    """The ``resource_quantity()`` mapping function: ``"500m"`` -> 0.5, ``"1Gi"`` -> 1073741824.0.

    CPU comes out in cores, memory and storage in bytes, extended resources
    (``nvidia.com/gpu``) as counts.  Raises :class:`QuantityError` on garbage and
    on values too large for a float.
    """
    number = float(parse_quantity(value))
    if not math.isfinite(number):
        raise QuantityError(value, "too large for a floating-point number")
    return number


def _why_not(text: str) -> str:
    """Say what is wrong with ``text``, which does not match the grammar."""
    body = re.match(r"[+-]?[0-9]*(?:\.[0-9]*)?", text)
    rest = text[body.end() :] if body else text
    if body is None or not re.search(r"[0-9]", body.group()):
        return "expected a number first"
    if rest[:1] in ("e", "E"):
        return f'invalid exponent "{rest}" (use e.g. e3 or E-3)'
    return f'unknown suffix "{rest}" (use n, u, m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi or Ei; case matters)'
