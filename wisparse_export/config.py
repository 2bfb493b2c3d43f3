"""Settings of the method as frozen configs, checked once when made; overrides go through dataclasses.replace().

The defaults live in the recipes, nowhere else: calibration/presets.json (calibration and evaluation text) and
calibration/search_presets.json (the named search presets). The CLI's option defaults are read from here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .calibration import METHOD_ALPHA
from .data import recipe
from .errors import WisparseError


def _integer(what: str, value, least: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or (least is not None and value < least):
        raise WisparseError(f"{what} must be an integer{'' if least is None else f' of at least {least}'}, "
                            f"got {value!r}")


def _number(what: str, value, lo: float, hi: float, lo_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (lo < value if lo_open else lo <= value)
    if not ok or not value <= hi:
        raise WisparseError(f"{what} must be a number in {'(' if lo_open else '['}{lo}, {hi}], got {value!r}")


def check_sparsity(sparsity: float, what: str = "sparsity") -> float:
    """A target sparsity in [0, 1): 1 would drop every channel."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise WisparseError(f"{what} must be in [0, 1), got {sparsity}")
    return sparsity


@dataclass(frozen=True)
class CalibrationConfig:
    """How calibration text becomes score statistics; `preset()` holds the defaults (presets.json "calibrate")."""

    method: str        # teal, wina or wisparse (calibration.METHOD_ALPHA)
    seq_len: int       # tokens per calibration sequence (at most the model's context)
    tokens: int        # at most this many calibration tokens, in whole sequences
    seed: int          # which sequences are drawn from the text
    batch_size: int    # sequences per forward pass
    validation: float  # fraction of the calibration documents held out to judge the final choices (wisparse)
    validation_tokens: int  # at most this many held-out tokens, in whole sequences of seq_len

    def __post_init__(self) -> None:
        if self.method not in METHOD_ALPHA:
            raise WisparseError(f"unknown method {self.method!r}; choose {', '.join(METHOD_ALPHA)}")
        _integer("calibration seed", self.seed)
        _integer("batch size", self.batch_size, 1)
        _integer("sequence length", self.seq_len, 1)
        _integer("calibration tokens", self.tokens, 1)
        _integer("validation tokens", self.validation_tokens, 1)
        _number("validation fraction", self.validation, 0.0, 1.0, lo_open=True)
        if self.validation >= 1.0:
            raise WisparseError(f"validation fraction must be below 1, got {self.validation}")
        if self.tokens < self.seq_len:  # would still read one whole sequence: more than asked for
            raise WisparseError(f"calibration tokens ({self.tokens}) are fewer than one sequence of {self.seq_len}")

    @classmethod
    def preset(cls, **overrides) -> CalibrationConfig:
        return cls(**{**recipe("presets")["calibrate"], **overrides})


@dataclass(frozen=True)
class EvaluationConfig:
    """Default evaluation text size (presets.json "evaluate"): `evaluate` and `check` alike."""

    seq_len: int
    tokens: int

    @classmethod
    def preset(cls) -> EvaluationConfig:
        d = recipe("presets")["evaluate"]
        return cls(seq_len=d["seq_len"], tokens=d["eval_tokens"])


def search_budgets() -> tuple[str, ...]:
    """The search presets' names (calibration/search_presets.json)."""
    return tuple(recipe("search_presets"))


@dataclass(frozen=True)
class SearchConfig:
    """The allocation search's settings: a named preset, then replace() for overrides.

    Field order is the order of a plan's recorded search.settings (the presets' order, then the preset's name).
    """

    seq_len: int            # calibration sequences are cut to this length for the search
    intra_tokens: int       # tokens for the within-block split tables
    screen_tokens: int      # tokens that screen each offspring (at most rank_tokens)
    rank_tokens: int        # tokens that rank the survivors and the starting population
    population: int
    generations: int
    offspring: int          # per generation
    survivors: int          # offspring re-ranked on rank_tokens (at most offspring)
    level_step: float       # grid of block levels in the split tables
    unit_step: float        # grid of unit sparsities for the reconstruction error
    max_level: float
    unit_cap: float
    max_deviation: float    # how far a unit may stray from its block's level
    alphas: tuple[float, ...]  # alphas tried: for the whole model by validation KL, or per unit (unit_alpha)
    unit_alpha: bool        # each unit picks its alpha among `alphas` by reconstruction error
    seed: int
    budget: str             # the preset's name

    def __post_init__(self) -> None:
        object.__setattr__(self, "alphas", tuple(self.alphas))
        least = {"seq_len": 2, "intra_tokens": 1, "screen_tokens": 1, "rank_tokens": 1, "population": 1,
                 "generations": 0, "offspring": 1, "survivors": 1, "seed": None}
        for k, n in least.items():
            _integer(f"search setting {k}", getattr(self, k), n)
        for k in ("level_step", "unit_step", "max_level", "unit_cap"):
            _number(f"search setting {k}", getattr(self, k), 0.0, 1.0, lo_open=True)
        _number("search setting max_deviation", self.max_deviation, 0.0, 1.0)
        if not isinstance(self.unit_alpha, bool):
            raise WisparseError(f"search setting unit_alpha must be true or false, got {self.unit_alpha!r}")
        if not self.alphas:
            raise WisparseError("search setting alphas must name at least one alpha")
        for a in self.alphas:
            _number("search setting alphas", a, 0.0, 4.0)
        object.__setattr__(self, "survivors", min(self.survivors, self.offspring))
        object.__setattr__(self, "screen_tokens", min(self.screen_tokens, self.rank_tokens))

    @classmethod
    def preset(cls, name: str | None = None, device: torch.device | str = "cpu") -> SearchConfig:
        """A named preset; None picks 'default' on a GPU and 'fast' on CPU."""
        name = name or ("default" if str(device).startswith("cuda") else "fast")
        table = recipe("search_presets")
        if name not in table:
            raise WisparseError(f"unknown search budget {name!r}; choose one of {', '.join(table)}")
        return cls(**{k: v for k, v in table[name].items() if k != "description"}, budget=name)

    def record(self) -> dict:
        """The settings as a plan records them (JSON)."""
        return {**asdict(self), "alphas": list(self.alphas)}
