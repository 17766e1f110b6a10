"""The distillation loop: epochs of augmented crops, optimiser steps, validation, checkpoints.

`Trainer` runs a `songsight.distill.setup.DistillRun` from a
`songsight.distill.checkpoint.TrainState`: each rank takes an interleaved slice of every global
batch; gradients accumulate over ``cfg.grad_accum`` micro-batches, are clipped, and step AdamW
and the warmup-cosine schedule. After each epoch (every ``cfg.val_every_epochs``) the validation
split is scored, the best checkpoint kept by its score (never the training loss), and the run
stops early after ``cfg.patience`` validations without improvement, but never before
``cfg.min_steps`` steps, as Lightning's ``min_steps`` does: on a small manifest a few epochs are
a few dozen steps, and patience counted in epochs ended runs long before the steps they were
planned for. A run sized from the data (``epochs`` None) is planned at ``min_steps`` and so runs
its plan, keeping its best validation; patience saves time when ``--epochs`` asks for more.
``last`` is written at every epoch end (and every ``cfg.save_every_steps``), with the state to
resume exactly. After the last step (``cfg.interpolate``), weights between the starting point and
the last ones are validated too (`songsight.distill.interpolation`) and kept as ``best`` where
they beat it; ``last`` stays the trained weights.
"""

from __future__ import annotations

import sys
import time

import torch

from songsight.distill.checkpoint import TrainState, readout_record, save_state
from songsight.distill.data import epoch_order, spec_mask
from songsight.distill.hooks import DistillHooks
from songsight.distill.interpolation import (
    INTERPOLATION_WEIGHTS,
    blend,
    learning_weights,
    load_start,
    save_start,
)
from songsight.distill.models import freeze_batchnorm
from songsight.distill.monitor import METRICS_FILE, MetricsLog
from songsight.distill.setup import DistillRun, say
from songsight.encoders.base import l2_normalize


