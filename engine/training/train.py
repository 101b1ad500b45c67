"""Offline trainer: `python -m engine.training.train --data mnist.npz --out runs/mnist`
(also `digitgen train`).

Epsilon- (or v-) prediction DDPM training of the class-conditional UNet with
AdamW, warm-up + cosine learning rate, gradient clipping, an EMA of the
weights (what ships) and label dropout to the null class for
classifier-free guidance.

Resumable and exactly reproducible: every random draw of step s comes from a
generator seeded with (seed, s) and the data order of epoch e from (seed, e),
so a checkpoint needs only the weights, EMA, optimiser moments, step and the
dropout layers' generator states to continue exactly as an uninterrupted
run would. Checkpoints are safetensors (no pickle), written atomically every
N minutes and on SIGINT/SIGTERM.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import paths
from ..io import WeightsError, load_safetensors, read_json, save_safetensors
from ..io.data import to_model_range
from ..io.images import grid
from ..models.unet_2d import UNet2DConfig, UNet2DModel
from ..nn import runtime
from ..nn.layers import Dropout
from ..pipeline import DigitPipeline, SamplingDefaults
from ..schedulers import DDPMScheduler
from . import runs
from .tensorboard import EventWriter
from .optim import EMA, AdamW, clip_grad_norm, lr_at
from .runs import CHECKPOINT



@dataclass
class TrainConfig:
    data: str
    out: str = "runs/mnist"
    model_config: str = str(paths.MODEL_CONFIG)
    batch_size: int = 64
    steps: int = 20000
    lr: float = 5e-4
    warmup: int = 500
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    label_dropout: float = 0.1
    seed: int = 0
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    prediction_type: str = "epsilon"
    checkpoint_minutes: float = 10.0
    sample_seeds: int = 4          # sample grid: each digit x this many seeds (0: none)
    sample_every: int = 200        # a cheap live grid (one seed a digit, 10 steps) every N steps (0: none)
    log_every: int = 10
    limit: int = 0                 # use only the first N training images (0: all); for tests
    guidance_scale: float = 1.5    # the sampling default the exported model ships with (the shipped model's)
    init: str = ""                 # start from this pipeline folder's UNet (its config and weights)
    snr_gamma: float = 0.0         # min-SNR-gamma loss weighting; 0: plain MSE


# Presets: defaults a run starts from; options given on the command line win.
# quick: a 264k-parameter UNet (no attention, one resnet a level) that draws
# readable digits of every class in about a quarter of an hour on 2 cores
# (README "Train your own" has the measured time and accuracy).
PRESETS = {
    # measured: batch 32 x 2400 steps reads 0.845 to the classifier; batch 64 x 1200 (the same images) 0.63
    "quick": {"model_config": str(paths.QUICK_MODEL_CONFIG), "steps": 2400, "batch_size": 32, "warmup": 100,
              "lr": 2e-3, "ema_decay": 0.995, "checkpoint_minutes": 5.0, "sample_every": 100},
}
LIVE_SAMPLE_STEPS = 10   # DPM-Solver++ steps of the live grid: a tenth of a checkpoint grid's cost


class Trainer:
    def __init__(self, cfg: TrainConfig, model_config: dict, init_state: dict | None = None):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.model = UNet2DModel(UNet2DConfig.from_dict(model_config), rng=np.random.default_rng(cfg.seed))
        if init_state is not None:   # --init: an earlier model's weights (the EMA starts there too)
            self.model.load_state_dict(init_state)
        self.model.train()
        self.null_label = self.model.config.null_class_label
        self.scheduler = DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                                       prediction_type=cfg.prediction_type)
        self.params = self.model.parameters()
        self.opt = AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.ema = EMA(self.model, cfg.ema_decay)
        self.step = 0
        self._perm_epoch, self._perm = -1, None
        self._stop_signal = None
        self._snr = None
        if cfg.snr_gamma > 0:   # SNR_t = abar_t / (1 - abar_t), per training timestep
            abar = np.asarray(self.scheduler.alphas_cumprod, np.float64)
            self._snr = abar / (1 - abar)

    def loss_weights(self, t: np.ndarray) -> np.ndarray | None:
        """Min-SNR-gamma (Hang et al., ICCV 2023): a sample's squared error
        times min(SNR_t, gamma) / SNR_t for an epsilon target (/(SNR_t + 1)
        for v), so that the nearly clean timesteps, whose many easy gradients
        pull against the noisy ones', weigh no more than SNR gamma allows.
        None: every sample weighs 1 (plain MSE)."""
        if self._snr is None:
            return None
        snr = self._snr[t]
        den = snr if self.cfg.prediction_type == "epsilon" else snr + 1
        return (np.minimum(snr, self.cfg.snr_gamma) / den).astype(np.float32)

    # -- data order and per-step randomness: pure functions of (seed, step) --
    def batch_indices(self, n: int) -> np.ndarray:
        B = self.cfg.batch_size
        per_epoch = max(1, n // B)
        epoch, pos = divmod(self.step, per_epoch)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng((self.cfg.seed, 0, epoch)).permutation(n)
            self._perm_epoch = epoch
        return self._perm[pos * B:(pos + 1) * B]

    def train_step(self, images: np.ndarray, labels: np.ndarray) -> dict:
        cfg = self.cfg
        rng = np.random.default_rng((cfg.seed, 1, self.step))
        idx = self.batch_indices(len(images))
        x0 = to_model_range(images[idx])
        y = labels[idx].copy()
        y[rng.random(len(y)) < cfg.label_dropout] = self.null_label
        t = rng.integers(0, cfg.num_train_timesteps, len(y))
        noise = rng.standard_normal(x0.shape, dtype=np.float32)
        x_t = self.scheduler.add_noise(x0, noise, t)
        target = noise if cfg.prediction_type == "epsilon" else self.scheduler.get_velocity(x0, noise, t)

        self.model.zero_grad()
        out = self.model(x_t, t, y)
        diff = out - target
        w = self.loss_weights(t)
        if w is None:
            loss = float(np.mean(diff * diff))
            self.model.backward(diff * np.float32(2.0 / diff.size))
        else:
            w = w.reshape(-1, 1, 1, 1)
            loss = float(np.mean(w * diff * diff))
            self.model.backward(diff * (w * np.float32(2.0 / diff.size)))
        grad_norm = clip_grad_norm(self.params, cfg.grad_clip)
        self.opt.lr = lr_at(self.step, cfg.lr, cfg.warmup, cfg.steps)
        self.opt.step()
        self.ema.update(self.model)
        self.step += 1
        return {"loss": loss, "lr": self.opt.lr, "grad_norm": grad_norm}

    # -- checkpoints ----------------------------------------------------------
    def _dropouts(self):
        return [(n, m) for n, m in _named_modules(self.model) if isinstance(m, Dropout)]

    def checkpoint_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"step": np.array(self.step, np.int64)}
        arrays.update({"model/" + k: v for k, v in self.model.state_dict().items()})
        arrays.update({"ema/" + k: v for k, v in self.ema.state_dict().items()})
        arrays.update({"adam/" + k: v for k, v in self.opt.state_arrays().items()})
        return arrays

    def checkpoint_meta(self) -> dict[str, str]:
        rng_state = {n: m.rng.bit_generator.state for n, m in self._dropouts()}
        return {"format": "digitgen-checkpoint-1", "kind": "train",
                "train_config": json.dumps(dataclasses.asdict(self.cfg)),
                "model_config": json.dumps(self.model.config.to_dict()),
                "ema_updates": str(self.ema.updates),
                "rng_state": json.dumps(rng_state)}

    def save_checkpoint(self) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / CHECKPOINT
        save_safetensors(self.checkpoint_arrays(), path, metadata=self.checkpoint_meta())
        return path

    def load_checkpoint(self, path: Path) -> tuple[dict, dict]:
        """Restores the state; returns (arrays, metadata) for subclasses."""
        arrays = load_safetensors(path, "checkpoint")
        from safetensors import safe_open

        with safe_open(str(path), "np") as f:
            meta = f.metadata() or {}
        if meta.get("format") != "digitgen-checkpoint-1":
            raise ValueError(f"{path} is not a digitgen training checkpoint")
        self.model.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("model/")})
        for k, v in arrays.items():
            if k.startswith("ema/"):
                self.ema.shadow[k[4:]][...] = v
        self.ema.updates = int(meta["ema_updates"])
        self.opt.load_state_arrays({k[5:]: v for k, v in arrays.items() if k.startswith("adam/")})
        states = json.loads(meta.get("rng_state", "{}"))
        for n, m in self._dropouts():
            if n in states:
                m.rng.bit_generator.state = states[n]
        self.step = int(np.asarray(arrays["step"]).reshape(-1)[0])
        return arrays, meta

    def ema_pipeline(self) -> DigitPipeline:
        """The EMA weights as a pipeline, with what it samples with."""
        ema_model = UNet2DModel(self.model.config)
        ema_model.load_state_dict(self.ema.state_dict())
        return DigitPipeline(ema_model, *self.sampling_setup())

    def sampling_setup(self) -> tuple[dict, SamplingDefaults]:
        """(scheduler config, sampling defaults) the exported model ships with:
        the shipped model's (DPM-Solver++ 20 steps, guidance 1.5), unless told."""
        return dict(self.scheduler.config), SamplingDefaults(guidance_scale=self.cfg.guidance_scale,
                                                             null_class_label=self.null_label)

    def export(self) -> Path:
        """EMA weights as a loadable pipeline folder (what `weights/` holds), with its model card."""
        folder = self.out / "pipeline"
        pipe = self.ema_pipeline()
        pipe.save_pretrained(folder)
        d = pipe.defaults
        (folder / "README.md").write_text(
            f"# A digitgen model trained with `digitgen train`\n\n"
            f"- {self.model.num_parameters():,} parameters; EMA weights (decay {self.cfg.ema_decay}) after "
            f"{self.step:,} of {self.cfg.steps:,} steps, batch {self.cfg.batch_size}, lr {self.cfg.lr:g}\n"
            f"- sampling defaults (model_index.json): {d.scheduler} {d.num_inference_steps} steps, guidance "
            f"{d.guidance_scale:g} (the shipped model's, tuned by hand on it; `--guidance-scale` at training "
            f"or a request's guidance_scale changes it)\n"
            f"- training config: `{json.dumps(dataclasses.asdict(self.cfg))}`\n\n"
            f"Score it: `digitgen eval --weights {folder} --data {self.cfg.data}`; serve it: "
            f"`DIGITGEN_WEIGHTS={folder} digitgen serve`.\n")
        return folder

    def sample_grid(self) -> Path | None:
        if self.cfg.sample_seeds <= 0:
            return None
        pipe = self.ema_pipeline()
        labels = [d for d in range(pipe.num_labels) for _ in range(self.cfg.sample_seeds)]
        seeds = [s for _ in range(pipe.num_labels) for s in range(self.cfg.sample_seeds)]
        images = pipe.generate(labels, seeds)
        path = self.out / "samples" / f"step_{self.step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        # one column per digit, one row per seed
        order = [d * self.cfg.sample_seeds + s for s in range(self.cfg.sample_seeds) for d in range(pipe.num_labels)]
        grid([images[i] for i in order], cols=pipe.num_labels, size=56).save(path)
        return path

    def live_sample(self) -> Path:
        """One seed of every digit in LIVE_SAMPLE_STEPS steps: cheap enough to
        draw often, written atomically as samples/latest.png (the watch page's)."""
        pipe = self.ema_pipeline()
        labels = list(range(pipe.num_labels))
        trs = [pipe.trajectory(label, 0, steps=LIVE_SAMPLE_STEPS) for label in labels]
        while not all(t.done for t in trs):
            pipe.step(trs)
        path = self.out / "samples" / "latest.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.png")
        grid([np.clip(t.sample[0], -1, 1) for t in trs], cols=len(labels), size=28).save(tmp)
        tmp.replace(path)
        return path

    # -- the loop ---------------------------------------------------------------
    def _on_signal(self, signum, frame):
        if self._stop_signal is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self._stop_signal = signum
        print(f"\n{signal.Signals(signum).name}: finishing this step, then saving a checkpoint, the weights and a "
              f"sample grid; press Ctrl-C again to stop at once (the last checkpoint stays as it is)",
              file=sys.stderr, flush=True)

    def checkpoint_all(self, log) -> None:
        path = self.save_checkpoint()
        self.export()
        log(f"checkpoint at step {self.step}: {path}" + (", drawing the sample grid ..." if self.cfg.sample_seeds > 0
                                                           else ""))
        grid_path = self.sample_grid()
        if grid_path:
            log(f"samples at step {self.step}: {grid_path}")

    def fit(self, images: np.ndarray, labels: np.ndarray, stop_after: int = 0, progress: bool = True,
            tensorboard: bool = False) -> None:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        log_file = open(self.out / "log.jsonl", "a")
        board = EventWriter(self.out / "tensorboard") if tensorboard else None
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        bar = _progress(progress, initial=self.step, total=cfg.steps)
        say = bar.write if bar else (lambda m: print(m, file=sys.stderr))
        last_ckpt = time.monotonic()
        t_window, n_window = time.perf_counter(), 0
        start_step = self.step
        try:
            while self.step < cfg.steps:
                stats = self.train_step(images, labels)
                n_window += cfg.batch_size
                if bar:
                    bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    now = time.perf_counter()
                    stats["img_per_s"] = n_window / max(now - t_window, 1e-9)
                    t_window, n_window = now, 0
                    wall = time.time()
                    log_file.write(json.dumps({"step": self.step, **stats, "time": wall}) + "\n")
                    log_file.flush()
                    if board is not None:
                        board.scalars(self.step, stats, wall)
                if cfg.sample_every and self.step % cfg.sample_every == 0:
                    self.live_sample()
                    log_file.write(json.dumps({"step": self.step, "sample": "samples/latest.png",
                                               "time": time.time()}) + "\n")
                    log_file.flush()
                    if bar:
                        bar.set_postfix(loss=f"{stats['loss']:.4f}", img_s=f"{stats['img_per_s']:.0f}")
                if self._stop_signal is not None:
                    say(f"signal {self._stop_signal}: saving a checkpoint and stopping")
                    break
                if stop_after and self.step - start_step >= stop_after:
                    break
                if time.monotonic() - last_ckpt > cfg.checkpoint_minutes * 60:
                    self.checkpoint_all(say)
                    last_ckpt = time.monotonic()
            self.checkpoint_all(say)
        finally:
            if bar:
                bar.close()
            log_file.close()
            if board is not None:
                board.close()
            for s, h in old.items():
                signal.signal(s, h)


