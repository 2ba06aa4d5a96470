"""Adding a codec touches one file: this one registers a codec for a small custom class and nothing else
in persistkit changes, yet bundles (save, load, verify, inspect, trust, version skew), values that embed
the object and state stores all handle it. Unregistered, its bundles fail with the same typed FormatError
as any codec this persistkit does not know."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import persistkit as pk
from persistkit.errors import FormatError, UnsupportedTypeError, UntrustedTypeError
from persistkit.format.codecs import (
    Codec,
    Declined,
    DecodeContext,
    EncodeContext,
    Encoded,
    Payload,
    audit_member,
    codec_for,
    decode_member,
    encode_member,
    get_codec,
    register,
    unregister,
)
from persistkit.format.codecs import base as codec_base
from persistkit.state import StateStore


class Widget:
    """What a third-party library's model might be: a class persistkit has never heard of."""

    def __init__(self, size: int, label: str) -> None:
        self.size, self.label = size, label

    def __eq__(self, other: object) -> bool:
        return type(other) is Widget and (other.size, other.label) == (self.size, self.label)

    __hash__ = None  # type: ignore[assignment]


WIDGET_TYPE = f"{Widget.__module__}.{Widget.__qualname__}"


class WidgetCodec(Codec):
    name = "widget"
    packages = ("msgpack",)  # a distribution no built-in codec depends on
    constructs_types = True
    embeds_in_values = True

    def handles(self, obj: object) -> bool:
        return codec_base.type_name(obj) == WIDGET_TYPE

    def encode(self, obj: object, ctx: EncodeContext) -> Encoded:
        assert isinstance(obj, Widget)
        if obj.size < 0:
            raise Declined(f"a widget of negative size {obj.size}")
        payload = json.dumps({"size": obj.size, "label": obj.label}).encode()
        return Encoded(self.name, payload, info={"class": WIDGET_TYPE, "size": obj.size})

    def _fields(self, payload: Payload, ctx: DecodeContext) -> dict[str, object]:
        try:
            doc = json.loads(bytes(payload))
        except ValueError as err:
            raise FormatError(f"{ctx.source}: not a widget ({err}).", member=ctx.source) from err
        if not isinstance(doc, dict) or type(doc.get("size")) is not int or type(doc.get("label")) is not str:
            raise FormatError(f"{ctx.source}: the widget lacks size or label.", member=ctx.source)
        return doc

    def decode(self, payload: Payload, ctx: DecodeContext) -> object:
        doc = self._fields(payload, ctx)
        return Widget(doc["size"], doc["label"])  # type: ignore[arg-type]

    def audit(self, payload: Payload, ctx: DecodeContext) -> list[str]:
        self._fields(payload, ctx)
        return [WIDGET_TYPE]


class NeedsMissingLibrary(Codec):
    name = "needs-missing"
    packages = ("persistkit-no-such-library",)

    def handles(self, obj: object) -> bool:
        return type(obj) is complex

    def encode(self, obj: object, ctx: EncodeContext) -> Encoded:
        import persistkit_no_such_library  # noqa: F401

        raise AssertionError("unreachable")


@pytest.fixture
def widget_codec():
    codec = register(WidgetCodec())
    try:
        yield codec
    finally:
        unregister("widget")


MODELS = {
    "w": Widget(3, "alpha"),
    "q": np.arange(4.0),
    "mixed": {"inner": Widget(1, "beta"), "n": 2},
}


def check_models(loaded) -> None:
    assert loaded["w"] == MODELS["w"]
    np.testing.assert_array_equal(loaded["q"], MODELS["q"])
    assert loaded["mixed"] == MODELS["mixed"]


def test_the_registry_chooses_and_round_trips_the_registered_codec(widget_codec):
    assert get_codec("widget") is widget_codec
    assert codec_for(Widget(1, "x")) == "widget"
    encoded = encode_member(Widget(2, "y"), EncodeContext(name="w"))
    assert encoded.codec == "widget" and encoded.info == {"class": WIDGET_TYPE, "size": 2}
    assert decode_member("widget", encoded.payload) == Widget(2, "y")
    assert audit_member("widget", encoded.payload) == [WIDGET_TYPE]
    # Built-in codecs still choose as before.
    assert codec_for(np.ones(2)) == "numpy" and codec_for({"a": 1}) == "tree"


def test_an_encrypted_bundle_saves_loads_verifies_and_inspects(tmp_path, widget_codec):
    path = pk.save_bundle(tmp_path / "w.models", MODELS)
    check_models(pk.load_bundle(path))

    manifest = pk.inspect(path)
    assert manifest.member("w").codec == "widget"
    assert manifest.member("w").info == {"class": WIDGET_TYPE, "size": 3}
    assert manifest.member("mixed").codec == "tree"
    assert manifest.environment["msgpack"] is not None  # the codec's packages are recorded

    report = pk.verify(path)
    types = {m.name: m.types for m in report.members}
    assert types["w"] == (WIDGET_TYPE,) and types["mixed"] == (WIDGET_TYPE,) and types["q"] == ()


