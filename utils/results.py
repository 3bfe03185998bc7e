"""A sweep's results as one table: every distillation result file (res_*.pt, ours or the paper code's) and
every validate.py report (validate_*.json) under some folders, read into flat records and grouped so that
the runs of one setting that differ only in their seed collapse into one row.

Settings come from what a file records (our result files hold the run's settings; validate's reports the
set's and its own), else from the paper code's folder layout, which carries them:
condensed/<dataset>/<method>/IPC<ipc>/ + original_method/ or
CLoM/<distance>_distance/<source>-><dataset>/MP[<pool>]_Nm[<n>]_Epoch[<e>]/alphas[<pool>]->[<alphas>]/
+ res_<method>_<dataset>_<model>_<ipc>ipc.pt.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from utils.data import dataset_names
from utils.errors import UserError
from utils.io import load_json, safe_torch_load

RESULT_PATTERN = "res_*.pt"
VALIDATE_PATTERN = "validate_*.json"
RUN, VALIDATE = "run", "validate"  # where the accuracies come from: the run's own evaluations, or validate.py

# Settings that never make two runs two rows: the seed, where files are, how a run was driven, how many
# experiments / networks it had (those are counted instead).
NOT_SETTINGS = frozenset({
    "seed", "data_path", "save_path", "download", "checkpoint_every", "resume", "stop_after", "num_exp",
    "num_eval", "clom.cache_gb", "clom.pool_root",
})
# validate.py's settings that shape its numbers (prefixed 'validate.' in a record).
VALIDATE_SETTINGS = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "lr_decay_step", "dsa",
                     "dsa_strategy", "normalize_data")

LEARNED_LR = "the set's learned lr"  # validate.py's lr_source when it trained with the set's own lr

# validate.py's comparisons with real data (DD-Ranking): key in its report -> header.
GAPS = {"ior": "IOR (points)", "hlr": "HLR (points)"}

# The table's columns before the accuracies: (name, header).
COLUMNS = (("dataset", "data set"), ("method", "method"), ("ipc", "ipc"), ("model", "model"),
           ("clom", "CLoM"), ("pool", "pool"), ("source", "source"), ("alpha", "α"),
           ("evaluation", "evaluation"), ("settings", "other settings"))
# Settings the columns show; any other setting that tells two otherwise equal rows apart goes to 'settings'.
SHOWN_SETTINGS = frozenset({"dataset", "method", "ipc", "model", "clom.distance", "clom.models_pool",
                            "clom.model_num", "clom.epoch", "clom.source_dataset", "clom.alphas"})


@dataclass
class Record:
    """One file's results."""

    path: str
    kind: str  # RUN | VALIDATE
    settings: dict[str, Any]  # flat: 'ipc', 'clom.distance', 'validate.epochs', ...
    seed: int | None
    accs: dict[str, list[list[float]]]  # evaluation model -> per experiment, each network's final accuracy
    wall_time_s: float | None
    experiments: int  # synthetic sets the file holds (validate: the one it evaluated)
    networks: int  # evaluation networks per experiment and model (0: not evaluated)
    diverged: int = 0  # evaluation networks whose weights turned NaN/inf (validate reports)
    # validate.py --random_real / --full_data: IOR = acc(set) - acc(random real), HLR = acc(full) - acc(set)
    gaps: dict[str, list[float]] = field(default_factory=dict)  # 'ior' | 'hlr' -> per network pair, fractions

    def key(self) -> tuple:
        """What makes two records one row: the kind and every setting but the seed-like ones."""
        return (self.kind, *sorted((k, json.dumps(v, sort_keys=True, default=str))
                                   for k, v in self.settings.items() if k not in NOT_SETTINGS))

    def fields(self) -> dict[str, Any]:
        """The record as --filter sees it: the columns' values, every setting, the kind and the seed."""
        return {**self.settings, **columns_of(self.kind, self.settings), "kind": self.kind, "seed": self.seed}


@dataclass
class Row:
    """The records of one setting (seeds collapsed)."""

    records: list[Record]
    columns: dict[str, str] = field(default_factory=dict)

    @property
    def settings(self) -> dict[str, Any]:
        return self.records[0].settings

    def shared_settings(self) -> dict[str, Any]:
        """The settings of the row (those that make it one row; not the seeds, paths and counts)."""
        return {k: v for k, v in self.settings.items() if k not in NOT_SETTINGS}

    @property
    def kind(self) -> str:
        return self.records[0].kind

    def accuracies(self, model: str) -> list[float]:
        """Every network's final accuracy (in %) of `model`, over all experiments of all runs."""
        return [100 * a for r in self.records for exp in r.accs.get(model, []) for a in exp]

    def gaps(self, name: str) -> list[float]:
        """Every IOR or HLR value (in points) of the row's validate reports that have it."""
        return [100 * v for r in self.records for v in r.gaps.get(name, [])]

    def experiments(self) -> int:
        return sum(r.experiments for r in self.records)

    def networks(self) -> list[int]:
        """The distinct numbers of evaluation networks per experiment."""
        return sorted({r.networks for r in self.records})

    def models(self) -> list[str]:
        return list(dict.fromkeys(m for r in self.records for m in r.accs))

    def seeds(self) -> list[int]:
        return sorted({r.seed for r in self.records if r.seed is not None})

    def wall_time_s(self) -> float | None:
        """Mean wall time of one run (file) of this setting."""
        times = [r.wall_time_s for r in self.records if r.wall_time_s is not None]
        return float(np.mean(times)) if times else None


