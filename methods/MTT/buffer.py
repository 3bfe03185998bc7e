# ruff: noqa: E402  (the repository root goes on sys.path before the project's imports)
"""Expert trajectories for MTT (trajectory matching): train networks on the real data, keep every epoch's weights.

    python methods/MTT/buffer.py --dataset=CIFAR10 --model=ConvNet --train_epochs=50 --num_experts=100 --zca \\
        --buffer_path=buffers --data_path=data/CIFAR10

Writes <buffer_path>/<dataset>/<model>/replay_buffer_<n>.pt (CIFAR10/CIFAR100 without --zca: <dataset>_NO_ZCA),
--save_interval experts per file, numbered after the files already there: the layout of MTT's buffer.py, so its
buffers and ours load in either tool. Beside each file a .json with the settings, seeds and test accuracy per
epoch, and a log. Every finished expert is kept at once: after a crash, the same command with --resume continues
and ends with the buffer an uninterrupted run makes.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, from any folder

from methods.MTT.buffer_run import BufferRun
from methods.MTT.experts import ExpertSettings, expert_seed, train_experts
from methods.MTT.flags import true_or_false
from methods.MTT.replay_buffer import buffer_dir
from networks import list_networks
from utils.augment import DEFAULT_DSA_STRATEGY, DSA_OPS, dsa_augmenter
from utils.cli import (
    MOMENTUM,
    NON_NEGATIVE,
    POSITIVE,
    HelpFormatter,
    add_data_flags,
    add_runtime_flags,
    check_at_least,
    check_output_path,
    device_name,
    parse_flags,
    run_cli,
    seed_int,
    start_process,
)
from utils.data import get_dataset_spec, load_dataset
from utils.data.zca import ZCA_EPS, zca_whiten_dataset
from utils.errors import UserError
from utils.io import FolderLock, created_dirs, ensure_dir, remove_empty_dirs
from utils.log import setup_logging
from utils.runtime import fast_paths_note, training_steps
from utils.seeding import resolve_seed, seed_everything


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_data_flags(parser)
    parser.add_argument("--model", default="ConvNet", metavar="NAME",
                        help=f"expert architecture: {', '.join(list_networks())}")
    parser.add_argument("--num_experts", type=int, default=100, help="experts to train")
    parser.add_argument("--train_epochs", type=int, default=50, help="epochs per expert (weights kept after each)")
    parser.add_argument("--lr_teacher", type=POSITIVE, default=0.01, help="experts' learning rate (SGD)")
    parser.add_argument("--batch_train", type=int, default=256, help="experts' batch size")
    parser.add_argument("--batch_real", type=int, default=256, help="accepted for MTT's commands; unused, as there")
    parser.add_argument("--mom", type=MOMENTUM, default=0.0, help="experts' SGD momentum")
    parser.add_argument("--l2", type=NON_NEGATIVE, default=0.0, help="experts' SGD weight decay")
    parser.add_argument("--decay", action="store_true",
                        help="lr x0.1 (a fresh optimizer) after epoch train_epochs // 2 + 1, counted from 0, as MTT")
    parser.add_argument("--dsa", type=true_or_false, default=True, metavar="True|False",
                        help="augment with DSA (False: MTT's DC augmentation crop_scale_rotate)")
    parser.add_argument("--dsa_strategy", default=DEFAULT_DSA_STRATEGY, metavar="OPS",
                        help=f"DSA ops joined with '_' (one drawn per batch): any of {', '.join(DSA_OPS)}")
    parser.add_argument("--zca", action="store_true",
                        help=f"ZCA-whiten the images (kornia's ZCAWhitening, eps {ZCA_EPS}, fitted on the training "
                        "pixels) instead of mean/std normalization")
    parser.add_argument("--buffer_path", default="./buffers", help="root folder of the expert buffers")
    parser.add_argument("--save_interval", type=int, default=10, help="experts per replay_buffer_<n>.pt file")
    parser.add_argument("--random_seed", type=seed_int, default=None,
                        help="seed of the run: expert k is made from (seed, k) (default: from the clock; logged and "
                        "saved)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the unfinished run in the buffer folder (same flags; it keeps its seed)")
    parser.add_argument("--experts_at_once", type=int, default=1,
                        help="experts trained together as one stacked ensemble (pays on a GPU with small networks; a "
                        "crash loses at most this many)")
    parser.add_argument("--gpu", default="0", type=device_name,
                        help="CUDA card number, or 'cpu' (the CPU is used when there is no CUDA)")
    add_runtime_flags(parser)
    return parser


def settings_from_args(args: argparse.Namespace, dataset: str) -> ExpertSettings:
    return ExpertSettings(dataset=dataset, model=args.model, zca=args.zca, train_epochs=args.train_epochs,
                          lr_teacher=args.lr_teacher, batch_train=args.batch_train, mom=args.mom, l2=args.l2,
                          dsa=args.dsa, dsa_strategy=args.dsa_strategy, decay=args.decay)


def main(argv=None) -> Path:
    args = parse_flags(get_args_parser(), argv)
    for value, flag in ((args.num_experts, "--num_experts"), (args.train_epochs, "--train_epochs"),
                        (args.batch_train, "--batch_train"), (args.save_interval, "--save_interval"),
                        (args.experts_at_once, "--experts_at_once")):
        check_at_least(value, flag, 1)
    if args.model not in list_networks():
        raise UserError(f"--model {args.model!r} is unknown; known: {', '.join(list_networks())}")
    if args.dsa:
        dsa_augmenter(args.dsa_strategy)  # unknown ops are refused here
    spec = get_dataset_spec(args.dataset)
    settings = settings_from_args(args, spec.name)
    folder = buffer_dir(args.buffer_path, spec.name, args.model, args.zca)
    check_output_path(folder, "--buffer_path")
    runtime = start_process(args.gpu, args.eager, args.precision)
    if runtime.dist.world > 1:
        raise UserError("buffer.py runs in one process; start it without torchrun (or run one per GPU with "
                        "different --random_seed)")
    made = created_dirs(folder)
    ensure_dir(folder, "--buffer_path")
    lock = FolderLock(folder, "wait for it to finish (both would number their files alike)")
    try:
        lock.acquire()
        return _train_buffer(args, settings, folder, runtime)
    finally:
        lock.release()
        remove_empty_dirs(made)


def _train_buffer(args: argparse.Namespace, settings: ExpertSettings, folder: Path, runtime) -> Path:
    data = load_dataset(settings.dataset, args.data_path, runtime.device, normalize=not settings.zca,
                        download=not args.no_download)
    if settings.zca:
        data, _ = zca_whiten_dataset(data)
    recorded = {**asdict(settings), "normalized": not settings.zca, "zca_eps": ZCA_EPS if settings.zca else None}
    run = BufferRun.start_or_resume(folder, recorded, args.random_seed, args.num_experts, args.save_interval,
                                    args.resume, new_seed=lambda: resolve_seed(args.random_seed))
    seed = run.plan.seed
    seed_everything(seed)
    logger = setup_logging(folder / f"log_buffer_seed{seed}.txt")
    done = set(run.finished_experts())
    pending = [k for k in range(args.num_experts) if k not in done]
    logger.info("command: %s", " ".join(sys.argv))
    logger.info("%s %d experts (%d done) | seed %d | %s train %d test %d | zca %s | device %s | files %s",
                "resuming:" if done else "starting:", args.num_experts, len(done), seed, data.spec.name,
                len(data.train), len(data.test), settings.zca, runtime.device,
                ", ".join(f"replay_buffer_{n}.pt" for n in run.plan.numbers))
    logger.info("settings: %s", settings)
    # The compile rule counts the whole run, so a resumed run takes the same path as an uninterrupted one.
    steps = training_steps(args.num_experts, settings.train_epochs, len(data.train), settings.batch_train)
    compiled = runtime.compiles_training(steps)
    logger.info("precision %s | fast paths %s", runtime.precision, fast_paths_note(runtime, steps=steps))
    for start in range(0, len(pending), args.experts_at_once):
        group = pending[start: start + args.experts_at_once]
        seeds = [expert_seed(seed, k) for k in group]

        def log(slot: int, epoch: int, acc: float, group=group) -> None:
            logger.info("expert %d epoch %d test acc %.4f", group[slot], epoch, acc)

        trained = train_experts(settings, data, seeds, runtime, compiled=compiled, stack=len(group) > 1, log=log)
        for k, s, (trajectory, accs) in zip(group, seeds, trained):
            path = run.save_expert(k, trajectory, accs, s)
            logger.info("expert %d done: final test acc %.4f%s", k, accs[-1], f" -> wrote {path}" if path else "")
    run.finish()
    logger.info("done: %d experts in %s", args.num_experts, folder)
    return folder


if __name__ == "__main__":
    sys.exit(run_cli(main))
