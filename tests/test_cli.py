import subprocess
import sys
from pathlib import Path

import pytest

from clab.cli import main
from clab.specs import KINDS, load_spec
from conftest import REPO

DATA_SPEC = REPO / "services" / "data-generator.yaml"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("spec", sorted((REPO / "services").glob("*.yaml")))
def test_every_service_spec_validates(spec, capsys):
    assert main(["validate", str(spec)]) == 0
    assert "valid" in capsys.readouterr().out


def test_every_kind_is_importable():
    for kind in KINDS:
        from clab.specs import spec_class

        assert spec_class(kind).model_fields["kind"].default == kind


def test_validate_prints_defaults_and_overrides(capsys):
    assert (
        main(["validate", str(DATA_SPEC), "--set", "train_size=7", "--set", "ranges.count=[3,3]"])
        == 0
    )
    out = capsys.readouterr().out
    assert "train_size: 7" in out and "strict: false" in out
    spec = load_spec(DATA_SPEC, ["ranges.target=[5, 50]", "template=qwen-instruct"])
    assert spec.ranges.target == (5, 50) and spec.template == "qwen-instruct"


@pytest.mark.parametrize(
    ("text", "overrides", "expected"),
    [
        ("kind: countdown\ntrain_sizee: 5\n", [], "field 'train_sizee': unknown key"),
        ("kind: countdown\ntrain_size: -5\n", [], "field 'train_size': Input should be greater"),
        ("kind: countdown\ntrain_size: lots\n", [], "field 'train_size'"),
        ("kind: countdown\ntemplate: chatml\n", [], "field 'template'"),
        ("kind: countdown\nranges: {target: [10, 1]}\n", [], "lower bound 10 is above"),
        ("kind: countdown\nranges: {count: [3, 6]}\n", [], "2 to 4 numbers"),
        ("kind: countdown\nranges: {number: [1, 99999]}\n", [], "number: values up to 50,000"),
        ("kind: countdownn\n", [], "field 'kind': 'countdownn' is not a known kind"),
        ("train_size: 5\n", [], "field 'kind': None is not a known kind"),
        ("- a\n- b\n", [], "must be a YAML mapping"),
        ("kind: countdown\n  bad: [\n", [], "not valid YAML"),
        ("kind: countdown\n", ["strict=maybe"], "field 'strict'"),
        ("kind: countdown\n", ["noequals"], "expected dotted.key=value"),
        ("kind: countdown\nseed: 1\n", ["seed.x=1"], "'seed' is not a section"),
        ("kind: countdown-random-split\npool: {size: 0}\n", [], "field 'pool.size'"),
    ],
)
def test_bad_specs_exit_2_with_one_clear_message(tmp_path, capsys, text, overrides, expected):
    spec = write(tmp_path / "bad.yaml", text)
    args = ["run", str(spec)]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("clab: error: ")
    assert expected in err
    assert "Traceback" not in err
    if "field" in expected and "YAML" not in expected:
        assert str(spec) in err  # names the file


def test_missing_spec_file(capsys):
    assert main(["run", "no/such.yaml"]) == 2
    assert "no/such.yaml: spec file not found" in capsys.readouterr().err


