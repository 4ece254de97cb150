import json

import numpy as np
import pytest

from jaxpoison import io


def test_atomic_writes_replace_content(tmp_path):
  target = tmp_path / "sub" / "result.json"
  io.atomic_write_json(target, {"a": np.float32(1.5), "b": np.arange(3)})
  assert json.loads(target.read_text()) == {"a": 1.5, "b": [0, 1, 2]}
  io.atomic_write_text(target, "replaced")
  assert target.read_text() == "replaced"
  io.atomic_save_npz(tmp_path / "votes.chunk", votes=np.arange(6).reshape(2, 3))
  with np.load(tmp_path / "votes.chunk") as f:
    np.testing.assert_array_equal(f["votes"], np.arange(6).reshape(2, 3))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["sub", "votes.chunk"]


def test_failed_write_keeps_old_file_and_leaves_no_temporary(tmp_path):
  target = tmp_path / "result.txt"
  target.write_text("finished work")

  def crash(f):
    f.write(b"half of a new ")
    raise RuntimeError("killed mid-write")

  with pytest.raises(RuntimeError):
    io.atomic_write(target, crash)
  assert target.read_text() == "finished work"
  assert [p.name for p in tmp_path.iterdir()] == ["result.txt"]


def test_json_refuses_unknown_objects(tmp_path):
  with pytest.raises(TypeError, match="cannot write object as JSON"):
    io.atomic_write_json(tmp_path / "x.json", {"x": object()})
  assert not (tmp_path / "x.json").exists()


def test_atomic_write_dir_replaces_whole_directory_and_keeps_old_on_failure(tmp_path):
  from jaxpoison.io import atomic_write_dir
  target = tmp_path / "ck"
  atomic_write_dir(target, lambda d: (d / "a.txt").write_text("one"))
  atomic_write_dir(target, lambda d: (d / "b.txt").write_text("two"))
  assert sorted(p.name for p in target.iterdir()) == ["b.txt"]

  def fail(d):
    (d / "c.txt").write_text("partial")
    raise RuntimeError("crash while writing")
  import pytest
  with pytest.raises(RuntimeError, match="crash while writing"):
    atomic_write_dir(target, fail)
  assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
