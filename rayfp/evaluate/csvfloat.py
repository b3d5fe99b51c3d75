"""pandas < 3's default CSV float parser (C `precise_xstrtod`), ported: it is not correctly
rounded, and the paper's notebooks were run with it, so exact ties between seed means depend on
it (docs/evaluation.md §10). Up to 17 significant digits are accumulated in a double
(``number = number * 10 + digit``), then scaled once by a power of ten."""

from __future__ import annotations

import math

MAX_DIGITS = 17
_POWERS = [float(f"1e{i}") for i in range(309)]


def pandas2_float(text: str) -> float:
    """Parse one CSV cell the way pandas 2's C parser does; empty -> NaN."""
    s = text.strip()
    if not s or s.lower() in ("nan", "na", "n/a", "null", "-nan"):
        return math.nan
    if s.lower() in ("inf", "+inf", "infinity", "-inf", "-infinity"):
        return float(s)
    i, n = 0, len(s)
    negative = s[0] == "-"
    if s[0] in "+-":
        i = 1
    number, digits, decimals, exponent = 0.0, 0, 0, 0
    while i < n and s[i].isdigit():
        if digits < MAX_DIGITS:
            number = number * 10.0 + (ord(s[i]) - 48)
            digits += 1
        else:
            exponent += 1
        i += 1
    if i < n and s[i] == ".":
        i += 1
        while i < n and digits < MAX_DIGITS and s[i].isdigit():
            number = number * 10.0 + (ord(s[i]) - 48)
            digits += 1
            decimals += 1
            i += 1
        while i < n and s[i].isdigit():
            i += 1
        exponent -= decimals
    if i < n and s[i] in "eE":
        i += 1
        sign = -1 if i < n and s[i] == "-" else 1
        if i < n and s[i] in "+-":
            i += 1
        value = 0
        while i < n and s[i].isdigit():
            value = value * 10 + (ord(s[i]) - 48)
            i += 1
        exponent += sign * value
    if i != n:
        raise ValueError(f"not a number: {text!r}")
    if exponent > 308:
        number = math.inf
    elif exponent > 0:
        number *= _POWERS[exponent]
    elif exponent < -308:
        number = 0.0 if exponent < -616 else number / _POWERS[-308 - exponent] / _POWERS[308]
    else:
        number /= _POWERS[-exponent]
    return -number if negative else number
