"""stable-baselines3 models as data, with no cloudpickle anywhere.

Size: over 500 lines because SB3's load sequence, replayed as data, is one decode path.

SB3's own ``save`` writes a zip whose ``data`` member is JSON with
cloudpickled fields, so loading one runs code from the file. This codec
stores the same information as data and rebuilds the model the way
``BaseAlgorithm.load`` does (construct, restore attributes, ``_setup_model``,
``set_parameters``), so the model is ready to ``learn()`` or ``predict()``.

The payload is a tree value::

    {"format": 1,
     "algorithm": "stable_baselines3.ppo.ppo.PPO",
     "data": <tree bytes: the attributes SB3 itself saves, see below>,
     "params": [<tree>, <safetensors>],     # policy and optimizer state dicts
     "variables": [<tree>, <safetensors>],  # torch variables such as SAC's log_ent_coef
     "replay_buffer": None | <tree bytes>,  # only with save_replay_buffer=True
     "versions": {...}}

``data`` holds the attributes SB3 puts into its ``data`` member. Values that
are not plain data are embedded as tagged records, never as code:

* classes (policy class, ``activation_fn``, optimizer class, feature
  extractor, buffer classes) as qualified names. Loading imports only names
  on the allowlists below or in the caller's ``trusted=``;
* schedules: ``FloatSchedule``, ``ConstantSchedule`` and ``LinearSchedule``
  (learning rate, clip range, exploration) as their parameters. A Python
  function as a schedule (``learning_rate=lambda p: 3e-4 * p``; SB3 keeps it
  through cloudpickle) is *tabulated*: evaluated at 1,001 evenly spaced values
  of ``progress_remaining`` from 1.0 to 0.0 and stored as those numbers. It
  loads as a ``TabulatedSchedule``, the piecewise-linear interpolation of the
  table (exact for linear schedules; within 1.25e-7 x max|f''| otherwise;
  clamped outside [0, 1]). The member's ``info["tabulated_schedules"]``
  (``pk.inspect``) names the attributes stored this way; to get the function
  itself back, pass it at load as SB3 does:
  ``load_bundle(path, custom_objects={"learning_rate": fn})``;
* gymnasium spaces (Box, Discrete, MultiDiscrete, MultiBinary, Dict, Tuple);
* ``TrainFreq`` and Normal / Ornstein-Uhlenbeck action noise.

Anything else (a function elsewhere, a schedule that does not return a finite
number, a custom space) fails at save time with ``UnsupportedTypeError``
naming the attribute.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from persistkit.errors import FormatError, UnsupportedTypeError, UntrustedTypeError
from persistkit.format import tree
from persistkit.format.codecs.base import (
    Codec,
    DecodeContext,
    EncodeContext,
    Encoded,
    Payload,
    derives_from,
    type_family,
)
from persistkit.format.codecs.torch import join_tensors, split_tensors

__all__ = [
    "ALGORITHMS",
    "ALLOWED_CLASSES",
    "CODEC",
    "SB3Codec",
    "SCHEDULE_POINTS",
    "TabulatedSchedule",
    "audit",
    "decode",
    "encode",
    "info",
    "is_sb3_model",
]

FORMAT = 1

ALGORITHMS: frozenset[str] = frozenset(
    f"stable_baselines3.{m}.{m}.{m.upper()}" for m in ("a2c", "ppo", "dqn", "sac", "td3", "ddpg")
)

ALLOWED_CLASSES: frozenset[str] = frozenset(
    (
        *ALGORITHMS,
        # policies (the classes behind "MlpPolicy", "CnnPolicy", "MultiInputPolicy")
        "stable_baselines3.common.policies.ActorCriticPolicy",
        "stable_baselines3.common.policies.ActorCriticCnnPolicy",
        "stable_baselines3.common.policies.MultiInputActorCriticPolicy",
        *(
            f"stable_baselines3.{algo}.policies.{name}"
            for algo, names in (
                ("dqn", ("DQNPolicy", "CnnPolicy", "MultiInputPolicy")),
                ("sac", ("SACPolicy", "CnnPolicy", "MultiInputPolicy")),
                ("td3", ("TD3Policy", "CnnPolicy", "MultiInputPolicy")),
            )
            for name in names
        ),
        # feature extractors and buffers
        "stable_baselines3.common.torch_layers.FlattenExtractor",
        "stable_baselines3.common.torch_layers.NatureCNN",
        "stable_baselines3.common.torch_layers.CombinedExtractor",
        "stable_baselines3.common.buffers.RolloutBuffer",
        "stable_baselines3.common.buffers.DictRolloutBuffer",
        "stable_baselines3.common.buffers.ReplayBuffer",
        "stable_baselines3.common.buffers.DictReplayBuffer",
        "stable_baselines3.common.sb2_compat.rmsprop_tf_like.RMSpropTFLike",
        # activation functions
        *(
            f"torch.nn.modules.activation.{name}"
            for name in (
                "ReLU", "Tanh", "ELU", "LeakyReLU", "SiLU", "GELU", "Sigmoid", "Softplus", "Mish", "Hardswish",
                "Hardtanh", "SELU", "CELU", "ReLU6", "Softsign", "Tanhshrink", "LogSigmoid", "PReLU",
            )
        ),
        "torch.nn.modules.linear.Identity",
        # optimizers
        *(
            f"torch.optim.{module}.{name}"
            for module, name in (
                ("adam", "Adam"), ("adamw", "AdamW"), ("rmsprop", "RMSprop"), ("sgd", "SGD"),
                ("adagrad", "Adagrad"), ("adadelta", "Adadelta"), ("adamax", "Adamax"), ("nadam", "NAdam"),
                ("radam", "RAdam"),
            )
        ),
    )
)  # fmt: skip

_REPLAY_BUFFERS = frozenset(
    {"stable_baselines3.common.buffers.ReplayBuffer", "stable_baselines3.common.buffers.DictReplayBuffer"}
)
_BUFFER_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")
# Recomputed by _setup_model from the attributes we do store, or references to modules.
_DERIVED = frozenset({"lr_schedule", "batch_norm_stats", "batch_norm_stats_target"})

_CLASS, _SCHEDULE, _SPACE, _TRAIN_FREQ, _NOISE = (
    "sb3.class",
    "sb3.schedule",
    "sb3.space",
    "sb3.train_freq",
    "sb3.noise",
)


# Attributes SB3 evaluates as schedules of progress_remaining: a function there is tabulated.
SCHEDULE_ATTRS = frozenset({"learning_rate", "clip_range", "clip_range_vf", "exploration_schedule"})
SCHEDULE_POINTS = 1001


class TabulatedSchedule:
    """A schedule stored as its values at ``len(values)`` evenly spaced ``progress_remaining`` points,
    from 1.0 down to 0.0; called, it interpolates linearly between them (clamped outside [0, 1])."""

    def __init__(self, values: Any, source: str = "") -> None:
        import numpy as np

        table = np.array(values, dtype=np.float64)
        if table.ndim != 1 or table.size < 2 or not np.isfinite(table).all():
            raise ValueError("a tabulated schedule needs at least 2 finite values")
        self.values = table
        self.source = source  # the qualified name of the function it was tabulated from
        self._xp = np.linspace(0.0, 1.0, table.size)
        self._fp = table[::-1].copy()

    @classmethod
    def of(cls, fn: Callable[[float], Any], points: int = SCHEDULE_POINTS) -> TabulatedSchedule:
        import numpy as np

        grid = np.linspace(1.0, 0.0, points)
        name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"
        return cls([float(fn(float(p))) for p in grid], name)

    def __call__(self, progress_remaining: float) -> float:
        import numpy as np

        return float(np.interp(progress_remaining, self._xp, self._fp))

    def __repr__(self) -> str:
        return f"TabulatedSchedule({self.source or 'a function'}, {self.values.size} points)"


def _is_function(obj: object) -> bool:
    import functools
    import types

    return isinstance(
        obj, types.FunctionType | types.BuiltinFunctionType | types.MethodType | functools.partial
    )


def is_sb3_model(obj: object) -> bool:
    if not type(obj).__module__.startswith("stable_baselines3."):
        return False
    from stable_baselines3.common.base_class import BaseAlgorithm

    return isinstance(obj, BaseAlgorithm)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# -- encoding ---------------------------------------------------------------------


def _schedule_hook(obj: object) -> tuple[str, bytes] | None:
    """``_data_hook`` for schedule attributes: a Python function there is tabulated."""
    if _is_function(obj):
        try:
            table = TabulatedSchedule.of(obj)  # type: ignore[arg-type]
        except Exception:  # any failure: reported as "cannot be stored", naming the attribute
            return None
        return _SCHEDULE, tree.encode(["tabulated", table.values, table.source])
    return _data_hook(obj, schedule=True)


def _data_hook(obj: object, *, schedule: bool = False) -> tuple[str, bytes] | None:
    """Turn the non-data values SB3 keeps in its attributes into tagged records."""
    import gymnasium.spaces as spaces
    import numpy as np
    from stable_baselines3.common import noise, utils
    from stable_baselines3.common.type_aliases import TrainFreq

    if isinstance(obj, type):
        name = _qualname(obj)
        if "<locals>" in name or "." not in name:
            return None  # cannot be imported by name on load; reported with its attribute path
        return _CLASS, name.encode()
    if isinstance(obj, TabulatedSchedule):
        return _SCHEDULE, tree.encode(["tabulated", obj.values, obj.source])
    if isinstance(obj, utils.FloatSchedule):
        inner = _schedule_hook if schedule else _data_hook
        return _SCHEDULE, tree.encode(["float", obj.value_schedule], model_hook=inner)
    if isinstance(obj, utils.ConstantSchedule):
        return _SCHEDULE, tree.encode(["constant", obj.val], model_hook=_data_hook)
    if isinstance(obj, utils.LinearSchedule):
        return _SCHEDULE, tree.encode(["linear", obj.start, obj.end, obj.end_fraction], model_hook=_data_hook)
    if isinstance(obj, TrainFreq):
        return _TRAIN_FREQ, tree.encode([obj.frequency, obj.unit.value])
    if isinstance(obj, noise.OrnsteinUhlenbeckActionNoise):
        ou = ["ou", obj._mu, obj._sigma, obj._theta, obj._dt, obj.initial_noise, obj.noise_prev]
        return _NOISE, tree.encode([*ou, np.dtype(obj._dtype).str])
    if isinstance(obj, noise.NormalActionNoise):
        return _NOISE, tree.encode(["normal", obj._mu, obj._sigma, np.dtype(obj._dtype).str])
    if isinstance(obj, spaces.Space):
        spec = _space_spec(obj)
        return None if spec is None else (_SPACE, tree.encode(spec, model_hook=_data_hook))
    return None


def _space_spec(space: Any) -> list[Any] | None:
    import gymnasium.spaces as spaces

    t = type(space)
    if t is spaces.Box:
        return ["Box", space.low, space.high, space.dtype.str]
    if t is spaces.Discrete:
        return ["Discrete", space.n, space.start, space.dtype.str]
    if t is spaces.MultiDiscrete:
        return ["MultiDiscrete", space.nvec, space.start, space.dtype.str]
    if t is spaces.MultiBinary:
        return ["MultiBinary", space.n]
    if t is spaces.Dict:
        return ["Dict", [[k, v] for k, v in space.spaces.items()]]
    if t is spaces.Tuple:
        return ["Tuple", list(space.spaces)]
    return None  # other spaces: reported with the attribute path


def _data(model: Any) -> dict[str, Any]:
    """The attributes SB3's own save() would put into its ``data`` member."""
    data = dict(model.__dict__)
    exclude = set(model._excluded_save_params()) | _DERIVED
    state_dicts, variables = model._get_torch_save_params()
    exclude |= {name.split(".")[0] for name in (*state_dicts, *variables)}
    for name in exclude:
        data.pop(name, None)
    kwargs = data.get("policy_kwargs")
    if isinstance(kwargs, dict) and "device" in kwargs:
        data["policy_kwargs"] = {k: v for k, v in kwargs.items() if k != "device"}
    return data