# ---------------------------------------------------------------------------------------------- finding
def find_result_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Every res_*.pt and validate_*.json under the folders (or the files themselves), sorted, once each."""
    found: dict[Path, None] = {}
    for given in paths:
        path = Path(given)
        if path.is_file():
            found[path] = None
        elif path.is_dir():
            for pattern in (RESULT_PATTERN, VALIDATE_PATTERN):
                for hit in sorted(path.rglob(pattern)):
                    if hit.is_file():
                        found[hit] = None
        else:
            raise UserError(f"{path} not found: give folders of results (e.g. condensed/) or result files")
    return sorted(found)


def read_records(files: Iterable[Path], warn) -> list[Record]:
    """Each readable file as a record; `warn(line)` once for every file that cannot be read."""
    records = []
    for path in files:
        try:
            records.append(read_record(path))
            if records[-1].diverged:
                warn(f"{path}: {records[-1].diverged} of {records[-1].networks} evaluation networks diverged "
                     "(NaN/inf weights); their chance-level accuracies are in the table")
        except UserError as err:  # its message, less the path the warning already names, on one short line
            reason = " ".join(str(err).replace(f" {path}", "").replace(str(path), "it").split())
            warn(f"skipping {path}: {reason if len(reason) <= 150 else reason[:147] + '...'}")
    return records


def read_record(path: Path) -> Record:
    if path.suffix == ".json":
        return _validate_record(path)
    if path.suffix == ".pt":
        return _run_record(path)
    raise UserError("not a result file (res_*.pt) or a validate.py report (validate_*.json)")


def _run_record(path: Path) -> Record:
    content = safe_torch_load(path, "result file")
    if not isinstance(content, dict) or not isinstance(content.get("accs_all_exps"), dict) \
            or not isinstance(content.get("data"), (list, tuple)):
        raise UserError("not a synthetic-set result file (expected {'data': [...], 'accs_all_exps': {...}})")
    config = content.get("config")
    settings = flatten_config(config) if isinstance(config, dict) else settings_from_path(path)
    if "dataset" not in settings:
        raise UserError("no settings recorded, and its name is not res_<method>_<dataset>_<model>_<ipc>ipc.pt")
    experiments = len(content["data"])
    nets = int(config["num_eval"]) if isinstance(config, dict) and "num_eval" in config else None
    accs = {str(model): _split_experiments([float(a) for a in values], experiments, nets)
            for model, values in content["accs_all_exps"].items()}
    if nets is None:
        nets = max((len(exp) for exps in accs.values() for exp in exps), default=0)
    seed = content.get("seed")
    wall = content.get("wall_time_s")
    return Record(str(path), RUN, settings, None if seed is None else int(seed), accs,
                  None if wall is None else float(wall), experiments, nets)


def _split_experiments(values: list[float], experiments: int, nets: int | None) -> list[list[float]]:
    """The flat accs_all_exps list (experiment after experiment) as one list per experiment."""
    if not values:
        return []
    if not nets and experiments and len(values) % experiments == 0:
        nets = len(values) // experiments
    if not nets or len(values) % nets:
        return [values]
    return [values[i:i + nets] for i in range(0, len(values), nets)]


def _validate_record(path: Path) -> Record:
    report = load_json(path)
    if not isinstance(report, dict) or not isinstance(report.get("final"), list) or "model" not in report:
        raise UserError("not a validate.py report (expected 'final' accuracies and 'model')")
    of_set = report.get("settings_of_the_set")
    if isinstance(of_set, dict):
        settings = flatten_config(of_set)
    else:  # the paper code's set (no settings inside): its path, else what validate was told
        try:
            settings = settings_from_path(Path(str(report.get("synthesis_data_path", ""))))
        except UserError:
            settings = {key: report[key] for key in ("dataset", "method", "ipc") if key in report}
    settings.update({f"validate.{key}": report.get(key) for key in VALIDATE_SETTINGS})
    if report.get("lr_source") == LEARNED_LR:  # each set's own learned lr (MTT): one setting across seeds
        settings["validate.lr"] = "learned"
    if not report.get("dsa"):
        settings["validate.dsa_strategy"] = None
    seed = report.get("seed")
    wall = report.get("wall_time_s")
    accs = {str(report["model"]): [[float(a) for a in report["final"]]]}
    diverged = report.get("diverged_at_epoch")
    diverged = sum(epoch is not None for epoch in diverged) if isinstance(diverged, list) else 0
    gaps = {name: [float(v) for v in report[name]["values"]] for name in GAPS
            if isinstance(report.get(name), dict) and isinstance(report[name].get("values"), list)}
    return Record(str(path), VALIDATE, settings, None if seed is None else int(seed), accs,
                  None if wall is None else float(wall), 1, len(report["final"]), diverged, gaps)


def flatten_config(config: dict) -> dict[str, Any]:
    """A result file's settings, flat: the top level as is, CLoM's options as 'clom.<name>'."""
    flat = {key: value for key, value in config.items() if key != "clom"}
    for key, value in (config.get("clom") or {}).items():
        flat[f"clom.{key}"] = value
    return flat


# ------------------------------------------------------------------------------------ the paper's layout
_RESULT_NAME = re.compile(r"^res_(?P<method>[^_]+)_(?P<middle>.+)_(?P<ipc>\d+)ipc\.pt$")
_POOL_PART = re.compile(r"^MP(?P<pool>\[.*\])_Nm\[(?P<num>\d+)\]_Epoch\[(?P<epoch>\d+)\]$")
_ALPHAS_PART = re.compile(r"^alphas(?P<pool>\[.*\])->(?P<alphas>\[.*\])$")


def settings_from_path(path: Path) -> dict[str, Any]:
    """The settings the paper code's folders and file name carry (see the module docstring)."""
    match = _RESULT_NAME.match(path.name)
    if not match:
        raise UserError("no settings recorded, and its name is not res_<method>_<dataset>_<model>_<ipc>ipc.pt")
    dataset, model = _split_dataset_model(match["middle"])
    settings: dict[str, Any] = {"method": match["method"], "dataset": dataset, "model": model,
                                "ipc": int(match["ipc"])}
    parts = path.parts[:-1]
    if "CLoM" not in parts:
        return settings
    rest = parts[len(parts) - 1 - parts[::-1].index("CLoM") + 1:]
    for part in rest:
        if part.endswith("_distance"):
            settings["clom.distance"] = part[: -len("_distance")]
        elif "->" in part and not part.startswith("alphas"):
            settings["clom.source_dataset"] = part.split("->")[0]
        elif _POOL_PART.match(part):
            found = _POOL_PART.match(part)
            settings["clom.models_pool"] = _literal(found["pool"])
            settings["clom.model_num"], settings["clom.epoch"] = int(found["num"]), int(found["epoch"])
        elif _ALPHAS_PART.match(part):
            settings["clom.alphas"] = _literal(_ALPHAS_PART.match(part)["alphas"])
    return settings


