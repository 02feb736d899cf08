"""The Learner: data, a model, a loss and an optimiser, with fastai's training verbs in plain PyTorch.

The whole training loop is :meth:`Learner._fit` plus :meth:`Learner.train_step`;
``fit``, ``fit_one_cycle`` and ``fine_tune`` only decide the per-step learning
rates and momentum it walks through. A learner pickles (without its optimiser)
into ``learner.pkl``.
"""

from __future__ import annotations

import copy
import math
import numbers
import random
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import DataLoader

from training import figures
from training.data.core import DataLoaders
from training.lr_find import SuggestedLRs, lr_find
from training.progress import EpochTable, format_time, progress_bar
from training.schedule import geometric_lrs, one_cycle_schedule

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
Splitter = Callable[[nn.Module], list[list[nn.Parameter]]]
LearningRates = float | slice | Sequence[float]


def set_seed(seed: int, reproducible: bool = False) -> None:
    """Seed Python, NumPy and PyTorch (every CUDA device too); ``reproducible`` also pins cuDNN's algorithms."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if reproducible:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def activation_for(task: str) -> nn.Module:
    """The final activation by task: what get_preds/predict apply and what export bakes into ONNX."""
    if task == "classification":
        return nn.Softmax(dim=1)
    if task == "multilabel":
        return nn.Sigmoid()
    if task == "regression":
        return nn.Identity()
    raise ValueError(f"unknown task {task!r}: use classification, multilabel or regression")


def default_loss(task: str) -> nn.Module:
    """fastai's loss by task, on raw model outputs."""
    losses = {"classification": nn.CrossEntropyLoss, "multilabel": nn.BCEWithLogitsLoss, "regression": nn.MSELoss}
    if task not in losses:
        raise ValueError(f"unknown task {task!r}: use classification, multilabel or regression")
    return losses[task]()


class StandardizedMSELoss(nn.Module):
    """MSE on standardised values, ``mean(((output - target) / std) ** 2)``: the loss scale of any target is 1.

    Outputs and targets stay in the target's units (the model un-standardises
    itself), so the metrics are too; only the loss is rescaled.
    """

    def __init__(self, std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32))

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.reshape(output.shape)
        return torch.mean(((output - target) / self.std.to(output.device)) ** 2)


def adamw(params: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    """AdamW with fastai's defaults (betas 0.9/0.99, eps 1e-5); beta1 follows the momentum schedule."""
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), eps=1e-5)


def default_splitter(model: nn.Module) -> list[list[nn.Parameter]]:
    """One parameter group holding the whole model."""
    return [list(model.parameters())]


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; asking for CUDA without one is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} asked for, but CUDA is not available here: use 'auto' or 'cpu'")
    return resolved