def _encode_data(data: Mapping[str, Any], member: str) -> bytes:
    encoded: dict[str, bytes] = {}
    for key, value in data.items():
        try:
            hook = _schedule_hook if key in SCHEDULE_ATTRS else _data_hook
            encoded[key] = tree.encode(value, root=key, model_hook=hook)
        except UnsupportedTypeError as err:
            where = err.field or key
            what = err.message.split(" cannot be stored")[0].removeprefix(f"{where}: ")
            hint = (
                " A function is stored only as a schedule (learning_rate, clip_range, clip_range_vf,"
                " exploration_schedule) that returns a finite number for every progress_remaining in [0, 1],"
                " tabulated; elsewhere use data (a float, or stable_baselines3.common.utils.ConstantSchedule /"
                " LinearSchedule, which persistkit.sb3.linear_schedule builds): a Python function cannot be"
                " stored without pickle."
                if callable(value) and not isinstance(value, type)
                else " persistkit stores classes defined at module level, schedules (constant, linear), the "
                "common gymnasium spaces, TrainFreq and Normal/Ornstein-Uhlenbeck noise as data."
            )
            raise UnsupportedTypeError(
                f"SB3 model {member!r}: attribute {where} holds {what}, which cannot be stored as data.{hint}",
                member=member,
                field=where,
            ) from err
    return tree.encode(encoded)


