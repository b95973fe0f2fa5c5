"""Atomic, durable outputs: files and folders are replaced whole, symlinks followed, leftovers harmless."""

import json
import multiprocessing as mp
import os

import pytest

import entrep.io as eio
from entrep.errors import UserError
from entrep.io import atomic_dir, atomic_path, exchange, recover_dir, replace_dir, write_json_atomic

OWN = {"model.json", "arrays.npz", "gallery"}


def _entries(folder):
    return sorted(p.name for p in folder.iterdir())


def _write_model(folder, version):
    (folder / "model.json").write_text(json.dumps({"v": version}))
    (folder / "gallery").mkdir()
    (folder / "gallery" / "vectors.npy").write_text(str(version))


def test_atomic_file_is_untouched_when_writing_fails(tmp_path):
    target = tmp_path / "model.json"
    write_json_atomic(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert json.loads(target.read_text()) == {"v": 1}
    assert _entries(tmp_path) == ["model.json"]  # no temporary left behind


def test_atomic_folder_replaces_old_folder_whole(tmp_path):
    target = tmp_path / "model"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "a").write_text("1")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "b").write_text("2")
    assert _entries(target) == ["b"]
    assert _entries(tmp_path) == ["model"]


def test_exchange_swaps_two_folders_in_one_step(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "from_a").write_text("")
    (tmp_path / "b").mkdir()
    if not exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("this file system cannot exchange paths atomically")
    assert _entries(tmp_path / "b") == ["from_a"] and _entries(tmp_path / "a") == []


def test_symlinked_model_path_replaces_the_target_and_keeps_the_link(tmp_path):
    real = tmp_path / "models" / "v1"
    real.mkdir(parents=True)
    (real / "model.json").write_text("old")
    link = tmp_path / "current"
    link.symlink_to(real, target_is_directory=True)
    with atomic_dir(link) as tmp:
        (tmp / "model.json").write_text("new")
    assert link.is_symlink() and os.path.realpath(link) == str(real)
    assert (real / "model.json").read_text() == "new"
    assert _entries(tmp_path / "models") == ["v1"]


def test_dangling_symlink_is_written_through(tmp_path):
    link = tmp_path / "out.json"
    link.symlink_to(tmp_path / "sub" / "real.json")
    write_json_atomic(link, {"ok": True})
    assert link.is_symlink() and json.loads((tmp_path / "sub" / "real.json").read_text()) == {"ok": True}


def test_leftover_of_the_old_scheme_with_our_pid_does_not_block_a_save(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    stale = tmp_path / f".model.old-{os.getpid()}"  # the old two-rename scheme's fixed name
    stale.mkdir()
    (stale / "junk").write_text("")
    with atomic_dir(target) as tmp:
        (tmp / "model.json").write_text("new")
    assert (target / "model.json").read_text() == "new"


def _die_inside_write(target):
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "half").write_text("x")
        os._exit(3)  # killed mid-write: no cleanup runs


def test_temporaries_of_a_killed_writer_are_swept_on_the_next_write(tmp_path):
    target = tmp_path / "model"
    p = mp.get_context("spawn").Process(target=_die_inside_write, args=(target,))
    p.start()
    p.join(60)
    assert p.exitcode == 3
    assert len(_entries(tmp_path)) == 1 and not target.exists()  # the half-written temporary
    with atomic_dir(target) as tmp:
        (tmp / "model.json").write_text("new")
    assert _entries(tmp_path) == ["model"]


def test_fallback_without_exchange_recovers_an_interrupt_between_the_renames(tmp_path, monkeypatch):
    target = tmp_path / "model"
    target.mkdir()
    _write_model(target, 1)
    monkeypatch.setattr(eio, "exchange", lambda a, b: False)
    real_rename = os.rename
    calls = []

    def interrupted_rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise KeyboardInterrupt  # between moving the old folder aside and moving the new one in
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", interrupted_rename)
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(target) as tmp:
            _write_model(tmp, 2)
    monkeypatch.setattr(os, "rename", real_rename)
    assert not target.exists()  # the window the fallback has ...
    recover_dir(target)  # ... closed by the next write or load of the path
    assert json.loads((target / "model.json").read_text()) == {"v": 1}
    replace_dir(target, lambda tmp: _write_model(tmp, 2))  # and the fallback itself works
    assert json.loads((target / "model.json").read_text()) == {"v": 2}
    assert _entries(tmp_path) == ["model"]


def test_foreign_files_are_kept_and_entrep_files_replaced(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    _write_model(target, 1)
    (target / "notes.txt").write_text("patient-free notes")
    (target / "extra").mkdir()
    (target / "extra" / "cfg.yaml").write_text("a: 1")
    replace_dir(target, lambda tmp: (tmp / "model.json").write_text('{"v": 2}'), own=OWN)
    assert _entries(target) == ["extra", "model.json", "notes.txt"]  # old gallery is entrep's: not carried
    assert (target / "notes.txt").read_text() == "patient-free notes"
    assert (target / "extra" / "cfg.yaml").read_text() == "a: 1"


def test_refusing_foreign_files_names_them_before_building(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    _write_model(target, 1)
    (target / "my data.csv").write_text("x")
    built = []
    with pytest.raises(UserError, match=r"model: holds files entrep did not write \(my data.csv\)"):
        replace_dir(target, built.append, own=OWN, foreign="refuse")
    assert built == [] and json.loads((target / "model.json").read_text()) == {"v": 1}


def test_a_file_in_the_way_of_a_folder_is_one_clear_line(tmp_path):
    (tmp_path / "model").write_text("not a folder")
    with pytest.raises(UserError, match="exists and is not a folder"):
        replace_dir(tmp_path / "model", lambda tmp: None)


def test_files_and_parent_folder_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real = eio.fsync_path
    monkeypatch.setattr(eio, "fsync_path", lambda p: (synced.append(os.path.basename(os.fspath(p))), real(p)))
    with atomic_dir(tmp_path / "model") as tmp:
        _write_model(tmp, 1)
    assert {"model.json", "vectors.npy", "gallery", tmp_path.name} <= set(synced)
