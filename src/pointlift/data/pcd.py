"""PCD (PCL's Point Cloud Data), v0.5 and v0.7: ascii, binary and binary_compressed.

Kept as pointlift's own parser: pypcd4 refuses v0.5 files (5 of PCL's own test files) and this one
reads all 44 PCL files of ../shared/reference/point-files equal to pypcd4/open3d. The header is
checked field by field (integers, no repeated fields, COUNT >= 1, WIDTH*HEIGHT = POINTS) and the
body must hold exactly the declared points, so a wrong count is refused rather than read shifted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pointlift.data.guard import check_available
from pointlift.data.ply import parse_int, split_header
from pointlift.errors import PointliftDataError

_KEYS = ("VERSION", "FIELDS", "SIZE", "TYPE", "COUNT", "WIDTH", "HEIGHT", "VIEWPOINT", "POINTS", "DATA")
_KINDS = {("F", 4): "f4", ("F", 8): "f8", ("F", 2): "f2",
          ("U", 1): "u1", ("U", 2): "u2", ("U", 4): "u4", ("U", 8): "u8",
          ("I", 1): "i1", ("I", 2): "i2", ("I", 4): "i4", ("I", 8): "i8"}


def _optional_c_decoder():
    """python-lzf / python-neo-lzf (module `lzf`), if installed: liblzf itself, about 20-100x faster
    than the Python decoder below. Optional - pointlift does not depend on it."""
    try:
        import lzf
    except ImportError:
        return None
    return getattr(lzf, "decompress", None)


_C_LZF = _optional_c_decoder()


def lzf_decompress(path: Path, source: bytes, size: int) -> bytes:
    """liblzf decompression (the codec of PCD binary_compressed) into exactly `size` bytes."""
    if _C_LZF is not None:
        try:
            out = _C_LZF(source, size)
        except Exception:  # noqa: BLE001 - corrupt input; the Python decoder names the problem
            out = None
        if out is not None and len(out) == size:
            return bytes(out)
    return _lzf_python(path, source, size)


def _lzf_python(path: Path, source: bytes, size: int) -> bytes:
    out = bytearray(size)
    ip, op, end = 0, 0, len(source)
    while ip < end:
        ctrl = source[ip]
        ip += 1
        if ctrl < 32:  # literal run of ctrl + 1 bytes
            length = ctrl + 1
            if ip + length > end or op + length > size:
                raise PointliftDataError(path, "compressed data is corrupt (literal run past the end)")
            out[op:op + length] = source[ip:ip + length]
            ip += length
            op += length
        else:  # back reference: (length, distance)
            length = ctrl >> 5
            if length == 7:
                if ip >= end:
                    raise PointliftDataError(path, "compressed data is corrupt (truncated reference)")
                length += source[ip]
                ip += 1
            if ip >= end:
                raise PointliftDataError(path, "compressed data is corrupt (truncated reference)")
            ref = op - ((ctrl & 0x1F) << 8) - source[ip] - 1
            ip += 1
            length += 2
            if ref < 0 or op + length > size:
                raise PointliftDataError(path, "compressed data is corrupt (reference outside the output)")
            distance = op - ref
            if distance >= length:
                out[op:op + length] = out[ref:ref + length]
            else:  # overlapping copy repeats the last `distance` bytes
                pattern = bytes(out[ref:op])
                out[op:op + length] = (pattern * (length // distance + 1))[:length]
            op += length
    if op != size:
        raise PointliftDataError(path, f"compressed data expands to {op} bytes, header declares {size}")
    return bytes(out)


def _header(path: Path, lines: list[str]) -> dict[str, list[str]]:
    header: dict[str, list[str]] = {}
    for line in lines:
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        key = parts[0].upper()
        key = "FIELDS" if key == "COLUMNS" else key  # early v0.5 files name the fields COLUMNS
        if key not in _KEYS:
            raise PointliftDataError(path, f"unexpected PCD header line {line[:80]!r}")
        if key in header:
            raise PointliftDataError(path, f"PCD header has two {key} lines")
        header[key] = parts[1:]
    for key in ("FIELDS", "SIZE", "TYPE", "DATA"):
        if key not in header:
            raise PointliftDataError(path, f"PCD header has no {key} line")
        if not header[key]:
            raise PointliftDataError(path, f"PCD header's {key} line is empty")
    return header


def _one_int(path: Path, header: dict[str, list[str]], key: str, default: int | None) -> int | None:
    if key not in header:
        return default
    if len(header[key]) != 1:
        raise PointliftDataError(path, f"PCD header {key} must hold one integer, got {' '.join(header[key])!r}")
    return parse_int(path, header[key][0], f"PCD {key}")


def read_pcd(path: Path, data: bytes) -> tuple[dict[str, np.ndarray], dict[str, bool]]:
    """(columns by field name, whether each was an integer type); packed rgb/rgba unpacked to
    red/green/blue; multi-count fields as (N, COUNT) columns; PCL's "_" padding dropped."""
    def is_data_line(line: str) -> bool:
        return line[:4].upper() == "DATA" and line[4:5] in ("", " ", "\t")

    lines, body_offset = split_header(path, data, is_data_line)
    header = _header(path, lines)
    names, types = header["FIELDS"], [t.upper() for t in header["TYPE"]]
    sizes = [parse_int(path, s, "PCD SIZE", 1) for s in header["SIZE"]]
    counts = [parse_int(path, c, "PCD COUNT", 1) for c in header.get("COUNT", ["1"] * len(names))]
    if not (len(names) == len(sizes) == len(types) == len(counts)):
        raise PointliftDataError(
            path, f"PCD header lists {len(names)} FIELDS, {len(sizes)} SIZE, {len(types)} TYPE, {len(counts)} COUNT"
        )
    real = [n for n in names if n != "_"]
    repeated = sorted({n for n in real if real.count(n) > 1})
    if repeated:
        raise PointliftDataError(path, f"PCD field(s) {', '.join(repeated)} appear more than once")
    missing = [n for n in ("x", "y", "z") if n not in real]
    if missing:
        raise PointliftDataError(path, f"has no {'/'.join(missing)} field (fields: {', '.join(names)})")
    width = _one_int(path, header, "WIDTH", None)
    height = _one_int(path, header, "HEIGHT", 1)
    count = _one_int(path, header, "POINTS", None)
    if width is None and count is None:
        raise PointliftDataError(path, "PCD header has neither WIDTH nor POINTS")
    if width is None:
        width, height = count, 1
    count = width * height if count is None else count
    if width * height != count:
        raise PointliftDataError(path, f"PCD header WIDTH*HEIGHT = {width}*{height} but POINTS = {count}")
    fields = []
    for index, (name, kind, size, c) in enumerate(zip(names, types, sizes, counts)):
        code = _KINDS.get((kind, size))
        if code is None:
            raise PointliftDataError(path, f"PCD field {name!r} has unsupported TYPE/SIZE {kind}/{size}")
        fields.append((name if name != "_" else f"_pad{index}", np.dtype("<" + code), c))
    if len(header["DATA"]) != 1:
        raise PointliftDataError(path, f"PCD DATA line must name one mode, got {' '.join(header['DATA'])!r}")
    mode = header["DATA"][0].lower()
    body = memoryview(data)[body_offset:]
    if mode == "ascii":
        columns = _ascii(path, bytes(body), fields, count)
    elif mode == "binary":
        record = np.dtype([(n, t, (c,)) if c > 1 else (n, t) for n, t, c in fields])
        check_available(path, count * record.itemsize, len(body), f"{count} points")
        _check_padding(path, body[count * record.itemsize:], f"{count} points of {record.itemsize} bytes")
        table = np.frombuffer(body, record, count)
        columns = {n: table[n] for n, _, _ in fields}
    elif mode == "binary_compressed":
        columns = _compressed(path, body, fields, count)
    else:
        raise PointliftDataError(path, f"PCD DATA {mode!r} is not ascii, binary or binary_compressed")
    columns = {n: v for n, v in columns.items() if not n.startswith("_pad")}
    integer = {n: t.kind in "iu" for n, t, _ in fields}
    for name in ("rgb", "rgba"):
        if name in columns:
            packed = _unpack_colour(path, columns.pop(name))
            columns["red"], columns["green"], columns["blue"] = (packed >> 16) & 255, (packed >> 8) & 255, packed & 255
            integer.update(red=True, green=True, blue=True)
            break
    return columns, integer