def _replay_buffer(model: Any, member: str) -> bytes | None:
    buffer = getattr(model, "replay_buffer", None)
    if buffer is None:
        return None
    name = _qualname(type(buffer))
    if name not in _REPLAY_BUFFERS:
        raise UnsupportedTypeError(
            f"SB3 model {member!r}: replay buffer {name} cannot be stored as arrays (supported: ReplayBuffer, "
            "DictReplayBuffer). Save without save_replay_buffer=True.",
            member=member,
            field="replay_buffer",
        )
    used = buffer.buffer_size if buffer.full else buffer.pos
    arrays: dict[str, Any] = {}
    for attr in _BUFFER_ARRAYS:
        value = getattr(buffer, attr, None)
        if value is None:
            arrays[attr] = None
        elif isinstance(value, dict):
            arrays[attr] = {k: v[:used].copy() for k, v in value.items()}
        else:
            arrays[attr] = value[:used].copy()
    return tree.encode(
        {
            "class": name,
            "pos": buffer.pos,
            "full": buffer.full,
            "buffer_size": buffer.buffer_size,
            "arrays": arrays,
        }
    )


def encode(obj: object, *, save_replay_buffer: bool = False, member: str = "model") -> bytes:
    import stable_baselines3

    model: Any = obj
    algorithm = _qualname(type(model))
    _, variable_names = model._get_torch_save_params()
    params = model.get_parameters()
    variables = {name: _getattr_path(model, name) for name in variable_names}
    payload = {
        "format": FORMAT,
        "algorithm": algorithm,
        "data": _encode_data(_data(model), member),
        "params": list(split_tensors(params, root=f"{member}.params")),
        "variables": list(split_tensors(variables, root=f"{member}.variables")),
        "replay_buffer": _replay_buffer(model, member) if save_replay_buffer else None,
        "versions": {"stable_baselines3": stable_baselines3.__version__},
    }
    return tree.encode(payload)


