"""The distillation loop shared by DC, DSA and DM: experiments, iterations, evaluations, checkpoints.

One experiment = initialize the synthetic set, then for it = 0 .. iterations-1 one method iteration
(gradient_matching.py for DC/DSA, distribution_matching.py for DM), evaluating the set at the evaluation
iterations (before that iteration's update; the last one is it = iterations, after the final update, so the
saved set is exactly the one evaluated).

Reproducible and resumable: every random draw of iteration `it` of experiment `exp` comes from generators
seeded with derive_seed(seed, ..., exp, it) (the random network, the real batches, DSA, the inner-loop batch
order, and CLoM's draws via its `reseed`), and evaluation k uses derive_seed(seed, "evaluation", exp, it, k).
Nothing depends on RNG history, so a run continued from a checkpoint (synthetic images + optimizer momentum +
where it was) ends with the same synthetic set as an uninterrupted run.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from methods.clom import ClomTerm
from methods.DC_DSA_DM.config import DistillConfig, eval_augmentation, eval_model_pool, evaluation_iterations
from methods.DC_DSA_DM.distribution_matching import DMSettings, batched_on, distribution_matching_iteration
from methods.DC_DSA_DM.gradient_matching import MatchingSettings, execution_for, gradient_matching_iteration
from methods.DC_DSA_DM.loss_guard import LossGuard
from methods.DC_DSA_DM.run_state import RunState, RunStore
from methods.DC_DSA_DM.synset import class_labels, initial_images, visualization_png
from utils.data import LoadedDataset
from utils.distributed import DistInfo, all_reduce_sum_, barrier, split_range
from utils.engine import NetworkSpec, TensorSource, build_seeded_network, paper_eval_schedule, train_and_test
from utils.errors import UserError
from utils.log import get_logger, progress_disabled
from utils.runtime import Runtime
from utils.seeding import derive_seed, make_generator

LOG_EVERY = 10  # iterations between log lines: the loop reads the loss (and the non-finite flag) this often


class NonFiniteLossError(UserError):
    """The distillation loss became nan/inf; the last good synthetic set is in the checkpoint."""


@dataclass(frozen=True)
class Resources:
    """What every experiment of a run uses, resolved once by the script."""

    data: LoadedDataset
    runtime: Runtime  # device, torchrun group, fast paths, precision
    clom: ClomTerm | None = None  # added to the method's loss at every image step

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def dist(self) -> DistInfo:
        return self.runtime.dist


def run(cfg: DistillConfig, res: Resources, store: RunStore, state: RunState) -> Path | None:
    """Distill the experiments `state` has not finished; returns the result file (None when stopped by
    stop_after, with a checkpoint to resume from)."""
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
            logger.info("%d experiment(s), trained on %s, evaluated %d random %s: mean %.2f%% std %.2f%%",
                        cfg.num_exp, cfg.model, len(accs), name, 100 * np.mean(accs), 100 * np.std(accs))
    logger.info("saved %s", store.files.result)
    barrier(res.dist)
    return store.files.result


def distill_experiment(cfg: DistillConfig, res: Resources, store: RunStore, state: RunState) -> bool:
    """Run experiment `state.exp` from `state.next_iteration` to its end; False when stopped early."""
    exp, train, seed = state.exp, res.data.train, store.seed
    labels = class_labels(train.num_classes, cfg.ipc, res.device).reshape(-1)
    if state.images is None:
        state.images = initial_images(train, cfg.ipc, cfg.init, make_generator(derive_seed(seed, "init", exp),
                                                                               res.device))
    image_syn = state.images.to(res.device).detach().clone().requires_grad_(True)
    optimizer = torch.optim.SGD([image_syn], lr=cfg.lr_img, momentum=0.5)
    if state.optimizer_state is not None:
        optimizer.load_state_dict(state.optimizer_state)
    evaluate_at = evaluation_iterations(cfg)
    final_accs: dict[str, list[float]] = {}

    bar = tqdm(total=cfg.iterations, initial=state.next_iteration, desc=f"exp {exp}", disable=progress_disabled())
    guard = LossGuard(image_syn, optimizer)
    for it in range(state.next_iteration, cfg.iterations + 1):
        guard.begin(it)  # the state before iteration `it`: what a checkpoint written during it must hold
        try:
            if it in evaluate_at or it == cfg.iterations:
                stop_if_non_finite(guard, state, exp)  # only a good set is evaluated or saved
            if it in evaluate_at:
                accs = evaluate(cfg, res, image_syn.detach().clone(), labels, seeds_of_evaluation(cfg, seed, exp, it),
                                f"exp {exp} iter {it}")
                store.save_png(visualization_png(image_syn, train, cfg.ipc), exp, it)
                if it == cfg.iterations:
                    final_accs = accs
            if it == cfg.iterations:
                break
            step_images = partial(image_step, res, optimizer, image_syn, labels, guard=guard, it=it)
            loss = method_iteration(cfg, res, image_syn, step_images, seed, exp, it)
            checkpoint = (it + 1) % cfg.checkpoint_every == 0 or it == cfg.stop_after
            if it % LOG_EVERY == 0 or checkpoint:  # the loop's only reads from the device
                stop_if_non_finite(guard, state, exp)
        except KeyboardInterrupt:
            state.next_iteration, state.images, state.optimizer_state = guard.last_good()
            store.save_checkpoint(state)  # where it was, or before the first non-finite loss
            raise
        except NonFiniteLossError as err:
            store.save_checkpoint(state)  # the last good synthetic set
            raise NonFiniteLossError(f"{err}; the last good synthetic set is saved in {store.files.checkpoint} "
                                     f"(try a smaller --lr_img)") from None
        bar.update(1)
        if it % LOG_EVERY == 0:
            value = float(loss)
            bar.set_postfix(loss=f"{value:.4f}")
            get_logger().info("exp %d iter %05d loss %.4f", exp, it, value)
        if checkpoint:
            state.next_iteration, state.images = it + 1, image_syn.detach()
            state.optimizer_state = optimizer.state_dict()
            store.save_checkpoint(state)
            if it == cfg.stop_after:
                bar.close()
                return False
    bar.close()
    for name, accs in final_accs.items():
        state.accs_all_exps.setdefault(name, []).extend(accs)
    state.data.append([image_syn.detach().cpu().clone(), labels.cpu()])
    state.exp, state.next_iteration, state.images, state.optimizer_state = exp + 1, 0, None, None
    return True


def method_iteration(cfg: DistillConfig, res: Resources, image_syn: Tensor, step_images, seed: int, exp: int,
                     it: int) -> Tensor:
    """Iteration `it` of DC/DSA or DM. Its random network, its generator (real batches, DSA, batch order)
    and CLoM's draws all come from (seed, exp, it) alone, so a resumed run takes exactly the same steps."""
    spec = res.data.spec
    make_network = partial(build_seeded_network, cfg.model, spec.channel, spec.num_classes, spec.im_size,
                           derive_seed(seed, "network", exp, it), res.device)
    generator = make_generator(derive_seed(seed, "iteration", exp, it), res.device)
    if res.clom is not None:
        res.clom.reseed(derive_seed(seed, "extra loss", exp, it))
    mine = split_range(spec.num_classes, res.dist)
    classes = slice(mine[0], mine[-1] + 1) if mine else slice(0, 0)
    sample_real = res.data.train.sample_per_class
    if cfg.method == "DM":
        settings = DMSettings(cfg.batch_real, cfg.augmentation, classes, res.dist.world,
                              res.runtime.compiles(cfg.iterations), batched_on(res.device))
        return distribution_matching_iteration(make_network, sample_real, image_syn, generator, step_images,
                                               settings)
    settings = MatchingSettings(cfg.ipc, cfg.batch_real, cfg.batch_train, cfg.lr_net, cfg.dis_metric,
                                cfg.augmentation, classes, execution=execution_for(res.runtime, cfg.iterations))
    return gradient_matching_iteration(make_network, sample_real, image_syn, generator, step_images, settings)