def _check_padding(path: Path, rest: memoryview, what: str) -> None:
    """PCL pads some files with zero bytes after the data; any non-zero byte there means the
    declared point count is wrong (points would be dropped silently)."""
    if len(rest) and np.frombuffer(rest, np.uint8).any():
        raise PointliftDataError(
            path, f"has {len(rest)} bytes after {what}, not all zero padding: wrong POINTS?"
        )


def _compressed(path: Path, body: memoryview, fields, count: int) -> dict[str, np.ndarray]:
    """binary_compressed: uint32 compressed size, uint32 raw size, then LZF of the points stored
    field by field (all x, then all y, ...)."""
    check_available(path, 8, len(body), "binary_compressed sizes")
    compressed, raw = (int(v) for v in np.frombuffer(body, "<u4", 2))
    point_bytes = sum(t.itemsize * c for _, t, c in fields)
    if raw != count * point_bytes:
        raise PointliftDataError(
            path, f"binary_compressed declares {raw} raw bytes, {count} points take {count * point_bytes}: "
            "wrong POINTS?"
        )
    check_available(path, compressed, len(body) - 8, "compressed data")
    # One 3-byte LZF back-reference yields at most 264 bytes: a larger claim is corrupt (and would
    # allocate before decoding).
    if raw > 88 * compressed + 32:
        raise PointliftDataError(path, f"binary_compressed claims {compressed} bytes expand to {raw} (corrupt)")
    _check_padding(path, body[8 + compressed:], "the compressed block")
    decoded = lzf_decompress(path, bytes(body[8:8 + compressed]), raw) if raw else b""
    columns, at = {}, 0
    for name, dtype, c in fields:
        size = count * dtype.itemsize * c
        values = np.frombuffer(decoded, dtype, count * c, at)
        columns[name] = values.reshape(count, c) if c > 1 else values
        at += size
    return columns


