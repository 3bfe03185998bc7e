"""The name the benchmarks patch in the paper's utils_clom/utils.py."""


def set_gpu(args, model):
    return model.cuda()
