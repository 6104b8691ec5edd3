import os
import stat

import pytest

from twotower.run import DIR_MODE, FILE_MODE, atomic_write, atomic_write_dir, atomic_write_text


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_writes_leave_normal_permissions(tmp_path):
    # temp files are created 0600 / 0700; a finished artifact must be readable like any other file
    f = atomic_write_text(tmp_path / "a.json", "{}")
    assert _mode(f) == FILE_MODE  # 0644 under the usual umask 022, not mkstemp's 0600
    d = atomic_write_dir(tmp_path / "v1", lambda p: (p / "x").write_text("1"))
    assert _mode(d) == DIR_MODE and (d / "x").read_text() == "1"


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = atomic_write_text(tmp_path / "m.json", "old")

    def boom(p):
        p.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temporary left behind


def test_json_artifacts_fail_with_one_clear_error(tmp_path):
    from twotower.errors import ArtifactError
    from twotower.run import read_json_artifact

    with pytest.raises(ArtifactError, match="model metadata not found — was this run trained"):
        read_json_artifact(tmp_path / "model.json", "model metadata", "was this run trained?")
    (tmp_path / "m.json").write_text("{half")
    with pytest.raises(ArtifactError, match="m.json: corrupt manifest"):
        read_json_artifact(tmp_path / "m.json", "manifest")
    (tmp_path / "m.json").write_text('{"format_version": 9}')
    with pytest.raises(ArtifactError, match="format version 9 is not 1"):
        read_json_artifact(tmp_path / "m.json", "manifest", format_version=1)
    assert read_json_artifact(tmp_path / "m.json", "manifest") == {"format_version": 9}
