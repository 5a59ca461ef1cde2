"""Tests for the CIFAR-10 pipeline (experiments.data, experiments.augment).

The tests build tiny datasets in the official binary format themselves,
byte by byte from the format's description, and check the loader against
the pattern they wrote.
"""

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import urllib.error
from pathlib import Path

import jax
import numpy as np
import pytest

from experiments import augment as aug
from experiments import data
from experiments import parallel

R = 4  # records per file in the tiny datasets
TRAIN_NAMES = [f"data_batch_{i}.bin" for i in range(1, 6)]
CLASSES = ["c0-plane", "c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9-truck"]
STANDARD_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ---------------------------------------------------------------------------
# Helpers: a tiny dataset in the official binary layout
# ---------------------------------------------------------------------------


def pixel(n, row, col, ch):
  """Value written for example n (global index) at (row, col, channel)."""
  return (37 * n + 85 * ch + 7 * row + 3 * col) % 256


def label_of(n):
  return (3 * n + 1) % 10


def record_bytes(n):
  # Spec: 1 label byte, then 1024 red, 1024 green, 1024 blue, each row-major 32x32.
  out = bytearray([label_of(n)])
  for ch in range(3):
    for row in range(32):
      for col in range(32):
        out.append(pixel(n, row, col, ch))
  return bytes(out)


META = "\n".join(CLASSES[:5]) + "\n\n" + "\n".join(CLASSES[5:]) + "\n\n"


def write_layout(root, records=R, meta=META):
  """Writes root/cifar-10-batches-bin/ with `records` records per file."""
  d = Path(root) / "cifar-10-batches-bin"
  d.mkdir(parents=True)
  n = 0
  for name in TRAIN_NAMES + ["test_batch.bin"]:
    (d / name).write_bytes(b"".join(record_bytes(n + i) for i in range(records)))
    n += records
  (d / "batches.meta.txt").write_text(meta)
  return d


