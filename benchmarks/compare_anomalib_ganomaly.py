"""GANomaly side by side with anomalib's, in one process, on the same data, image size and budget.

    pip install .[compare]            # anomalib 2.x next to iadlib
    python benchmarks/compare_anomalib_ganomaly.py [--datasets elpv textures] [--epochs 3] [--batch-size 16]
        [--image-size 64] [--n-features 64] [--latent-size 100] [--n-train N] [--n-test N] [--device cpu]
        [--no-warmup]

Setting (issue 11): ELPV mono (its 432 normal training cells, or the first ``--n-train``; the whole
balanced test set) and the synthetic ``brick`` textures (80 train, 75 test with pixel masks); both
sides train from scratch (GANomaly has no backbone) on the same training images, for the same
number of epochs at the same batch size and image size, with the same latent size (100) and
``n_features`` (64: the channels next to the image, doubling per halving). Our DCGAN networks cap
the width at ``max_channels`` (512 by default); here the cap is lifted to anomalib's uncapped
doubling (``n_features · S / 8``), so both have the same layers and widths (at 64 px the cap does
not bind anyway). 64 px rather than 256 px (where the uncapped widths reach 2048 channels and
~176 M parameters) keeps the whole script (both datasets, both sides, 3 epochs) within ~4 minutes
on a 2-core CPU. Before the timed runs, both sides do an untimed one-epoch fit on two batches
(``--no-warmup`` skips it), so that neither pays the process's one-time start-up (oneDNN kernels,
allocator) inside its timing. Timed on each side:

* ours: ``iadlib.get_model("ganomaly", …).fit(train images)`` — resizing the training set once to
  [-1, 1], the alternating G / D updates — and ``predict(test images)`` (ms/image after a warm-up);
* anomalib: its ``Ganomaly`` Lightning module is built for its ``GanomalyModel``, its
  ``GeneratorLoss`` / ``DiscriminatorLoss`` and its ``configure_optimizers()`` (two Adams, lr 2e-4,
  β = (0.5, 0.999)); fit = resizing the training set once + a plain PyTorch loop doing exactly what
  its manual-optimisation ``training_step`` does (one generator forward, D on real and fake, G
  step with ``retain_graph``, D step on the detached fake), *without* the Lightning Trainer (its
  overhead is left out, which favours anomalib); predict = eval-mode forward per batch, its
  ``InferenceBatch.pred_score`` as scores (the min-max scaling its test loop applies afterwards is
  monotone and leaves the AUROC unchanged).

How the two sides differ (each keeps what its library ships):

* **input** — ours feeds [0, 1] images mapped to [-1, 1] (the tanh range of the decoder);
  anomalib's default pre-processor feeds ImageNet-normalised images;
* **generator loss** — both ``w_adv·L_adv + 50·‖x − x̂‖₁ + w_enc·L_enc`` with weights 1 / 50 / 1,
  but ours takes the paper's feature matching ``L_adv = ‖f(x) − f(x̂)‖²`` on D's penultimate
  features and ``L_enc`` = MSE, anomalib ``L_adv`` = MSE between D's *sigmoid outputs* on x and x̂
  and ``L_enc`` = smooth L1;
* **discriminator** — both BCE on real / fake; ours re-initialises D when its loss falls below
  1e-5 (as the GANomaly reference does), anomalib never; both run D three times per step (real,
  fake, detached fake), the real pass serving both losses;
* **networks** — the same DCGAN layers and widths; anomalib's first encoder convolution pads by 4
  (a 64 px image gives 35×35, not 32×32, after it) and its heads have no bias; both use the DCGAN
  initialisation N(0, 0.02) / BN N(1, 0.02);
* **maps** — ours returns ``|x − x̂|`` averaged over channels as an anomaly map (pixel AUROC on the
  textures); anomalib's GANomaly returns no map (pixel AUROC n/a);
* **batches** — both drop an incomplete last batch (ours does; anomalib's DataLoader would keep
  it), so both take the same number of steps; each shuffles per epoch with its own generator.

At a few epochs the AUROCs are far from the paper's (15 epochs on its data; 512 in the thesis'
full profile); the point is equal budgets. Prints one line per dataset with ratios (anomalib ÷
ours: > 1 means ours is faster / smaller) and writes ``benchmarks/records/anomalib_ganomaly.json``
(``--out``) atomically.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _compare import anomalib_predict, batches, common_args, run_datasets, side, start, write_record  # noqa: E402

import iadlib  # noqa: E402


def n_params(*modules: torch.nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def run_ours(train, test, a, device: torch.device) -> dict:
    model = iadlib.get_model(
        "ganomaly",
        image_size=a.image_size,
        epochs=a.epochs,
        val_every=a.epochs,
        batch_size=a.batch_size,
        latent_dim=a.latent_size,
        base=a.n_features,
        max_channels=a.n_features * a.image_size // 8,  # anomalib's widths double without a cap
        device=str(device),
        seed=a.seed,
    )
    out = side(lambda: model.fit(train), model.predict, test)
    out["n_params"] = n_params(*(getattr(model, m) for m in model.module_names))
    return out


def run_anomalib(train, test, a, device: torch.device) -> dict:
    from anomalib.models.image.ganomaly.lightning_model import Ganomaly

    torch.manual_seed(a.seed)  # its weights_init draws from the global generator
    module = Ganomaly(
        batch_size=a.batch_size,
        n_features=a.n_features,
        latent_vec_size=a.latent_size,
        pre_processor=Ganomaly.configure_pre_processor((a.image_size, a.image_size)),
        post_processor=False,
        evaluator=False,
        visualizer=False,
    )
    model = module.model.to(device)
    d_opt, g_opt = module.configure_optimizers()
    images = train.images()

    def fit() -> None:
        data = next(batches(images, a.image_size, len(images), device, normalise=True))  # resized once
        n, bs = len(data), min(a.batch_size, len(data))
        gen = torch.Generator().manual_seed(a.seed)
        model.train()
        for _ in range(a.epochs):
            order = torch.randperm(n, generator=gen)
            for i in range(0, n - bs + 1, bs):  # full batches only, like ours
                x = data[order[i : i + bs]]
                # Ganomaly.training_step, without Lightning's manual_backward / logging
                padded, fake, latent_i, latent_o = model(x)
                pred_real, _ = model.discriminator(padded)
                pred_fake, _ = model.discriminator(fake)
                g_loss = module.generator_loss(latent_i, latent_o, padded, fake, pred_real, pred_fake)
                g_opt.zero_grad()
                g_loss.backward(retain_graph=True)
                g_opt.step()
                pred_fake, _ = model.discriminator(fake.detach())
                d_loss = module.discriminator_loss(pred_real, pred_fake)
                d_opt.zero_grad()
                d_loss.backward()
                d_opt.step()
        model.eval()

    predict = anomalib_predict(model, a, device, maps=False)

    out = side(fit, predict, test)
    out["n_params"] = n_params(model)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_args(p, epochs=3, batch_size=16, image_size=64)
    p.add_argument("--n-features", type=int, default=64, help="channels next to the image (anomalib n_features)")
    p.add_argument("--latent-size", type=int, default=100, help="latent size (anomalib latent_vec_size)")
    a = p.parse_args()
    if a.image_size < 8 or a.image_size & (a.image_size - 1):
        raise SystemExit(f"--image-size {a.image_size}: GANomaly's DCGAN networks need a power of two ≥ 8")
    device = start(a)

    def pair(train, test, args):
        return run_ours(train, test, args, device), run_anomalib(train, test, args, device)

    rows = run_datasets(a, "GANomaly", pair)
    settings = {
        "epochs": a.epochs,
        "batch_size": a.batch_size,
        "image_size": a.image_size,
        "n_features": a.n_features,
        "latent_size": a.latent_size,
        "max_channels_ours": a.n_features * a.image_size // 8,
        "n_train": a.n_train,
        "n_test": a.n_test,
        "seed": a.seed,
        "backbone_ours": "none",
        "backbone_anomalib": "none",
        "weights": "none (trained from scratch on both sides)",
        "input_ours": "[-1, 1]",
        "input_anomalib": "ImageNet-normalised (its default pre-processor)",
        "score": "latent distance mean((z - z_hat)^2) on both sides",
        "maps_anomalib": "none (GANomaly returns no anomaly map)",
    }
    path = write_record("ganomaly", rows, settings, device, a.out)
    print(f"written {path}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
