"""The README's Python examples run as written, with the tiny backbone and random weights swapped
in (offline), on scikit-image's astronaut photo; the training/evaluation block on a small image
folder and a synthetic VOC layout."""
import os
import re
from pathlib import Path

import pytest
import torch

from test_datasets import make_dataset

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Python API"):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def offline(code: str, epochs: bool = False) -> str:
    """The README code with the tiny backbone and random weights (no hub) (``epochs``: 1 epoch)."""
    swaps = [('"siglip2-b16-512"', '"siglip2-tiny"'), ('weights="hub"', 'weights="random"')]
    for real, tiny in swaps + ([("epochs=10", "epochs=1")] if epochs else []):
        assert real in code, real
        code = code.replace(real, tiny)
    return code


def test_readme_has_the_blocks():
    blocks = python_blocks()
    assert len(blocks) == 2 and "sf.model_input" in blocks[0] and "sf.evaluate" in blocks[1]


def test_readme_photo_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(offline(python_blocks()[0]), scope)
    bb, x, labels, xt, target = (scope[k] for k in ("bb", "x", "labels", "xt", "target"))
    assert tuple(x.shape) == (3, 672, 672) and labels.shape == (672, 672) and labels.max() < 3
    assert scope["feats"].shape == (42, 42, bb.feature_dim)
    assert xt.shape[1] % bb.patch_size == 0 and min(xt.shape[1:]) >= bb.window
    assert target.shape == (xt.shape[1] // 16, xt.shape[2] // 16, bb.feature_dim)


@pytest.mark.parametrize("hw", [(20, 300), (40, 37)])
def test_model_input_teacher_rule(hw):
    """for_teacher: multiples of the patch, >= the window, whatever the photo's size."""
    import numpy as np

    import spar_fast as sf

    bb = sf.Backbone.from_pretrained("siglip2-tiny", weights="random")
    img = np.random.default_rng(0).integers(0, 256, (*hw, 3), dtype=np.uint8)
    x = sf.model_input(img, bb, resize=None, for_teacher=True)
    assert x.shape[1] % 16 == 0 and x.shape[2] % 16 == 0 and min(x.shape[1:]) >= bb.window
    assert sf.teacher_features(bb, x, stride=24).shape[:2] == (x.shape[1] // 16, x.shape[2] // 16)
    assert tuple(sf.model_input(img, bb, resize=None).shape) == (3, *hw)


def test_older_image_function_names_warn(tmp_path):
    """sf.load_image and spar_fast.data.load_image: deprecated names, one warning, same result."""
    import numpy as np
    from PIL import Image

    import spar_fast as sf
    from spar_fast import data

    bb = sf.Backbone.from_pretrained("siglip2-tiny", weights="random")
    img = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    with pytest.warns(DeprecationWarning, match="model_input"):
        old = sf.load_image(img, bb, resize=None)
    assert torch.equal(old, sf.model_input(img, bb, resize=None))
    Image.fromarray(img).save(tmp_path / "a.png")
    with pytest.warns(DeprecationWarning, match="read_rgb"):
        assert np.array_equal(data.load_image(tmp_path / "a.png"), img)


def test_readme_training_example_runs(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    os.makedirs("photos")
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(f"photos/{i}.png")
    make_dataset(tmp_path / "data", "voc21")
    scope = {}
    exec(offline(python_blocks()[1], epochs=True), scope)
    scores = scope["scores"]
    assert os.path.isfile(scope["ckpt"]) and scores["units"] == "percent"
    assert 0 <= scores["mIoU"] <= 100 and "person" in scores["per_class"]


def test_readme_setup_is_two_commands_and_ci_runs_the_test_one():
    text = README.read_text(encoding="utf-8")
    setup = text[text.index("## Set up"):]
    commands = re.findall(r"```bash\n(.*?)```", setup, flags=re.S)[0].strip().splitlines()
    assert len(commands) == 2 and commands[0].endswith("spar-fast demo")
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert commands[1] in ci.splitlines()