def expected_images(indices):
  n, row, col, ch = np.meshgrid(np.asarray(indices), np.arange(32), np.arange(32), np.arange(3), indexing="ij")
  return pixel(n, row, col, ch).astype(np.uint8)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
  """A tar.gz of a tiny layout, with the official archive's top-level folder."""
  src = tmp_path_factory.mktemp("src")
  write_layout(src)
  path = tmp_path_factory.mktemp("archive") / "cifar-10-binary.tar.gz"
  with tarfile.open(path, "w:gz") as tar:
    tar.add(src / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
  return path


def md5_of(path):
  return hashlib.md5(Path(path).read_bytes()).hexdigest()


def serve(monkeypatch, archive_path, calls=None):
  """Patches the fetch function to copy a local archive; patches the MD5 to match."""

  def fake_fetch(url, dest_path):
    assert url == data.CIFAR10_URL
    if calls is not None:
      calls.append(url)
    shutil.copyfile(archive_path, dest_path)

  monkeypatch.setattr(data, "_fetch", fake_fetch)
  monkeypatch.setattr(data, "CIFAR10_MD5", md5_of(archive_path))


def evil_archive(path, member_name, data_bytes=b"pwned", link=False):
  with tarfile.open(path, "w:gz") as tar:
    info = tarfile.TarInfo(member_name)
    if link:
      info.type = tarfile.SYMTYPE
      info.linkname = "/etc/passwd"
      tar.addfile(info)
    else:
      info.size = len(data_bytes)
      tar.addfile(info, io.BytesIO(data_bytes))
  return path


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def test_load_shapes_dtypes_orientation_labels(tmp_path):
  d = write_layout(tmp_path)
  ds = data.load_cifar10(tmp_path, download=False, records_per_file=R)
  assert isinstance(ds, data.Cifar10)
  assert ds.train_images.shape == (5 * R, 32, 32, 3) and ds.train_images.dtype == np.uint8
  assert ds.test_images.shape == (R, 32, 32, 3) and ds.test_images.dtype == np.uint8
  assert ds.train_labels.shape == (5 * R,) and ds.train_labels.dtype == np.int32
  assert ds.test_labels.shape == (R,) and ds.test_labels.dtype == np.int32
  np.testing.assert_array_equal(ds.train_images, expected_images(range(5 * R)))
  np.testing.assert_array_equal(ds.test_images, expected_images(range(5 * R, 6 * R)))
  np.testing.assert_array_equal(ds.train_labels, [label_of(n) for n in range(5 * R)])
  np.testing.assert_array_equal(ds.test_labels, [label_of(n) for n in range(5 * R, 6 * R)])
  assert list(ds.class_names) == CLASSES  # blank lines ignored
  # Raw byte offsets straight from the format description.
  raw = (d / "data_batch_2.bin").read_bytes()
  rec = 1 * 3073  # second record of the second file -> example R + 1
  assert ds.train_labels[R + 1] == raw[rec]
  assert ds.train_images[R + 1, 0, 31, 0] == raw[rec + 1 + 31]  # red, top-right
  assert ds.train_images[R + 1, 2, 5, 1] == raw[rec + 1 + 1024 + 2 * 32 + 5]  # green
  assert ds.train_images[R + 1, 31, 0, 2] == raw[rec + 1 + 2048 + 31 * 32]  # blue, bottom-left


def test_default_dir_from_env(tmp_path, monkeypatch):
  write_layout(tmp_path / "env")
  monkeypatch.setenv("JAXNORM_DATA", str(tmp_path / "env"))
  assert data.default_data_dir() == tmp_path / "env"
  ds = data.load_cifar10(download=False, records_per_file=R)
  assert ds.train_images.shape[0] == 5 * R
  monkeypatch.delenv("JAXNORM_DATA")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert data.default_data_dir() == tmp_path / "home" / ".cache" / "jaxnorm"


def test_truncated_file_names_file_and_sizes(tmp_path):
  d = write_layout(tmp_path)
  path = d / "data_batch_3.bin"
  path.write_bytes(path.read_bytes()[:-100])
  with pytest.raises(ValueError) as e:
    data.load_cifar10(tmp_path, download=False, records_per_file=R)
  msg = str(e.value)
  assert "data_batch_3.bin" in msg
  assert str(R * 3073 - 100) in msg and str(R * 3073) in msg


def test_real_size_is_enforced_by_default(tmp_path):
  write_layout(tmp_path)  # tiny files are not a valid real layout
  with pytest.raises(ValueError, match=r"data_batch_1\.bin.*30730000"):
    data.load_cifar10(tmp_path, download=False)


def test_bad_label_and_bad_meta(tmp_path):
  d = write_layout(tmp_path)
  raw = bytearray((d / "test_batch.bin").read_bytes())
  raw[2 * 3073] = 10
  (d / "test_batch.bin").write_bytes(bytes(raw))
  with pytest.raises(ValueError, match=r"test_batch\.bin.*label 10"):
    data.load_cifar10(tmp_path, download=False, records_per_file=R)
  d2 = write_layout(tmp_path / "b", meta="a\nb\n")
  with pytest.raises(ValueError, match=r"batches\.meta\.txt"):
    data.load_cifar10(d2.parent, download=False, records_per_file=R)


def test_missing_files_without_download(tmp_path, monkeypatch):
  monkeypatch.setattr(data, "_fetch", lambda *a: pytest.fail("must not fetch"))
  with pytest.raises(FileNotFoundError) as e:
    data.load_cifar10(tmp_path, download=False, records_per_file=R)
  msg = str(e.value)
  assert str(tmp_path / "cifar-10-batches-bin") in msg
  assert "JAXNORM_DATA" in msg and "data_dir" in msg and data.CIFAR10_URL in msg
  assert os.listdir(tmp_path) == []


def test_incomplete_existing_dir(tmp_path, monkeypatch):
  d = write_layout(tmp_path)
  (d / "data_batch_4.bin").unlink()
  monkeypatch.setattr(data, "_fetch", lambda *a: pytest.fail("must not fetch"))
  with pytest.raises(FileNotFoundError, match=r"data_batch_4\.bin"):
    data.load_cifar10(tmp_path, records_per_file=R)


# ---------------------------------------------------------------------------
# Download
# ---------------------------------------------------------------------------


def test_download_success_then_cache(tmp_path, monkeypatch, archive):
  calls = []
  serve(monkeypatch, archive, calls)
  target = tmp_path / "new" / "dir"  # created on demand
  ds = data.load_cifar10(target, records_per_file=R)
  assert calls == [data.CIFAR10_URL]
  np.testing.assert_array_equal(ds.train_images, expected_images(range(5 * R)))
  np.testing.assert_array_equal(ds.test_labels, [label_of(n) for n in range(5 * R, 6 * R)])
  assert os.listdir(target) == ["cifar-10-batches-bin"]  # no temp files left
  ds2 = data.load_cifar10(target, records_per_file=R)
  assert calls == [data.CIFAR10_URL]  # cached: not fetched again
  np.testing.assert_array_equal(ds2.train_images, ds.train_images)


def test_checksum_mismatch_leaves_nothing(tmp_path, monkeypatch, archive):
  serve(monkeypatch, archive)
  monkeypatch.setattr(data, "CIFAR10_MD5", "0" * 32)
  with pytest.raises(ValueError) as e:
    data.load_cifar10(tmp_path, records_per_file=R)
  msg = str(e.value)
  assert "checksum" in msg.lower() and md5_of(archive) in msg and "0" * 32 in msg
  assert os.listdir(tmp_path) == []


def test_real_md5_constant_rejects_test_archive(tmp_path, monkeypatch, archive):
  monkeypatch.setattr(data, "_fetch", lambda url, dest: shutil.copyfile(archive, dest))
  assert data.CIFAR10_MD5 == "c32a1d4ab5d03f1284b67883e8d87530"
  with pytest.raises(ValueError, match="c32a1d4ab5d03f1284b67883e8d87530"):
    data.load_cifar10(tmp_path, records_per_file=R)
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("exc", [OSError("connection reset by peer"), urllib.error.URLError("timed out")])
def test_failure_part_way_leaves_nothing(tmp_path, monkeypatch, exc):
  def failing_fetch(url, dest_path):
    with open(dest_path, "wb") as f:
      f.write(b"\x1f\x8b" + b"x" * 5000)
    raise exc

  monkeypatch.setattr(data, "_fetch", failing_fetch)
  with pytest.raises(OSError) as e:
    data.load_cifar10(tmp_path, records_per_file=R)
  msg = str(e.value)
  assert data.CIFAR10_URL in msg and str(exc.args[0]) in msg
  assert os.listdir(tmp_path) == []


def test_interrupt_during_download_or_extract_leaves_nothing(tmp_path, monkeypatch, archive):
  def interrupted_fetch(url, dest_path):
    Path(dest_path).write_bytes(b"partial")
    raise KeyboardInterrupt

  monkeypatch.setattr(data, "_fetch", interrupted_fetch)
  with pytest.raises(KeyboardInterrupt):
    data.load_cifar10(tmp_path, records_per_file=R)
  assert os.listdir(tmp_path) == []

  serve(monkeypatch, archive)
  real_extract = data._safe_extract

  def extract_then_interrupt(src, dest):
    real_extract(src, dest)
    assert os.listdir(dest) == ["cifar-10-batches-bin"]
    raise KeyboardInterrupt

  monkeypatch.setattr(data, "_safe_extract", extract_then_interrupt)
  with pytest.raises(KeyboardInterrupt):
    data.load_cifar10(tmp_path, records_per_file=R)
  assert os.listdir(tmp_path) == []


def test_offline_message(tmp_path, monkeypatch):
  def offline(url, dest_path):
    raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

  monkeypatch.setattr(data, "_fetch", offline)
  with pytest.raises(OSError) as e:
    data.load_cifar10(tmp_path / "d", records_per_file=R)
  msg = str(e.value)
  assert str(tmp_path / "d" / "cifar-10-batches-bin") in msg
  assert "data_dir=" in msg and "JAXNORM_DATA" in msg
  assert "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz" in msg
  assert os.listdir(tmp_path / "d") == []


def test_archive_with_wrong_contents_is_rejected(tmp_path, monkeypatch):
  src = tmp_path / "src"
  d = write_layout(src)
  (d / "test_batch.bin").write_bytes(b"\0" * 3073)  # wrong size
  bad = tmp_path / "bad.tar.gz"
  with tarfile.open(bad, "w:gz") as tar:
    tar.add(d, arcname="cifar-10-batches-bin")
  serve(monkeypatch, bad)
  (tmp_path / "data").mkdir()
  with pytest.raises(ValueError, match=r"test_batch\.bin"):
    data.load_cifar10(tmp_path / "data", records_per_file=R)
  assert os.listdir(tmp_path / "data") == []


@pytest.mark.parametrize(
  "member", ["../evil.bin", "cifar-10-batches-bin/../../evil.bin", "/tmp/jaxnorm-evil-abs.bin", "link"]
)
def test_unsafe_tar_member_rejected(tmp_path, monkeypatch, member):
  bad = evil_archive(tmp_path / "evil.tar.gz", member, link=member == "link")
  serve(monkeypatch, bad)
  (tmp_path / "data").mkdir()
  with pytest.raises(ValueError) as e:
    data.load_cifar10(tmp_path / "data", records_per_file=R)
  assert repr(member) in str(e.value)
  assert os.listdir(tmp_path / "data") == []
  assert not (tmp_path / "evil.bin").exists()
  assert not Path("/tmp/jaxnorm-evil-abs.bin").exists()


# ---------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------


def indexed(n):
  images = np.broadcast_to((np.arange(n) % 256).astype(np.uint8)[:, None, None, None], (n, 2, 2, 3)).copy()
  return images, np.arange(n, dtype=np.int32)


@pytest.mark.parametrize("n,bs", [(10, 4), (8, 4), (3, 5)])
def test_eval_batches_cover_once_with_mask(n, bs):
  images, labels = indexed(n)
  batches = list(data.eval_batches(images, labels, bs))
  assert len(batches) == -(-n // bs)
  seen = []
  for b in batches:
    assert b["images"].shape == (bs, 2, 2, 3) and b["images"].dtype == np.uint8
    assert b["labels"].shape == (bs,) and b["mask"].dtype == np.bool_
    real = b["labels"][b["mask"]]
    seen.extend(real.tolist())
    np.testing.assert_array_equal(b["images"][b["mask"]][:, 0, 0, 0], real % 256)
    assert not b["images"][~b["mask"]].any() and not b["labels"][~b["mask"]].any()
  assert sorted(seen) == list(range(n)) and len(seen) == n
  padding = sum(int((~b["mask"]).sum()) for b in batches)
  assert padding == len(batches) * bs - n
  assert all(b["mask"].all() for b in batches[:-1])
  assert batches[-1]["mask"].tolist() == [True] * (n - (len(batches) - 1) * bs) + [False] * padding


def test_train_batches_determinism_and_epochs():
  images, labels = indexed(103)
  run = lambda **kw: [b["labels"].tolist() for b in data.train_batches(images, labels, 10, **kw)]
  e0 = run(seed=0, epoch=0)
  assert len(e0) == 10 == data.steps_per_epoch(103, 10)  # remainder of 3 dropped
  assert all(len(b) == 10 for b in e0)
  flat = [i for b in e0 for i in b]
  assert len(set(flat)) == 100 and set(flat) <= set(range(103))
  assert run(seed=0, epoch=0) == e0
  assert run(seed=0, epoch=1) != e0
  assert run(seed=1, epoch=0) != e0
  assert flat != sorted(flat)  # actually shuffled
  assert run(seed=0, epoch=0, start_step=4) == e0[4:]
  assert run(seed=0, epoch=0, start_step=10) == []
  b = next(data.train_batches(images, labels, 10, seed=0, epoch=0))
  np.testing.assert_array_equal(b["images"][:, 1, 1, 2], b["labels"] % 256)  # pairs kept
  assert b["images"].dtype == np.uint8
  with pytest.raises(ValueError, match="start_step"):
    next(data.train_batches(images, labels, 10, seed=0, epoch=0, start_step=11))
  with pytest.raises(ValueError, match="batch_size"):
    next(data.train_batches(images, labels, 200, seed=0, epoch=0))


def test_put_global_batch_single_device():
  images, labels = indexed(6)
  out = parallel.put_global_batch({"images": images, "labels": labels}, parallel.make_mesh())
  assert isinstance(out["images"], jax.Array)
  np.testing.assert_array_equal(np.asarray(out["images"]), images)
  assert out["images"].sharding.spec == jax.sharding.PartitionSpec("data")


def test_put_global_batch_multi_device_subprocess():
  """Two fake CPU devices (needs a fresh process for the XLA flag)."""
  code = textwrap.dedent("""
        import warnings
        warnings.filterwarnings("error", category=DeprecationWarning,
                                module=r"(jaxnorm|experiments)\\b")
        import jax, numpy as np
        from experiments import parallel
        assert jax.device_count() == 2, jax.devices()
        mesh = parallel.make_mesh()
        out = parallel.put_global_batch({"x": np.arange(8).reshape(4, 2)}, mesh)
        assert len(out["x"].addressable_shards) == 2
        assert [s.data.shape for s in out["x"].addressable_shards] == [(2, 2), (2, 2)]
        np.testing.assert_array_equal(np.asarray(out["x"]), np.arange(8).reshape(4, 2))
        try:
            parallel.put_global_batch({"x": np.zeros((5, 2))}, mesh)
        except ValueError as e:
            print("ERR", e)
    """)
  root = Path(__file__).resolve().parents[2]
  env = dict(
    os.environ,
    XLA_FLAGS="--xla_force_host_platform_device_count=2",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
  )
  res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
  assert res.returncode == 0, res.stderr
  err = res.stdout.split("ERR", 1)[1]
  assert "batch size 5" in err and "2 devices" in err


# ---------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------


def crafted(n, seed=0):
  """Random images with no zero pixel, so padding is recognisable."""
  return np.random.default_rng(seed).integers(1, 256, (n, 32, 32, 3), dtype=np.uint8)


def match_offsets(src, out, padding=4):
  """Brute force: the (dy, dx, flip) windows of the padded src equal to out."""
  p = np.pad(src, ((padding, padding), (padding, padding), (0, 0)))
  hits = []
  for dy in range(2 * padding + 1):
    for dx in range(2 * padding + 1):
      win = p[dy : dy + 32, dx : dx + 32]
      for flip in (False, True):
        if np.array_equal(win[:, ::-1] if flip else win, out):
          hits.append((dy, dx, flip))
  return hits


def test_random_crop_flip_windows_and_flip_rate():
  n = 200
  src = crafted(n)
  out = np.asarray(aug.random_crop_flip(jax.random.key(0), src))
  assert out.shape == src.shape and out.dtype == np.uint8
  found = []
  for i in range(n):
    hits = match_offsets(src[i], out[i])
    assert len(hits) == 1, (i, hits)  # a window at offsets in [0, 8], exactly one
    found.append(hits[0])
  flips = sum(f for _, _, f in found)
  assert 0.3 * n < flips < 0.7 * n  # sometimes, not always
  dys = {dy for dy, _, _ in found}
  dxs = {dx for _, dx, _ in found}
  assert dys == set(range(9)) and dxs == set(range(9))  # whole range used, no more


def test_random_crop_flip_dtype_and_padding_argument():
  src = crafted(8).astype(np.float32)
  out = aug.random_crop_flip(jax.random.key(3), src, padding=2)
  assert out.dtype == np.float32 and out.shape == src.shape
  for i in range(8):
    assert len(match_offsets(src[i], np.asarray(out[i]), padding=2)) == 1


def test_augment_determinism_and_normalization():
  src = crafted(16, seed=1)
  k1, k2 = jax.random.key(1), jax.random.key(2)
  a = np.asarray(aug.augment(k1, src))
  assert a.shape == (16, 32, 32, 3) and a.dtype == np.float32
  np.testing.assert_array_equal(a, np.asarray(aug.augment(k1, src)))
  assert not np.array_equal(a, np.asarray(aug.augment(k2, src)))
  cropped = np.asarray(aug.random_crop_flip(k1, src))
  mean = np.array([0.4914, 0.4822, 0.4465])
  std = np.array([0.2470, 0.2435, 0.2616])
  expected = (cropped.astype(np.float64) / 255.0 - mean) / std
  np.testing.assert_allclose(a, expected, rtol=0, atol=1e-5)


def test_normalize_images_formula():
  x = np.random.default_rng(2).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
  x[0, 0, 0] = [0, 0, 0]
  x[0, 0, 1] = [255, 255, 255]
  y = aug.normalize_images(x)
  assert y.dtype == np.float32 and y.shape == x.shape
  mean = np.array([0.4914, 0.4822, 0.4465])
  std = np.array([0.2470, 0.2435, 0.2616])
  np.testing.assert_allclose(np.asarray(y), (x / 255.0 - mean) / std, rtol=0, atol=1e-5)
  np.testing.assert_allclose(np.asarray(y[0, 0, 0]), -mean / std, atol=1e-6)


# ---------------------------------------------------------------------------
# Real data (integration)
# ---------------------------------------------------------------------------


def test_real_cifar10():
  root = os.environ.get("JAXNORM_DATA")
  if not root or not (Path(root) / "cifar-10-batches-bin" / "test_batch.bin").is_file():
    pytest.skip("set JAXNORM_DATA to a directory containing cifar-10-batches-bin/")
  ds = data.load_cifar10(root, download=False)
  assert ds.train_images.shape == (50000, 32, 32, 3) and ds.train_images.dtype == np.uint8
  assert ds.test_images.shape == (10000, 32, 32, 3) and ds.test_images.dtype == np.uint8
  assert ds.train_labels.dtype == np.int32 and ds.test_labels.dtype == np.int32
  np.testing.assert_array_equal(np.bincount(ds.train_labels, minlength=10), [5000] * 10)
  np.testing.assert_array_equal(np.bincount(ds.test_labels, minlength=10), [1000] * 10)
  assert list(ds.class_names) == STANDARD_CLASSES
  # Natural images: channel means near the published CIFAR-10 statistics.
  mean = ds.train_images[::10].reshape(-1, 3).mean(0) / 255.0
  np.testing.assert_allclose(mean, [0.4914, 0.4822, 0.4465], atol=0.01)
