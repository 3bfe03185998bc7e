"""The MTT distillation loop: experiments, iterations, evaluations, checkpoints (the files and the resume rule are
methods/DC_DSA_DM/run_state.py's, as for DC/DSA/DM).

One iteration: an expert and a start epoch e < max_start_epoch; the student starts at the expert's weights of
epoch e and takes syn_steps SGD steps (learning rate syn_lr) on the synthetic set; the loss is the normalised
distance to the expert's weights of epoch e + expert_epochs (trajectory_matching.py), plus CLoM when asked for;
one SGD step (momentum 0.5) on the images (lr_img) and one on syn_lr (lr_lr). Every random draw of iteration `it`
of experiment `exp` comes from (seed, exp, it), so a resumed run ends with the same set as an uninterrupted one.
The result file holds, per experiment, the set and its learned syn_lr (which validate.py trains with).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from methods.clom import ClomTerm
from methods.DC_DSA_DM.config import eval_model_pool
from methods.DC_DSA_DM.run_state import RunState, RunStore
from methods.DC_DSA_DM.synset import class_labels, initial_images, visualization_png
from methods.MTT.config import MttConfig, evaluation_iterations
from methods.MTT.expert_set import ExpertSet
from methods.MTT.trajectory_matching import MTT_DSA, FlatNetwork, StudentSteps, draw_student_steps, match_trajectory
from utils.augment import dsa_augmenter
from utils.data import LoadedDataset
from utils.data.zca import ZCA_EPS
from utils.engine import NetworkSpec, TensorSource, build_seeded_network, paper_eval_schedule, train_and_test
from utils.errors import UserError
from utils.io import WriteError, atomic_torch_save, to_plain
from utils.log import get_logger, progress_disabled
from utils.runtime import Runtime
from utils.seeding import derive_seed, make_generator


class NonFiniteLossError(UserError):
    """The loss (or syn_lr) became nan/inf; the last good synthetic set is in the checkpoint."""


@dataclass(frozen=True)
class Resources:
    """What every experiment of a run uses, resolved once by the script."""

    data: LoadedDataset  # in the distillation's input space (normalized, or ZCA-whitened)
    runtime: Runtime
    experts: ExpertSet
    clom: ClomTerm | None = None
    to_pixels: Callable[[Tensor], Tensor] | None = None  # ZCA: whitened -> [0, 1] pixels (pictures, and CLoM's input)
    clom_on_pixels: bool = False  # feed CLoM pixels (a pool trained on pixels, with ZCA)

    @property
    def device(self) -> torch.device:
        return self.runtime.device


class MttRunStore(RunStore):
    """The run's files (run_state.RunStore); the result also holds each experiment's learned syn_lr and, with
    ZCA, the whitening's settings (validate.py refits it on the training images)."""

    def save_result(self, state: RunState) -> None:
        if not self.writes:
            return
        payload = {"data": [[entry[0], entry[1]] for entry in state.data],
                   "syn_lr": [float(entry[2]) for entry in state.data],
                   "accs_all_exps": to_plain(state.accs_all_exps), "normalized": not self.cfg.zca,
                   "zca": {"eps": ZCA_EPS} if self.cfg.zca else None, "config": to_plain(asdict(self.cfg)),
                   "seed": self.seed, "args": to_plain(self.flags), "wall_time_s": self.wall_time_s(state),
                   "torch_version": str(torch.__version__)}
        try:
            atomic_torch_save(payload, self.files.result, overwrite=True)
        except WriteError as err:
            raise WriteError(f"{err}; once the disk has room, continue with --resume") from None


def run(cfg: MttConfig, res: Resources, store: MttRunStore, state: RunState) -> Path | None:
    """Distill the experiments `state` has not finished; returns the result file (None when stopped early)."""
    logger = get_logger()
    for name in eval_model_pool(cfg.eval_mode, cfg.model):
        state.accs_all_exps.setdefault(name, [])
    while state.exp < cfg.num_exp:
        if not distill_experiment(cfg, res, store, state):
            logger.info("stopped after iteration %d (--stop_after); continue with --resume", cfg.stop_after)
            return None
        store.save_result(state)
        if state.exp < cfg.num_exp:
            store.save_checkpoint(state)
    store.remove_checkpoint()
    for name, accs in state.accs_all_exps.items():
        if accs:
            logger.info("%d experiment(s), evaluated %d random %s: mean %.2f%% std %.2f%%", cfg.num_exp, len(accs),
                        name, 100 * np.mean(accs), 100 * np.std(accs))
    logger.info("learned syn_lr: %s | saved %s", ", ".join(f"{float(e[2]):.5g}" for e in state.data),
                store.files.result)
    return store.files.result


