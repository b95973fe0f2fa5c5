"""Kill a folder writer (SIGKILL) at random points: the folder is always the whole old or the whole new one."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from entrep.io import recover_dir

FILES = ("model.json", "arrays.npz", "gallery/gallery.json", "gallery/vectors.npy", "report/report.html")

# Rewrites the folder again and again, each version's files all holding its number.
WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from entrep.io import replace_dir

    target, files = Path(sys.argv[1]), sys.argv[2:]
    version = int((target / files[0]).read_text().split()[0])

    def build(tmp):
        for name in files:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(str(version) + "\\n" + "x" * 20000)

    print("ready", flush=True)
    while True:
        version += 1
        replace_dir(target, build)
""")


def _versions(folder: Path) -> set[int]:
    return {int(folder.joinpath(name).read_text().split("\n", 1)[0]) for name in FILES}


def test_sigkill_at_random_points_leaves_the_old_or_the_new_folder(tmp_path):
    target = tmp_path / "model"
    for name in FILES:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_text("0\n")
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    rng = random.Random(12)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    last, mid_write = 0, 0
    for _ in range(12):
        proc = subprocess.Popen([sys.executable, str(script), str(target), *FILES], stdout=subprocess.PIPE, env=env)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.0, 0.08))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        mid_write += len(list(tmp_path.glob(".model.entrep-*"))) > 0
        recover_dir(target)
        versions = _versions(target)  # every file present (else this raises) ...
        assert len(versions) == 1, versions  # ... and all from one version
        (version,) = versions
        assert version >= last  # never an older folder than the one already seen
        last = version
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".model.")] == []  # leftovers swept
    assert last > 0 and mid_write > 0  # the writer made progress and was killed mid-write at least once
