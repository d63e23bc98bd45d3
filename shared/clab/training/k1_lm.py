"""The sparse-update language-model trainer on the stage runner (kind ``k1-lm``).

Stages are corpora in order. Each step: next-token loss on a batch of
windows (labels are the inputs; the model shifts them once), the gradient
norm of every parameter group, the method's selection (``k1``: the largest
norms; ``random_k``: as many at random; ``random_share``: as large a share of
the parameters at random; ``dense``: all), and a step of the
selected groups' optimizers only (``training/sparse.py``). Corpora are split
by position into train / validation / test, and the splits are written into
the initial checkpoint, so every stage and the evaluator read the same text.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from clab.data.text.corpora import load_corpus, split_text
from clab.errors import ClabError
from clab.metrics.language import mean_token_loss, perplexity, windows
from clab.models.loading import check_model_source, load_policy, load_tokenizer
from clab.models.tiny import build_tiny_model
from clab.runs.protocol import StageContext, TaskRef
from clab.runs.seeding import derive_seed
from clab.storage.atomic import write_text
from clab.storage.layout import INITIAL_STAGE, Stage
from clab.training.k1_lm_spec import K1Spec
from clab.training.sparse import (
    SELECTORS,
    Smoothed,
    SparseOptimizer,
    among,
    check_group_names,
    dense,
    group_grad_norms,
    make_optimizer,
    parameter_groups,
    same_count_at_random,
    same_share_at_random,
)
from clab.training.steps import k1_stage_steps

STATE = "sparse_state.pt"


def check_inputs(spec: K1Spec) -> None:
    """Every corpus loads, is not empty, and holds at least one sequence per split."""
    if spec.model.name_or_path is not None:
        check_model_source(spec.model.name_or_path)
    for c in spec.corpora:
        text = load_corpus(c.source, c.max_chars, c.field)
        if not text.strip():
            raise ClabError(f"corpora: {c.name} ({c.source}) is empty")
        # a character is at least a token's worth of text for any tokenizer we build
        for split, part in split_text(text).items():
            if len(part.split()) < spec.seq_len:
                raise ClabError(
                    f"corpora: {c.name}'s {split} split ({len(part.split())} words) is shorter "
                    f"than one sequence (seq_len {spec.seq_len})"
                )
    if spec.resources.use_gpu and not torch.cuda.is_available():
        raise ClabError("resources.use_gpu: true, but no CUDA device is visible")
    if spec.groups.frozen:
        check_group_names(spec.groups.frozen, dict.fromkeys(planned_groups(spec)))


def planned_groups(spec: K1Spec) -> list[str]:
    """The run's group names before its model exists: the architecture built on the
    meta device (no weights, no memory), so a wrong name in ``groups.frozen`` is
    refused before stage 0 is written, for any granularity and model source."""
    from transformers import AutoConfig, AutoModelForCausalLM, Qwen2Config

    m = spec.model
    if m.preset == "tiny":  # the architecture build_tiny_model writes
        config = Qwen2Config(
            vocab_size=m.vocab_size,
            hidden_size=m.hidden_size,
            intermediate_size=m.ffn_size,
            num_hidden_layers=m.layers,
            num_attention_heads=m.heads,
            num_key_value_heads=max(1, m.heads // 2),
            tie_word_embeddings=False,
        )
    else:
        try:
            config = AutoConfig.from_pretrained(m.name_or_path)
        except OSError as e:
            raise ClabError(f"model.name_or_path: cannot read the model's config: {e}") from None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return list(parameter_groups(model, spec.groups.granularity))


def make_trainer(spec: K1Spec, rank: int, world: int) -> K1Trainer:
    return K1Trainer(spec)


class RecordedRule:
    """A selection rule that keeps its last pick: the random controls call K-1's rule
    on every step's gradients to size their own choice, and the log shows what it
    took (``k1_fraction``), so a reader sees how closely each control matched it."""

    def __init__(self, rule) -> None:
        self.rule, self.last = rule, None

    def __call__(self, norms, sizes, gen):
        self.last = self.rule(norms, sizes, gen)
        return self.last


class K1Trainer:
    def __init__(self, spec: K1Spec):
        self.spec = spec
        self.ckpt_dir = spec.run_dirs()[0]
        self.device = torch.device("cuda" if spec.resources.use_gpu else "cpu")

    def corpus_dir(self, name: str) -> Path:
        return self.ckpt_dir / INITIAL_STAGE / "corpora" / name

    def tasks(self) -> list[TaskRef]:
        return [
            TaskRef(
                name=c.name,
                scorer="perplexity",
                config={
                    "text": str(self.corpus_dir(c.name) / "test.txt"),
                    "seq_len": self.spec.seq_len,
                },
            )
            for c in self.spec.corpora
        ]

    def build_initial(self, out: Path, work: Path) -> dict:
        spec = self.spec
        texts = {}
        for c in spec.corpora:
            texts[c.name] = split_text(load_corpus(c.source, c.max_chars, c.field))
            for split, part in texts[c.name].items():
                write_text(out / "corpora" / c.name / f"{split}.txt", part)
        if spec.model.preset == "tiny":
            build_tiny_model(
                out / "model",
                [t["train"] for t in texts.values()],
                vocab_size=spec.model.vocab_size,
                hidden_size=spec.model.hidden_size,
                num_layers=spec.model.layers,
                num_heads=spec.model.heads,
                intermediate_size=spec.model.ffn_size,
                tie_word_embeddings=False,  # the public experiment's untied head: its own group
                max_positions=max(2 * spec.seq_len, 128),
                seed=spec.shared_seed,
            )
            for f in (out / "model").iterdir():
                f.rename(out / f.name)
            (out / "model").rmdir()
        else:
            load_policy(spec.model.name_or_path).save_pretrained(out)
            load_tokenizer(spec.model.name_or_path).save_pretrained(out)
        return {"source": spec.model.name_or_path or "preset:tiny", "method": spec.method}

    def _tokens(self, corpus: str, split: str) -> torch.Tensor:
        text = (self.corpus_dir(corpus) / f"{split}.txt").read_text()
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        try:
            return windows(ids, self.spec.seq_len)
        except ClabError as e:
            raise ClabError(f"corpora: {corpus} {split}: {e}") from None

    def load(self, model_dir: Path, initial: Path) -> None:
        spec = self.spec
        self.tokenizer = load_tokenizer(initial)
        self.model = load_policy(model_dir, "float32").to(self.device)
        self.groups = parameter_groups(self.model, spec.groups.granularity)
        check_group_names(spec.groups.frozen, self.groups)
        o = spec.optim
        self.opt = SparseOptimizer(
            self.groups, make_optimizer(o.name, o.lr, o.weight_decay, o.momentum)
        )
        live = torch.tensor([n not in spec.groups.frozen for n in self.groups])
        sel = spec.select
        k1 = SELECTORS[sel.rule](sel)
        self.smoothed = None
        if sel.smoothing and spec.method != "dense":
            k1 = self.smoothed = Smoothed(k1)
        self.k1_pick = RecordedRule(k1)  # what K-1's rule took at this step, for the log
        rule = {
            "k1": self.k1_pick,
            "random_k": same_count_at_random(self.k1_pick),  # as many groups, at random
            "random_share": same_share_at_random(self.k1_pick),  # as much of the model
            "dense": dense(),
        }[spec.method]
        self.live = live
        self.select = among(rule, live)
        self.gen = torch.Generator().manual_seed(spec.seed)
        state = model_dir / STATE
        if state.is_file():
            saved = torch.load(state, weights_only=False)
            self.opt.load_state_dict(saved["optimizer"])
            self.gen.set_state(saved["generator"])
            if self.smoothed is not None:
                self.smoothed.average = saved.get("ema")

    def stage_steps(self, task: int) -> int:
        return k1_stage_steps(self.spec.steps_per_corpus)

    def _order(self, n: int, stage: Stage, epoch: int) -> list[int]:
        order = list(range(n))
        random.Random(derive_seed(self.spec.seed, stage.index, epoch, wide=True)).shuffle(order)
        return order

    def train_stage(self, ctx: StageContext) -> None:
        spec = self.spec
        data = self._tokens(spec.corpora[ctx.stage.task].name, "train")
        per_epoch = max(1, len(data) // spec.batch_size)
        names = list(self.groups)
        self.model.train()
        for step in range(ctx.start_step, ctx.n_steps):
            epoch, k = divmod(step, per_epoch)
            order = self._order(len(data), ctx.stage, epoch)
            idx = order[k * spec.batch_size : (k + 1) * spec.batch_size] or order[: spec.batch_size]
            x = data[idx].to(self.device)
            # fp32 weights and optimizer state; bf16 autocast on a GPU (validation stays fp32)
            with torch.autocast("cuda", torch.bfloat16, enabled=self.device.type == "cuda"):
                # labels shift once inside the model; no KV cache in a training pass
                loss = self.model(input_ids=x, labels=x, use_cache=False).loss
            if not torch.isfinite(loss):
                raise ClabError(f"stage {ctx.stage.name}: loss is not finite; lower optim.lr")
            loss.backward()
            norms = group_grad_norms(self.groups)
            self.k1_pick.last = None
            chosen = self.select(norms, self.opt.sizes, self.gen).cpu()
            row = self.opt.step(chosen)
            if self.k1_pick.last is not None:  # k1 and its controls: the share K-1's rule took
                live_sizes = self.opt.sizes.cpu()[self.live]
                took = float(live_sizes[self.k1_pick.last.cpu()].sum())
                row["k1_fraction"] = took / float(self.opt.sizes.sum())
            ctx.log(
                {
                    "step_in_stage": step + 1,
                    "epoch": epoch,
                    "loss": loss.item(),
                    "grad_norm": float(norms.norm()),
                    "selected": [n for n, on in zip(names, chosen.tolist(), strict=True) if on],
                    **row,
                }
            )
            if spec.save_steps and (step + 1) % spec.save_steps == 0 and step + 1 < ctx.n_steps:
                ctx.save_resume(step + 1)

    def validate(self, stage: Stage) -> list[dict]:
        out = []
        for c in self.spec.corpora:
            data = self._tokens(c.name, "validation")[: self.spec.val_windows]
            loss, n = mean_token_loss(self.model, data)
            out.append(
                {
                    "task": c.name,
                    "primary": "perplexity",
                    "perplexity": perplexity(loss),
                    "token_loss": loss,
                    "n": n,
                }
            )
        return out

    def save(self, out: Path) -> None:
        self.model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        marker = self.ckpt_dir / INITIAL_STAGE / "clab_tiny.json"
        if marker.is_file():
            (out / "clab_tiny.json").write_text(marker.read_text())
        torch.save(
            {
                "optimizer": self.opt.state_dict(),
                "generator": self.gen.get_state(),
                "ema": self.smoothed.average if self.smoothed else None,
            },
            out / STATE,
        )

    def trainable_module(self) -> torch.nn.Module:
        return self.model
