"""Data-parallel minibatch training with PyTorch Lightning (DDP) for the models
:func:`inference.variational.train.train` fits.

    >>> fit = train_lightning(m, x, valid=v, devices=2)                  # 2 CPU processes (gloo)
    >>> fit = train_lightning(m, x, accelerator="gpu", devices=4)        # 4 GPUs (nccl)

The objective, the fixed-subsample data plate, the per-epoch transform and the optimisation step
(:class:`inference.variational.optimization.Optimization`: Adam, schedule, clipping, NaN rollback, run by Lightning's
manual optimization) are those of ``inference.variational.train``; Lightning supplies the processes, the
``DistributedSampler`` (each process sees its share of every epoch), the gradient averaging (in
``manual_backward``; it keeps the loss an estimate of the whole data set's ELBO) and the progress
bar. Processes are forked (strategy ``"ddp_fork"``: works from scripts, notebooks and tests; CUDA
must not be initialized before). For several nodes pass ``strategy="ddp"`` and
``num_nodes`` and start the script with a launcher (torchrun, SLURM); the calling script then runs
in every process, so only ``global_rank == 0`` should write results.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from inference.inspection import inspect_model
from inference.target import chain_seed
from inference.validation import check_setting
from inference.variational.objectives import make_objective
from inference.variational.optimization import Optimization
from inference.variational.train import TrainResult, minibatch_loss, prepare_eval, training_parameters, training_target

log = logging.getLogger(__name__)


def train_lightning(model, data, *, valid=None, guide=None, elbo: str = "trace", num_particles: int = 1,
                    epochs: int = 10, batch_size: int = 100, lr: float = 1e-3, lr_decay: float = 0.1,
                    clip_norm: float | None = None, seed: int = 0, accelerator: str = "cpu", devices: int = 2,
                    num_nodes: int = 1, strategy: str | None = None, transform="auto",
                    progress: bool = True) -> TrainResult:
    """Fit an amortized model with Lightning's ``Trainer`` on ``devices`` processes; see the module docstring."""
    try:
        import lightning as L
        from lightning.pytorch.loggers import CSVLogger
    except ImportError:
        raise ValueError("trainer: Lightning training needs PyTorch Lightning; pip install 'latent-zoo[dist]'") from None

    check_setting(devices, "devices", kind="int", minimum=1)
    target, module = training_target(model)
    data = target.validate(data).cpu()
    if transform == "auto":
        transform = target.training_transform(data)
    valid = prepare_eval(target, valid, transform).cpu() if valid is not None else None
    guide_fn = guide if guide is not None else module.guide
    info = inspect_model(target.model_fn, data[:2])
    objective = make_objective(elbo, num_particles, info.max_plate_nesting, info.data_plate)
    batch_loss = minibatch_loss(objective, target.model_fn, guide_fn, info.data_plate)
    N, B = data.shape[0], min(batch_size, data.shape[0])
    L.seed_everything(seed, verbose=False)
    params = training_parameters(batch_loss, data, B, module)
    num_steps = epochs * math.ceil(N / (B * devices * num_nodes))

    class Amortized(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = module
            self.automatic_optimization = False   # the step is inference.variational.optimization.Optimization's

        def on_fit_start(self):
            torch.manual_seed(chain_seed(seed, 1000 + self.global_rank))   # different noise per process

        def on_train_epoch_start(self):
            gen = torch.Generator().manual_seed(chain_seed(seed, self.current_epoch))
            self.x_epoch = (transform(data, gen) if transform is not None else data).to(self.device)

        def training_step(self, batch, batch_idx):
            loss = self.loop.step(lambda: batch_loss(self.x_epoch, batch[0]), backward=self.manual_backward)
            self.log("train", -loss / N, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True)

        def on_validation_epoch_start(self):
            self.x_valid = valid.to(self.device)

        def validation_step(self, batch, batch_idx):
            idx = batch[0]
            # the plate scaled the batch by len(valid) / len(idx): this is its share of the per-point mean
            self.log("valid", -batch_loss(self.x_valid, idx) * len(idx) / len(valid) ** 2, reduce_fx="sum",
                     on_epoch=True, sync_dist=True)

        def configure_optimizers(self):
            self.loop = Optimization(params, lr=lr, lr_decay=lr_decay, num_steps=num_steps, clip_norm=clip_norm,
                                     model=target.source, guide=guide_fn, progress=False,
                                     names={id(p): k for k, p in module.named_parameters()})
            return [self.loop.optimizer], [self.loop.schedule]

        def on_train_start(self):
            self.loop.optimizer = self.optimizers()   # Lightning's wrapper: counts the steps, as its loop needs

    def loader(n, shuffle):
        ds = torch.utils.data.TensorDataset(torch.arange(n))
        return torch.utils.data.DataLoader(ds, batch_size=B, shuffle=shuffle,
                                           generator=torch.Generator().manual_seed(seed) if shuffle else None)

    if strategy is None:
        strategy = "ddp_fork" if devices * num_nodes > 1 else "auto"
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
                            max_epochs=epochs, logger=CSVLogger(tmp, name="fit"), enable_checkpointing=False,
                            enable_progress_bar=progress, enable_model_summary=False, log_every_n_steps=1,
                            num_sanity_val_steps=0, deterministic=True)
        trainer.fit(Amortized(), loader(N, True), loader(len(valid), False) if valid is not None else None)
        metrics = pd.read_csv(next(Path(tmp).rglob("metrics.csv")))
    module.cpu().eval()
    epochs_df = metrics.groupby("epoch").last()
    history = {"epoch": [int(e) + 1 for e in epochs_df.index],
               "train": epochs_df["train_epoch"].tolist() if "train_epoch" in epochs_df else [],
               "valid": epochs_df["valid"].tolist() if "valid" in epochs_df else [math.nan] * len(epochs_df),
               "lr": [], "seconds": []}
    losses = (-metrics["train_step"].dropna()).tolist() if "train_step" in metrics else []
    settings = dict(elbo=elbo, num_particles=num_particles, epochs=epochs, batch_size=B, lr=lr, lr_decay=lr_decay,
                    clip_norm=clip_norm, seed=seed, trainer="lightning", strategy=str(strategy), devices=devices,
                    num_nodes=num_nodes, accelerator=accelerator)
    return TrainResult(model=module, guide=guide_fn, losses=losses, history=history,
                       wall_time=time.perf_counter() - start, settings=settings, transform=transform, target=target)
