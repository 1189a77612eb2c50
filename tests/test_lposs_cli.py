"""``--refine`` and the ``--lposs-*`` flags of ``segment`` and ``eval`` end to end (tiny SigLIP2,
random init)."""
import json

import numpy as np
from PIL import Image
from test_datasets import make_dataset
from test_segment_cli import TINY, _cache_in_tmp, photo  # noqa: F401 (fixtures)

from spar_fast.cli import main


def test_segment_lposs_plus(tmp_path, photo, capsys):  # noqa: F811
    mask = tmp_path / "m.png"
    rc = main(["segment", photo, "--classes", "person; flag; sky", *TINY, "--weights", "random",
               "--refine", "lposs+", "--lposs-k", "40", "--lposs-radius", "2", "--lposs-gamma", "3",
               "-o", str(tmp_path / "o.png"), "--save-mask", str(mask)])
    assert rc == 0, capsys.readouterr().err
    labels = np.array(Image.open(mask))
    assert labels.shape == (50, 75) and labels.max() < 3


def test_segment_rejects_bad_lposs_settings(tmp_path, photo, capsys):  # noqa: F811
    rc = main(["segment", photo, "--classes", "a; b", *TINY, "--weights", "random", "--refine", "lposs",
               "--lposs-alpha", "1.5", "-o", str(tmp_path / "o.png")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "alpha" in err and len(err.splitlines()) == 1


def test_eval_lposs(tmp_path, capsys):
    make_dataset(tmp_path, "voc21")
    out = tmp_path / "r.json"
    rc = main(["eval", "--dataset", "voc21", "--root", str(tmp_path), *TINY, "--weights", "random",
               "--limit", "1", "--refine", "lposs", "--lposs-k", "30", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    assert res["refine"] == "lposs" and res["results"][0]["refine"] == "lposs"
    assert 0 <= res["results"][0]["mIoU"] <= 100
