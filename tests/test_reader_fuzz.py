"""Seeded corruption of small files in every format the readers take (truncation, flipped and
inserted bytes, header edits, wrong counts, NaN/inf, wrong dtypes, huge declared sizes).

Every case must end in a valid result or `PointliftDataError` naming the file - no other exception
type, no hang (each case is timed), bounded memory (tracemalloc peak per case) - and a wrong
element count must never be read silently. The `pointlift embed` part checks exit code 2 with one
line on stderr for corrupt point-set archives.
"""

from __future__ import annotations

import io
import pickle
import re
import struct
import time
import tracemalloc
import warnings
import zipfile
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from pointlift.data import load_modelnet10_vox, load_modelnet40_h5, load_scanobjectnn_h5, read_point_file
from pointlift.data.guard import PointliftDataWarning, read_npz
from pointlift.data.lidar import load_info_pickle, read_kitti_calibration, read_nuscenes_frame
from pointlift.data.rgbd import read_depth_png
from pointlift.errors import PointliftDataError

SEED = 2026
PER_CASE_SECONDS = 5.0  # generous: a shared, loaded machine; a hang would take far longer
PEAK_BYTES = 64 << 20

# ----------------------------------------------------------------------------------------------
# seed files (written here with struct/NumPy, independent of the readers)