def test_console_script_help_and_exit_status(tmp_path):
    clab = Path(sys.executable).parent / "clab"
    out = subprocess.run([clab, "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "validate" in out.stdout and "countdown-random-split" in out.stdout
    bad = write(tmp_path / "bad.yaml", "kind: countdown\nworkers: -1\n")
    res = subprocess.run([clab, "run", str(bad)], capture_output=True, text=True)
    assert res.returncode == 2
    assert "field 'workers'" in res.stderr and "Traceback" not in res.stderr


def test_bad_input_leaves_existing_data_untouched(workdir, capsys):
    args = ["run", str(DATA_SPEC), "--set", "train_size=50", "--set", "test_size=5"]
    assert main(args) == 0
    before = {p: p.read_bytes() for p in (workdir / "data/continual").rglob("*") if p.is_file()}
    assert main([*args, "--set", "ranges.number=[50, 1]"]) == 2
    after = {p: p.read_bytes() for p in (workdir / "data/continual").rglob("*") if p.is_file()}
    assert before == after


def test_a_run_that_dies_while_writing_leaves_the_old_data_set(workdir, monkeypatch):
    args = [
        "run",
        str(DATA_SPEC),
        "--set",
        "train_size=50",
        "--set",
        "test_size=5",
        "--set",
        "workers=1",
    ]
    assert main(args) == 0
    before = {p: p.read_bytes() for p in (workdir / "data/continual").rglob("*") if p.is_file()}

    import clab.data.countdown.curriculum as cur

    def boom(*a, **k):
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(cur, "write_json", boom)
    with pytest.raises(RuntimeError):
        main([*args, "--set", "seed=9"])
    after = {p: p.read_bytes() for p in (workdir / "data/continual").rglob("*") if p.is_file()}
    assert before == after
    assert [p.name for p in (workdir / "data").iterdir()] == ["continual"]  # no staging left


SERVICE = {
    n: str(REPO / "services" / f"{n}.yaml")
    for n in ("curriculum-trainer-1.5b", "k1-trainer", "dpo-trainer", "evaluator", "plotter")
}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["validate", "BINARY"], "not a text file"),
        (["validate", str(DATA_SPEC), "--set", "kind=[a]"], "field 'kind': ['a'] is not a known"),
        (["validate", SERVICE["k1-trainer"], "--set", "seed=99999999999999999999"], "field 'seed'"),
        (["run", SERVICE["curriculum-trainer-1.5b"], "--seeds="], "--seeds ''"),
        (["run", SERVICE["curriculum-trainer-1.5b"], "--seeds=-1"], "field 'seeds.0'"),
        (["validate", SERVICE["k1-trainer"], "--set", "optim.lr=.inf"], "field 'optim.lr'"),
        (["validate", SERVICE["curriculum-trainer-1.5b"], "--set", "ppo.actor_lr=.inf"],
         "field 'ppo.actor_lr'"),
        (["validate", SERVICE["curriculum-trainer-1.5b"], "--set", "data.groups=[]"],
         "field 'data.groups'"),
        (["validate", SERVICE["k1-trainer"], "--set", "methods=[]"], "field 'methods'"),
        (["validate", SERVICE["k1-trainer"], "--set", "methods=[dense, dense]"],
         "methods: each at most once"),
        (["validate", SERVICE["dpo-trainer"], "--set", "ewc.lam=1"], "known here: lambda,"),
        (["run", SERVICE["evaluator"], "--set", "use_gpu=false"], "run.json: not a readable JSON"),
        (["run", SERVICE["plotter"]], "summary.json: no 'score'"),
        (["report", "foo"], "summary.json: no 'score'"),
        (["plot-history", "-o", "out.png", "LIST"], "expected a JSON object, found list"),
        (["specs", "-o", "adir"], "adir: Is a directory"),
        (["validate", str(DATA_SPEC), "--set", "train_size=true"],
         "field 'train_size': Value error, expected an integer (got True)"),
        (["validate", SERVICE["k1-trainer"], "--set", "batch_size=4.0"], "field 'batch_size'"),
        (["validate", SERVICE["k1-trainer"], "--set", "batch_size='4'"], "field 'batch_size'"),
    ],
)  # fmt: skip
def test_bad_input_anywhere_exits_2_naming_it_without_a_traceback(workdir, capsys, args, expected):
    """A new user's probes across the CLI (a bad spec value, a file not clab's, a folder
    where a file goes): each once gave a traceback or passed silently."""
    (workdir / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (workdir / "list.json").write_text("[1, 2]")
    (workdir / "adir").mkdir()
    (workdir / "checkpoints/foo").mkdir(parents=True)
    (workdir / "checkpoints/foo/run.json").write_text("junk")
    (workdir / "metrics/foo").mkdir(parents=True)
    (workdir / "metrics/foo/summary.json").write_text('{"a": 1}')
    args = [{"BINARY": "binary.yaml", "LIST": "list.json"}.get(a, a) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("clab: error: ") and "Traceback" not in err
    assert expected in err, err
