"""One guard for every reader, and the safe NumPy-file parsing the readers share.

Parsers fail in many ways on a broken file (ValueError, IndexError, zlib.error, MemoryError,
tokenize.TokenError, UnicodeDecodeError, ...). `reading(path)` turns every one of them into
`PointliftDataError(path, problem)`, so callers (and the CLI) see one exception type that names
the file. Sizes are checked against the bytes really present *before* anything is allocated, so a
small file cannot make a reader allocate gigabytes.
"""

from __future__ import annotations

import ast
import contextlib
import math
import warnings
import zipfile
from pathlib import Path

import numpy as np

from pointlift.errors import PointliftDataError, PointliftError

__all__ = [
    "PointliftDataWarning",
    "NonFinitePointsWarning",
    "reading",
    "read_text",
    "read_npy",
    "read_npz",
    "check_available",
    "drop_nonfinite_rows",
]

# A deflate stream expands at most ~1032x; anything claiming more is corrupt.
_MAX_DEFLATE_RATIO = 1100


class PointliftDataWarning(UserWarning):
    """A file was read, but part of it was ignored (the message names the file and what)."""


class NonFinitePointsWarning(PointliftDataWarning):
    """Points with NaN/inf coordinates were dropped while reading a file (the count is in the message)."""


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    name = type(error).__name__
    if isinstance(error, MemoryError):
        return "declares more data than can be held in memory (corrupt header?)"
    return f"cannot be parsed ({name}: {text})" if text else f"cannot be parsed ({name})"


@contextlib.contextmanager
def reading(path: str | Path):
    """Run a parser; any failure other than pointlift's own errors becomes PointliftDataError(path, ...)."""
    try:
        yield
    except PointliftError:
        raise
    except Exception as error:  # noqa: BLE001 - the point of the guard: every parse failure
        raise PointliftDataError(path, _describe(error)) from error


def read_text(path: str | Path, what: str = "text") -> str:
    """A text file as str; a file that is not UTF-8 (or ASCII) text is a data error, not a crash."""
    path = Path(path)
    if not path.is_file():
        raise PointliftDataError(path, "file not found")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        problem = f"is not UTF-8 {what} (byte {error.start} is {data[error.start]:#04x})"
        raise PointliftDataError(path, problem) from None


def check_available(path: Path, needed: int, available: int, what: str) -> None:
    """Refuse a declared size larger than the bytes present (checked before allocating)."""
    if needed > available:
        raise PointliftDataError(path, f"truncated: {what} needs {needed} bytes, only {available} present")


# ----------------------------------------------------------------------------------------------
# NPY / NPZ