def _cloud(rng, n=24):
    xyz = rng.normal(size=(n, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, size=(n, 3)).astype(np.uint8)
    return xyz, rgb


def _faces(n):
    return [(i, (i + 1) % n, (i + 2) % n) for i in range(0, n - 2, 2)]


def ply_bytes(rng, fmt, faces_first=False, texcoord=False):
    """`texcoord`: faces with two list properties and scalars (vertex_indices, texcoord, red, quality)."""
    xyz, rgb = _cloud(rng)
    faces = _faces(len(xyz))
    uv = rng.random((len(faces), 6)).astype(np.float32)
    vertex = [f"element vertex {len(xyz)}", "property float x", "property float y", "property float z",
              "property uchar red", "property uchar green", "property uchar blue"]
    face = [f"element face {len(faces)}", "property list uchar int vertex_indices"]
    if texcoord:
        face += ["property list uchar float texcoord", "property uchar red", "property float quality"]
    elements = face + vertex if faces_first else vertex + face
    header = "\n".join(["ply", f"format {fmt} 1.0", "comment fuzz seed", *elements, "end_header"]) + "\n"
    if fmt == "ascii":
        v = [" ".join([*("%.7g" % c for c in xyz[i]), *map(str, rgb[i])]) for i in range(len(xyz))]
        f = [" ".join(map(str, (3, *t))) + (" 6 " + " ".join("%.7g" % c for c in uv[i]) + " 7 0.5" if texcoord else "")
             for i, t in enumerate(faces)]
        body = ("\n".join(f + v if faces_first else v + f) + "\n").encode()
    else:
        o = "<" if fmt == "binary_little_endian" else ">"
        v = b"".join(struct.pack(o + "3f3B", *xyz[i], *rgb[i]) for i in range(len(xyz)))
        f = b"".join(struct.pack(o + "B3i", 3, *t) + (struct.pack(o + "B6fBf", 6, *uv[i], 7, 0.5) if texcoord else b"")
                     for i, t in enumerate(faces))
        body = f + v if faces_first else v + f
    return header.encode() + body


def lzf_compress(data: bytes) -> bytes:
    """Valid LZF: literal runs, and runs of a repeated byte as overlapping back-references."""
    out, i, literal = bytearray(), 0, bytearray()

    def flush():
        for start in range(0, len(literal), 32):
            chunk = literal[start:start + 32]
            out.append(len(chunk) - 1)
            out.extend(chunk)
        literal.clear()

    while i < len(data):
        run = 1
        while i + run < len(data) and data[i + run] == data[i] and run < 200:
            run += 1
        if run >= 4:
            literal.append(data[i])
            flush()
            length = run - 1 - 2  # copy run-1 bytes from distance 1
            if length < 7:
                out.append(length << 5)
            else:
                out += bytes([7 << 5, length - 7])
            out.append(0)  # distance - 1 = 0
            i += run
        else:
            literal.append(data[i])
            i += 1
    flush()
    return bytes(out)


def pcd_bytes(rng, mode):
    xyz, rgb = _cloud(rng)
    xyz[::5, 2] = 0.0  # runs of zero bytes for the compressor's back-references
    packed = (rgb[:, 0].astype(np.uint32) << 16) | (rgb[:, 1].astype(np.uint32) << 8) | rgb[:, 2]
    n = len(xyz)
    header = "\n".join(["# .PCD v0.7 - Point Cloud Data file format", "VERSION 0.7", "FIELDS x y z rgb",
                        "SIZE 4 4 4 4", "TYPE F F F U", "COUNT 1 1 1 1", f"WIDTH {n}", "HEIGHT 1",
                        "VIEWPOINT 0 0 0 1 0 0 0", f"POINTS {n}", f"DATA {mode}"]) + "\n"
    if mode == "ascii":
        body = "".join(" ".join([*("%.7g" % c for c in xyz[i]), str(int(packed[i]))]) + "\n" for i in range(n))
        return (header + body).encode()
    if mode == "binary":
        table = np.zeros(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<u4")])
        table["x"], table["y"], table["z"], table["rgb"] = xyz[:, 0], xyz[:, 1], xyz[:, 2], packed
        return header.encode() + table.tobytes()
    raw = b"".join([xyz[:, 0].tobytes(), xyz[:, 1].tobytes(), xyz[:, 2].tobytes(), packed.astype("<u4").tobytes()])
    compressed = lzf_compress(raw)
    return header.encode() + struct.pack("<II", len(compressed), len(raw)) + compressed


def off_bytes(rng, coloured):
    xyz, rgb = _cloud(rng, 12)
    faces = _faces(len(xyz))
    head = "COFF" if coloured else "OFF"
    rows = [" ".join(["%.6g" % c for c in xyz[i]] + ([*map(str, rgb[i]), "255"] if coloured else []))
            for i in range(len(xyz))]
    rows += [" ".join(map(str, (3, *f, *(rgb[0] if not coloured else ())))) for f in faces]
    return (f"{head}\n# a comment\n{len(xyz)} {len(faces)} 0\n" + "\n".join(rows) + "\n").encode()


def npy_bytes(rng):
    buffer = io.BytesIO()
    np.save(buffer, _cloud(rng)[0])
    return buffer.getvalue()


def npz_bytes(rng, compressed):
    xyz, rgb = _cloud(rng)
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, points=xyz, rgb=rgb)
    return buffer.getvalue()


def sets_npz_bytes(rng):
    buffer = io.BytesIO()
    np.savez_compressed(buffer, points=rng.normal(size=(3, 64, 3)).astype(np.float32))
    return buffer.getvalue()


def vox_npz_bytes(rng):
    buffer = io.BytesIO()
    grids = (rng.random((3, 8, 8, 8)) < 0.3).astype(np.int32)
    np.savez_compressed(buffer, X_train=grids, y_train=np.array([0, 4, 9], np.int64))
    return buffer.getvalue()


def bin_bytes(rng):
    # a spatially ordered scan (neighbouring points alike), as LiDAR sweeps are
    t = np.linspace(0, 6, 400)
    scan = np.stack([np.cos(t) * 10, np.sin(t) * 10, 0.1 * t, rng.random(400)], 1).astype("<f4")
    return scan.tobytes()


def h5_bytes(rng, path):
    with h5py.File(path, "w") as h5:
        h5.create_dataset("data", data=rng.normal(size=(4, 32, 3)).astype(np.float32))
        h5.create_dataset("label", data=np.arange(4, dtype=np.int64))
    return path.read_bytes()


def png_bytes(rng):
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 5000, size=(12, 16)).astype(np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


def calib_bytes(rng):
    p2 = rng.normal(size=12)
    return ("P0: " + " ".join(["0"] * 12) + "\nP2: " + " ".join("%.6e" % v for v in p2)
            + "\nR0_rect: 1 0 0 0 1 0 0 0 1\nTr_velo_to_cam: " + " ".join("%.6e" % v for v in rng.normal(size=12))
            + "\n").encode()


def pickle_bytes(rng):
    info = {"metainfo": {}, "data_list": [{"token": "t", "lidar_points": {"lidar_path": "s.bin", "num_pts_feats": 4},
                                            "images": {"CAM_FRONT": {"img_path": "c.png", "cam2img": np.eye(3),
                                                                     "lidar2cam": np.eye(4)}}}]}
    return pickle.dumps(info)


# ----------------------------------------------------------------------------------------------
# mutations


def mutate(rng, data: bytes, kind: str, text_header: bytes | None) -> bytes:
    n = len(data)
    if kind == "truncate":
        return data[: int(rng.integers(0, n))]
    if kind == "flip":
        out = bytearray(data)
        for _ in range(int(rng.integers(1, 9))):
            out[int(rng.integers(0, n))] = int(rng.integers(0, 256))
        return bytes(out)
    if kind == "insert":
        at = int(rng.integers(0, n))
        return data[:at] + rng.integers(0, 256, size=int(rng.integers(1, 16))).astype(np.uint8).tobytes() + data[at:]
    if kind == "delete":
        at = int(rng.integers(0, n))
        return data[:at] + data[at + int(rng.integers(1, 32)):]
    if kind == "number":  # replace one number of the text header (counts, sizes, shapes)
        end = data.find(text_header) + len(text_header) if text_header and text_header in data else min(n, 400)
        head, body = data[:end], data[end:]
        numbers = list(re.finditer(rb"-?\d+", head))
        if not numbers:
            return data[:-1]
        match = numbers[int(rng.integers(0, len(numbers)))]
        value = int(match.group())
        new = [value - 1, value + 1, -1, 0, 10**12, 2**31, 2**63].pop(int(rng.integers(0, 7)))
        choice = str(new).encode() if rng.random() < 0.9 else b"a"
        return head[: match.start()] + choice + head[match.end():] + body
    if kind == "line":  # duplicate or drop one header line
        end = data.find(text_header) if text_header and text_header in data else -1
        if end <= 0:
            return data + data[:10]
        lines = data[:end].split(b"\n")
        i = int(rng.integers(0, len(lines)))
        lines = lines[:i] + ([lines[i]] * 2 if rng.random() < 0.5 else []) + lines[i + 1:]
        return b"\n".join(lines) + data[end:]
    if kind == "nan":  # NaN / inf into the values
        value = [b"nan", b"inf", b"-inf"][int(rng.integers(0, 3))]
        if text_header is None or data[:3] in (b"\x93NU", b"PK\x03"):
            out = bytearray(data)
            at = int(rng.integers(0, max(1, n // 4))) * 4
            at = min(at, n - 4)
            out[at:at + 4] = struct.pack("<f", float(value))
            return bytes(out)
        end = data.find(text_header) + len(text_header) if text_header in data else 0
        tokens = list(re.finditer(rb"-?\d+\.\d+(e[-+]\d+)?", data[end:]))
        if not tokens:
            return data
        match = tokens[int(rng.integers(0, len(tokens)))]
        return data[: end + match.start()] + value + data[end + match.end():]
    if kind == "dtype":  # declare another type for the same bytes
        swaps = [(b"float x", b"double x"), (b"float y", b"uchar y"), (b"uchar red", b"float red"),
                 (b"TYPE F F F U", b"TYPE U F F F"), (b"SIZE 4 4 4 4", b"SIZE 8 4 4 4"),
                 (b"'<f4'", b"'<f8'"), (b"'<f4'", b"'|O'"), (b"'<f4'", b"'<c8'"), (b"'|u1'", b"'<U4'"),
                 (b"uchar int", b"float int"), (b"COUNT 1 1 1 1", b"COUNT 0 1 1 1")]
        present = [s for s in swaps if s[0] in data]
        if not present:
            return data[::-1]
        old, new = present[int(rng.integers(0, len(present)))]
        return data.replace(old, new, 1)
    if kind == "huge":  # huge declared sizes
        out = re.sub(rb"(element vertex |POINTS |WIDTH |'shape': \()\d+", rb"\g<1>1000000000000", data, count=1)
        return out if out != data else data + b"\0" * 64
    raise AssertionError(kind)


KINDS = ["truncate", "flip", "insert", "delete", "number", "line", "nan", "dtype", "huge"]


# ----------------------------------------------------------------------------------------------
# the fuzz run


def _formats(rng, tmp: Path):
    """(name, suffix, seed bytes, end-of-header marker, reader taking the file's path)."""
    extra = np.random.default_rng(SEED + 28)

    def points(path):
        result = read_point_file(path, columns=4 if path.suffix == ".bin" else None)
        assert result.xyz.dtype == np.float32 and result.xyz.ndim == 2 and np.isfinite(result.xyz).all()
        return result

    def shapes_h5(path):
        return load_scanobjectnn_h5(path, "train")

    def nuscenes(path):
        root = path.parent
        np.zeros((8, 4), "<f4").tofile(root / "s.bin")
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "c.png")
        return read_nuscenes_frame(path, root)

    return [
        ("ply-ascii", ".ply", ply_bytes(rng, "ascii"), b"end_header\n", points),
        ("ply-le", ".ply", ply_bytes(rng, "binary_little_endian"), b"end_header\n", points),
        ("ply-be-face-first", ".ply", ply_bytes(rng, "binary_big_endian", True), b"end_header\n", points),
        ("pcd-ascii", ".pcd", pcd_bytes(rng, "ascii"), b"DATA ascii\n", points),
        ("pcd-binary", ".pcd", pcd_bytes(rng, "binary"), b"DATA binary\n", points),
        ("pcd-compressed", ".pcd", pcd_bytes(rng, "binary_compressed"), b"DATA binary_compressed\n", points),
        ("off", ".off", off_bytes(rng, False), b"# a comment\n", points),
        ("coff", ".off", off_bytes(rng, True), b"# a comment\n", points),
        ("npy", ".npy", npy_bytes(rng), b"}", points),
        ("npz", ".npz", npz_bytes(rng, False), None, points),
        ("npz-deflate", ".npz", npz_bytes(rng, True), None, points),
        ("bin", ".bin", bin_bytes(rng), None, points),
        ("h5", ".h5", h5_bytes(rng, tmp / "seed.h5"), None, shapes_h5),
        ("png", ".png", png_bytes(rng), None, lambda p: read_depth_png(p)),
        ("calib", ".txt", calib_bytes(rng), None, lambda p: read_kitti_calibration(p)),
        ("pickle", ".pkl", pickle_bytes(rng), None, nuscenes),
        ("sets-npz", ".npz", sets_npz_bytes(rng), None, lambda p: read_npz(p, ["points"])),
        ("voxel-npz", ".npz", vox_npz_bytes(rng), None, lambda p: load_modelnet10_vox(p, "train")),
        # Added later (issue 28), last and from their own generator: the cases before them unchanged.
        ("ply-ascii-texcoord", ".ply", ply_bytes(extra, "ascii", texcoord=True), b"end_header\n", points),
        ("ply-le-texcoord-face-first", ".ply", ply_bytes(extra, "binary_little_endian", True, True), b"end_header\n",
         points),
    ]


def run_case(reader, path: Path):
    """('ok' | 'warned' | 'refused' | exception type name, seconds, peak bytes)."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            reader(path)
        outcome = "warned" if any(issubclass(w.category, PointliftDataWarning) for w in caught) else "ok"
    except PointliftDataError as error:
        outcome = "refused" if path.name in str(error) or path.parent.name in str(error) else "unnamed"
    except Exception as error:  # noqa: BLE001 - recorded, then the test fails on it
        outcome = f"{type(error).__name__}: {error}"[:200]
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return outcome, seconds, peak


def test_fuzz_readers(tmp_path):
    rng = np.random.default_rng(SEED)
    formats = _formats(rng, tmp_path)
    per_format = 34
    outcomes: Counter = Counter()
    bad, slow, silent_counts = [], [], []
    worst_seconds, worst_peak = 0.0, 0
    started = time.perf_counter()
    for name, suffix, seed, marker, reader in formats:
        folder = tmp_path / name
        folder.mkdir()
        clean = folder / f"clean{suffix}"
        clean.write_bytes(seed)
        outcome, _, _ = run_case(reader, clean)
        assert outcome == "ok", f"{name}: the clean seed file must read: {outcome}"
        for case in range(per_format):
            kind = KINDS[case % len(KINDS)]
            data = mutate(rng, seed, kind, marker)
            path = folder / f"case{case:03d}_{kind}{suffix}"
            path.write_bytes(data)
            outcome, seconds, peak = run_case(reader, path)
            outcomes[outcome if outcome in ("ok", "warned", "refused") else "other"] += 1
            if outcome not in ("ok", "warned", "refused"):
                bad.append((name, kind, path.name, outcome))
            worst_seconds, worst_peak = max(worst_seconds, seconds), max(worst_peak, peak)
            if seconds > PER_CASE_SECONDS or peak > PEAK_BYTES:
                slow.append((name, kind, round(seconds, 2), peak))
            # A count edited by +-1 must never read silently (it would drop or invent points).
            if kind == "number" and outcome == "ok" and name.split("-")[0] in ("ply", "pcd", "off"):
                silent_counts.append((name, path))
    elapsed = time.perf_counter() - started
    total = sum(outcomes.values())
    print(f"\nfuzz: {total} cases in {elapsed:.1f} s, outcomes {dict(outcomes)}, slowest case {worst_seconds:.3f} s, "
          f"largest traced peak {worst_peak / 2**20:.1f} MiB")
    assert total >= 500
    assert not bad, "exceptions other than PointliftDataError:\n" + "\n".join(map(str, bad))
    assert not slow, f"cases over {PER_CASE_SECONDS} s or {PEAK_BYTES >> 20} MiB: {slow}"
    for name, path in silent_counts:
        _check_not_silently_miscounted(name, path)


def _check_not_silently_miscounted(name: str, path: Path) -> None:
    """A header-number edit that still reads cleanly must not have changed the point count
    (it edited something harmless, such as VERSION or a VIEWPOINT value, or a face count of a
    mesh whose faces are then refused)."""
    result = read_point_file(path)
    expected = 12 if name in ("off", "coff") else 24
    if name in ("off", "coff"):
        result = read_point_file(path, mesh_points="vertices")
    assert len(result) == expected, f"{path.name}: read {len(result)} points silently, the file has {expected}"


@pytest.mark.parametrize("problem", ["huge-shape", "not-npy", "unbalanced-header", "corrupt-deflate", "object",
                                     "truncated", "missing-key"])
def test_embed_cli_one_line_exit_2(tmp_path, capsys, embed_checkpoint, problem):
    """`pointlift embed` with a corrupt point-set archive: exit code 2 and one line on stderr."""
    from pointlift.cli import main

    rng = np.random.default_rng(1)
    good = sets_npz_bytes(rng)
    path = tmp_path / f"{problem}.npz"
    if problem == "huge-shape":
        data = _rewrite_member(good, lambda raw: raw.replace(b"(3, 64, 3)", b"(1000000000000, 64, 3)"))
    elif problem == "not-npy":
        data = _rewrite_member(good, lambda raw: b"just some bytes")
    elif problem == "unbalanced-header":
        data = _rewrite_member(good, lambda raw: raw.replace(b"}", b" ", 1))
    elif problem == "corrupt-deflate":
        data = bytearray(good)
        data[60:70] = b"\xff" * 10
        data = bytes(data)
    elif problem == "object":
        data = _rewrite_member(good, lambda raw: raw.replace(b"'<f4'", b"'|O' "))
    elif problem == "truncated":
        data = good[: len(good) // 2]
    else:
        buffer = io.BytesIO()
        np.savez(buffer, other=np.zeros((2, 5, 3), np.float32))
        data = buffer.getvalue()
    path.write_bytes(data)
    code = main(["embed", "--checkpoint", str(embed_checkpoint), "--points", str(path),
                 "--out", str(tmp_path / "f.npy"), "--device", "cpu"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and path.name in lines[0] and "Traceback" not in err, err


def _rewrite_member(archive: bytes, edit) -> bytes:
    source = zipfile.ZipFile(io.BytesIO(archive))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as out:
        for info in source.infolist():
            out.writestr(info.filename, edit(source.read(info)))
    return buffer.getvalue()


def test_embed_cli_subprocess_has_no_traceback(tmp_path, embed_checkpoint):
    """The same through a real process: stderr is exactly one line, exit code 2."""
    import subprocess
    import sys

    path = tmp_path / "bad.npz"
    path.write_bytes(_rewrite_member(sets_npz_bytes(np.random.default_rng(2)),
                                     lambda raw: raw.replace(b"(3, 64, 3)", b"(1000000000000, 64, 3)")))
    result = subprocess.run([sys.executable, "-m", "pointlift.cli", "embed", "--checkpoint", str(embed_checkpoint),
                             "--points", str(path), "--out", str(tmp_path / "f.npy"), "--device", "cpu"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "bad.npz" in result.stderr


@pytest.fixture(scope="module")
def embed_checkpoint(tmp_path_factory):
    return make_embed_checkpoint(tmp_path_factory.mktemp("embed"))


def make_embed_checkpoint(tmp: Path) -> Path:
    """A tiny real I2P-MAE checkpoint (3D-only, one epoch on two synthetic shapes)."""
    from pointlift.data.synthetic import make_shapes
    from pointlift.engine.config import OptimConfig, TrainConfig
    from pointlift.methods.i2p_mae.config import DataConfig, I2PMAEConfig, I2PMAEExperiment
    from pointlift.methods.i2p_mae.pretrain import pretrain
    from pointlift.models.point_m2ae.config import PointM2AEConfig

    config = PointM2AEConfig(num_points=64, num_centers=(16, 8, 4), group_sizes=(4, 4, 2),
                             encoder_dims=(16, 32, 48), encoder_depths=(1, 1, 1), num_heads=2, embed_hidden=8,
                             decoder_dims=(48, 32), decoder_depths=(1, 1), drop_path=0.0)
    points, _, _ = make_shapes(2, num_points=64, seed=1)
    experiment = I2PMAEExperiment(
        method=I2PMAEConfig(model=config, guided_masking=False, feature_target=False),
        data=DataConfig(format="synthetic", cache_dir=str(tmp / "cache")),
        train=TrainConfig(epochs=1, batch_size=8, checkpoint_every=0, optim=OptimConfig(lr=1e-3)),
        device="cpu")
    _, result, _ = pretrain(experiment, tmp / "run", progress=False, points=points)
    return result.checkpoint_path


def test_listed_cases(tmp_path):
    """The issue's named cases, each one PointliftDataError naming the file."""
    cases = {
        "neg.ply": b"ply\nformat binary_little_endian 1.0\nelement vertex -1\nproperty float x\n"
                   b"property float y\nproperty float z\nend_header\n",
        "dup.ply": b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float x\n"
                   b"property float y\nproperty float z\nend_header\n1 2 3 4\n",
        "dup.pcd": b"FIELDS x x y z\nSIZE 4 4 4 4\nTYPE F F F F\nWIDTH 1\nPOINTS 1\nDATA ascii\n1 2 3 4\n",
        "size.pcd": b"FIELDS x y z\nSIZE x 4 4\nTYPE F F F\nWIDTH 1\nPOINTS 1\nDATA ascii\n1 2 3\n",
        "count.pcd": b"FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT a 1 1\nWIDTH 1\nPOINTS 1\nDATA ascii\n1 2 3\n",
        "count0.pcd": b"FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 0 1 1\nWIDTH 1\nPOINTS 1\nDATA ascii\n1 2 3\n",
        "width.pcd": b"FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nWIDTH\nPOINTS 1\nDATA ascii\n1 2 3\n",
        "data.pcd": b"FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nWIDTH 1\nPOINTS 1\nDATA\n1 2 3\n",
        "huge.npy": _npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 3), }"),
        "brace.npy": _npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3), ") + b"\0" * 12,
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(PointliftDataError) as info:
            read_point_file(path)
        assert name in str(info.value), info.value
    root = tmp_path / "modelnet"
    root.mkdir()
    (root / "shape_names.txt").write_bytes(b"chair\n\xff\xfe\n")
    with pytest.raises(PointliftDataError, match="UTF-8"):
        load_modelnet40_h5(root, "train")
    calib = tmp_path / "calib.txt"
    calib.write_bytes(b"P2: 1 2 \xff\n")
    with pytest.raises(PointliftDataError, match="UTF-8"):
        read_kitti_calibration(calib)
    with h5py.File(tmp_path / "group.h5", "w") as h5:
        h5.create_group("data")
        h5.create_dataset("label", data=np.zeros(2, np.int64))
    with pytest.raises(PointliftDataError, match="not a dataset"):
        load_scanobjectnn_h5(tmp_path / "group.h5", "train")
    with h5py.File(tmp_path / "unwritten.h5", "w") as h5:
        h5.create_dataset("data", shape=(100000, 2048, 3), dtype="f4")
        h5.create_dataset("label", data=np.zeros(100000, np.int64))
    assert (tmp_path / "unwritten.h5").stat().st_size < 1_000_000
    with pytest.raises(PointliftDataError, match="never written"):
        load_scanobjectnn_h5(tmp_path / "unwritten.h5", "train")
    bomb = tmp_path / "bomb.png"
    _png_claiming(bomb, 30000, 30000)
    with pytest.raises(PointliftDataError, match="bomb.png"):
        read_depth_png(bomb)
    info = {"data_list": [{"lidar_points": {"lidar_path": "s.bin", "num_pts_feats": "five"}, "images": {}}]}
    (tmp_path / "five.pkl").write_bytes(pickle.dumps(info))
    with pytest.raises(PointliftDataError, match="num_pts_feats"):
        read_nuscenes_frame(tmp_path / "five.pkl", tmp_path)
    np.zeros((8, 5), "<f4").tofile(tmp_path / "s.bin")
    info["data_list"][0]["lidar_points"]["num_pts_feats"] = 5
    info["data_list"][0]["images"] = ["CAM_FRONT"]
    (tmp_path / "list.pkl").write_bytes(pickle.dumps(info))
    with pytest.raises(PointliftDataError, match="'images' is a list"):
        read_nuscenes_frame(tmp_path / "list.pkl", tmp_path)
    assert load_info_pickle(tmp_path / "list.pkl")["data_list"]


def _npy_with_header(text: str) -> bytes:
    text = text.ljust(117) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode()


def _png_claiming(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height (the pixel data is one small, wrong IDAT)."""
    import zlib

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_raw_bin_wrong_column_count(shared):
    """A nuScenes sweep (5 floats per point) read with 4 columns is refused, not returned shuffled;
    KITTI's (4 per point) reads with 4."""
    nuscenes = next(shared("data/sensor-samples/nuscenes").glob("*.pcd.bin"))
    assert (nuscenes.stat().st_size // 4) % 4 == 0  # the size alone cannot tell
    with pytest.raises(PointliftDataError, match="repeat every 5 floats"):
        read_point_file(nuscenes, columns=4)
    assert read_point_file(nuscenes, columns=5).xyz.shape[0] == nuscenes.stat().st_size // 20
    kitti = shared("data/sensor-samples/kitti/000008.bin")
    assert read_point_file(kitti, columns=4).xyz.shape[0] == kitti.stat().st_size // 16
    scannet = shared("data/sensor-samples/scannet/scene0000_00.bin")  # x y z r g b
    with pytest.raises(PointliftDataError, match="repeat every 6 floats"):
        read_point_file(scannet, columns=3)


@pytest.mark.parametrize("content", [b"a: [\xff\n", b"train:\n  epochs: [1,\n  x: 2\n"])
def test_cli_config_errors_are_one_line(tmp_path, capsys, content):
    """A non-UTF-8 config, and YAML whose parser message spans lines: exit 2, one line."""
    from pointlift.cli import main

    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    assert main(["pretrain", "ppkt", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "bad.yaml" in err, err


def test_a_depth_png_declaring_a_huge_frame_is_refused_before_decoding(tmp_path):
    """A damaged size in the header (valid CRC) must cost no memory: refused naming the file and size."""
    import struct
    import zlib

    from PIL import Image

    from pointlift.data.rgbd import FRAME_MAX_PIXELS, read_depth_png
    from pointlift.errors import PointliftDataError

    path = tmp_path / "frame-000000.depth.png"
    Image.fromarray(np.full((48, 64), 1000, np.uint16)).save(path)
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", 9000, 9000)  # width, height: 8.1e7 pixels, below PIL's own bomb limit
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # the header's CRC, made valid again
    path.write_bytes(bytes(data))
    with pytest.raises(PointliftDataError, match=r"9000x9000") as info:
        read_depth_png(path)
    assert path.name in str(info.value) and str(FRAME_MAX_PIXELS) in str(info.value)
    np.testing.assert_array_equal(read_depth_png(_good_depth(tmp_path)), np.full((48, 64), 1.0, np.float32))


def _good_depth(tmp_path):
    from PIL import Image

    path = tmp_path / "good.depth.png"
    Image.fromarray(np.full((48, 64), 1000, np.uint16)).save(path)
    return path
