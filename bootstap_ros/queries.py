"""Query points: reading and writing query CSV files and making query grids.

A query is one row ``(t, x, y)``: start tracking the point at pixel ``(x, y)``
of frame ``t``. Arrays of queries are float32 ``[N, 3]`` in that column order.

Coordinates are continuous pixel coordinates in the video's own resolution,
in TAPIR's raster convention: ``(0, 0)`` is the top-left corner of the
top-left pixel, so the centre of pixel (column i, row j) is ``(i + 0.5, j + 0.5)``
and a W x H image spans ``[0, W] x [0, H]``. Rescaling to the model's
resolution (and TAPIR's ``[t, y, x]`` order) is the tracking engine's job.

The CSV format is a header naming the columns ``t``, ``x`` and ``y`` (any
order; other columns are ignored) and one query per line::

    t,x,y
    0,120.5,64.5
    12,300,200.25

Points that all lie on one known frame (`bootstap-queries`' demonstration frame) may
leave out the ``t`` column: ``read_queries_csv(path, default_t=0)`` reads ``x,y`` rows.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

COLUMNS = ("t", "x", "y")


class QueryError(ValueError):
    """A query file or query array that cannot be used, with the reason."""


def read_queries_csv(path, num_frames: Optional[int] = None,
                     size: Optional[Tuple[int, int]] = None, default_t: Optional[int] = None) -> np.ndarray:
    """Reads queries ``(t, x, y)`` from a CSV file into float32 ``[N, 3]``.

    Args:
      path: CSV file with a header naming ``t``, ``x`` and ``y``.
      default_t: when given, the ``t`` column may be left out: every row is on this frame.
      num_frames: when given, every ``t`` must lie in ``[0, num_frames)``.
      size: ``(height, width)``; when given, every point must lie in the image,
        ``0 <= x <= width`` and ``0 <= y <= height``.

    Raises:
      QueryError naming the file and line of the first problem found. A file
      without any query rows is an error too: it is almost always a mistake.
    """
    path = Path(path)
    try:
        # utf-8-sig: spreadsheet programs like to start CSV files with a BOM.
        with open(path, newline="", encoding="utf-8-sig") as file:
            rows = list(_numbered_rows(file))
    except OSError as error:
        raise QueryError(f"{path}: cannot read query file ({error.strerror or error})") from error
    except UnicodeDecodeError as error:
        raise QueryError(f"{path}: not a text CSV file ({error})") from error
    if not rows:
        raise QueryError(f"{path}: empty file; expected a header 't,x,y' and one query per line")

    header_line, header = rows[0]
    names = [name.strip().lower() for name in header]
    required = COLUMNS if default_t is None or "t" in names else ("x", "y")
    missing = [name for name in required if name not in names]
    if missing:
        expected = "'t,x,y'" if default_t is None else "'x,y' or 't,x,y'"
        raise QueryError(f"{path}:{header_line}: header {header} lacks column(s) "
                         f"{', '.join(missing)}; expected a header like {expected}")
    column_of = {name: names.index(name) for name in required}

    queries = []
    for line, row in rows[1:]:
        if len(row) < len(names):
            raise QueryError(f"{path}:{line}: expected {len(names)} values "
                             f"({','.join(names)}), found {len(row)}: {row}")
        t, x, y = (_parse_number(row[column_of[name]], name, path, line) if name in column_of
                   else float(default_t) for name in COLUMNS)
        if t != int(t):
            raise QueryError(f"{path}:{line}: t must be a whole frame index, got {t:g}")
        if t < 0 or (num_frames is not None and t >= num_frames):
            limit = f"[0, {num_frames})" if num_frames is not None else ">= 0"
            raise QueryError(f"{path}:{line}: frame t={int(t)} is outside the video "
                             f"(expected t in {limit})")
        if size is not None:
            height, width = size
            if not (0 <= x <= width and 0 <= y <= height):
                raise QueryError(
                    f"{path}:{line}: point x={x:g}, y={y:g} is outside the {width}x{height} "
                    f"(WxH) image; expected 0 <= x <= {width} and 0 <= y <= {height} in "
                    "pixels of the input video")
        queries.append((t, x, y))
    if not queries:
        raise QueryError(f"{path}: no queries below the header")
    return np.asarray(queries, dtype=np.float32)


def _numbered_rows(file):
    """Yields (line number, cells) for each non-blank CSV row."""
    reader = csv.reader(file, skipinitialspace=True)
    for row in reader:
        if any(cell.strip() for cell in row):
            yield reader.line_num, row


def _parse_number(text: str, name: str, path: Path, line: int) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise QueryError(f"{path}:{line}: {name}={text.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise QueryError(f"{path}:{line}: {name}={text.strip()} is not a finite number")
    return value


def write_queries_csv(path, queries) -> None:
    """Writes queries ``[N, 3]`` of ``(t, x, y)`` as a CSV that `read_queries_csv` reads back."""
    queries = _check_queries(queries, Path(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(COLUMNS)
        for t, x, y in queries:
            # Shortest text that reads back to the same float32: exact round trips.
            writer.writerow((int(t), _shortest(x), _shortest(y)))


def _shortest(value: np.float32) -> str:
    return np.format_float_positional(np.float32(value), unique=True, trim="-")


def _check_queries(queries, where: Path) -> np.ndarray:
    queries = np.asarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != 3:
        raise QueryError(f"{where}: queries must be an array [N, 3] of (t, x, y), "
                         f"got shape {queries.shape}")
    if not np.isfinite(queries).all():
        raise QueryError(f"{where}: queries contain NaN or infinite values")
    if (queries[:, 0] != np.round(queries[:, 0])).any() or (queries[:, 0] < 0).any():
        raise QueryError(f"{where}: query frames t must be whole numbers >= 0")
    return queries


def grid_queries(n: int, size: Tuple[int, int], t: int = 0) -> np.ndarray:
    """An ``n x n`` grid of queries on frame ``t``, float32 ``[n*n, 3]`` of ``(t, x, y)``.

    Point ``(i, j)`` sits at the centre of the pixel that holds
    ``((i + 0.5) / n * width, (j + 0.5) / n * height)``, the centre of cell (i, j)
    of an n x n tiling of the image: about half a cell of margin to every
    border, and every query exactly on a pixel centre (``floor(.) + 0.5``).
    Rows come first: the first n points share the top y.
    """
    if int(n) != n or n < 1:
        raise QueryError(f"grid size n must be a positive integer, got {n!r}")
    if int(t) != t or t < 0:
        raise QueryError(f"grid frame t must be a whole number >= 0, got {t!r}")
    n = int(n)
    height, width = size
    fractions = (np.arange(n, dtype=np.float64) + 0.5) / n
    centres_y = np.floor(fractions * height) + 0.5
    centres_x = np.floor(fractions * width) + 0.5
    ys, xs = np.meshgrid(centres_y, centres_x, indexing="ij")
    ts = np.full(n * n, t, dtype=np.float64)
    return np.stack([ts, xs.ravel(), ys.ravel()], axis=1).astype(np.float32)
