"""inference.files.atomic_write, the one atomic write of the report folder, SBC folders, checkpoints and
report.html: a failure leaves the old output as it was and nothing half-written beside it."""

import pytest

from inference.files import MARKER, atomic_write


def test_a_file_is_replaced_whole_or_not_at_all(tmp_path):
    path = tmp_path / "sub" / "checkpoint.pt"
    with atomic_write(path) as tmp:
        tmp.write_text("first")
    assert path.read_text() == "first"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert path.read_text() == "first"
    with atomic_write(path) as tmp:
        tmp.write_text("second")
    assert path.read_text() == "second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pt"]


def test_a_folder_appears_in_one_rename_and_replaces_a_report_folder_only_with_force(tmp_path):
    out = tmp_path / "runs" / "report"
    with atomic_write(out, folder=True) as tmp:
        (tmp / "a.txt").write_text("a")
        (tmp / MARKER).write_text("")
    assert (out / "a.txt").read_text() == "a"
    with pytest.raises(FileExistsError, match="created by another run"):
        with atomic_write(out, folder=True) as tmp:
            (tmp / "b.txt").write_text("b")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(out, folder=True, force=True) as tmp:
            (tmp / "b.txt").write_text("b")
            raise KeyboardInterrupt
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "a.txt"]
    with atomic_write(out, folder=True, force=True) as tmp:
        (tmp / "b.txt").write_text("b")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["report"]   # no partial or old folder left