def _named_modules(module, prefix=""):
    yield prefix, module
    for name, child in module.children():
        yield from _named_modules(child, f"{prefix}{name}.")


def _progress(enabled: bool, initial: int, total: int):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is in the 'train' extra; train without a bar
        return None
    return tqdm(initial=initial, total=total, unit="step", dynamic_ncols=True, smoothing=0.05)


# -- command line ---------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = runs.build_parser("digitgen train", __doc__.split("\n\n")[0], TrainConfig, presets=PRESETS)
    p.add_argument("--watch", type=int, default=None, metavar="PORT",
                   help="serve a live page (loss curve, latest samples) on http://127.0.0.1:PORT while it trains")
    return p


def init_weights(cfg: TrainConfig) -> tuple[dict, dict]:
    """--init: the UNet config and weights of a pipeline folder, which must
    have been trained on the noise schedule this run uses."""
    try:
        start = DigitPipeline.from_pretrained(cfg.init)
    except WeightsError as e:
        raise runs.RunError(f"--init {cfg.init}: {e}") from None
    theirs = start.sampler_configs["ddpm"]
    ours = DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                         prediction_type=cfg.prediction_type).settings
    if (theirs.schedule, theirs.prediction_type) != (ours.schedule, ours.prediction_type):
        raise runs.RunError(f"--init {cfg.init} was trained on {theirs.schedule} predicting {theirs.prediction_type}, "
                            f"this run uses {ours.schedule} predicting {ours.prediction_type}")
    config = {k: v for k, v in start.unet.config.to_dict().items() if not k.startswith("_")}
    return config, start.unet.state_dict()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    runtime.configure()  # the engine's threads; nothing starts at import
    try:
        cfg, meta, ckpt = runs.run_config(args, TrainConfig, "train")
        init_state = None
        if meta is not None:   # resumed: the weights come from the checkpoint (--init's folder may be gone)
            model_config = json.loads(meta["model_config"])
        elif cfg.init:
            model_config, init_state = init_weights(cfg)
        else:
            try:
                model_config = read_json(Path(cfg.model_config), "model config")
                UNet2DConfig.from_dict(model_config)
            except (WeightsError, ValueError) as e:
                raise runs.RunError(str(e)) from None
            model_config = {k: v for k, v in model_config.items() if not k.startswith("_")}
        images, labels = runs.training_images(cfg)
    except runs.RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    trainer = Trainer(cfg, model_config, init_state)
    if meta is not None:
        trainer.load_checkpoint(ckpt)
    print(f"training {trainer.model.num_parameters():,} parameters on {len(images):,} images, "
          f"step {trainer.step} -> {cfg.steps}, batch {cfg.batch_size}; run folder {cfg.out}", file=sys.stderr)
    watcher = None
    if args.watch is not None:
        from .watch import WatchServer

        watcher = WatchServer(Path(cfg.out), args.watch, total_steps=cfg.steps, batch_size=cfg.batch_size)
        print(f"watch it: {watcher.url}", file=sys.stderr, flush=True)
    try:
        trainer.fit(images, labels, stop_after=args.stop_after, progress=not args.no_progress,
                    tensorboard=args.tensorboard)
    finally:
        if watcher is not None:
            watcher.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