class Recorder:
    """What happened during the last fit: per-step lr, momentum and loss, and one row per epoch."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.lrs: list[float] = []
        self.moms: list[float | None] = []
        self.losses: list[float] = []
        self.rows: list[dict[str, Any]] = []
        self.sweep: Any = None  # lr_find's SweepReport: what the last learning-rate search cost

    def log_batch(self, lr: float, mom: float | None, loss: float) -> None:
        self.lrs.append(lr)
        self.moms.append(mom)
        self.losses.append(loss)

    def log_epoch(self, row: dict[str, Any]) -> None:
        self.rows.append(row)

    def plot_loss(self, path: str | Path | None = None) -> Figure:
        """Training loss per step and validation loss at the end of each epoch; saved as a PNG when given a path."""
        fig = Figure(figsize=(6, 4))
        ax = fig.add_subplot()
        ax.plot(range(len(self.losses)), self.losses, label="train")
        if self.rows and self.losses:
            per_epoch = len(self.losses) / len(self.rows)
            ends = [per_epoch * (i + 1) - 1 for i in range(len(self.rows))]
            ax.plot(ends, [row["valid_loss"] for row in self.rows], "o-", label="valid")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend()
        return figures.finish(fig, path)


class Learner:
    """Train ``model`` on ``dls``: ``fit``, ``fit_one_cycle``, ``fine_tune``, ``lr_find``, ``predict`` and friends."""

    def __init__(
        self,
        dls: DataLoaders,
        model: nn.Module,
        loss_func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        opt_func: Callable[..., torch.optim.Optimizer] = adamw,
        lr: float = 1e-3,
        wd: float = 0.01,
        metrics: Sequence[Callable[[torch.Tensor, torch.Tensor], float]] | Callable = (),
        splitter: Splitter | None = None,
        path: str | Path = ".",
        device: str | torch.device = "auto",
        mixed_precision: bool = False,
        seed: int | None = None,
    ) -> None:
        if seed is not None:
            set_seed(seed)
        self.dls = dls
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.loss_func = loss_func if loss_func is not None else default_loss(dls.task)
        self.opt_func = opt_func
        self.lr = lr
        self.wd = wd
        self.metrics = [metrics] if callable(metrics) else list(metrics)
        self.splitter = splitter if splitter is not None else default_splitter
        self.path = Path(path)
        self.mixed_precision = mixed_precision
        self.amp_dtype = self._amp_dtype()
        self.seed = seed
        self.opt: torch.optim.Optimizer | None = None
        self.scaler: torch.amp.GradScaler | None = None
        self.recorder = Recorder()
        self.progress = True  # the tqdm bar (shown only on a terminal anyway)
        self.show_table = True  # fastai's per-epoch table on stdout

    # ----------------------------------------------------------------- training

    def fit(self, n_epoch: int, lr: LearningRates | None = None, wd: float | None = None) -> None:
        """Train at a constant learning rate."""
        n_steps = n_epoch * self._n_batches()
        if n_steps == 0:
            return
        group_lrs = self._group_lrs(self.lr if lr is None else lr)
        self._fit(n_epoch, [[group_lr] * n_steps for group_lr in group_lrs], None, wd)

    def fit_one_cycle(
        self,
        n_epoch: int,
        lr_max: LearningRates | None = None,
        div: float = 25.0,
        div_final: float = 1e5,
        pct_start: float = 0.25,
        moms: tuple[float, float, float] = (0.95, 0.85, 0.95),
        wd: float | None = None,
    ) -> None:
        """Train with the 1cycle policy; ``lr_max`` may be a ``slice(low, high)`` spread over the parameter groups."""
        n_steps = n_epoch * self._n_batches()
        if n_steps == 0:
            return
        schedules = [
            one_cycle_schedule(n_steps, group_lr, div, div_final, pct_start, moms)
            for group_lr in self._group_lrs(self.lr if lr_max is None else lr_max)
        ]
        self._fit(n_epoch, [s.lrs for s in schedules], schedules[0].moms, wd)

    def fine_tune(
        self,
        epochs: int,
        base_lr: float = 2e-3,
        freeze_epochs: int = 1,
        lr_mult: float = 100,
        pct_start: float = 0.3,
        div: float = 5.0,
        **fit_kwargs: Any,
    ) -> None:
        """fastai's transfer-learning recipe: train the head with the body frozen, then everything at lower rates."""
        self.freeze()
        if freeze_epochs:
            self.fit_one_cycle(freeze_epochs, slice(base_lr), pct_start=0.99, **fit_kwargs)
        base_lr /= 2
        self.unfreeze()
        self.fit_one_cycle(epochs, slice(base_lr / lr_mult, base_lr), pct_start=pct_start, div=div, **fit_kwargs)

    def lr_find(
        self,
        start_lr: float = 1e-7,
        end_lr: float = 10.0,
        num_it: int = 100,
        stop_div: bool = True,
        show_plot: bool = True,
        save_path: str | Path | None = None,
    ) -> SuggestedLRs:
        """Sweep the learning rate exponentially and suggest rates (``.chosen`` is the default rule's).

        The weights are restored afterwards. The plot is drawn inline in a
        notebook and saved when ``save_path`` is given;
        ``learn.recorder.sweep.plot()`` returns it again.
        """
        return lr_find(self, start_lr, end_lr, num_it, stop_div, show_plot, save_path)

    def _fit(self, n_epoch: int, group_lrs: list[list[float]], moms: list[float] | None, wd: float | None) -> None:
        """The loop: for each batch set the step's hyper-parameters and train; after each epoch, validate."""
        self.prepare_training()
        self.recorder.reset()
        columns = ["epoch", "train_loss", "valid_loss", *(metric_name(m) for m in self.metrics), "time"]
        table = EpochTable(columns)
        if self.show_table:
            table.print_header()
        wd = self.wd if wd is None else wd
        last_step = len(group_lrs[0]) - 1
        step = 0
        for epoch in range(n_epoch):
            start = time.time()
            self.model.train()
            losses = []
            batches = progress_bar(self.dls.train, len(self.dls.train), f"epoch {epoch + 1}/{n_epoch}", self.progress)
            for batch in batches:
                at = min(step, last_step)
                lrs = [schedule[at] for schedule in group_lrs]
                self.set_hypers(lrs, moms[at] if moms else None, wd)
                loss = self.train_step(batch)
                self.recorder.log_batch(lrs[-1], momentum_of(self.opt.param_groups[-1]), loss)
                losses.append(loss)
                step += 1
            scores = self.validate() if self.dls.valid is not None else {"valid_loss": math.nan}
            row = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else math.nan, **scores}
            row["time"] = format_time(time.time() - start)
            self.recorder.log_epoch(row)
            if self.show_table:
                table.print_row([row.get(name, math.nan) for name in columns])

    def train_step(self, batch: Sequence[torch.Tensor]) -> float:
        """One optimiser step on one batch ``(*inputs, target)``; returns the loss."""
        *inputs, target = (t.to(self.device, non_blocking=True) for t in batch)
        with self._autocast(self.device):
            output = self.model(*inputs)
        loss = self.loss_func(output.float(), target)
        self.opt.zero_grad(set_to_none=True)  # frozen parameters keep grad None, so the optimiser skips them
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        return loss.item()

    def prepare_training(self) -> None:
        """Put the model on the training device and make the optimiser (and grad scaler) if there is none yet."""
        self.model.to(self.device)
        if self.opt is None:
            self.opt = self.opt_func(self._param_groups(), lr=self.lr)
        if self.scaler is None:
            # Loss scaling is only needed for float16; bfloat16 has float32's range.
            self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    def set_hypers(self, lrs: Sequence[float], mom: float | None = None, wd: float | None = None) -> None:
        """Set each layer group's learning rate, and optionally momentum (Adam's beta1) and weight decay."""
        for group in self.opt.param_groups:
            group["lr"] = lrs[group["layer_group"]]
            if mom is not None:
                if "betas" in group:
                    group["betas"] = (mom, group["betas"][1])
                elif "momentum" in group:
                    group["momentum"] = mom
            if wd is not None:
                group["weight_decay"] = wd if group["decay"] else 0.0

    def _param_groups(self) -> list[dict[str, Any]]:
        """Optimiser groups: each layer group split into weights (decayed) and biases/norms (not decayed)."""
        groups = []
        for index, params in enumerate(self.layer_groups()):
            weights = [p for p in params if p.ndim >= 2]
            others = [p for p in params if p.ndim < 2]
            for subset, decay in ((weights, True), (others, False)):
                if subset:
                    wd = self.wd if decay else 0.0
                    groups.append({"params": subset, "layer_group": index, "decay": decay, "weight_decay": wd})
        return groups

    # ------------------------------------------------------- parameter groups

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """The splitter's parameter groups, e.g. [body, head]."""
        groups = self.splitter(self.model)
        if not groups:
            raise ValueError("the splitter returned no parameter groups")
        return groups

    def freeze_to(self, n: int) -> None:
        """Freeze the first ``n`` parameter groups (negative counts from the end); BatchNorm layers stay trainable."""
        groups = self.layer_groups()
        frozen = n if n >= 0 else len(groups) + n
        if frozen >= len(groups):
            warnings.warn(
                f"freezing {frozen} of {len(groups)} parameter groups: the whole model is frozen", stacklevel=2
            )
        # As fastai: frozen BatchNorm layers still adapt to the new data's statistics.
        norm_params = {id(p) for m in self.model.modules() if isinstance(m, BN_TYPES) for p in m.parameters()}
        for index, params in enumerate(groups):
            for param in params:
                param.requires_grad_(index >= frozen or id(param) in norm_params)

    def freeze(self) -> None:
        """Train only the last parameter group (the head)."""
        self.freeze_to(-1)

    def unfreeze(self) -> None:
        self.freeze_to(0)

    def _group_lrs(self, lr: LearningRates) -> list[float]:
        """One learning rate per layer group, read as fastai does.

        A number applies to every group; ``slice(hi)`` gives ``hi`` to the last
        group and ``hi / 10`` to the others; ``slice(lo, hi)`` spreads
        geometrically from ``lo`` to ``hi``; a list gives one rate per group.
        """
        n = len(self.layer_groups())
        if isinstance(lr, slice):
            if lr.start is None:
                return [lr.stop / 10] * (n - 1) + [lr.stop]
            return geometric_lrs(lr.start, lr.stop, n)
        if isinstance(lr, numbers.Real):
            return [float(lr)] * n
        lrs = [float(v) for v in lr]
        if len(lrs) != n:
            raise ValueError(f"{len(lrs)} learning rates given for {n} parameter groups")
        return lrs

    # ------------------------------------------------------------- inference

    def validate(self, dl: DataLoader | None = None) -> dict[str, float]:
        """``{"valid_loss": ..., <metric name>: ...}`` over ``dl`` (the validation set by default)."""
        outputs, targets = self._outputs(self._dl_or_valid(dl))
        scores = {"valid_loss": float(self.loss_func(outputs, targets))}
        for metric in self.metrics:
            scores[metric_name(metric)] = float(metric(outputs, targets))
        return scores

    def get_preds(
        self, dl: DataLoader | None = None, with_loss: bool = False, activation: bool = True
    ) -> tuple[torch.Tensor, ...]:
        """``(predictions, targets[, per-item losses])`` in eval mode; predictions are activated unless asked not to."""
        outputs, targets = self._outputs(self._dl_or_valid(dl))
        preds = activation_for(self.dls.task)(outputs) if activation else outputs
        if with_loss:
            return preds, targets, self.item_losses(outputs, targets)
        return preds, targets

    def item_losses(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss of each row (averaged over columns for multilabel and regression)."""
        if not hasattr(self.loss_func, "reduction"):
            raise TypeError(
                f"per-item losses need a loss with a `reduction` attribute, as torch.nn losses have; "
                f"{type(self.loss_func).__name__} has none"
            )
        per_item = copy.copy(self.loss_func)
        per_item.reduction = "none"
        return per_item(outputs, targets).reshape(len(outputs), -1).mean(dim=1)

    def predict(self, item: Any) -> tuple[Any, Any, torch.Tensor]:
        """fastai's ``(decoded, index, probabilities)`` for one raw item (image path/bytes, or a table row)."""
        return self.predict_batch([item])[0]

    def predict_batch(self, items: Any, bs: int = 64) -> list[tuple[Any, Any, torch.Tensor]]:
        """:meth:`predict` for many items, run ``bs`` at a time."""
        inputs = self.dls.encode_items(items)
        device = model_device(self.model, self.device)
        activation = activation_for(self.dls.task)
        self.model.eval()
        chunks = []
        with torch.no_grad():
            for start in range(0, len(inputs[0]), bs):
                chunk = [t[start : start + bs].to(device) for t in inputs]
                with self._autocast(device):
                    output = self.model(*chunk)
                chunks.append(activation(output.float()).cpu())
        if not chunks:
            return []
        return [self.dls.decode_prediction(row) for row in torch.cat(chunks)]

    def show_results(self, max_n: int = 9, path: str | Path | None = None) -> Figure | Any:
        """Validation items with actual and predicted labels: a figure of images, or a DataFrame of rows."""
        from training.show import show_results

        return show_results(self, max_n, path)

    def tune_threshold(self, dl: DataLoader | None = None, min_positives: int = 5) -> list[float]:
        """Multilabel: per-class thresholds maximising validation accuracy_multi, stored in ``dls.thresholds``.

        A class with fewer than ``min_positives`` positive rows gets the best
        single threshold over all classes instead: too few positives would
        overfit its own threshold.
        """
        if self.dls.task != "multilabel":
            raise ValueError(f"tune_threshold is for multilabel models; this one is {self.dls.task}")
        probs, targets = self.get_preds(dl)
        truth = targets.bool()
        grid = torch.arange(0.05, 0.951, 0.05)
        # hits[t, c]: accuracy of class c at threshold grid[t]; the >= matches decode_prediction
        hits = ((probs[None] >= grid[:, None, None]) == truth[None]).float().mean(dim=1)
        overall = best_threshold(grid, hits.mean(dim=1))
        thresholds = [
            best_threshold(grid, hits[:, c]) if int(truth[:, c].sum()) >= min_positives else overall
            for c in range(truth.shape[1])
        ]
        self.dls.thresholds = thresholds
        return thresholds

    def _outputs(self, dl: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw model outputs (float32) and targets for every batch of ``dl``, on the CPU."""
        device = model_device(self.model, self.device)
        self.model.eval()
        outputs, targets = [], []
        with torch.no_grad():
            for batch in dl:
                *inputs, target = (t.to(device) for t in batch)
                with self._autocast(device):
                    output = self.model(*inputs)
                outputs.append(output.float().cpu())
                targets.append(target.cpu())
        if not outputs:
            raise ValueError("the loader is empty: nothing to evaluate")
        return torch.cat(outputs), torch.cat(targets)

    def _dl_or_valid(self, dl: DataLoader | None) -> DataLoader:
        if dl is not None:
            return dl
        if self.dls.valid is None:
            raise ValueError("this learner holds no validation data (an exported learner?): pass a loader")
        return self.dls.valid

    def _n_batches(self) -> int:
        if self.dls.train is None:
            raise ValueError("this learner holds no training data (an exported learner?): set learn.dls first")
        return len(self.dls.train)

    # -------------------------------------------------- devices and precision

    def to_device(self, device: str | torch.device) -> Learner:
        """Move the model (and any optimiser state) to ``device`` ("auto", "cpu", "cuda")."""
        self.device = resolve_device(device)
        self.model.to(self.device)
        self.amp_dtype = self._amp_dtype()
        if self.opt is not None:
            # Optimizer.load_state_dict moves the state onto its parameters' (new) device.
            self.opt.load_state_dict(self.opt.state_dict())
        self.scaler = None
        return self

    def to_cpu(self) -> Learner:
        return self.to_device("cpu")

    def _amp_dtype(self) -> torch.dtype | None:
        if not self.mixed_precision:
            return None
        if self.device.type != "cuda":
            warnings.warn(f"mixed_precision needs CUDA; training in float32 on {self.device}", stacklevel=2)
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def _autocast(self, device: torch.device) -> AbstractContextManager:
        enabled = self.amp_dtype is not None and device.type == "cuda"
        return torch.autocast(device.type, dtype=self.amp_dtype, enabled=enabled)

    # ----------------------------------------------------------- persistence

    def export(self, models_dir: str | Path, name: str, **kwargs: Any) -> Path:
        """fastai's verb: write a versioned bundle ``models_dir/name/<next>/`` (see ``training.export``)."""
        from training.export import export_learner  # export imports this module: import on use

        return export_learner(self, models_dir, name, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        # The optimiser and grad scaler are training-session state (and large): learner.pkl holds the rest.
        state = self.__dict__.copy()
        state["opt"] = None
        state["scaler"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            self.device = torch.device("cpu")  # trained on a GPU, loaded on a machine without one
            self.amp_dtype = None


def metric_name(metric: Callable) -> str:
    """A metric's column name: its ``name``, else its function name."""
    return getattr(metric, "name", None) or getattr(metric, "__name__", type(metric).__name__)


def momentum_of(group: dict[str, Any]) -> float | None:
    if "betas" in group:
        return float(group["betas"][0])
    return float(group["momentum"]) if "momentum" in group else None


def model_device(model: nn.Module, default: torch.device) -> torch.device:
    """Where the model's weights are now (export may have moved them), falling back to ``default``."""
    for tensor in model.parameters():
        return tensor.device
    return default


def best_threshold(grid: torch.Tensor, scores: torch.Tensor) -> float:
    """The grid value with the best score; among ties, the one closest to 0.5."""
    ties = grid[scores >= scores.max() - 1e-9]
    return round(float(ties[torch.argmin((ties - 0.5).abs())]), 4)