def _initial_state(cfg: MttConfig, res: Resources, seed: int, exp: int) -> tuple[Tensor, dict]:
    train = res.data.train
    generator = make_generator(derive_seed(seed, "init", exp), res.device)
    images = initial_images(train, cfg.ipc, cfg.pix_init, generator)
    return images, {"syn_lr": cfg.lr_teacher, "images": None, "lr": None}


def distill_experiment(cfg: MttConfig, res: Resources, store: MttRunStore, state: RunState) -> bool:
    """Run experiment `state.exp` from `state.next_iteration` to its end; False when stopped early."""
    exp, train, seed, spec = state.exp, res.data.train, store.seed, res.data.spec
    labels = class_labels(train.num_classes, cfg.ipc, res.device).reshape(-1)
    if state.images is None:
        state.images, state.optimizer_state = _initial_state(cfg, res, seed, exp)
    saved = state.optimizer_state
    image_syn = state.images.to(res.device).detach().clone().requires_grad_(True)
    syn_lr = torch.tensor(float(saved["syn_lr"]), device=res.device).requires_grad_(True)
    optimizer_img = torch.optim.SGD([image_syn], lr=cfg.lr_img, momentum=0.5)
    optimizer_lr = torch.optim.SGD([syn_lr], lr=cfg.lr_lr, momentum=0.5)
    if saved["images"] is not None:
        optimizer_img.load_state_dict(saved["images"])
        optimizer_lr.load_state_dict(saved["lr"])
    student = StudentSteps(FlatNetwork(build_seeded_network(cfg.model, spec.channel, spec.num_classes, spec.im_size,
                                                            derive_seed(seed, "student", exp), res.device).train()),
                           compiled=res.runtime.compiles(cfg.iterations))
    evaluate_at = evaluation_iterations(cfg)
    final_accs: dict[str, list[float]] = {}

    def snapshot(next_iteration: int) -> None:
        state.next_iteration, state.images = next_iteration, image_syn.detach().clone()
        state.optimizer_state = {"syn_lr": float(syn_lr.detach()), "images": copy.deepcopy(optimizer_img.state_dict()),
                                 "lr": copy.deepcopy(optimizer_lr.state_dict())}

    bar = tqdm(total=cfg.iterations, initial=state.next_iteration, desc=f"exp {exp}", disable=progress_disabled())
    for it in range(state.next_iteration, cfg.iterations + 1):
        snapshot(it)  # the state before iteration `it`: what a checkpoint written during it must hold
        try:
            if it in evaluate_at:
                accs = evaluate(cfg, res, image_syn.detach().clone(), labels, float(syn_lr.detach()),
                                [derive_seed(seed, "evaluation", exp, it, k) for k in range(cfg.num_eval)],
                                f"exp {exp} iter {it}")
                shown = image_syn.detach() if res.to_pixels is None else res.to_pixels(image_syn.detach())
                store.save_png(visualization_png(shown, train, cfg.ipc), exp, it)
                if it == cfg.iterations:
                    final_accs = accs
            if it == cfg.iterations:
                break
            loss, start_epoch = iteration(cfg, res, student, image_syn, labels, syn_lr, (seed, exp, it))
            learned_lr = float(syn_lr.detach())
            if not (math.isfinite(loss) and math.isfinite(learned_lr)):
                raise NonFiniteLossError(f"the loss became {loss} (syn_lr {learned_lr:.4g}) at iteration {it} of "
                                         f"experiment {exp}")
            optimizer_img.step()
            optimizer_lr.step()
        except KeyboardInterrupt:
            store.save_checkpoint(state)
            raise
        except NonFiniteLossError as err:
            store.save_checkpoint(state)  # the last good synthetic set
            raise NonFiniteLossError(f"{err}; the last good synthetic set is saved in {store.files.checkpoint} "
                                     f"(try a smaller --lr_img or --lr_lr)") from None
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", syn_lr=f"{learned_lr:.4g}")
        if it % 10 == 0:
            get_logger().info("exp %d iter %05d loss %.4f syn_lr %.6g start epoch %d", exp, it, loss, learned_lr,
                              start_epoch)
        if (it + 1) % cfg.checkpoint_every == 0 or it == cfg.stop_after:
            snapshot(it + 1)
            store.save_checkpoint(state)
            if it == cfg.stop_after:
                bar.close()
                return False
    bar.close()
    for name, accs in final_accs.items():
        state.accs_all_exps.setdefault(name, []).extend(accs)
    state.data.append([image_syn.detach().cpu().clone(), labels.cpu(), float(syn_lr.detach())])
    state.exp, state.next_iteration, state.images, state.optimizer_state = exp + 1, 0, None, None
    return True


