"""Challenge tracks: Track 1 label ids follow the model's own taxonomy."""

import json
import zipfile

from PIL import Image

from entrep.challenge import make_submission
from entrep.taxonomy import Taxonomy


class NineClassClassifier:
    """A classifier over a user taxonomy with 9 classes that answers the last class for every image."""

    taxonomy = Taxonomy(name="nine", classes=tuple(f"c{i}" for i in range(9)))

    def predict(self, paths):
        return [{"image": str(p), "label": "c8", "label_id": 8} for p in paths]


def test_track1_accepts_label_ids_beyond_the_seven_ent_classes(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        Image.new("RGB", (8, 8), (i * 90, 40, 40)).save(images / f"q{i}.png")
    queries = tmp_path / "queries.csv"
    queries.write_text("q0.png\nq1.png\n")
    out = tmp_path / "sub.zip"
    summary = make_submission(NineClassClassifier(), 1, queries, images, out)
    assert summary["n_queries"] == 2
    with zipfile.ZipFile(out) as z:
        answers = json.loads(z.read(z.namelist()[0]))
    assert answers == {"q0.png": 8, "q1.png": 8}