def image_step(res: Resources, optimizer: torch.optim.Optimizer, image_syn: Tensor, labels: Tensor, loss: Tensor,
               guard: LossGuard, it: int) -> Tensor:
    """Add CLoM, note a non-finite loss on the device (`guard`; nothing is read back), take one SGD step on the
    synthetic images; returns the loss, detached. Under torchrun `loss` is this process's share: the images'
    gradients (and the loss) are summed over processes."""
    if res.clom is not None:
        loss = loss + res.clom(image_syn, labels) / res.dist.world
    value = all_reduce_sum_(res.dist, loss.detach().clone())
    guard.record(value, it)
    optimizer.zero_grad(set_to_none=True)
    if loss.requires_grad:  # a process with no classes (more processes than classes) contributes nothing
        loss.backward()
    if image_syn.grad is None:
        image_syn.grad = torch.zeros_like(image_syn)
    all_reduce_sum_(res.dist, image_syn.grad)
    optimizer.step()
    return value


def stop_if_non_finite(guard: LossGuard, state: RunState, exp: int) -> None:
    """Raise NonFiniteLossError, naming the iteration, if any loss so far was non-finite; `state` then holds the
    set before that iteration, for the checkpoint."""
    bad = guard.first_bad()
    if bad is not None:
        state.next_iteration, state.images, state.optimizer_state = guard.last_good()
        raise NonFiniteLossError(f"the loss became {bad[1]} at iteration {bad[0]} of experiment {exp}")


def seeds_of_evaluation(cfg: DistillConfig, seed: int, exp: int, it: int) -> list[int]:
    return [derive_seed(seed, "evaluation", exp, it, k) for k in range(cfg.num_eval)]


def evaluate(cfg: DistillConfig, res: Resources, images: Tensor, labels: Tensor, seeds: list[int],
             label: str) -> dict[str, list[float]]:
    """Train one fresh network per seed of every evaluation model on the set, test them on the real test set."""
    spec, results = res.data.spec, {}
    for model_eval in eval_model_pool(cfg.eval_mode, cfg.model):
        augment, epochs = eval_augmentation(cfg, spec.name, model_eval)
        accs = []
        if seeds:
            network = NetworkSpec(model_eval, spec.channel, spec.num_classes, spec.im_size)
            schedule = paper_eval_schedule(epochs, cfg.lr_net, cfg.batch_train, augment)
            result = train_and_test(network, seeds, TensorSource(images, labels, spec.num_classes), res.data.test,
                                    schedule, runtime=res.runtime)
            accs = result.final
            for k, epoch in result.divergences():
                get_logger().warning("%s: evaluation network %d (%s) diverged: NaN/inf weights by epoch %d, its "
                                     "accuracy %.4f says nothing about the set", label, k, model_eval, epoch, accs[k])
            get_logger().info("%s: %d random %s (%d epochs): test acc mean %.4f std %.4f", label, len(accs),
                              model_eval, epochs, np.mean(accs), np.std(accs))
        results[model_eval] = [float(a) for a in accs]
    return results
