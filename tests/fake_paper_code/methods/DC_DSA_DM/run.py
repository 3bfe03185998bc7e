"""What both stand-in scripts do: the paper's flags, its data and network calls, its result layout."""

import argparse
import os

import torch

from utils import get_dataset, get_network


def main(method_default, ipc_default):
    parser = argparse.ArgumentParser()
    for flag, default in (("--method", method_default), ("--dataset", "CIFAR10"), ("--model", "ConvNet"),
                          ("--data_path", None), ("--save_path", None), ("--CLoM_distance", "ce"),
                          ("--source_dataset", None), ("--dsa_strategy", "None"), ("--init", "noise")):
        parser.add_argument(flag, default=default)
    for flag, default in (("--ipc", ipc_default), ("--Iteration", 1000), ("--num_eval", 20), ("--model_num", 1),
                          ("--epoch", 150), ("--CLoM_batch_size", 256), ("--batch_real", 256)):
        parser.add_argument(flag, type=int, default=default)
    parser.add_argument("--lr_img", type=float, default=0.1)
    parser.add_argument("--CLoM", action="store_true")
    parser.add_argument("--models_pool", nargs="+")
    parser.add_argument("--alphas", type=float, nargs="+")
    args = parser.parse_args()
    channel, im_size, num_classes, _, _, _, train, _, _ = get_dataset(args.dataset, args.data_path)
    for _ in range(args.Iteration + 1):  # the paper's loop: one fresh network per iteration
        get_network(args.model, channel, num_classes, im_size)
    save = args.save_path or os.path.join("condensed", args.dataset, args.method, f"IPC{args.ipc}")
    if args.CLoM:
        save = os.path.join(save, "CLoM", f"{args.CLoM_distance}_distance", f"{args.source_dataset}->{args.dataset}",
                            f"MP{args.models_pool}_Nm[{args.model_num}]_Epoch[{args.epoch}]",
                            f"alphas{args.models_pool}->{args.alphas}")
    else:
        save = os.path.join(save, "original_method")
    os.makedirs(save, exist_ok=True)
    labels = torch.tensor([train[i][1] for i in range(len(train))])
    picks = torch.cat([torch.nonzero(labels == c).flatten()[: args.ipc] for c in range(num_classes)])
    images = torch.stack([train[int(i)][0] for i in picks])
    torch.save({"data": [[images, labels[picks]]], "accs_all_exps": {}},
               os.path.join(save, f"res_{args.method}_{args.dataset}_{args.model}_{args.ipc}ipc.pt"))