def _split_dataset_model(middle: str) -> tuple[str, str]:
    """'CIFAR10_ConvNet' -> ('CIFAR10', 'ConvNet'); model names may hold '_' (ResNet18BN_AP), data set
    names are known."""
    for name in sorted(dataset_names(), key=len, reverse=True):
        if middle.lower().startswith(name.lower() + "_"):
            return name, middle[len(name) + 1:]
    dataset, _, model = middle.partition("_")
    return dataset, model


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


# ---------------------------------------------------------------------------------------------- columns
def text(value: Any) -> str:
    """How a setting reads in the table and how --filter compares it: numbers without trailing zeros,
    lists joined with ', ', None as 'none'."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(text(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={text(v)}" for k, v in value.items()) or "none"
    return str(value)


def columns_of(kind: str, settings: dict[str, Any]) -> dict[str, str]:
    """The shown columns of a record or row (all but 'settings', which depends on the other rows)."""
    clom = "clom.distance" in settings
    pool = ""
    if clom:
        pool = text(settings.get("clom.models_pool"))
        if settings.get("clom.model_num") is not None:
            pool += f" ×{settings['clom.model_num']}"
        if settings.get("clom.epoch") is not None:
            pool += f", ep {settings['clom.epoch']}"
    if kind == VALIDATE:
        epochs = settings.get("validate.epochs")
        evaluation = f"validate.py {'?' if epochs is None else epochs} ep" + (
            ", DSA" if settings.get("validate.dsa") else "")
    else:
        evaluation = "in run"
    return {
        "dataset": text(settings.get("dataset")), "method": text(settings.get("method")),
        "ipc": text(settings.get("ipc")), "model": text(settings.get("model")),
        "clom": text(settings["clom.distance"]) if clom else "none", "pool": pool or "–",
        "source": text(settings.get("clom.source_dataset")) if clom else "–",
        "alpha": text(settings.get("clom.alphas")) if clom else "–", "evaluation": evaluation,
    }


# ---------------------------------------------------------------------------------------------- rows
def parse_filters(filters: Sequence[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in filters or []:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise UserError(f"--filter expects KEY=VALUE (e.g. method=DM, ipc=10, clom=cos), got {item!r}")
        pairs.append((key.strip(), value.strip()))
    return pairs


def matches(value: Any, wanted: str) -> bool:
    """Case-insensitive text match; numbers compare as numbers (ipc=10, lr_img=1 matches 1.0)."""
    shown = text(value)
    if shown.lower() == wanted.lower():
        return True
    try:
        return math.isclose(float(shown), float(wanted))
    except ValueError:
        return False


def apply_filters(records: list[Record], filters: list[tuple[str, str]]) -> list[Record]:
    """The records whose every KEY=VALUE matches; a KEY no record has is an error listing the known ones."""
    for key, _ in filters:
        known = {k for r in records for k in r.fields()}
        if records and key not in known:
            raise UserError(f"--filter {key}=...: no result has {key!r}; known keys: {', '.join(sorted(known))}")
    return [r for r in records if all(matches(r.fields().get(key), value) for key, value in filters)]


def group_rows(records: list[Record]) -> list[Row]:
    """One row per setting (seeds collapsed), with its columns; 'settings' names the settings that tell
    apart rows whose other columns are the same."""
    groups: dict[tuple, list[Record]] = {}
    for record in records:
        groups.setdefault(record.key(), []).append(record)
    rows = [Row(members, columns_of(members[0].kind, members[0].settings)) for members in groups.values()]
    look_alike: dict[tuple, list[Row]] = {}
    for row in rows:
        look_alike.setdefault(tuple(row.columns.values()), []).append(row)
    for similar in look_alike.values():
        keys = sorted({k for row in similar for k in row.settings} - SHOWN_SETTINGS - NOT_SETTINGS)
        differ = [k for k in keys if len({json.dumps(row.settings.get(k), default=str) for row in similar}) > 1]
        for row in similar:
            row.columns["settings"] = " ".join(f"{k}={text(row.settings.get(k))}" for k in differ)
    return rows


DEFAULT_ORDER = ("dataset", "method", "ipc", "model", "clom", "pool", "source", "alpha", "evaluation",
                 "settings")


def sort_rows(rows: list[Row], keys: Sequence[str]) -> list[Row]:
    """By the default column order, then by `keys` (the first key decides first); '-key' sorts descending.
    A key is a column, an evaluation model (its mean accuracy), 'wall_time', 'runs' or a setting."""
    models = {m.lower(): m for row in rows for m in row.models()}
    columns = {name for name, _ in COLUMNS}

    def value(row: Row, key: str):
        if key.lower() in models:
            accs = row.accuracies(models[key.lower()])
            return float(np.mean(accs)) if accs else None
        if key == "wall_time":
            return row.wall_time_s()
        if key == "runs":
            return len(row.records)
        raw = row.columns[key] if key in columns else text(row.settings.get(key)) if key in row.settings else None
        try:
            return float(raw) if raw is not None else None
        except ValueError:
            return raw

    known = columns | set(models) | {"wall_time", "runs"} | {k for row in rows for k in row.settings}
    ordered = list(rows)
    for spec in reversed([*keys, *DEFAULT_ORDER]):  # stable sorts, the least significant key first
        descending = spec.startswith("-")
        key = spec.lstrip("-")
        if key not in known and key.lower() not in known:
            raise UserError(f"--sort {spec}: unknown key; use a column ({', '.join(c for c, _ in COLUMNS)}), "
                            f"an evaluation model ({', '.join(sorted(set(models.values()))) or 'none'}), "
                            "wall_time, runs or a setting")
        present = [row for row in ordered if value(row, key) is not None]
        missing = [row for row in ordered if value(row, key) is None]  # always last
        by_type = sorted(present, key=lambda row: _sortable(value(row, key)), reverse=descending)
        ordered = by_type + missing
    return ordered


def _sortable(value):
    return (0, value, "") if isinstance(value, float) else (1, 0.0, str(value))


def evaluation_models(rows: list[Row]) -> list[str]:
    return list(dict.fromkeys(m for row in rows for m in row.models()))


def summarize(paths: Sequence[str | os.PathLike], filters: Sequence[str] = (), sort: Sequence[str] = (),
              warn=print) -> list[Row]:
    """The rows of every result under `paths`: read, filtered, grouped, sorted."""
    files = find_result_files(paths)
    if not files:
        raise UserError(f"no result files ({RESULT_PATTERN}, {VALIDATE_PATTERN}) under {', '.join(map(str, paths))}")
    records = apply_filters(read_records(files, warn), parse_filters(filters))
    return sort_rows(group_rows(records), sort)
