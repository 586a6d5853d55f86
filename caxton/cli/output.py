# -*- test-case-name: tests.test_cli_output -*-
"""
How the C{caxton} commands that talk to a node show what it answered.

Tables by default: columns as wide as their widest cell, numbers aligned
right, an empty list said in words.  C{--json} prints the API's JSON
instead, indented and with its keys sorted, so scripts can rely on it and
diffs of two runs stay small.  Times (Unix seconds in the API) are shown
in local time, sizes in KiB and MiB, durations as C{1m05s}.

Everything here is a pure function of its arguments (the clock is passed
in where it matters), so the tests check the exact text.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, TextIO, Tuple, Union

#: What a missing value looks like in a table or a list of fields.
NONE = "-"

#: The gap between two columns of a table.
GAP = "  "


def print_json(value: Any, out: TextIO) -> None:
    """
    Print C{value} as indented JSON with sorted keys.
    """
    print(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False), file=out)


def answer(as_json: bool, value: Any, text: Callable[[], str], out: TextIO) -> None:
    """
    Print what a command got: C{value} as JSON (C{--json}), or the
    readable C{text()}.
    """
    if as_json:
        print_json(value, out)
    else:
        print(text(), file=out)


def json_line(value: Any) -> str:
    """
    C{value} as one line of compact JSON with sorted keys (for streams).
    """
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


class Column:
    """
    One column of a L{table}.

    @ivar header: the column's title (printed in capitals).
    @ivar cell: the text of the column for one row.
    @ivar right: align to the right (numbers).
    """

    def __init__(self, header: str, cell: Union[str, Callable[[Any], Any]], right: bool = False) -> None:
        self.header = header.upper()
        self.right = right
        if isinstance(cell, str):
            key = cell
            self.cell: Callable[[Any], Any] = lambda row: row.get(key)
        else:
            self.cell = cell

    def text(self, row: Any) -> str:
        """
        This column's cell of C{row}, as text.
        """
        return text(self.cell(row))


def text(value: Any) -> str:
    """
    A value as a table shows it: C{-} for nothing, lists joined with
    commas, JSON for anything structured.
    """
    if value is None or value == "" or value == [] or value == ():
        return NONE
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    if isinstance(value, (dict, list, tuple)):
        return json_line(value)
    return " ".join(str(value).split()) if "\n" in str(value) or "\t" in str(value) else str(value)


def table(rows: Sequence[Any], columns: Sequence[Column], empty: str) -> str:
    """
    C{rows} as an aligned table with a header line, or C{empty} when there
    are none.  The last column is not padded, so lines carry no trailing
    spaces.
    """
    if not rows:
        return empty
    cells = [[column.header for column in columns]]
    cells += [[column.text(row) for column in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = []
    for line in cells:
        parts = []
        for i, (column, cell) in enumerate(zip(columns, line)):
            last = i == len(columns) - 1
            if column.right:
                parts.append(cell.rjust(widths[i]))
            elif last:
                parts.append(cell)
            else:
                parts.append(cell.ljust(widths[i]))
        lines.append(GAP.join(parts).rstrip())
    return "\n".join(lines)


def fields(pairs: Iterable[Tuple[str, Any]], width: int = 0) -> str:
    """
    C{name  value} lines with the values aligned, for one object.  A value
    spanning several lines is indented under the first.

    @param width: the least width of the names' column (to line up with
        another block).
    """
    pairs = [(name, value if isinstance(value, str) and value else text(value)) for name, value in pairs]
    if not pairs:
        return ""
    width = max([width] + [len(name) for name, _ in pairs])
    lines = []
    for name, value in pairs:
        first, *rest = value.split("\n")
        lines.append(f"{name.ljust(width)}{GAP}{first}".rstrip())
        lines += [f"{' ' * width}{GAP}{line}".rstrip() for line in rest]
    return "\n".join(lines)


def when(seconds: Optional[float]) -> str:
    """
    A Unix time as local time, C{2025-11-20 14:03:12}; C{-} for none.
    """
    if seconds is None:
        return NONE
    try:
        return datetime.fromtimestamp(float(seconds)).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return str(seconds)


def when_rfc3339(value: Optional[str]) -> str:
    """
    An RFC 3339 time (as events carry) in local time, like L{when}; the
    text as it is when it does not parse.
    """
    if not value:
        return NONE
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return value
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: Optional[float]) -> str:
    """
    A duration, short and readable: C{250ms}, C{12s}, C{1m05s}, C{3h02m},
    C{2d04h}.
    """
    if seconds is None:
        return NONE
    seconds = float(seconds)
    if seconds < 0:
        seconds = 0.0
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 10 and seconds != int(seconds):
        return f"{seconds:.1f}s".replace(".0s", "s")
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def age(seconds: Optional[float], now: Optional[float] = None) -> str:
    """
    How long ago a Unix time was: C{12s ago}; C{-} for none.
    """
    if seconds is None:
        return NONE
    now = time.time() if now is None else now
    return f"{duration(max(0.0, now - float(seconds)))} ago"


def when_and_age(seconds: Optional[float], now: Optional[float] = None) -> str:
    """
    C{2025-11-20 14:03:12 (3m12s ago)}.
    """
    if seconds is None:
        return NONE
    return f"{when(seconds)} ({age(seconds, now)})"


def size(count: Optional[int]) -> str:
    """
    A size in bytes, in the largest binary unit that keeps it readable:
    C{314 B}, C{64 KiB}, C{1.5 MiB}.
    """
    if count is None:
        return NONE
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.1f} {unit}".replace(".0 ", " ")
        value /= 1024
    raise AssertionError("unreachable")


def receiver(value: Any) -> str:
    """
    A message's receiver as one short string: a name, names joined with
    commas, C{capability:bid} or C{capability:bid (all)}.
    """
    if isinstance(value, Mapping):
        label = f"capability:{value.get('capability')}"
        return label + " (all)" if value.get("all") else label
    return text(value)


def shorten(value: str, width: int) -> str:
    """
    C{value} cut to C{width} characters, ending in an ellipsis if cut.
    """
    return value if len(value) <= width else value[: max(0, width - 1)] + "…"
