"""JSON atoms written byte for byte as the servers we imitate write them, shared by every protocol.

TGI (Rust, serde_json) writes ``f32`` logprobs in ryu's shortest form and never ``NaN``; the
OpenAI routes TGI serves inherit that; strings are written without ASCII escaping. Building these
pieces by hand (rather than ``json.dumps`` on a dict) keeps the per-token hot path cheap.
"""

from __future__ import annotations

from json.encoder import encode_basestring as json_str  # C-accelerated, no ASCII escaping

import numpy as np

__all__ = ["I32_MAX", "U32_MAX", "U64_MAX", "f32_json", "f32_value", "json_str"]

U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1
I32_MAX = 2**31 - 1

_f32 = np.float32
_F32_OVERFLOW = 3.4028235677973366e38  # halfway past f32's largest finite value: rounds to inf


def f32_json(value: float | None) -> str:
    """``value`` as serde_json writes an ``f32``: shortest round-trip digits, ryu's layout.

    Non-finite values become ``null`` (serde_json's choice; Python would write invalid ``NaN``).
    """
    if value is None or not abs(value) < _F32_OVERFLOW:  # also catches NaN
        return "null"
    text = str(_f32(value))
    if "e" not in text and "inf" not in text and abs(value) < 9.99e12:
        return text  # numpy and ryu agree on plain positional numbers
    return _ryu_layout(value)


def _ryu_layout(value: float) -> str:
    """Re-lay numpy's shortest f32 digits the way ryu does (exponent below 1e-6 and from 1e13)."""
    sci = np.format_float_scientific(_f32(value), unique=True, trim="-", exp_digits=1)
    sign = "-" if sci.startswith("-") else ""
    mantissa, exp = sci.lstrip("-").split("e")
    digits = mantissa.replace(".", "").rstrip("0") or "0"
    if digits == "0":
        return sign + "0.0"
    kk = int(exp) + 1  # 10^(kk-1) <= |v| < 10^kk
    n = len(digits)
    if n <= kk <= 13:
        return f"{sign}{digits}{'0' * (kk - n)}.0"
    if 0 < kk <= 13:
        return f"{sign}{digits[:kk]}.{digits[kk:]}"
    if -6 < kk <= 0:
        return f"{sign}0.{'0' * -kk}{digits}"
    if n == 1:
        return f"{sign}{digits}e{kk - 1}"
    return f"{sign}{digits[0]}.{digits[1:]}e{kk - 1}"


def f32_value(value: float | None) -> float | None:
    """``value`` rounded to its shortest f32 form, for dicts a JSON encoder will write later."""
    if value is None or not abs(value) < _F32_OVERFLOW:
        return None
    return float(str(_f32(value)))
