"""The stack as one: every Compose service, in Compose order, in-process, at tiny
scale, against empty temporary volumes. Each must find what it reads already
written by an earlier service, and write only where its spec says."""

from pathlib import Path

import yaml

from clab.demo import SERVICE_OVERRIDES
from clab.runs.sweep import run
from clab.specs import load_spec
from clab.storage.layout import VOLUMES
from conftest import REPO

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
# lighter still than the demo, to keep CI short
FASTER = [
    "warmup.steps=0",
    "max_steps_per_stage=1",
    "model.hidden_size=32",
    "model.layers=1",
    "save_steps=0",
    "batch.val=4",
]
EXTRA = {
    "curriculum-trainer-1.5b": FASTER,
    "curriculum-trainer-3b": FASTER,
    "k1-trainer": ["steps_per_corpus=2", "val_windows=4", "save_steps=0"],
    "mixing-trainer": [
        "strategies=[loss_descending, joint]",
        *(f"task_{t}.{k}={v}" for t in "ab" for k, v in (("train_size", 24), ("val_size", 4))),
        "training.eval_steps=0",
        "model.hidden_size=32",
        "model.layers=1",
        "model.vocab_size=300",
    ],
    "dpo-trainer": [
        "warmup.steps=0",
        "model.hidden_size=32",
        "model.layers=1",
        "data.tasks=[upper,lower]",
        "data.builtin_train_size=32",
        "data.builtin_test_size=8",
        "save_steps=0",
    ],
    "evaluator": ["test_size=4"],
}


def files(root: Path) -> set[Path]:
    return {p.relative_to(root) for v in VOLUMES for p in (root / v).rglob("*") if p.is_file()}


def under(path: Path, roots: list[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def test_every_service_reads_only_what_an_earlier_one_wrote(workdir):
    (workdir / "services").symlink_to(REPO / "services")
    for v in VOLUMES:
        (workdir / v).mkdir()
    assert set(SERVICE_OVERRIDES) == set(COMPOSE["services"])
    written: list[Path] = []
    for name, svc in COMPOSE["services"].items():
        assert svc["command"] == ["run", f"services/{name}.yaml"]
        spec = load_spec(f"services/{name}.yaml", SERVICE_OVERRIDES[name] + EXTRA.get(name, []))
        own = [Path(w) for w in spec.writes()]
        for r in map(Path, spec.reads()):
            if under(r, own):  # e.g. the control's pool, made by the service itself
                continue
            assert (workdir / r).exists(), f"{name} reads {r}, which nothing wrote before it"
            assert any(under(w, [r]) or under(r, [w]) for w in written), (name, r, written)
        before = files(workdir)
        run(spec)
        new = files(workdir) - before
        assert new, f"{name} wrote nothing"
        stray = [p for p in new if not under(p, own)]
        assert not stray, f"{name} wrote outside its declared outputs: {stray[:5]}"
        written += own
    assert (workdir / "plots/index.html").is_file()
    assert (workdir / "metrics/demo-curriculum/summary.json").is_file()
