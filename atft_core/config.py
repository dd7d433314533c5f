"""One typed config: the single source of truth for every stage.

YAML files in ``include/configs/`` map onto :class:`Config`; dotted overrides such as
``train.optimizer.lr=1e-4`` (CLI) and Airflow Params (DAG) are applied on top with
:func:`apply_overrides`. Unknown keys and wrong types raise :class:`ConfigError` naming the key.

Decisions recorded here (SPEC is silent):
* Values in overrides are parsed as YAML scalars (``1e-4`` -> float, ``[1,5]`` -> list,
  ``true`` -> bool, ``null`` -> None) and then validated by pydantic, so the CLI, YAML and the
  Airflow Params form all go through the same validation.
* Every model is ``extra="forbid"`` and ``frozen``: a config never changes after loading; a
  changed config is a new object (``cfg.model_copy(update=...)`` or ``apply_overrides``).
* Every float is finite (``allow_inf_nan=False`` on every section: ``x < nan`` is always False,
  so a NaN threshold would pass anything) and bounded by its Field constraints.
* What ``atft train`` would refuse is refused here, at load time, so ``atft config`` and the DAG's
  conf check reject it before any work: no phases, no epoch in any phase, a monitor that is not
  a metric the trainer logs, a hidden size the attention heads do not divide,
  ``hpo.lr_min > hpo.lr_max``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "include" / "configs"
HORIZONS_DEFAULT = (1, 5, 10, 20)


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the offending key."""


class _Section(BaseModel):
    # allow_inf_nan=False: NaN/inf in any float field (and float containers) is a validation error
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)


# --------------------------------------------------------------------------- data
class SyntheticConfig(_Section):
    """Seeded synthetic market (SPEC 3.2) on the real XTKS calendar."""

    n_stocks: int = Field(300, ge=10, le=10_000)
    start: str = "2018-01-04"
    n_days: int = Field(500, ge=60, le=10_000)
    n_sectors: int = Field(10, ge=1, le=33)
    n_clusters: int = Field(30, ge=1, description="hidden correlation clusters (graph signal)")
    seed: int = 0
    # Planted signal: 'own' = predictable from the stock's own history/features;
    # 'neighbour' = predictable only from correlated neighbours' past returns (needs the graph).
    signal: Literal["own", "neighbour", "none"] = "own"
    signal_strength: float = Field(0.10, ge=0.0, le=1.0)
    missing_rate: float = Field(0.002, ge=0.0, le=0.2)
    listing_fraction: float = Field(0.05, ge=0.0, le=0.5)
    # Regime change (atft replay's test market): from day round(regime_change_at * n_days) on,
    # the planted signal's sign flips (own: reversal -> momentum); the oracle stays exact.
    regime_change_at: float | None = Field(None, gt=0.0, lt=1.0,
                                           description="fraction of n_days where the signal flips")


SYNTHETIC_SOURCE = "synthetic"


class DataConfig(_Section):
    # "synthetic" (or null) -> the seeded synthetic market (demo / tests); else the quotes store:
    # a folder or s3://bucket/prefix (atft_core.data.store; default.yaml reads var/data/quotes)
    source: str | None = None
    start: str | None = None  # inclusive YYYY-MM-DD window on the source
    end: str | None = None
    synthetic: SyntheticConfig = SyntheticConfig()

    @field_validator("source")
    @classmethod
    def _synthetic_is_null(cls, v: str | None) -> str | None:
        # one spelling inside the program: "synthetic" in YAML/Params == null (pipeline's test)
        return None if v is None or v.strip().lower() == SYNTHETIC_SOURCE else v


