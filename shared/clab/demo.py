"""``clab demo``: the whole stack at tiny scale on a CPU, with the services' own specs.

Every Compose service has tiny-scale overrides here (the contract test runs
them all, in Compose order); the demo runs the data generators, the
curriculum trainer on the curriculum and on its random-split control, the
evaluator and the plotter, writing into the usual volume folders under
``demo-`` names so a real data set or run is never touched.
"""

from __future__ import annotations

import time
from pathlib import Path

from clab.runs.sweep import run
from clab.specs import load_spec
from clab.training.mixing_spec import DEFAULT_STRATEGIES, PHASE_A

DEMO_DATA = "data/demo-continual"
DEMO_CONTROL_DATA = "data/demo-dummy_tinyzero"
# Test problems per group: with 100, a success rate's 95% Wilson interval is
# at most +-0.1 wide, so a change of a few tenths is visible (32 hid them).
TEST_SIZE = 100
# Small numbers (1..20, three per problem), each digit a token of its own (as
# Qwen's tokenizer splits numbers; merged, the prompt's first number is another
# token than the answer's and a tiny model never copies it: docs/demo.md).
_RANGES = ["ranges.count=[3,3]", "ranges.number=[1,20]", "ranges.target=[1,200]"]
_TRAIN = [
    "model.preset=tiny",
    "model.name_or_path=null",
    "model.hidden_size=64",
    "model.layers=2",
    "model.split_digits=true",
    "resources.num_workers=1",
    "resources.use_gpu=false",
    "rollout.engine=hf",
    "rollout.tensor_parallel_size=1",
    "rollout.max_prompt_length=160",
    "rollout.max_response_length=20",
    "batch.train=16",
    f"batch.val={TEST_SIZE}",
    "batch.mini=16",
    "batch.micro=16",
    "rounds=1",
    "max_steps_per_stage=40",
    "save_steps=20",
    "ppo.actor_lr=3e-4",
    "ppo.critic_lr=1e-3",
    "ppo.fused_logprobs=false",  # the path its figures in docs/demo.md were made on
    "ppo.compile_layers=false",  # the services compile their layers; the demo's figures did not
    "warmup.steps=400",
    "warmup.lr=5e-3",
    "warmup.batch_size=32",
    "wandb=true",
]
# The control warms up on its own prompts (all four operators listed in every one)
# for as many steps as the curriculum on its own: equally prepared. From the
# curriculum's warmed model it would start on prompts that model never saw, and a
# gap between the two would be that handicap, not the grouping (issue 22).
_CONTROL = [*_TRAIN, "name=demo-control", f"data.dir={DEMO_CONTROL_DATA}"]

# Replay mixing offline: task A arithmetic on Countdown expressions (levels from
# operators and number count), task B questions answered from short facts made of
# standard-library names; a tiny random Llama with LoRA on every projection.
_MIXING = [
    "name=demo-mix",
    "task_a={name: arith, format: arithmetic, train_size: 256, val_size: 64, epochs: 4,"
    " lr: 1.0e-2, max_new_tokens: 6}",
    "task_b={name: qa, format: context_qa, train_size: 256, val_size: 64, epochs: 4,"
    " lr: 1.0e-2, max_new_tokens: 6}",
    "model={preset: tiny, hidden_size: 128, layers: 2, heads: 4, vocab_size: 800,"
    " gradient_checkpointing: false}",
    "lora={r: 16, alpha: 32, dropout: 0.0,"
    " target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}",
    "training={batch_size: 16, micro_batch: 16, max_length: 256, eval_steps: 8}",
    "joint={epochs: 4, lr: 1.0e-2}",
    "resources.use_gpu=false",
    "save_steps=32",
]

# Continual DPO through the built-in preference tasks (upper, lower, commas:
# clab.data.preference.builtin), a tiny Qwen2 warmed up on both responses of
# every pair, LoRA; reward models trained once and reused by the EWC run, which
# starts from the plain run's initial model.
_DPO = [
    "name=demo-dpo",
    "model.preset=tiny",
    "model.name_or_path=null",
    "warmup.steps=300",
    "resources.use_gpu=false",
    "data.source=builtin:styles",
    "data.builtin_train_size=512",
    "data.builtin_test_size=64",
    "dpo.lr=2e-3",
    "dpo.batch_size=16",
    "dpo.micro_batch_size=16",
    "dpo.max_length=64",
    "reward.lr=1e-3",
    "reward.batch_size=16",
    "reward.max_length=64",
    "score.max_new_tokens=12",
    "reset_optimizer=true",
    "save_steps=16",
]
_DPO_EWC = [
    *_DPO,
    "name=demo-dpo-ewc",
    "model.preset=null",
    "model.name_or_path=checkpoints/demo-dpo/initial",
    "warmup.steps=0",
    "ewc.lambda=10000",
]

