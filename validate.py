"""Evaluate a saved synthetic set: train fresh networks on it, test them on the real test set.

    python validate.py --normalize_data --dataset CIFAR10 --model ConvNet --dsa --method DC --ipc 10 \\
        --synthesis_data_path condensed/.../res_DC_CIFAR10_ConvNet_10ipc.pt

Reads data[0] of a res_*.pt (ours or the paper code's), logs test accuracy every --save_every epochs,
and reports the final accuracy (the headline number: mean ± std over --num_eval networks) and, for
reference, the maximum over the test-set evaluations (optimistic: picked by looking at the test set).
Writes every number and setting to a JSON file beside the set (what summarize.py reads).

The field's comparison (DD-Ranking): --random_real K also trains the same evaluation (networks, seeds,
epochs, augmentation, learning rate) on K random real subsets with the set's images per class, and
--full_data on the whole training set; then IOR = acc(set) - acc(random real) and HLR = acc(full) - acc(set),
per evaluation network, mean ± std.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from utils import distributed
from utils.augment import DEFAULT_DSA_STRATEGY, DSA_OPS, dsa_augmenter
from utils.cli import (
    check_at_least,
    check_output_path,
    fix_seed,
    parse_flags,
    parse_int_list,
    run_cli,
    seed_int,
    start_process,
    training_parser,
)
from utils.data import get_dataset_spec, load_dataset
from utils.data.zca import ZCA_EPS, zca_whiten_dataset
from utils.engine import NetworkSpec, Schedule, TensorSource, train_and_test
from utils.errors import UserError
from utils.io import (
    RunDirClaims,
    atomic_json_save,
    atomic_torch_save,
    ensure_dir,
    load_result_file,
    save_new_file,
    to_plain,
)
from utils.log import get_logger, setup_logging
from utils.results import LEARNED_LR
from utils.runtime import fast_paths_note, training_steps
from utils.seeding import derive_seed, make_generator


def get_args_parser() -> argparse.ArgumentParser:
    parser = training_parser(__doc__, epochs=1000, weight_decay=0.0005, save_every=50,
                             save_every_help="test every N epochs (and after the last)", lr_decay_step="500",
                             seed_help="network k uses seed+k (default: from the clock; logged and saved)")
    _lr_default_from_the_set(parser)
    parser.add_argument("--method", default="DC", help="method that made the set (names the --save_model folder)")
    parser.add_argument("--ipc", type=int, default=10, help="images per class (names the --save_model folder)")
    parser.add_argument("--save_model", action="store_true",
                        help="save each network's weights at its highest test accuracy under "
                        "pretrained_model/<dataset>/<method>/IPC<ipc>/<model>/index_<k>/")
    parser.add_argument("--dsa", action="store_true", help="train with DSA augmentation")
    parser.add_argument("--dsa_strategy", default=DEFAULT_DSA_STRATEGY, metavar="OPS",
                        help=f"with --dsa: any of {', '.join(DSA_OPS)} joined with '_' (one op drawn per "
                        "batch), or 'none'")
    parser.add_argument("--synthesis_data_path", required=True, metavar="FILE",
                        help="a res_*.pt file (ours or the paper code's); required")
    parser.add_argument("--experiment", type=int, default=0, help="which entry of data[] to validate")
    parser.add_argument("--num_eval", type=int, default=1, help="fresh networks to train (mean ± std)")
    parser.add_argument("--random_real", type=int, default=0, metavar="K",
                        help="also train the same evaluation on K random real subsets with the set's images per "
                        "class and report IOR = acc(set) - acc(random real) (0: off)")
    parser.add_argument("--random_real_seed", type=seed_int, default=None,
                        help="seed of the random real subsets (default: --random_seed; logged and saved)")
    parser.add_argument("--full_data", action="store_true",
                        help="also train the same evaluation on the whole training set and report "
                        "HLR = acc(full) - acc(set) (as many epochs as the set: long on a large data set)")
    parser.add_argument("--result_json", default=None, metavar="FILE",
                        help="write the results here (default: validate_<model>_seed<seed>.json beside the set, "
                        "or the next free _<k> name; never overwritten)")
    return parser


def _lr_default_from_the_set(parser: argparse.ArgumentParser) -> None:
    """--lr: a set that holds its learned learning rate (MTT's syn_lr) trains with it, as MTT evaluates; --lr
    overrides it."""
    for action in parser._actions:
        if action.dest == "lr":
            action.default = None
            action.help = ("learning rate (SGD) (default: the set's learned lr when the file holds one, as MTT's "
                           "'syn_lr'; else 0.01)")


def learning_rate(flag: float | None, content: dict, experiment: int) -> tuple[float, str]:
    """(lr, where it came from): --lr when given, else the set's learned lr, else 0.01."""
    learned = content.get("syn_lr")
    if flag is not None:
        return flag, "--lr"
    if isinstance(learned, (list, tuple)) and len(learned) > experiment and math.isfinite(float(learned[experiment])):
        return float(learned[experiment]), LEARNED_LR
    return 0.01, "default"


def main(argv=None):
    args = parse_flags(get_args_parser(), argv)
    start = time.time()
    for value, name in ((args.epochs, "--epochs"), (args.save_every, "--save_every"),
                        (args.batch_size, "--batch_size"), (args.num_eval, "--num_eval"), (args.ipc, "--ipc")):
        check_at_least(value, name, 0 if name == "--epochs" else 1)
    check_at_least(args.random_real, "--random_real", 0)
    milestones = parse_int_list(args.lr_decay_step, "--lr_decay_step")
    augment = dsa_augmenter(args.dsa_strategy) if args.dsa else None
    if args.result_json and Path(args.result_json).exists():
        raise UserError(f"--result_json {args.result_json} already exists; refusing to overwrite it")
    if args.result_json:
        check_output_path(Path(args.result_json).parent, "--result_json")
    if args.save_model:
        check_output_path(_model_folder(args, get_dataset_spec(args.dataset).name), "--save_model")
    runtime = start_process(args.gpu, args.eager, args.precision)
    dist, device = runtime.dist, runtime.device
    seed = fix_seed(dist, args.random_seed)

    images, labels, content = load_result_file(args.synthesis_data_path, args.experiment)
    args.lr, args.lr_source = learning_rate(args.lr, content, args.experiment)
    zca = content.get("zca")  # a set distilled on ZCA-whitened images (MTT --zca): the real images are whitened too
    data = load_dataset(args.dataset, args.data_path, device, normalize=args.normalize_data and not zca,
                        download=not args.no_download)
    if zca:
        data, _ = zca_whiten_dataset(data, float(zca.get("eps", ZCA_EPS)))
    spec = data.spec
    if tuple(images.shape[1:]) != (spec.channel, *spec.im_size):
        raise UserError(f"{args.synthesis_data_path}: images are {tuple(images.shape[1:])} but {spec.name} is "
                        f"{(spec.channel, *spec.im_size)}; pass the --dataset the set was distilled from")
    if labels.min() < 0 or labels.max() >= spec.num_classes:
        raise UserError(f"{args.synthesis_data_path}: labels outside 0..{spec.num_classes - 1} of {spec.name}")
    per_class = labels.bincount(minlength=spec.num_classes).tolist()
    if args.random_real:
        have = data.train.class_counts().tolist()
        short = [c for c in range(spec.num_classes) if per_class[c] > have[c]]
        if short:
            raise UserError(f"--random_real: class {short[0]} of {spec.name} has {have[short[0]]} training images, "
                            f"fewer than the set's {per_class[short[0]]}")
    images, labels = images.to(device), labels.to(device)
    # Synthetic sets live in normalized space (as the paper's methods produce them); without
    # --normalize_data the real test set is in pixel space, so map the synthetic images there too.
    if content.get("normalized", True) and not args.normalize_data:
        images = images * data.train.std.view(1, -1, 1, 1) + data.train.mean.view(1, -1, 1, 1)

    log_file = Path(args.synthesis_data_path).with_name(f"validate_{args.model}.log")
    setup_logging(log_file if dist.is_main else None, quiet=not dist.is_main)
    # --save_model: the index folders are this run's from now until it ends (locked; removed if unused)
    claims = RunDirClaims(_model_folder(args, spec.name), args.num_eval if args.save_model and dist.is_main else 0,
                          "--save_model")
    try:
        synthetic = TensorSource(images, labels, spec.num_classes)
        return _train_and_report(args, runtime, seed, synthetic, content, data, milestones, augment, claims.claims,
                                 start)
    finally:
        claims.release()


def _model_folder(args, dataset: str) -> Path:
    return Path("pretrained_model") / dataset / args.method / f"IPC{args.ipc}" / args.model


def _train_and_report(args, runtime, seed, synthetic, content, data, milestones, augment, claims, start):
    spec, logger, dist, device = data.spec, get_logger(), runtime.dist, runtime.device
    labels = synthetic.labels
    logger.info("command: %s", " ".join(sys.argv))
    if distributed.multigpu_notice(args.multigpu):
        logger.info(distributed.multigpu_notice(args.multigpu))
    logger.info("seed %d | device %s | %s: %d synthetic images, %d test | normalized %s | dsa %s | lr %g (%s)",
                seed, device, spec.name, len(labels), len(data.test),
                "no: ZCA-whitened" if content.get("zca") else args.normalize_data, args.dsa, args.lr, args.lr_source)
    steps = training_steps(args.num_eval, args.epochs, len(labels), args.batch_size)
    logger.info("precision %s | fast paths %s", runtime.precision, fast_paths_note(runtime, steps=steps))

    schedule = Schedule(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                        weight_decay=args.weight_decay, milestones=tuple(milestones), augment=augment)
    network = NetworkSpec(args.model, spec.channel, spec.num_classes, spec.im_size)
    with runtime.autocast():
        result = train_and_test(network, [seed + k for k in range(args.num_eval)],
                                synthetic, data.test, schedule,
                                runtime=runtime, test_every=args.save_every, keep_best_states=args.save_model)
    tests = test_evaluations(args.epochs, args.save_every)
    for k, (final, best, epoch) in enumerate(zip(result.final, result.best, result.best_epoch)):
        logger.info("network %d: final test acc %.4f | max over %d test evaluations %.4f at epoch %d", k, final,
                    tests, best, epoch)
    for k, epoch in result.divergences():
        logger.warning("network %d diverged: its weights were NaN/inf at the test after epoch %d, so its accuracy "
                       "(%.4f) says nothing about the set; validate again with a smaller --lr", k, epoch,
                       result.final[k])
    logger.info("%s on %s (%d networks): final test acc %s | max over %d test evaluations %s (optimistic: "
                "chosen on the test set; report the final one)", args.model, Path(args.synthesis_data_path).name,
                args.num_eval, mean_std(result.final), tests, mean_std(result.best))
    with runtime.autocast():
        comparison = _compare_with_real_data(args, runtime, seed, result.final, labels, data, schedule, network)
    if dist.is_main:
        record = {"synthesis_data_path": str(args.synthesis_data_path), "experiment": args.experiment,
                  "dataset": spec.name, "model": args.model, "method": args.method, "ipc": args.ipc, "seed": seed,
                  "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "lr_source": args.lr_source,
                  "momentum": args.momentum,
                  "weight_decay": args.weight_decay, "lr_decay_step": milestones, "dsa": args.dsa,
                  "dsa_strategy": args.dsa_strategy if args.dsa else None, "normalize_data": args.normalize_data,
                  "num_eval": args.num_eval, "final": result.final, "best": result.best,
                  "best_epoch": result.best_epoch, "diverged_at_epoch": result.diverged,
                  "test_every": args.save_every, "test_evaluations": tests,
                  "best_is": "the maximum over the test evaluations (optimistic); 'final' is the headline number",
                  "wall_time_s": round(time.time() - start, 2), "settings_of_the_set": content.get("config"),
                  "seed_of_the_set": content.get("seed"), "args": vars(args), "command": sys.argv, **comparison}
        default = Path(args.synthesis_data_path).with_name(f"validate_{args.model}_seed{seed}.json")
        if args.result_json:
            ensure_dir(Path(args.result_json).parent, "--result_json")
            path = atomic_json_save(to_plain(record), args.result_json)
        else:  # the first free name, claimed atomically (concurrent validations never share one)
            path = save_new_file(json.dumps(to_plain(record), indent=2, sort_keys=True).encode(), default)
        logger.info("results written to %s", path)
    if args.save_model and dist.is_main:
        for k, state in enumerate(result.best_states):
            index, run_dir, _ = claims[k]
            path = run_dir / f"{spec.name}_{args.model}_best_epoch{result.best_epoch[k]}.pth"
            atomic_torch_save(state, path)
            logger.info("saved network %d's weights at its highest test accuracy to %s", k, path)
    distributed.barrier(dist)
    return result


def _compare_with_real_data(args, runtime, seed: int, set_final: list[float], set_labels, data, schedule: Schedule,
                            network: NetworkSpec) -> dict:
    """The same evaluation (networks and their seeds, epochs, augmentation, learning rate) trained on random
    real subsets with the set's images per class (IOR) and on the whole training set (HLR). Each difference
    pairs evaluation network k with network k: same seed, so the same initial weights."""
    logger, record, seeds = get_logger(), {}, [seed + k for k in range(args.num_eval)]
    per_class = set_labels.bincount(minlength=data.spec.num_classes).tolist()
    if args.random_real:
        subset_seed = seed if args.random_real_seed is None else args.random_real_seed
        accs = []
        for draw in range(args.random_real):
            # a CPU generator: the same subsets on every device
            idx = data.train.random_subset_indices(per_class, make_generator(derive_seed(subset_seed, "random real",
                                                                                         draw)))
            subset = TensorSource(data.train.images(idx), data.train.labels[idx], data.spec.num_classes)
            accs.append(train_and_test(network, seeds, subset, data.test, schedule, runtime=runtime).final)
        ior = [s - a for row in accs for s, a in zip(set_final, row)]
        logger.info("random real, %d subset(s) of %s images per class (seed %d): final test acc %s | IOR = acc(set) "
                    "- acc(random real) %s points", args.random_real, _counts_text(per_class), subset_seed,
                    mean_std([a for row in accs for a in row]), signed_mean_std(ior))
        record.update(random_real={"subsets": args.random_real, "seed": subset_seed, "images_per_class": per_class,
                                   "final": accs}, ior=_summary(ior))
    if args.full_data:
        full = train_and_test(network, seeds, data.train, data.test, schedule, runtime=runtime).final
        hlr = [f - s for f, s in zip(full, set_final)]
        logger.info("full training set (%d images): final test acc %s | HLR = acc(full) - acc(set) %s points",
                    len(data.train), mean_std(full), signed_mean_std(hlr))
        record.update(full_data={"images": len(data.train), "final": full}, hlr=_summary(hlr))
    return record


def _counts_text(per_class: list[int]) -> str:
    return str(per_class[0]) if len(set(per_class)) == 1 else "/".join(map(str, per_class))


def _summary(values: list[float]) -> dict:
    """Differences of accuracies (fractions), with their mean and population std, as the report's other stats."""
    return {"values": values, "mean": float(np.mean(values)), "std": float(np.std(values))}


def signed_mean_std(values) -> str:
    values = np.asarray(values, dtype=float) * 100
    return f"{values.mean():+.2f} ± {values.std():.2f}"


def test_evaluations(epochs: int, every: int) -> int:
    """How often the networks are tested: every `every` epochs and after the last (once when epochs is 0)."""
    return max(1, math.ceil(epochs / every))


def mean_std(values) -> str:
    values = np.asarray(values, dtype=float) * 100
    return f"{values.mean():.2f} ± {values.std():.2f}%"


if __name__ == "__main__":
    sys.exit(run_cli(main))