class ValidationConfig(_Section):
    """Great Expectations checks on raw quotes (atft_core.validation, suite include/gx/)."""

    max_abs_daily_return: float = Field(0.5, gt=0.0, description="|close/prev_close-1| above = bad tick")
    max_bad_tick_fraction: float = Field(0.001, ge=0.0, le=1.0, description="fatal above this")
    min_daily_coverage: float = Field(0.8, ge=0.0, le=1.0, description="codes per day / median")
    require_fresh: bool = True
    min_rows: int = Field(1, ge=1)
    # Adjusted OHLC from real sources has float noise (Close above High by 1e-13) and rare real
    # inconsistencies (zero-volume days whose Close differs from a flat O=H=L).
    ohlc_tolerance: float = Field(1e-6, ge=0.0, description="relative slack for Low<=Open,Close<=High")
    max_ohlc_violation_fraction: float = Field(0.001, ge=0.0, le=1.0, description="fatal above this")
    docs_dir: str = Field("var/validation/docs", description="Data Docs site (index.html) folder")


class FeatureConfig(_Section):
    horizons: tuple[int, ...] = HORIZONS_DEFAULT
    clip: float = Field(5.0, gt=0.0, description="robust z-scores are clipped to +-clip")
    min_history: int = Field(20, ge=1, description="days of history before a stock-day is usable")
    # optional features after the 22 defaults (names: atft_core.features.EXTRA_FEATURES); empty
    # by default, and then left out of to_dict() so default configs keep their sha256
    extra: tuple[str, ...] = ()

    @field_validator("extra")
    @classmethod
    def _known_extras(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            return v
        from atft_core.features import EXTRA_FEATURES  # lazy: features imports this module

        unknown = [n for n in v if n not in EXTRA_FEATURES]
        if unknown:
            raise ValueError(f"unknown extra feature(s) {unknown}; known: {list(EXTRA_FEATURES)}")
        if len(set(v)) != len(v):
            raise ValueError(f"extra features listed twice: {v}")
        return v

    @model_serializer(mode="wrap")
    def _drop_empty_extra(self, handler, info):
        out = handler(self)
        if not self.extra and not (info.context or {}).get("all_fields"):
            out.pop("extra", None)
        return out

    @field_validator("horizons")
    @classmethod
    def _horizons_sorted(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(h < 1 for h in v) or list(v) != sorted(set(v)):
            raise ValueError("horizons must be distinct positive integers in increasing order")
        return v


class SplitConfig(_Section):
    train_days: int | None = Field(None, ge=20, description="None = everything before val")
    val_days: int = Field(60, ge=5)
    holdout_days: int = Field(60, ge=5)
    purge_days: int | None = Field(None, ge=0, description="None = 1 + max horizon")
    embargo_days: int = Field(5, ge=0)


class DatasetConfig(_Section):
    lookback: int = Field(20, ge=2, le=250)
    days_per_batch: int = Field(8, ge=1, le=256)
    target_norm: Literal["rankgauss", "zscore"] = "rankgauss"


class GraphConfig(_Section):
    k: int = Field(10, ge=1, le=100)
    corr_window: int = Field(60, ge=10, le=500)
    min_abs_corr: float = Field(0.3, ge=0.0, le=1.0)
    sector_edges: bool = True
    max_sector_neighbours: int = Field(10, ge=0, le=100)


# --------------------------------------------------------------------------- model
class ModelConfig(_Section):
    hidden_size: int = Field(256, ge=8, le=2048)
    vsn_hidden: int = Field(64, ge=4, description="hidden width of the VSN selection GRN")
    vsn_feature_dim: int = Field(32, ge=2, le=256, description="per-feature embedding width (shared GRN)")
    ffn_mult: int = Field(4, ge=1, le=8, description="temporal feed-forward GRN width = ffn_mult * hidden")
    lstm_layers: int = Field(2, ge=1, le=4)
    attn_heads: int = Field(4, ge=1, le=32)
    gat_heads: int = Field(4, ge=1, le=32)
    gat_layers: int = Field(2, ge=1, le=4)
    fan_top_k: int = Field(3, ge=1, le=32)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    # No loss trains quantile heads (issue 13, "no untrained outputs"): a non-empty tuple would add
    # untrained outputs to the model, so the config refuses it until a pinball loss exists.
    quantiles: tuple[Annotated[float, Field(gt=0.0, lt=1.0)], ...] = ()

    @field_validator("quantiles")
    @classmethod
    def _no_untrained_quantiles(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if v:
            raise ValueError("quantile heads are not trained by any loss (no pinball loss yet); "
                             "leave model.quantiles empty")
        return v


# --------------------------------------------------------------------------- losses
class LossWeights(_Section):
    mse: float = Field(1.0, ge=0.0)
    rankic: float = Field(0.0, ge=0.0)
    cs_ic: float = Field(0.0, ge=0.0)
    sharpe: float = Field(0.0, ge=0.0)


class LossConfig(_Section):
    point: Literal["mse", "huber"] = "mse"
    huber_delta: float = Field(1.0, gt=0.0)
    horizon_weights: dict[int, Annotated[float, Field(ge=0.0, le=100.0)]] = {1: 1.0, 5: 0.8, 10: 0.5, 20: 0.3}
    softrank_temperature: float = Field(0.1, gt=0.0)


# --------------------------------------------------------------------------- train
class Blocks(_Section):
    gat: bool = True
    fan: bool = True
    attention: bool = True


class PhaseConfig(_Section):
    name: str
    epochs: int = Field(1, ge=0, le=1000)
    blocks: Blocks = Blocks()
    weights: LossWeights = LossWeights()
    lr_scale: float = Field(1.0, gt=0.0, le=10.0)


def default_phases() -> tuple[PhaseConfig, ...]:
    """SPEC 6 table: each phase changes loss weights AND the active blocks."""
    return (
        PhaseConfig(name="baseline", epochs=2, blocks=Blocks(gat=False, fan=False),
                    weights=LossWeights(mse=1.0)),
        PhaseConfig(name="graph", epochs=2, blocks=Blocks(gat=True, fan=False),
                    weights=LossWeights(mse=0.8, rankic=0.1, cs_ic=0.05, sharpe=0.05)),
        PhaseConfig(name="frequency", epochs=2, blocks=Blocks(gat=True, fan=True),
                    weights=LossWeights(mse=0.6, rankic=0.2, cs_ic=0.1, sharpe=0.1)),
        PhaseConfig(name="finetune", epochs=2, blocks=Blocks(gat=True, fan=True),
                    weights=LossWeights(mse=0.4, rankic=0.3, cs_ic=0.2, sharpe=0.1), lr_scale=0.5),
    )


class OptimizerConfig(_Section):
    lr: float = Field(2e-4, gt=0.0, le=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    warmup_steps: int = Field(20, ge=0)


class SchedulerConfig(_Section):
    monitor: str = "val/rank_ic_5d"
    factor: float = Field(0.5, gt=0.0, lt=1.0)
    patience: int = Field(1, ge=0)
    min_lr: float = Field(1e-6, ge=0.0)


class EarlyStoppingConfig(_Section):
    monitor: str = "val/rank_ic_5d"
    patience: int = Field(3, ge=1)
    min_delta: float = Field(0.0, ge=0.0)


class NanGuardConfig(_Section):
    max_consecutive: int = Field(3, ge=1, description="restore last good state after this many")
    lr_factor: float = Field(0.5, gt=0.0, le=1.0)


class TrainConfig(_Section):
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["bf16", "fp32"] = "bf16"
    compile: bool = False
    grad_clip: float = Field(1.0, gt=0.0)
    grad_accum_days: int = Field(0, ge=0, description="0 = whole batch; else micro-batches of days")
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    nan_guard: NanGuardConfig = NanGuardConfig()
    phases: tuple[PhaseConfig, ...] = Field(default_factory=default_phases)
    max_train_batches_per_epoch: int | None = Field(None, ge=1)
    nproc: int = Field(1, ge=1, le=64, description="processes (torchrun DDP); GPUs: <= GPU count")

    @field_validator("phases")
    @classmethod
    def _some_epochs(cls, v: tuple[PhaseConfig, ...]) -> tuple[PhaseConfig, ...]:
        if not v:
            raise ValueError("at least one phase is needed (train.phases is empty)")
        if sum(p.epochs for p in v) < 1:
            raise ValueError("every phase has 0 epochs: nothing would be trained")
        names = [p.name for p in v]
        if len(set(names)) != len(names):
            raise ValueError(f"phase names must be distinct, got {names}")
        return v


class HPOConfig(_Section):
    n_trials: int = Field(8, ge=1)
    storage: str = "sqlite:///var/hpo/optuna.db"
    study_name: str = "atft_hpo"
    epochs_scale: float = Field(1.0, gt=0.0)
    # search space (atft_core.train.hpo.suggest)
    lr_min: float = Field(1e-4, gt=0.0)
    lr_max: float = Field(3e-3, gt=0.0)
    hidden_sizes: tuple[int, ...] = (32, 64, 128)
    dropout_max: float = Field(0.3, ge=0.0, lt=1.0)
    loss_scale_max: float = Field(2.0, ge=0.0, description="x default rankic/cs_ic/sharpe weights")
    # MedianPruner on the per-epoch monitor
    pruner_startup_trials: int = Field(2, ge=0)
    pruner_warmup_epochs: int = Field(1, ge=0)
    # workers sharing one study (atft_core.train.hpo): a trial whose worker stops beating for
    # grace_s is failed and re-queued with the same parameters, at most max_retry times
    heartbeat_s: int = Field(10, ge=1)
    grace_s: int = Field(60, ge=2)
    max_retry: int = Field(2, ge=0)
    use_best_from: str | None = Field(
        None, description='best_params.yaml of a study -> overrides; "latest" = the newest HPO DAG '
                          "result for this same config (hpo.latest_best_path; none yet: no change)")
    applied_trial: str | None = Field(None, description="set by hpo.resolve_config: study#trial used")


# --------------------------------------------------------------------------- gate / registry / metrics
class GateConfig(_Section):
    # gogooku3's targets were min_rank_ic 0.18 / min_sharpe 0.849 on real data -- far above what
    # published GAT results reach (SPEC 5), so the honest defaults are much lower.
    min_rank_ic: float = Field(0.02, ge=-1.0, le=1.0, description="RankIC is a correlation")
    min_sharpe: float = Field(0.5, ge=-100.0, le=100.0, description="annualised Sharpe@1d")
    tolerance: float = Field(0.005, ge=0.0, description="allowed RankIC@1d shortfall vs champion")
    paired_alpha: float = Field(0.05, gt=0.0, lt=1.0, description="one-sided paired t-test level")
    min_coverage: float = Field(0.9, ge=0.0, le=1.0)
    min_pred_std: float = Field(1e-6, ge=0.0)
    min_paired_days: int = Field(5, ge=2, description="fewer common holdout days -> reject")
    allow_synthetic: bool = Field(False, description="promote models trained on synthetic data "
                                  "(demo / tests only; production refuses them)")
    # baseline ladder (issue 13): the candidate must not be worse than the best of a ridge on the
    # same features/rows and the 1d-reversal / 20d-low-vol factors (same paired test as above)
    baseline_rule: bool = True
    baseline_margin: float = Field(0.005, ge=0.0, description="allowed RankIC@1d shortfall vs best baseline")
    promote_baseline_if_better: bool = False  # candidate loses the ladder -> the ridge may become champion
    ridge_alphas: tuple[Annotated[float, Field(gt=0.0)], ...] = Field((0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0), min_length=1,
                                            description="ridge penalties tried; chosen on val days")


class RegistryConfig(_Section):
    uri: str = "file://var/registry"  # or s3://bucket/prefix (SPEC 8)
    endpoint_url: str | None = None  # None -> AWS_ENDPOINT_URL / aws_default connection / AWS
    cache_dir: str | None = None  # where load_run copies verified runs (None = system temp)
    lock_timeout_s: float = Field(30.0, gt=0.0, description="file:// alias lock wait")
    multipart_threshold_mb: int = Field(8, ge=5, le=5120, description="S3 multipart above this")
    s3_deadline_s: float = Field(60.0, gt=0.0, le=3600.0,
                                 description="total deadline of one S3 call (per part for transfers)")
    # write even if the backend fails the create-only / compare-and-swap self-check (unsafe)
    allow_unsafe_backend: bool = False


class MetricsConfig(_Section):
    # None -> env ATFT_PUSHGATEWAY_URL, then env AIRFLOW_CONN_ATFT_PUSHGATEWAY, then the textfile
    pushgateway_url: str | None = None
    textfile_dir: str = "var/metrics"
    job: str = Field("atft", min_length=1)
    push_timeout_seconds: float = Field(5.0, gt=0.0, le=120.0,
                                        description="total deadline of one gateway request")
    retry_after_seconds: float = Field(60.0, ge=0.0, description="skip a failed gateway this long")
    stale_after_trading_days: int = Field(2, ge=1, le=20, description="retrain-stale alert deadline")


def monitor_names(horizons: Iterable[int]) -> set[str]:
    """Per-epoch metrics an early-stopping / scheduler monitor may name (the trainer's record:
    ``val/loss``, ``train/loss`` and train.predict.quick_metrics per horizon)."""
    out = {"val/loss", "train/loss"}
    for h in horizons:
        out |= {f"val/rank_ic_{h}d", f"val/ic_{h}d", f"val/sharpe_{h}d"}
    return out


class Config(_Section):
    run_root: str = "var/runs"  # one directory per training run (checkpoints, metrics, report)
    work_root: str = "var/work"  # per-DAG-run intermediates, keyed by dag_id and data interval
    data: DataConfig = DataConfig()
    validation: ValidationConfig = ValidationConfig()
    features: FeatureConfig = FeatureConfig()
    split: SplitConfig = SplitConfig()
    dataset: DatasetConfig = DatasetConfig()
    graph: GraphConfig = GraphConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    hpo: HPOConfig = HPOConfig()
    gate: GateConfig = GateConfig()
    registry: RegistryConfig = RegistryConfig()
    metrics: MetricsConfig = MetricsConfig()

    @model_validator(mode="after")
    def _horizon_weights_match(self) -> Config:
        missing = [h for h in self.features.horizons if h not in self.loss.horizon_weights]
        if missing:
            raise ValueError(f"loss.horizon_weights has no weight for horizons {missing}")
        return self

    @model_validator(mode="after")
    def _monitors_are_logged_metrics(self) -> Config:
        known = monitor_names(self.features.horizons)
        for key, name in (("train.early_stopping.monitor", self.train.early_stopping.monitor),
                          ("train.scheduler.monitor", self.train.scheduler.monitor)):
            if name not in known:
                raise ValueError(f"{key} {name!r} is not a metric the trainer logs; "
                                 f"one of {sorted(known)}")
        heads = self.model.attn_heads
        bad = [h for h in (self.model.hidden_size, *self.hpo.hidden_sizes) if h % heads]
        if bad:  # nn.MultiheadAttention needs it; HPO trials take hidden sizes from the list
            raise ValueError(f"model.hidden_size / hpo.hidden_sizes {bad} not divisible by "
                             f"model.attn_heads {heads}")
        if self.hpo.lr_min > self.hpo.lr_max:
            raise ValueError(f"hpo.lr_min {self.hpo.lr_min} > hpo.lr_max {self.hpo.lr_max}")
        return self

    @property
    def horizons(self) -> tuple[int, ...]:
        return self.features.horizons

    @property
    def purge_days(self) -> int:
        p = self.split.purge_days
        return 1 + max(self.features.horizons) if p is None else p

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def sha256(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()


# --------------------------------------------------------------------------- model identity
# Sections (and the fields of kept sections) that say WHERE a run writes or reports, or how a
# trained model is judged -- not what model it is: endpoints, roots, gate thresholds, HPO storage.
DEPLOYMENT_SECTIONS = ("run_root", "work_root", "gate", "registry", "metrics")
# hpo: the search settings are deployment, but ``applied_trial`` (which study's best trial's
# overrides this model trained with) is the model's provenance: the run's config.yaml, and so the
# registry manifest that hashes it, keeps it (issue 15)
# train.nproc: the process count does not change the objective (DDP equals one process with the
# same global batch, tests/test_ddp.py), so a retry with another N resumes the same run
DEPLOYMENT_FIELDS = {"validation": ("docs_dir",), "train": ("nproc",),
                     "hpo": tuple(f for f in HPOConfig.model_fields if f != "applied_trial")}


def model_config(cfg: Config) -> Config:
    """``cfg`` with every deployment setting (:data:`DEPLOYMENT_SECTIONS`) at its class default.

    What the trainer gets and saves as the run's ``config.yaml``: two configs that train the same
    model give the same ``model_config(...).sha256()``, so a retry after an endpoint or root
    change resumes its checkpoint instead of being refused as "another config".
    """
    defaults = Config()
    update: dict[str, Any] = {k: getattr(defaults, k) for k in DEPLOYMENT_SECTIONS}
    for section, fields in DEPLOYMENT_FIELDS.items():
        update[section] = getattr(cfg, section).model_copy(
            update={f: getattr(getattr(defaults, section), f) for f in fields})
    return cfg.model_copy(update=update)


def model_identity_hash(cfg: Config) -> str:
    """sha256 of what changes the model (data window, validation, features, splits, dataset,
    graph, model, loss, train) -- not endpoints, roots or gate thresholds."""
    return model_config(cfg).sha256()


# --------------------------------------------------------------------------- loading
def _format_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"{key}: {msg}")
    return "invalid config: " + "; ".join(lines)


def from_dict(data: Mapping[str, Any]) -> Config:
    try:
        return Config.model_validate(dict(data))
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def resolve_config_path(name_or_path: str | Path) -> Path:
    """'demo' -> include/configs/demo.yaml; a path is used as is."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.exists():
            raise ConfigError(f"config file not found: {p}")
        return p
    cand = CONFIG_DIR / f"{name_or_path}.yaml"
    if not cand.exists():
        known = sorted(q.stem for q in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown config {name_or_path!r}; known: {known}")
    return cand


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(cfg: Config | Mapping[str, Any], overrides: Iterable[str] | Mapping[str, Any]) -> Config:
    """Apply ``["a.b=1", ...]`` or ``{"a.b": 1}`` on top of a config; validate the result.

    A dotted key must name an existing field (the error names the first unknown segment).
    ``train.phases.2.epochs=3`` indexes into the phase list.
    """
    data = (cfg.model_dump(mode="json", context={"all_fields": True}) if isinstance(cfg, Config)
            else dict(cfg))
    pairs = (
        [(k.split("."), v) for k, v in overrides.items()]
        if isinstance(overrides, Mapping)
        else [parse_override(o) for o in overrides]
    )
    for path, value in pairs:
        node: Any = data
        for i, part in enumerate(path):
            last = i == len(path) - 1
            where = ".".join(path[: i + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"{where}: no such list index (length {len(node)})")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
                continue
            if not isinstance(node, dict) or (part not in node and not _is_dict_field(path[:i])):
                raise ConfigError(f"{where}: unknown key")
            if last:
                node[part] = value
            else:
                if node.get(part) is None and not last:
                    raise ConfigError(f"{where}: is null; set the whole section instead")
                node = node[part]
    return from_dict(data)


def _is_dict_field(path: list[str]) -> bool:
    # free-form mapping fields whose keys are data, not schema
    return ".".join(path) in {"loss.horizon_weights"}


def load_config(name_or_path: str | Path = "default", overrides: Iterable[str] = ()) -> Config:
    """Load ``include/configs/default.yaml`` (+ the named file merged on top) + overrides."""
    data: dict[str, Any] = {}
    default = CONFIG_DIR / "default.yaml"
    if default.exists():
        data = _read_yaml(default)
    path = resolve_config_path(name_or_path)
    if path.resolve() != default.resolve():
        data = _deep_merge(data, _read_yaml(path))
    cfg = from_dict(data)
    overrides = list(overrides)
    return apply_overrides(cfg, overrides) if overrides else cfg


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(cfg.to_yaml())


def config_from_yaml_text(text: str) -> Config:
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError("config YAML top level must be a mapping")
    return from_dict(data)
