"""The objectives' registry: the one place the rest of ptft_hf asks what an objective is.

An objective is a subclass of `Objective` that sets its traits, lists its own settings and
implements `prepare`; `@register_objective` adds an instance under its `name`. The recipe, the
checks, the model card, staging and the API ask the entry (`get_objective(name).generates`),
never compare the name to a string. The registry itself imports no torch, but importing it registers the built-in objectives, whose
modules do.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Mapping, TypeVar

from ptft_hf.config.schema import ObjectiveConfig
from ptft_hf.errors import Problem, UserError
from ptft_hf.plugins import load_entry_points

if TYPE_CHECKING:  # pragma: no cover
    from ptft_hf.objectives.base import Prepared

# objective.* fields every objective reads (the rest belong to the objectives that list them)
COMMON_SETTINGS = ("name", "learning_rate", "max_steps", "num_proc")


class Objective:
    """One training objective. Subclasses set the traits below and implement `prepare`."""

    name: ClassVar[str]
    auto_class: ClassVar[str]  # the transformers auto class that loads the saved model
    task_type: ClassVar[str | None] = None  # peft TaskType name; None: a plain PeftModel
    pipeline_tag: ClassVar[str]  # the Hub's task tag on the model card
    description: ClassVar[str]  # what the trained model is, for the model card
    predicts: ClassVar[str] = ""  # what its loss is over, for the model card (" (next token)")
    language_modelling: ClassVar[bool] = False  # an LM on packed blocks: perplexity, unigram floor
    generates: ClassVar[bool] = False  # generated samples make sense
    classifies: ClassVar[bool] = False  # labels, a classification head, accuracy
    merges: ClassVar[bool] = False  # an adapter trained with it can be merged into its base and published so
    reads_chat: ClassVar[bool] = False  # the training data loads as conversations
    mixes_blocks: ClassVar[bool] = False  # weighted extra corpora, replay and streaming mix its packed blocks
    # objective.* fields this objective reads besides COMMON_SETTINGS
    settings: ClassVar[tuple[str, ...]] = ()
    # settings switched on only for this objective: field -> (its "off" value, what is wrong elsewhere, the fix);
    # {objective} in the texts is the objective the run has
    exclusive_settings: ClassVar[Mapping[str, tuple[Any, str, str]]] = {}
    # a dataclass of this objective's own settings under `objective.options` (objectives added outside ptft_hf)
    options: ClassVar[type | None] = None

    def problems(self, cfg: Any) -> list[Problem]:
        """What this objective refuses in a composed config (beyond the common checks)."""
        return []

    def prepare(self, conf: Any, splits: Any, tokenizer: Any, strategy: Any, references: dict[str, Any]) -> "Prepared":
        """Model, data sets, collators and metrics for the Trainer."""
        raise NotImplementedError

    def trainer_options(self, conf: Any) -> dict[str, Any]:
        """Keyword arguments of `PtftTrainer` that this objective sets (e.g. R-Drop's weight)."""
        return {}

    def evaluate_after(self, model: Any, tokenizer: Any, prepared: "Prepared", conf: Any,
                       predictions_path: Any) -> dict[str, Any]:
        """Metrics beyond the Trainer's evaluation, computed after training (e.g. SFT's exact match)."""
        return {}

    def read_options(self, objective: Any) -> Any:
        """`objective.options` (of a composed config or its dataclass) as this objective's `options`
        dataclass, its defaults where unset."""
        from omegaconf import OmegaConf

        if self.options is None:
            return None
        known = {f.name for f in dataclasses.fields(self.options)}  # unknown names are `own_problems`' to report
        given = {k: v for k, v in dict(getattr(objective, "options", None) or {}).items() if k in known}
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(self.options), given))

    def read_settings(self, objective: Any) -> Any:
        """This objective's own settings as a typed, frozen view of `objective.*`."""
        return self.settings_type()(**{name: getattr(objective, name) for name in (*COMMON_SETTINGS, *self.settings)})

    @classmethod
    @functools.cache
    def settings_type(cls) -> type:
        """A frozen dataclass of exactly the fields this objective reads, typed as in the schema (built once)."""
        fields = {f.name: f for f in dataclasses.fields(ObjectiveConfig)}
        return dataclasses.make_dataclass(f"{cls.__name__}Settings", [(n, fields[n].type) for n in (*COMMON_SETTINGS, *cls.settings)],
                                          frozen=True)

    def __call__(self, conf: Any, splits: Any, tokenizer: Any, strategy: Any, references: dict[str, Any]) -> "Prepared":
        return self.prepare(conf, splits, tokenizer, strategy, references)

    def __repr__(self) -> str:
        return f"<objective {self.name}>"


