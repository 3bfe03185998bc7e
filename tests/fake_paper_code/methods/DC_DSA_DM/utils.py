"""The names the benchmarks patch or call in the paper's methods/DC_DSA_DM/utils.py."""

import torch


class TensorDataset(torch.utils.data.Dataset):
    def __init__(self, images, labels):
        self.images, self.labels = images.detach().float(), labels.detach()

    def __getitem__(self, index):
        return self.images[index], self.labels[index]

    def __len__(self):
        return self.images.shape[0]


def get_dataset(dataset, data_path):
    raise RuntimeError("the benchmarks replace get_dataset")


def get_network(model, channel, num_classes, im_size=(32, 32)):
    return torch.nn.Linear(channel * im_size[0] * im_size[1], num_classes)
