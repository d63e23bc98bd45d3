"""`clab plot-history`: any number of history files and tasks, globs, legends from
`name`, and clear errors for files that are not histories."""

import json
from pathlib import Path

import matplotlib.image as mpimg

from clab.cli import main


def history(path: Path, name: str | None, tasks=("hotpot", "math"), n=5) -> Path:
    h = {"steps": list(range(0, 10 * n, 10)), "selection_method": "random", "mix_percentage": 10}
    for k, t in enumerate(tasks):
        h[f"{t}_loss"] = [2.0 - 0.1 * i + k for i in range(n)]
    if name:
        h["name"] = name
    path.write_text(json.dumps(h))
    return path


def test_overlays_any_number_of_files_and_tasks(workdir, capsys):
    for i in range(4):
        history(workdir / f"h{i}.json", f"run {i}")
    history(workdir / "three.json", None, tasks=("hotpot", "math", "code"))
    assert main(["plot-history", "h*.json", "three.json", "-o", "out/fig.png"]) == 0
    img = mpimg.imread("out/fig.png")
    assert img.shape[1] > 3 * img.shape[0] / 2  # three task panels side by side
    assert "out/fig.png" in capsys.readouterr().out


def test_bad_history_files_exit_2_naming_them(workdir, capsys):
    Path("bad.json").write_text('{"steps": [0, 10], "math_loss": [1.0]}')
    assert main(["plot-history", "bad.json", "-o", "x.png"]) == 2
    assert "bad.json: 'math_loss' has 1 values for 2 steps" in capsys.readouterr().err
    assert main(["plot-history", "nothing*.json", "-o", "x.png"]) == 2
    assert "no file matches nothing*.json" in capsys.readouterr().err
    assert not Path("x.png").exists()