_REGISTRY: dict[str, Objective] = {}
O = TypeVar("O", bound=type)


def register_objective(cls: O) -> O:
    """Class decorator: make `cls` (an `Objective` subclass) available as `objective.name=cls.name`."""
    unknown = [n for n in cls.settings if n not in {f.name for f in dataclasses.fields(ObjectiveConfig)}]
    if unknown:
        raise TypeError(f"{cls.__name__}.settings names fields the objective schema lacks: {', '.join(unknown)}")
    _REGISTRY[cls.name] = cls()
    return cls


def objective_names() -> list[str]:
    _load_entry_points()
    return list(_REGISTRY)


ENTRY_POINT_GROUP = "ptft_hf.objectives"  # installed packages add objectives under this group


def _load_entry_points() -> None:
    load_entry_points(ENTRY_POINT_GROUP, _REGISTRY)


def find_objective(name: str) -> Objective | None:
    if name not in _REGISTRY:
        _load_entry_points()
    return _REGISTRY.get(name)


def get_objective(name: str) -> Objective:
    """The registered objective `name`; a UserError naming the choices otherwise."""
    entry = find_objective(name)
    if entry is None:
        raise UserError([unknown_objective_problem(name)])
    return entry


def unknown_objective_problem(name: str) -> Problem:
    return Problem("objective.name", f"'{name}' is not supported", f"use one of: {', '.join(objective_names())}")


def own_problems(cfg: Any, objective: Objective) -> list[Problem]:
    """The objective's `objective.options` against its own `options` dataclass (names and types),
    then its own `problems`; those read the options, so they wait while a value has the wrong type."""
    from omegaconf.errors import OmegaConfBaseException

    given = dict(cfg.objective.get("options") or {})
    if objective.options is None:
        taken = [Problem("objective.options", f"objective={objective.name} takes no options", "drop objective.options")] if given else []
        return taken + objective.problems(cfg)
    valid = [f.name for f in dataclasses.fields(objective.options)]
    problems = [Problem(f"objective.options.{key}", f"is not an option of objective={objective.name}", f"use one of: {', '.join(valid)}")
                for key in given if key not in valid]
    try:
        objective.read_options(cfg.objective)
    except OmegaConfBaseException as err:  # a value of the wrong type
        key = getattr(err, "full_key", "") or ""
        return problems + [Problem(f"objective.options.{key}".rstrip("."), str(getattr(err, "msg", err)).splitlines()[0],
                                   f"give a value of the type {objective.name}'s options declare")]
    return problems + objective.problems(cfg)


def exclusive_setting_problems(cfg: Any, objective: Objective, reported: set[str] = frozenset()) -> list[Problem]:
    """Settings switched on that only another objective reads (R-Drop on a causal LM, ...);
    fields in `reported` have a problem already and are left out."""
    problems = []
    for other in _REGISTRY.values():
        if other is objective:
            continue
        for field, (off, what, fix) in other.exclusive_settings.items():
            value = cfg.objective.get(field, off)
            if value != off and field not in objective.exclusive_settings and f"objective.{field}" not in reported:
                problems.append(Problem(f"objective.{field}", what.format(objective=objective.name), fix.format(objective=objective.name)))
    return problems


class ObjectiveRegistry(Mapping[str, Objective]):
    """`OBJECTIVES[name]`: the registry as a read-only mapping (benchmarks and tests call its entries)."""

    def __getitem__(self, name: str) -> Objective:
        return get_objective(name)

    def __iter__(self) -> Iterator[str]:
        return iter(objective_names())

    def __len__(self) -> int:
        return len(objective_names())


OBJECTIVES = ObjectiveRegistry()