def _ascii(path: Path, body: bytes, fields, count: int) -> dict[str, np.ndarray]:
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError as error:
        raise PointliftDataError(path, f"ascii body has a non-ASCII byte at body offset {error.start}") from None
    rows = [line.split() for line in text.split("\n") if line.strip()]
    if len(rows) != count:
        raise PointliftDataError(
            path, f"header declares {count} points, body has {len(rows)} rows"
            + (" (truncated)" if len(rows) < count else ": wrong POINTS?")
        )
    width = sum(c for _, _, c in fields)
    for number, row in enumerate(rows):
        if len(row) != width:
            raise PointliftDataError(path, f"point {number} has {len(row)} values, header declares {width}")
    try:
        table = np.array(rows, dtype=np.float64).reshape(count, width)
    except ValueError:
        raise PointliftDataError(path, "point data contains non-numeric values") from None
    columns, start = {}, 0
    for name, dtype, c in fields:
        values = table[:, start:start + c]
        start += c
        if name in ("rgb", "rgba"):
            # PCL writes packed colour as the uint32 or as the float whose bit pattern it is.
            values = values[:, 0].astype(np.uint32) if dtype.kind in "iu" else values[:, 0].astype(np.float32)
        elif c == 1:
            values = values[:, 0]
        columns[name] = values
    return columns


def _unpack_colour(path: Path, values: np.ndarray) -> np.ndarray:
    """PCL packs 8-bit r, g, b into one 32-bit word, stored as uint32 or as a float's bit pattern."""
    if values.ndim != 1:
        raise PointliftDataError(path, "packed rgb field must have COUNT 1")
    if values.dtype.kind in "ui":
        return values.astype(np.uint32)
    if values.dtype.itemsize != 4:
        raise PointliftDataError(path, "packed rgb field must be 4 bytes")
    return np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