SERVICE_OVERRIDES: dict[str, list[str]] = {
    "data-generator": [
        "train_size=1200",
        f"test_size={TEST_SIZE}",
        f"output={DEMO_DATA}",
        *_RANGES,
    ],
    "tinyzero-dummy-generator": [
        "train_size=1200",
        f"test_size={TEST_SIZE}",
        "source=data/demo-tinyzero/train.parquet",
        f"output={DEMO_CONTROL_DATA}",
        *(f"pool.{r}" for r in _RANGES),
    ],
    "curriculum-trainer-1.5b": [*_TRAIN, "name=demo-curriculum", f"data.dir={DEMO_DATA}"],
    "curriculum-trainer-3b": [
        *_TRAIN,
        "name=demo-curriculum-3b",
        f"data.dir={DEMO_DATA}",
        "warmup.steps=20",
        "max_steps_per_stage=2",
    ],
    "k1-trainer": [
        "name=demo-k1",
        # prose, the same prose in ROT13 (the same text under other tokens), then
        # code: corpora that interfere, so dense training forgets (docs/demo.md)
        "corpora=[{name: prose, source: 'stdlib:prose', max_chars: 120000},"
        " {name: rot13, source: 'stdlib:prose-rot13', max_chars: 120000},"
        " {name: code, source: 'stdlib:code', max_chars: 120000}]",
        "model={preset: tiny, hidden_size: 64, layers: 2, heads: 2, ffn_size: 128,"
        " vocab_size: 800}",
        "steps_per_corpus=40",
        "batch_size=16",
        "seq_len=32",
        "val_windows=32",
        "select.top_k=2",
        "resources.use_gpu=false",
        "save_steps=20",
    ],
    "mixing-trainer": _MIXING,
    "dpo-trainer": _DPO,
    "evaluator": [f"test_size={TEST_SIZE}", "use_gpu=false"],
    "plotter": [],
}

_MIX_BRANCHES = [PHASE_A, *DEFAULT_STRATEGIES]
_DEMO_RUNS = ",".join(
    [
        "demo-curriculum",
        "demo-control",
        "demo-k1-k1",
        "demo-k1-dense",
        "demo-k1-random_k",
        "demo-k1-random_share",
    ]
    + [f"demo-mix-{b}" for b in _MIX_BRANCHES]
    + ["demo-dpo", "demo-dpo-ewc"]
)

DEMO_PLAN: list[tuple[str, str, list[str]]] = [
    ("data-generator", "services/data-generator.yaml", SERVICE_OVERRIDES["data-generator"]),
    (
        "tinyzero-dummy-generator",
        "services/tinyzero-dummy-generator.yaml",
        SERVICE_OVERRIDES["tinyzero-dummy-generator"],
    ),
    (
        "curriculum-trainer-1.5b",
        "services/curriculum-trainer-1.5b.yaml",
        SERVICE_OVERRIDES["curriculum-trainer-1.5b"],
    ),
    (
        "curriculum-trainer-1.5b, random-split control",
        "services/curriculum-control-1.5b.yaml",
        _CONTROL,
    ),
    ("k1-trainer", "services/k1-trainer.yaml", SERVICE_OVERRIDES["k1-trainer"]),
    ("mixing-trainer", "services/mixing-trainer.yaml", _MIXING),
    ("dpo-trainer", "services/dpo-trainer.yaml", SERVICE_OVERRIDES["dpo-trainer"]),
    ("dpo-trainer, with online EWC", "services/dpo-trainer.yaml", _DPO_EWC),
    (
        "evaluator",
        "services/evaluator.yaml",
        [*SERVICE_OVERRIDES["evaluator"], f"runs=[{_DEMO_RUNS}]"],
    ),
    ("plotter", "services/plotter.yaml", [f"runs=[{_DEMO_RUNS}]"]),
]


def run_demo() -> Path:
    start = time.perf_counter()
    for i, (label, spec_path, overrides) in enumerate(DEMO_PLAN, 1):
        print(f"\n=== demo {i}/{len(DEMO_PLAN)}: {label} ({spec_path}) ===", flush=True)
        run(load_spec(spec_path, overrides))
    page = Path("plots/index.html").resolve()
    print(f"\ndemo done in {time.perf_counter() - start:.0f} s; open {page}")
    return page