def info(obj: object) -> dict[str, object]:
    from stable_baselines3.common.utils import FloatSchedule

    model: Any = obj
    tabulated = []
    for key in sorted(SCHEDULE_ATTRS):
        value = getattr(model, key, None)
        if isinstance(value, FloatSchedule):
            value = value.value_schedule
        if _is_function(value) or isinstance(value, TabulatedSchedule):
            tabulated.append(key)
    extra: dict[str, object] = {"tabulated_schedules": tabulated} if tabulated else {}
    return {
        **extra,
        "algorithm": type(model).__name__,
        "policy": model.policy_class.__name__,
        "num_timesteps": int(model.num_timesteps),
        "observation_space": repr(model.observation_space),
        "action_space": repr(model.action_space),
    }


def _getattr_path(obj: object, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


# -- decoding ---------------------------------------------------------------------


def _outer(payload: bytes | bytearray | memoryview, source: str) -> dict[str, Any]:
    if bytes(memoryview(payload)[:4]) == b"PK\x03\x04":
        raise FormatError(
            f"{source} is a stable-baselines3 zip, not a persistkit SB3 member. persistkit never loads those: "
            "their data member is cloudpickle, so loading one runs code from the file. Load it with SB3 only if "
            "you trust it, then re-save it with persistkit.save_bundle.",
            member=source,
        )
    outer = tree.decode(payload, source=source)
    ok = (
        isinstance(outer, dict)
        and type(outer.get("algorithm")) is str
        and type(outer.get("data")) is bytes
        and all(
            isinstance(outer.get(k), list) and len(outer[k]) == 2 and all(type(x) is bytes for x in outer[k])
            for k in ("params", "variables")
        )
        and (outer.get("replay_buffer") is None or type(outer["replay_buffer"]) is bytes)
    )
    if not ok or not isinstance(outer, dict) or outer.get("format") != FORMAT:
        raise FormatError(
            f"{source} is not a persistkit SB3 member (format {FORMAT}). It was written by a newer persistkit, "
            "or it is an SB3 zip, which persistkit never loads because its data member is cloudpickle; "
            "re-save the model with persistkit.save_bundle.",
            member=source,
        )
    assert isinstance(outer, dict)
    return outer


def _raw_data(outer: Mapping[str, Any], source: str) -> dict[str, bytes]:
    data = tree.decode(outer["data"], source=source)
    if not isinstance(data, dict) or not all(type(k) is str and type(v) is bytes for k, v in data.items()):
        raise FormatError(f"{source}: the SB3 attribute table is malformed.", member=source)
    for key in data:
        if not key.isidentifier() or key.startswith("__"):
            raise FormatError(f"{source}: refusing SB3 attribute name {key!r}.", member=source)
    return data


def audit(payload: bytes | bytearray | memoryview, *, source: str = "SB3 member") -> list[str]:
    """The classes loading this member would import (algorithm first); nothing is imported."""
    outer = _outer(payload, source)
    names: list[str] = [outer["algorithm"]]

    def collect(codec: str, inner: bytes) -> object:
        if codec == _CLASS:
            names.append(inner.decode("utf-8", "replace"))
        elif codec in (_SCHEDULE, _SPACE):
            tree.decode(inner, model_resolver=collect, source=source)
        return None

    for value in _raw_data(outer, source).values():
        tree.decode(value, model_resolver=collect, source=source)
    return sorted(set(names), key=names.index)


def _check_trust(names: Sequence[str], trusted: Sequence[str] | bool, source: str) -> None:
    extra = set() if isinstance(trusted, bool) else set(trusted)
    untrusted = [n for n in names if n not in ALLOWED_CLASSES and n not in extra]
    if untrusted:
        raise UntrustedTypeError(
            f"{source} names classes outside persistkit's SB3 allowlist: {', '.join(untrusted)}. Importing them "
            f"could run code. If you trust where the bundle came from, pass trusted={untrusted!r}.",
            types=untrusted,
            member=source,
        )


def _import(name: str, source: str) -> Any:
    module_name, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise FormatError(
            f"{source}: class {name} is not available in this environment ({err}). Install the library that "
            "defines it, in the version recorded in the bundle manifest.",
            member=source,
        ) from err


def _resolver(source: str) -> Callable[[str, bytes], object]:
    def resolve(codec: str, inner: bytes) -> object:
        if codec == _CLASS:
            return _import(inner.decode("utf-8"), source)
        spec = tree.decode(inner, model_resolver=resolve, source=source)
        if not isinstance(spec, list) or not spec:
            raise FormatError(f"{source}: malformed {codec} record.", member=source)
        if codec == _SCHEDULE:
            return _schedule(spec, source)
        if codec == _SPACE:
            return _space(spec, source)
        if codec == _TRAIN_FREQ:
            from stable_baselines3.common.type_aliases import TrainFreq, TrainFrequencyUnit

            return TrainFreq(spec[0], TrainFrequencyUnit(spec[1]))
        if codec == _NOISE:
            return _noise(spec)
        raise FormatError(f"{source}: unknown SB3 record {codec!r}; upgrade persistkit.", member=source)

    return resolve


def _schedule(spec: list[Any], source: str) -> object:
    from stable_baselines3.common import utils

    kind = spec[0]
    if kind == "float" and len(spec) == 2:
        return utils.FloatSchedule(spec[1])
    if kind == "constant" and len(spec) == 2:
        return utils.ConstantSchedule(spec[1])
    if kind == "linear" and len(spec) == 4:
        return utils.LinearSchedule(spec[1], spec[2], spec[3])
    if kind == "tabulated" and len(spec) == 3:
        try:
            return TabulatedSchedule(spec[1], str(spec[2]))
        except (TypeError, ValueError) as err:
            raise FormatError(f"{source}: malformed tabulated schedule ({err}).", member=source) from err
    raise FormatError(f"{source}: unknown schedule {kind!r}; upgrade persistkit.", member=source)


def _space(spec: list[Any], source: str) -> object:
    import gymnasium.spaces as spaces
    import numpy as np

    kind, args = spec[0], spec[1:]
    try:
        if kind == "Box":
            low, high, dtype = args
            return spaces.Box(low=low, high=high, shape=low.shape, dtype=np.dtype(dtype))
        if kind == "Discrete":
            n, start, dtype = args
            return spaces.Discrete(n, start=start, dtype=np.dtype(dtype))
        if kind == "MultiDiscrete":
            nvec, start, dtype = args
            return spaces.MultiDiscrete(nvec, start=start, dtype=np.dtype(dtype))
        if kind == "MultiBinary":
            return spaces.MultiBinary(args[0])
        if kind == "Dict":
            return spaces.Dict(dict(args[0]))
        if kind == "Tuple":
            return spaces.Tuple(tuple(args[0]))
    except (TypeError, ValueError, AssertionError) as err:
        raise FormatError(f"{source}: malformed {kind} space ({err}).", member=source) from err
    raise FormatError(f"{source}: unknown space {kind!r}; upgrade persistkit.", member=source)


def _noise(spec: list[Any]) -> object:
    import numpy as np
    from stable_baselines3.common import noise

    if spec[0] == "normal":
        _, mu, sigma, dtype = spec
        return noise.NormalActionNoise(mean=mu, sigma=sigma, dtype=np.dtype(dtype).type)
    _, mu, sigma, theta, dt, initial, prev, dtype = spec
    ou = noise.OrnsteinUhlenbeckActionNoise(
        mean=mu, sigma=sigma, theta=theta, dt=dt, initial_noise=initial, dtype=np.dtype(dtype).type
    )
    ou.noise_prev = prev
    return ou


def decode(
    payload: bytes | bytearray | memoryview,
    *,
    trusted: Sequence[str] | bool = (),
    env: object = None,
    device: str = "cpu",
    source: str = "SB3 member",
    custom_objects: Mapping[str, Any] | None = None,
) -> object:
    """Rebuild the model, ready to ``learn()`` or ``predict()``; ``env`` is attached when given.

    ``custom_objects`` replaces stored attributes before the model is rebuilt,
    as SB3's ``load`` does (``{"learning_rate": fn}`` instead of a table).
    """
    outer = _outer(payload, source)
    _check_trust(audit(payload, source=source), trusted, source)
    algorithm = _import(outer["algorithm"], source)
    resolve = _resolver(source)
    data = {
        k: tree.decode(v, model_resolver=resolve, source=source) for k, v in _raw_data(outer, source).items()
    }
    params = join_tensors(*outer["params"], source=source)
    variables = join_tensors(*outer["variables"], source=source)
    if not isinstance(params, dict) or not isinstance(variables, dict):
        raise FormatError(f"{source}: malformed SB3 parameters.", member=source)
    data.update(custom_objects or {})
    for needed in ("policy_class", "observation_space", "action_space"):
        if needed not in data:
            raise FormatError(f"{source}: the SB3 attributes lack {needed!r}.", member=source)
    try:
        model = _rebuild(algorithm, data, params, variables, env, device, source)
        if outer["replay_buffer"] is not None:
            _restore_buffer(model, outer["replay_buffer"], source)
    except (FormatError, UntrustedTypeError):
        raise
    except Exception as err:  # SB3/torch raise many types when data and code disagree
        raise FormatError(
            f"{source}: stable-baselines3 could not rebuild the model ({type(err).__name__}: {err}). The bundle "
            "may come from another SB3 version (see the manifest's environment) or the env does not match.",
            member=source,
        ) from err
    return model


def _rebuild(
    algorithm: Any,
    data: dict[str, Any],
    params: dict[str, Any],
    variables: dict[str, Any],
    env: object,
    device: str,
    source: str,
) -> Any:
    from stable_baselines3.common.utils import check_for_correct_spaces

    if env is not None:
        env = algorithm._wrap_env(env, data.get("verbose", 0))
        try:
            check_for_correct_spaces(env, data["observation_space"], data["action_space"])  # type: ignore[arg-type]
        except ValueError as err:
            raise FormatError(
                f"{source}: the env passed does not match the one the model was trained on ({err}). Pass an "
                "env with the same observation and action spaces.",
                member=source,
            ) from err
        data["_last_obs"] = None  # force a reset before training, as SB3's load does
        data["n_envs"] = env.num_envs  # type: ignore[attr-defined]
    model = algorithm(policy=data["policy_class"], env=env, device=device, _init_setup_model=False)
    model.__dict__.update(data)
    model._setup_model()
    model.set_parameters(params, exact_match=True, device=device)
    import torch

    for name, value in variables.items():
        target = _getattr_path(model, name)
        with torch.no_grad():
            target.data = value.data.to(target.device)
    return model


def _restore_buffer(model: Any, raw: bytes, source: str) -> None:
    state = tree.decode(raw, source=source)
    buffer = getattr(model, "replay_buffer", None)
    if not isinstance(state, dict) or buffer is None or state.get("class") != _qualname(type(buffer)):
        raise FormatError(f"{source}: the stored replay buffer does not match the model's.", member=source)
    if state["buffer_size"] != buffer.buffer_size:
        raise FormatError(
            f"{source}: the stored replay buffer holds {state['buffer_size']} transitions, the model's "
            f"{buffer.buffer_size}.",
            member=source,
        )
    for attr, value in state["arrays"].items():
        if attr not in _BUFFER_ARRAYS or value is None:
            continue
        target = getattr(buffer, attr)
        pairs = [(target[k], v) for k, v in value.items()] if isinstance(value, dict) else [(target, value)]
        for dst, src in pairs:
            if src.shape[1:] != dst.shape[1:] or len(src) > len(dst):
                raise FormatError(
                    f"{source}: replay buffer array {attr!r} has the wrong shape.", member=source
                )
            dst[: len(src)] = src
    buffer.pos = int(state["pos"])
    buffer.full = bool(state["full"])


class SB3Codec(Codec):
    """stable-baselines3 algorithms (and user subclasses of ``BaseAlgorithm``), rebuilt as SB3's load does."""

    name = "sb3"
    packages = ("stable-baselines3", "torch", "gymnasium")
    extra = "sb3"
    constructs_types = True
    embeds_in_values = True

    def handles(self, obj: object) -> bool:
        if type_family(obj) == "stable_baselines3":
            return is_sb3_model(obj)
        return derives_from(obj, "stable_baselines3.common.base_class.BaseAlgorithm")

    def encode(self, obj: object, ctx: EncodeContext) -> Encoded:
        return Encoded(
            self.name,
            encode(obj, save_replay_buffer=ctx.save_replay_buffer, member=ctx.name),
            info={**info(obj), "replay_buffer": ctx.save_replay_buffer},
            compressible=False,
        )

    def decode(self, payload: Payload, ctx: DecodeContext) -> object:
        return decode(
            payload,
            trusted=ctx.trusted,
            env=ctx.env,
            device=ctx.device,
            source=ctx.source,
            custom_objects=ctx.custom_objects,
        )

    def audit(self, payload: Payload, ctx: DecodeContext) -> list[str]:
        return audit(payload, source=ctx.source)


CODEC = SB3Codec()