def _npy_header(path: Path, stream, label: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, header bytes) of an .npy stream, validated."""
    fmt = np.lib.format
    magic = stream.read(6)
    if magic != b"\x93NUMPY":
        raise PointliftDataError(path, f"{label} is not a .npy array (bad magic)")
    version = tuple(stream.read(2))
    if version == (1, 0):
        length_bytes = 2
    elif version in ((2, 0), (3, 0)):
        length_bytes = 4
    else:
        raise PointliftDataError(path, f"{label} has unknown .npy version {version}")
    raw_length = stream.read(length_bytes)
    if len(raw_length) != length_bytes:
        raise PointliftDataError(path, f"{label} is truncated in its header")
    header_length = int.from_bytes(raw_length, "little")
    if header_length > 100_000:
        raise PointliftDataError(path, f"{label} declares a {header_length}-byte header (corrupt)")
    text = stream.read(header_length)
    if len(text) != header_length:
        raise PointliftDataError(path, f"{label} is truncated in its header")
    try:
        header = ast.literal_eval(text.decode("latin1" if version != (3, 0) else "utf8"))
    except Exception:  # noqa: BLE001 - SyntaxError, TokenError, ValueError, ... all mean "corrupt"
        raise PointliftDataError(path, f"{label} has an unreadable header {text[:60]!r}") from None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise PointliftDataError(path, f"{label} header is not a .npy header dict")
    shape, fortran = header["shape"], header["fortran_order"]
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise PointliftDataError(path, f"{label} has invalid shape {shape!r}")
    if not isinstance(fortran, bool):
        raise PointliftDataError(path, f"{label} has invalid fortran_order {fortran!r}")
    try:
        dtype = fmt.descr_to_dtype(header["descr"])
    except Exception:  # noqa: BLE001
        raise PointliftDataError(path, f"{label} has invalid dtype {header['descr']!r}") from None
    if dtype.hasobject:
        raise PointliftDataError(path, f"{label} holds Python objects (refused: loading them runs code)")
    return shape, fortran, dtype, 6 + 2 + length_bytes + header_length


def _npy_body(path: Path, stream, available: int, label: str, exact: bool) -> np.ndarray:
    """Read the array after its header; `available` = bytes after the header in the file/member."""
    shape, fortran, dtype, header_size = _npy_header(path, stream, label)
    nbytes = math.prod(shape) * dtype.itemsize
    available -= header_size
    check_available(path, nbytes, available, f"{label} of shape {shape} {dtype}")
    if exact and nbytes != available:
        raise PointliftDataError(
            path, f"{label} declares shape {shape} ({nbytes} bytes) but holds {available} bytes of data"
        )
    buffer = bytearray(nbytes)
    view = memoryview(buffer)
    filled = 0
    while filled < nbytes:
        got = stream.readinto(view[filled:])
        if not got:
            raise PointliftDataError(path, f"{label} is truncated: {filled} of {nbytes} bytes")
        filled += got
    array = np.frombuffer(buffer, dtype=dtype)
    return array.reshape(shape[::-1]).transpose() if fortran else array.reshape(shape)


def read_npy(path: str | Path) -> np.ndarray:
    """An .npy file, header validated and its size checked against the file before allocation."""
    path = Path(path)
    if not path.is_file():
        raise PointliftDataError(path, "file not found")
    with reading(path), open(path, "rb") as stream:
        return _npy_body(path, stream, path.stat().st_size, "array", exact=True)


def read_npz(path: str | Path, keys: list[str] | None = None) -> dict[str, np.ndarray]:
    """Arrays of an .npz archive (all, or `keys`; a missing key is an error), each member checked:
    an .npy inside, declared size within the member's, member's within the compressed bytes."""
    path = Path(path)
    if not path.is_file():
        raise PointliftDataError(path, "file not found")
    with reading(path):
        try:
            archive = zipfile.ZipFile(path)
        except zipfile.BadZipFile as error:
            raise PointliftDataError(path, f"is not an npz (zip) archive ({error})") from None
        with archive:
            members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
            if keys is None:
                keys = list(members)
                if not keys:
                    raise PointliftDataError(path, "archive holds no arrays")
            missing = [k for k in keys if k not in members]
            if missing:
                raise PointliftDataError(
                    path, f"has no key {', '.join(map(repr, missing))} (keys: {', '.join(members)})"
                )
            return {key: read_npz_member(path, archive, members[key]) for key in keys}


def read_npz_member(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """One .npy member of an open archive: the zip's sizes are checked against the archive and
    the array's declared size against the member's, before anything is allocated."""
    label = f"member {info.filename!r}"
    if not info.filename.endswith(".npy"):
        raise PointliftDataError(path, f"{label} is not an .npy array")
    check_npz_member_size(path, info)
    with archive.open(info) as stream:
        return _npy_body(path, stream, info.file_size, label, exact=True)


def check_npz_member_size(path: Path, info: zipfile.ZipInfo) -> None:
    """A member's stored size must fit the archive, and its expanded size the codec's ratio."""
    label = f"member {info.filename!r}"
    size = path.stat().st_size
    if info.compress_size > size:
        raise PointliftDataError(path, f"{label} claims {info.compress_size} bytes, archive has {size}")
    ratio_bound = 1 if info.compress_type == zipfile.ZIP_STORED else _MAX_DEFLATE_RATIO
    if info.file_size > max(info.compress_size, 1) * ratio_bound + 1024:
        raise PointliftDataError(
            path, f"{label} claims to expand {info.compress_size} to {info.file_size} bytes (corrupt)"
        )


def drop_nonfinite_rows(path: Path, xyz: np.ndarray, nonfinite: str) -> np.ndarray | None:
    """Policy for NaN/inf coordinates: 'drop' the points (one warning with the count), or 'error'.

    Returns the boolean mask of rows to keep, or None when every row is finite."""
    if nonfinite not in ("drop", "error"):
        from pointlift.errors import PointliftConfigError

        raise PointliftConfigError(f"nonfinite must be 'drop' or 'error', got {nonfinite!r}")
    finite = np.isfinite(xyz).all(axis=1)
    bad = int(finite.size - np.count_nonzero(finite))
    if not bad:
        return None
    if nonfinite == "error":
        raise PointliftDataError(path, f"{bad} of {len(xyz)} points have non-finite (NaN/inf) coordinates")
    if bad == len(xyz):
        raise PointliftDataError(path, f"all {bad} points have non-finite (NaN/inf) coordinates")
    warnings.warn(f"{path}: dropped {bad} of {len(xyz)} points with non-finite (NaN/inf) coordinates",
                  NonFinitePointsWarning, stacklevel=3)
    return finite
