"""Atomic writes land with the modes a plain open() / mkdir() would give (0o666 / 0o777 less the umask), whatever the
writer did: temporary files and directories (tempfile, safetensors' own) are 0600 / 0700."""
import os
import stat
import tempfile

import pytest

import vitkit
from vitkit.atomic import atomic_path, plain_modes, write_json, write_text


@pytest.fixture
def umask():
    """Set the process umask for one test, and put the old one back."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# worked by hand: 0o666 & ~umask, 0o777 & ~umask
@pytest.mark.parametrize("mask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700), (0o002, 0o664, 0o775)],
                         ids=["022", "077", "002"])
def test_files_and_directories_get_the_umask_modes(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    assert mode(write_text(tmp_path / "a.txt", "hi")) == file_mode
    assert mode(write_json(tmp_path / "a.json", {"a": 1})) == file_mode
    with atomic_path(tmp_path / "f.bin") as tmp:  # a writer that makes its own private file, as safetensors does
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600))
    assert mode(tmp_path / "f.bin") == file_mode
    with atomic_path(tmp_path / "d") as tmp:
        tmp.mkdir(mode=0o700)
        (tmp / "plain.txt").write_text("x")
        os.close(os.open(tmp / "private.bin", os.O_WRONLY | os.O_CREAT, 0o600))
        sub = tempfile.mkdtemp(dir=tmp)  # 0o700
        os.close(tempfile.mkstemp(dir=sub)[0])  # 0o600
    assert mode(tmp_path / "d") == dir_mode
    assert mode(tmp_path / "d" / "plain.txt") == mode(tmp_path / "d" / "private.bin") == file_mode
    (inner,) = [p for p in (tmp_path / "d").iterdir() if p.is_dir()]
    assert mode(inner) == dir_mode and [mode(p) for p in inner.iterdir()] == [file_mode]
    assert os.umask(mask) == mask  # the process umask is as the test set it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.txt", "d", "f.bin"]  # no probe or temporary left


def test_plain_modes_measures_and_leaves_nothing(tmp_path, umask):
    umask(0o027)
    assert plain_modes(tmp_path) == (0o640, 0o750)
    assert list(tmp_path.iterdir()) == [] and os.umask(0o027) == 0o027


def test_replacing_a_directory_also_settles_its_modes(tmp_path, umask):
    umask(0o022)
    (tmp_path / "d").mkdir(mode=0o700)
    with atomic_path(tmp_path / "d", overwrite=True) as tmp:
        tmp.mkdir(mode=0o700)
    assert mode(tmp_path / "d") == 0o755 and not (tmp_path / ".d.old").exists()


def test_executables_stay_executable_and_links_are_not_followed(tmp_path, umask):
    umask(0o022)
    outside = tmp_path / "outside.txt"
    outside.write_text("not vitkit's")
    os.chmod(outside, 0o600)
    with atomic_path(tmp_path / "d") as tmp:
        tmp.mkdir()
        (tmp / "run.sh").write_text("#!/bin/sh\n")
        os.chmod(tmp / "run.sh", 0o700)
        (tmp / "link").symlink_to(outside)
    assert mode(tmp_path / "d" / "run.sh") == 0o755
    assert mode(outside) == 0o600 and (tmp_path / "d" / "link").is_symlink()


def test_saved_model_is_readable_by_all_under_umask_022(tmp_path, umask):
    umask(0o022)
    model = vitkit.create_model("ViT-Ti/16", num_classes=3, image_size=16, patch_size=8, width=32, depth=1, heads=2, mlp_dim=64)
    out = vitkit.save_model(model, tmp_path / "m")
    assert mode(out) == 0o755
    assert mode(out / "model.safetensors") == 0o644  # safetensors alone writes 0600
    assert mode(out / "config.json") == 0o644
