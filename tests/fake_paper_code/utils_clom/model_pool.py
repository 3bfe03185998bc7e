"""The paper's utils_clom/model_pool.py."""

from utils import get_network  # noqa: F401
