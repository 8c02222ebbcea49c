"""Byte sizes as people write them: 512MiB, 4GiB, 1.5G, 1000000."""

from __future__ import annotations

UNITS = {
    "": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
    "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40,
}


def parse_size(text: str) -> int:
    """'4GiB' → bytes. Raises ValueError naming the text if it is not a size."""
    s = str(text).strip().lower().replace(" ", "")
    num = s.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = s[len(num):]
    try:
        value = float(num)
    except ValueError:
        value = -1.0
    if unit not in UNITS or value <= 0:
        raise ValueError(f"{text!r} is not a size like 512MiB or 4GiB")
    return int(value * UNITS[unit])


def format_size(n: int | float) -> str:
    """Bytes for people: 1.5 GiB, 300 MiB, 12 KiB."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}".replace(".0 ", " ")
    return f"{int(n)} B"