def test_an_unencrypted_bundle_asks_for_trust_because_the_codec_constructs_types(tmp_path, widget_codec):
    path = pk.save_bundle(tmp_path / "plain.models", MODELS, encrypt=False)
    with pytest.raises(UntrustedTypeError) as info:
        pk.load_bundle(path)
    assert info.value.types == [WIDGET_TYPE] and info.value.member == "w"
    assert "trusted=True" in str(info.value) and "plain.models" in str(info.value)
    with pytest.raises(UntrustedTypeError) as info:
        pk.load_bundle(path, members=["mixed"])  # embedded in a value: the same rule
    assert info.value.member == "mixed"
    check_models(pk.load_bundle(path, trusted=True))


def test_version_skew_names_the_codecs_packages(tmp_path, widget_codec, monkeypatch):
    import persistkit.bundle.provenance as provenance

    path = pk.save_bundle(tmp_path / "w.models", {"w": Widget(1, "x")})
    saved = pk.inspect(path).environment["msgpack"]
    real = provenance.environment()
    monkeypatch.setattr(provenance, "environment", lambda: {**real, "msgpack": "0.0.1"})
    with pytest.warns(pk.VersionSkewWarning, match=rf"msgpack {saved}.*msgpack 0\.0\.1"):
        assert pk.load_bundle(path)["w"] == Widget(1, "x")
    # A bundle without widget members does not care about msgpack.
    other = pk.save_bundle(tmp_path / "q.models", {"q": np.ones(2)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pk.load_bundle(other)


def test_unknown_after_unregistering_then_readable_again(tmp_path):
    """Fail (codec gone), recover (registered again), fail again: always the same typed error."""
    register(WidgetCodec())
    try:
        path = pk.save_bundle(tmp_path / "w.models", MODELS)
    finally:
        unregister("widget")
    for attempt in range(2):
        with pytest.raises(FormatError) as info:
            pk.load_bundle(path)
        message = str(info.value)
        assert info.value.member == "w" and "w.models" in message
        assert "uses codec 'widget', which this persistkit does not know" in message
        assert "upgrade" in message and "never falls back to pickle" in message
        with pytest.raises(FormatError, match="uses codec 'widget'"):
            pk.verify(path)
        assert pk.inspect(path).member("w").codec == "widget"  # inspect needs no codec
        if attempt == 0:
            register(WidgetCodec())
            try:
                check_models(pk.load_bundle(path))
            finally:
                unregister("widget")
    with pytest.raises(FormatError, match=r"unknown member codec 'widget'.*Upgrade persistkit") as err:
        decode_member("widget", b"{}")
    assert err.value.field == "codec"


def test_a_state_store_embeds_the_object_through_the_codec(tmp_path, widget_codec):
    class Holder:
        def __init__(self) -> None:
            self.widget = Widget(0, "empty")

        def state_dict(self):
            return {"widget": self.widget}

        def load_state_dict(self, state):
            self.widget = state["widget"]

    directory = tmp_path / "store"
    with StateStore(directory, autosave_every=0) as store:
        holder = Holder()
        store.register("holder", holder)
        store.load()
        holder.widget = Widget(7, "saved")
        store.save()
    with StateStore(directory, autosave_every=0) as store:
        again = Holder()
        store.register("holder", again)
        assert store.load()["holder"].status == "loaded"
        assert again.widget == Widget(7, "saved")


def test_a_declined_object_falls_through_and_is_refused_with_the_reason(tmp_path, widget_codec):
    with pytest.raises(
        UnsupportedTypeError, match=r"bad: no codec can store .*Widget \(a widget of negative"
    ):
        encode_member(Widget(-1, "x"), EncodeContext(name="bad"))
    with pytest.raises(UnsupportedTypeError, match="bad"):
        pk.save_bundle(tmp_path / "x.models", {"bad": Widget(-1, "x")})
    assert list(tmp_path.iterdir()) == []  # nothing half-made: no bundle, no key
    path = pk.save_bundle(tmp_path / "x.models", {"good": Widget(1, "x")})  # the next save is unaffected
    assert pk.load_bundle(path)["good"] == Widget(1, "x")


def test_damaged_payloads_are_typed_errors_naming_the_source(widget_codec):
    ctx = DecodeContext(source="b.models:w")
    for damaged in (b"{", b"[]", b'{"size": "3", "label": "x"}'):
        with pytest.raises(FormatError, match=r"b\.models:w"):
            decode_member("widget", damaged, ctx)
        with pytest.raises(FormatError, match=r"b\.models:w"):
            audit_member("widget", damaged, ctx)


def test_a_missing_library_says_what_to_install(tmp_path):
    register(NeedsMissingLibrary())
    try:
        with pytest.raises(ModuleNotFoundError) as info:
            pk.save_bundle(tmp_path / "c.models", {"z": 1j})
        message = str(info.value)
        assert "'z'" in message or "z:" in message
        assert "persistkit_no_such_library" in message and "pip install persistkit-no-such-library" in message
        assert list(tmp_path.iterdir()) == []
    finally:
        unregister("needs-missing")
    assert codec_for(1j) == "tree"  # gone again: complex numbers are tree values


@pytest.mark.parametrize(
    ("codec", "error", "match"),
    [
        (WidgetCodec(), None, None),
        (type("Taken", (WidgetCodec,), {"name": "sklearn"})(), ValueError, "already registered"),
        (type("Bad", (WidgetCodec,), {"name": "Has Space"})(), ValueError, "not valid"),
        (type("Empty", (WidgetCodec,), {"name": ""})(), ValueError, "not valid"),
        (object(), TypeError, "takes a persistkit.format.codecs.Codec"),
        (type("Loose", (WidgetCodec,), {"name": "loose", "packages": "msgpack"})(), TypeError, "tuple"),
    ],
)
def test_register_refuses_names_that_would_be_ambiguous_on_disk(widget_codec, codec, error, match):
    if error is None:
        with pytest.raises(ValueError, match="'widget' is already registered"):
            register(codec)
    else:
        with pytest.raises(error, match=match):
            register(codec)
    assert get_codec("sklearn").name == "sklearn" and get_codec("widget") is widget_codec
    with pytest.raises(KeyError, match="no third-party codec named 'sklearn'"):
        unregister("sklearn")  # built-ins stay


def test_a_value_embedding_an_unregistered_codec_is_a_typed_error_naming_the_member(tmp_path):
    register(WidgetCodec())
    try:
        sealed = pk.save_bundle(tmp_path / "sealed.models", {"mixed": MODELS["mixed"]})
        plain = pk.save_bundle(tmp_path / "plain.models", {"mixed": MODELS["mixed"]}, encrypt=False)
    finally:
        unregister("widget")
    assert pk.inspect(sealed).member("mixed").codec == "tree"  # the member's own codec is known
    for path, kw in ((sealed, {}), (plain, {"trusted": True}), (plain, {})):
        with pytest.raises(FormatError, match=r"unknown member codec 'widget'.*Upgrade persistkit") as info:
            pk.load_bundle(path, **kw)
        assert info.value.member == "mixed" and info.value.path == str(path)
        assert f"{path}:mixed: unknown member codec" in str(info.value)
    for path in (sealed, plain):
        with pytest.raises(FormatError, match="unknown member codec 'widget'") as info:
            pk.verify(path)
        assert info.value.member == "mixed" and info.value.path == str(path)


def test_a_state_store_refuses_an_unregistered_codec_without_falling_back_or_quarantining(tmp_path):
    """An intact checkpoint that needs a codec this program lacks is not damage: loading must not fall
    back to an older checkpoint (rolling back acknowledged data) nor quarantine the newer ones."""
    from persistkit.errors import NewerFormatError

    class Holder:
        def __init__(self) -> None:
            self.widget: object = None

        def state_dict(self):
            return {"widget": self.widget}

        def load_state_dict(self, state):
            self.widget = state["widget"]

    def open_store():
        store = StateStore(directory, autosave_every=0)
        holder = Holder()
        store.register("holder", holder)
        return store, holder

    directory = tmp_path / "store"
    register(WidgetCodec())
    try:
        store, holder = open_store()
        with store:
            store.load()
            holder.widget = None
            store.save()  # an older checkpoint a fallback could pick
            holder.widget = Widget(7, "newest")
            store.save()
    finally:
        unregister("widget")
    for _ in range(2):  # fails, recovers when registered, fails again once unregistered
        before = sorted(p.name for p in directory.iterdir())
        store, holder = open_store()
        with pytest.raises(NewerFormatError, match="widget") as caught:
            store.load()
        store.close()
        assert isinstance(caught.value, FormatError) and "register the codec" in str(caught.value)
        assert sorted(p.name for p in directory.iterdir()) == before  # nothing quarantined or retired
        register(WidgetCodec())
        try:
            store, holder = open_store()
            with store:
                assert store.load()["holder"].status == "loaded"
                assert holder.widget == Widget(7, "newest")
        finally:
            unregister("widget")