class Trainer:
    """Runs the loop of one `DistillRun` from ``state``; `fit` trains, `summary` reports."""

    def __init__(self, run: DistillRun, state: TrainState, hooks: DistillHooks, progress: bool,
                 resume: bool, stop_after_steps: int | None = None):  # fmt: skip
        self.run, self.state, self.hooks = run, state, hooks
        self.progress, self.resume, self.stop_after_steps = progress, resume, stop_after_steps
        self.stopped = self.early = False
        self.seen_items = 0
        self.t0 = 0.0  # wall time the loop started, for items_per_s
        self.log: MetricsLog | None = None
        self.bar = None
        self.last_epoch = -1  # the last epoch that ended, for the interpolations' records

    # --- the run ------------------------------------------------------------------------------
    def fit(self) -> TrainState:
        """Train to the end of the plan, an early stop or ``stop_after_steps``."""
        from tqdm.auto import tqdm

        run, st = self.run, self.state
        if run.is_main:
            run.out.mkdir(parents=True, exist_ok=True)
            keep = st.step if self.resume else -1
            self.log = MetricsLog(run.out / METRICS_FILE, keep_until_step=keep)
        self.bar = tqdm(
            total=run.plan.total_steps,
            initial=st.step,
            desc="distilling",
            unit="step",
            disable=not (self.progress and run.is_main),
            file=sys.stderr,
            dynamic_ncols=True,
        )
        interpolate = run.cfg.interpolate and run.validator is not None
        if st.step == 0 and interpolate and run.is_main:
            save_start(run.out, learning_weights(run.module))
        if st.step == 0 and run.validator is not None:
            # The starting point (the probe-initialised head) is a candidate too: fine-tuning
            # that makes validation worse is never kept.
            self._consider(self._validate(-1), -1)
        run.module.train()
        freeze_batchnorm(run.module)
        self.hooks.on_loop_start(st.step)
        self.t0 = time.time()
        for epoch in range(st.start_epoch, run.plan.epochs):
            first = st.start_micro if epoch == st.start_epoch else 0
            if self._train_epoch(epoch, first):
                self.stopped = True
                break
            if self._end_epoch(epoch):
                break
        self.bar.close()
        if interpolate and not self.stopped and st.step > 0:
            self._interpolate()
        if run.world > 1:
            torch.distributed.barrier()
        return st

    def summary(self, val_clips: int) -> dict:
        st, run = self.state, self.run
        return {
            "out": str(run.out),
            "steps": st.step,
            "best": {k: v for k, v in st.best.items() if k != "stale"},
            "stopped_early": self.stopped or self.early,
            "train_species": len(run.train_labels),
            "clips": len(run.data),
            "val_clips": val_clips,
            "plan": run.plan.to_dict(),
        }

    # --- one epoch ----------------------------------------------------------------------------
    def _train_epoch(self, epoch: int, first_micro: int) -> bool:
        """Micro-batches ``first_micro..`` of ``epoch``; True when ``stop_after_steps`` is hit."""
        run, cfg, st = self.run, self.run.cfg, self.state
        order = epoch_order(len(run.data), cfg.seed, epoch)
        n_micro = run.plan.steps_per_epoch * cfg.grad_accum
        for micro in range(first_micro, n_micro):
            comps = self._forward_backward(order, epoch, micro)
            if (micro + 1) % cfg.grad_accum:
                continue
            self._optimizer_step(epoch, comps)
            last_of_epoch = micro + 1 == n_micro
            if cfg.save_every_steps and st.step % cfg.save_every_steps == 0 and not last_of_epoch:
                self._save("last", epoch, micro + 1)
            if self.stop_after_steps is not None and st.step >= self.stop_after_steps:
                return True
        return False

    def _forward_backward(self, order, epoch: int, micro: int) -> dict:
        """Loss of this rank's slice of micro-batch ``micro``, backpropagated (scaled for
        accumulation); returns the loss components."""
        run, cfg = self.run, self.run.cfg
        batch_size, device = run.plan.batch_size, run.device
        local_bs = batch_size // run.world
        batch = order[micro * batch_size : (micro + 1) * batch_size][
            run.rank * local_bs : (run.rank + 1) * local_bs
        ]
        waves = [run.data.crop(int(i), cfg.seed, epoch) for i in batch]
        feats = run.st.features(waves, device)
        if cfg.spec_masks:
            feats = spec_mask(feats, cfg.spec_masks, [cfg.seed, epoch, micro, run.rank])
        labels = torch.from_numpy(run.data.labels[batch]).to(device)
        autocast = run.autocast
        with torch.autocast(device.split(":")[0], dtype=autocast, enabled=autocast is not None):
            emb, base, scale, logits = run.model(feats)
        emb, base = l2_normalize(emb.float()), l2_normalize(base.float())
        orig = None
        if run.original is not None:
            with torch.no_grad():
                orig = l2_normalize(run.original(feats)[1].float())
        if logits is not None and run.candidate_rows is not None:
            logits = logits[:, run.candidate_rows]
        loss, comps = run.loss_fn(
            emb, labels, run.train_targets, scale, base, orig, species_logits=logits
        )
        (loss / cfg.grad_accum).backward()
        self.seen_items += len(batch) * run.world
        return comps

    def _optimizer_step(self, epoch: int, comps: dict) -> None:
        run, st = self.run, self.state
        if run.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(run.module.parameters(), run.cfg.grad_clip)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        st.step += 1
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{comps['total']:.3f}", T=f"{1 / comps['logit_scale']:.3f}")
        row = {
            "step": st.step,
            "epoch": epoch,
            **comps,
            "lr": run.scheduler.get_last_lr()[-1],
            "items_per_s": self.seen_items / max(1e-9, time.time() - self.t0),
        }
        if self.log:
            self.log.write(row)
        self.hooks.on_step(st.step, epoch, row)

    def _end_epoch(self, epoch: int) -> bool:
        """Validate when due, keep the best, write ``last``; True when the run ends here."""
        run, cfg, st = self.run, self.run.cfg, self.state
        due = (epoch + 1) % cfg.val_every_epochs == 0 or epoch + 1 == run.plan.epochs
        val = self._validate(epoch) if due else {}
        if val:
            self._consider(val, epoch)
        self.early = (
            bool(val)
            and cfg.patience > 0
            and st.best["stale"] >= cfg.patience
            and st.step >= min(cfg.min_steps, run.plan.total_steps)
            and epoch + 1 < run.plan.epochs  # the plan's last epoch ends the run anyway
        )
        final = run.validator is None and epoch + 1 == run.plan.epochs
        if final:  # nothing to choose on: the final weights are the best
            st.best = {**st.best, "metric": "final", "epoch": epoch, "step": st.step}
            self._save("best", epoch + 1, 0)
        self._save("last", epoch + 1, 0)
        self.last_epoch = epoch
        self.hooks.on_epoch_end(epoch, st.step)
        if self.early and run.is_main and self.progress:
            say(f"no better validation for {cfg.patience} validations: stopping at step {st.step}")
        return self.early or final

    # --- validation and checkpoints -----------------------------------------------------------
    def _validate(self, epoch: int) -> dict:
        run = self.run
        if run.validator is None:
            return {}
        run.module.eval()
        res = run.validator(run.module.student, float(run.module.logit_scale().detach().cpu()))
        run.module.train()
        freeze_batchnorm(run.module)
        self.hooks.on_validate(epoch, self.state.step, res)
        return res

    def _interpolate(self) -> None:
        """Validate the weights at each of `INTERPOLATION_WEIGHTS` between the starting point
        and the last step's, keep any that beats the best as ``best``, then restore the last
        step's weights (the run's own end, which ``last`` holds)."""
        run = self.run
        start = load_start(run.out)  # every rank reads the one copy rank 0 wrote
        if start is None:
            if run.is_main and self.progress:
                say(f"no starting weights in {run.out}: no interpolation with them")
            return
        end = learning_weights(run.module)
        epoch = max(self.last_epoch, self.state.start_epoch - 1)
        try:
            for alpha in INTERPOLATION_WEIGHTS:
                blend(run.module, start, end, alpha)
                self._consider(self._validate(epoch), epoch, interpolation=alpha)
        finally:
            blend(run.module, start, end, 1.0)

    def _consider(self, val: dict, epoch: int, interpolation: float | None = None) -> None:
        """Log the validation and keep the checkpoint if its score is the best so far;
        ``interpolation``: the weights are that fraction of the way from the starting point to
        the current step's (`_interpolate`)."""
        st = self.state
        where = {} if interpolation is None else {"interpolation": interpolation}
        if self.log:
            self.log.write({"step": st.step, "epoch": epoch, **where, **val})
        if val["val_score"] > st.best["value"]:
            st.best = {
                "metric": "val_score",
                "value": float(val["val_score"]),
                "epoch": epoch,
                "step": st.step,
                **where,
                "stale": 0,
                "readout": readout_record(
                    val, self.run.validator.counts, [s.scientific_name for s in self.run.species]
                ),
            }
            self._save("best", epoch + 1, 0)
        else:
            st.best = {**st.best, "stale": st.best["stale"] + 1}

    def _save(self, name: str, epoch: int, micro: int) -> None:
        seconds = save_state(self.run, self.state, name, epoch, micro)
        if self.run.is_main:
            self.hooks.on_checkpoint(name, epoch, self.state.step, seconds)
