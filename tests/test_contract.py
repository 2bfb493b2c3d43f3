"""Contract helpers: content identity (same weights match in any float format, others do not) and strict JSON."""

from __future__ import annotations

import pytest
import torch

from wisparse_export import identity
from wisparse_export.errors import WisparseError


def test_positions_are_in_range_and_spread():
    for shape in [(1, 1), (3, 5), (64, 128), (14336, 4096)]:
        pos = identity.positions(shape)
        assert all(0 <= r < shape[0] and 0 <= c < shape[1] for r, c in pos)
        assert len(pos) == min(identity.SAMPLES, shape[0] * shape[1])
    rows = {r for r, _ in identity.positions((64, 128))}
    assert len(rows) == identity.SAMPLES  # one per band of rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_same_weights_match_across_float_formats(dtype):
    w = torch.randn(96, 80, generator=torch.Generator().manual_seed(0)) * 0.05
    w[0, :] = 1e-9  # below float16's range: flushed, still the same weights
    ref = identity.weight_sample(w)
    assert identity.same_values(ref, identity.weight_sample(w.to(dtype)))
    assert identity.same_values(ref, identity.weight_sample(w.t().contiguous().t()))  # layout does not matter


def test_other_weights_of_the_same_shape_do_not_match():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(96, 80, generator=g) * 0.05
    tuned = w + torch.randn(96, 80, generator=g) * 0.002  # a fine-tune: small changes everywhere
    assert not identity.same_values(identity.weight_sample(w), identity.weight_sample(tuned))
    assert not identity.same_values(identity.weight_sample(w), [float("nan")] * identity.SAMPLES)
    with pytest.raises(WisparseError, match="first b"):
        identity.check_samples({"a": identity.weight_sample(w), "b": identity.weight_sample(w)},
                               {"a": identity.weight_sample(w), "b": identity.weight_sample(tuned)}, "plan")
    with pytest.raises(WisparseError, match="no weight for b"):
        identity.check_samples({"b": [0.0]}, {}, "plan")


def test_digests_are_exact():
    assert identity.digest({"a": [1.0, 2.0]}) == identity.digest({"a": [1.0, 2.0]})
    assert identity.digest({"a": [1.0, 2.0]}) != identity.digest({"a": [1.0, 2.0000001]})
    assert identity.text_digest(["a", "b"]) != identity.text_digest(["ab"])
    assert identity.text_digest(["a", "b"]) != identity.text_digest(["b", "a"])


@pytest.mark.parametrize("text, msg", [
    ('{"a": 1, "a": 2}', "duplicate key 'a'"),
    ('{"a": NaN}', "NaN is not a JSON number"),
    ('[1, 2]', "not a JSON object"),
    ('{"a": ' * 100000 + "1" + "}" * 100000, "nested too deeply"),
    ('{"a": ', "not valid JSON"),
])
def test_strict_json_refuses_in_one_line(text, msg, tmp_path):
    from wisparse_export.files import parse_json, read_json

    with pytest.raises(WisparseError, match=msg) as e:
        parse_json(text, "plan")
    assert "\n" not in str(e.value)
    assert parse_json('{"a": {"b": [1, 2.5]}}', "plan") == {"a": {"b": [1, 2.5]}}
    with pytest.raises(WisparseError, match="manifest not found"):
        read_json(tmp_path / "missing.json", "manifest")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(WisparseError, match="cannot read manifest"):
        read_json(tmp_path / "bin.json", "manifest")