def iteration(cfg: MttConfig, res: Resources, student: StudentSteps, image_syn: Tensor, labels: Tensor,
              syn_lr: Tensor, at: tuple[int, int, int]) -> tuple[float, int]:
    """One MTT iteration's loss at `at` = (run seed, experiment, iteration), which decides all its random draws;
    leaves the gradients in image_syn.grad and syn_lr.grad. Returns (loss, start epoch)."""
    seed, exp, it = at
    generator = make_generator(derive_seed(seed, "iteration", exp, it), res.device)
    expert = res.experts.experts[res.experts.expert_for(exp, it)]
    start_epoch = int(torch.randint(cfg.max_start_epoch, (1,), generator=generator, device=res.device))
    start = student.net.flatten(expert[start_epoch], res.device, image_syn.dtype)
    target = student.net.flatten(expert[start_epoch + cfg.expert_epochs], res.device, image_syn.dtype)
    draws = draw_student_steps(len(image_syn), cfg.syn_steps, cfg.batch_syn or len(image_syn), cfg.augmentation,
                               image_syn.shape, generator, MTT_DSA)
    result = match_trajectory(student, start, target, image_syn, labels, syn_lr, draws, MTT_DSA)
    image_syn.grad, syn_lr.grad = result.images, result.syn_lr
    loss = float(result.loss)
    if res.clom is not None:
        res.clom.reseed(derive_seed(seed, "extra loss", exp, it))
        clom_input = res.to_pixels(image_syn) if res.clom_on_pixels else image_syn
        clom_loss = res.clom(clom_input, labels)
        clom_loss.backward()  # adds to image_syn.grad
        loss += float(clom_loss.detach())
    return loss, start_epoch


def evaluate(cfg: MttConfig, res: Resources, images: Tensor, labels: Tensor, lr: float, seeds: list[int],
             label: str) -> dict[str, list[float]]:
    """MTT's evaluation: fresh networks trained on the set with the learned lr (epoch_eval_train epochs, DSA when
    distilling with it, lr x0.1 halfway), tested on the real test set."""
    spec, results = res.data.spec, {}
    augment = dsa_augmenter(cfg.dsa_strategy, MTT_DSA) if cfg.dsa else None
    for model_eval in eval_model_pool(cfg.eval_mode, cfg.model):
        accs: list[float] = []
        if seeds:
            network = NetworkSpec(model_eval, spec.channel, spec.num_classes, spec.im_size)
            schedule = paper_eval_schedule(cfg.epoch_eval_train, lr, cfg.batch_train, augment)
            result = train_and_test(network, seeds, TensorSource(images, labels, spec.num_classes), res.data.test,
                                    schedule, runtime=res.runtime)
            accs = [float(a) for a in result.final]
            for k, epoch in result.divergences():
                get_logger().warning("%s: evaluation network %d (%s) diverged by epoch %d (lr %.4g); its accuracy "
                                     "says nothing about the set", label, k, model_eval, epoch, lr)
            get_logger().info("%s: %d random %s (%d epochs, lr %.4g): test acc mean %.4f std %.4f", label, len(accs),
                              model_eval, cfg.epoch_eval_train, lr, np.mean(accs), np.std(accs))
        results[model_eval] = accs
    return results
