"""Kubernetes quantities: known values, rejected garbage, and properties against an independent oracle."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import pytest
from collector_plugin_kubernetes.quantity import QuantityError, parse_quantity, resource_quantity
from hypothesis import given
from hypothesis import strategies as st

KNOWN = [
    ("500m", Decimal("0.5")),
    ("100m", Decimal("0.1")),
    ("2", Decimal(2)),
    ("1n", Decimal("1e-9")),
    ("250u", Decimal("0.00025")),
    ("1k", Decimal(1000)),
    ("1M", Decimal(10**6)),
    ("1G", Decimal(10**9)),
    ("1T", Decimal(10**12)),
    ("1P", Decimal(10**15)),
    ("1E", Decimal(10**18)),
    ("1Ki", Decimal(1024)),
    ("1Mi", Decimal(1024**2)),
    ("1Gi", Decimal(1073741824)),
    ("1Ti", Decimal(1024**4)),
    ("1Pi", Decimal(1024**5)),
    ("1Ei", Decimal(2**60)),
    ("1.5Gi", Decimal(1610612736)),
    ("128974848", Decimal(128974848)),
    ("129e6", Decimal(129000000)),
    ("1e3", Decimal(1000)),
    ("1E3", Decimal(1000)),
    ("1E-3", Decimal("0.001")),
    ("1e+3", Decimal(1000)),
    ("-2", Decimal(-2)),
    ("+1.5", Decimal("1.5")),
    (".5", Decimal("0.5")),
    ("5.", Decimal(5)),
    ("-.5m", Decimal("-0.0005")),
    ("0", Decimal(0)),
    ("007", Decimal(7)),
    (" 2 ", Decimal(2)),
    ("0.1n", Decimal("1e-10")),
    ("12345678901234567890123456789Ki", Decimal(12345678901234567890123456789 * 1024)),
    (3, Decimal(3)),
    (0.25, Decimal("0.25")),
]


@pytest.mark.parametrize(("text", "expected"), KNOWN)
def test_known_values(text: str | int | float, expected: Decimal) -> None:
    assert parse_quantity(text) == expected


def test_mapping_function_gives_cores_and_bytes() -> None:
    assert resource_quantity("500m") == 0.5
    assert resource_quantity("1Gi") == 1073741824.0
    assert resource_quantity("4") == 4.0
    assert isinstance(resource_quantity(2), float)


BAD = [
    "12Qi",
    "",
    "   ",
    "abc",
    "1ki",
    "1K",
    "1KI",
    "1gi",
    "1e",
    "1e1.5",
    "1.2.3",
    "--1",
    "+",
    ".",
    "-.",
    "1 Gi",
    "Gi",
    "m",
    "NaN",
    "inf",
    "1e3Gi",
    "1Gi1",
    "0x10",
    "1_000",
    "\u0661",  # an Arabic-Indic digit: Python's int() takes it, Kubernetes does not
    "1e99999999999",
]


@pytest.mark.parametrize("text", BAD)
def test_garbage_is_rejected_with_a_clear_message(text: str) -> None:
    with pytest.raises(QuantityError) as caught:
        parse_quantity(text)
    message = str(caught.value)
    assert message.startswith(f'invalid Kubernetes quantity "{text}": ')
    assert message.endswith("(examples: 500m, 2, 1.5Gi, 1e3)")


@pytest.mark.parametrize("value", [True, False, math.nan, math.inf, -math.inf, None, [1], b"1"])
def test_non_quantity_values_are_rejected(value: object) -> None:
    with pytest.raises(QuantityError):
        parse_quantity(value)  # type: ignore[arg-type]


def test_error_names_the_problem() -> None:
    with pytest.raises(QuantityError, match=r'unknown suffix "Qi"'):
        parse_quantity("12Qi")
    with pytest.raises(QuantityError, match=r"case matters"):
        parse_quantity("1ki")
    with pytest.raises(QuantityError, match=r"invalid exponent"):
        parse_quantity("1e")
    with pytest.raises(QuantityError, match=r"empty"):
        parse_quantity("")


def test_quantity_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        resource_quantity("12Qi")


def test_too_large_for_a_float_is_an_error_not_infinity() -> None:
    assert parse_quantity("1e400") == Decimal("1e400")
    with pytest.raises(QuantityError, match="too large"):
        resource_quantity("1e400")


# --- properties -----------------------------------------------------------------------------------

BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


@st.composite
def quantities(draw: st.DrawFn) -> tuple[str, Fraction]:
    """A quantity in the grammar and its value, computed independently with fractions."""
    sign = draw(st.sampled_from(["", "+", "-"]))
    integer = draw(st.text("0123456789", max_size=12))
    fraction = draw(st.text("0123456789", min_size=0 if integer else 1, max_size=9))
    dot = "." if fraction else draw(st.sampled_from(["", "."]))
    value = Fraction(int(integer or "0")) + (Fraction(int(fraction), 10 ** len(fraction)) if fraction else 0)
    kind = draw(st.sampled_from(["binary", "decimal", "exponent"]))
    if kind == "binary":
        suffix = draw(st.sampled_from(sorted(BINARY)))
        value *= 1024 ** BINARY[suffix]
    elif kind == "decimal":
        suffix = draw(st.sampled_from(sorted(DECIMAL)))
        value *= Fraction(10) ** DECIMAL[suffix]
    else:
        exponent = draw(st.integers(-30, 30))
        suffix = draw(st.sampled_from(["e", "E"])) + draw(st.sampled_from(["", "+"] if exponent >= 0 else [""]))
        suffix += str(exponent)
        value *= Fraction(10) ** exponent
    return f"{sign}{integer}{dot}{fraction}{suffix}", -value if sign == "-" else value


@given(quantities())
def test_every_grammatical_quantity_parses_to_its_exact_value(case: tuple[str, Fraction]) -> None:
    text, expected = case
    assert Fraction(parse_quantity(text)) == expected


@given(st.text(max_size=12))
def test_any_text_parses_or_raises_quantity_error(text: str) -> None:
    try:
        value = parse_quantity(text)
    except QuantityError:
        return
    assert value.is_finite()


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_suffixes_scale_integers_exactly(n: int) -> None:
    assert parse_quantity(f"{n}Ki") == n * 1024
    assert parse_quantity(f"{n}Gi") == n * 1024**3
    assert parse_quantity(f"{n}m") * 1000 == n
    assert parse_quantity(f"{n}k") == n * 1000
    assert parse_quantity(n) == n


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=1e15))
def test_floats_map_to_themselves(x: float) -> None:
    assert resource_quantity(x) == x
