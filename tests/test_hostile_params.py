"""Hostile params files and `--set` values end in one short line, exit 2, in bounded time and memory.

A "billion laughs" file (YAML anchors and aliases: nine levels of nine are 10^9 values from 400
bytes), a file too large to be params, lists of thousands of entries, strings of 100,000 characters,
integers beyond 64 bits or 4,300 digits: each is refused at validation with the key or file and line,
its value cut to a readable length (sagan_core/params_file.py, errors.shown, config.py's bounds).
"""

from __future__ import annotations

import time
import tracemalloc
import typing

import pytest
from helpers import cli

from pipelines.flow.params_writeback import write_overrides
from pipelines.project.catalog import PRESETS_DIR
from sagan_core.config import Params
from sagan_core.params_file import MAX_PARAMS_BYTES, load_params

pytestmark = pytest.mark.unit

LONGEST_LINE = 300  # a readable error line, whatever the input


def bomb(levels: int) -> str:
    """train.steps: a list whose level i holds 9 aliases of level i-1 (9**levels strings in all)."""
    parts = ["&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    parts += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return f"train:\n  steps: [{', '.join(parts)}]\n"


def refused(r, *fragments: str) -> str:
    """Exit 2 with one short `sagan: error: ` line holding every fragment, no traceback."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr[:2000]
    assert len(lines) == 1 and lines[0].startswith("sagan: error: "), r.stderr[:2000]
    assert len(lines[0]) <= LONGEST_LINE, f"{len(lines[0]):,} characters: {lines[0][:400]}"
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


def measured(args, cwd):
    """cli(args) with the peak of Python's allocations during it and its duration."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        r = cli(args, cwd=cwd)
        return r, tracemalloc.get_traced_memory()[1], time.perf_counter() - start
    finally:
        tracemalloc.stop()


# ---- anchors and aliases --------------------------------------------------------------------------
def test_a_billion_laughs_params_file_is_one_line_in_milliseconds(tmp_path):
    # Five levels first (59,049 values: what sagan before this refusal printed whole, ~0.5 MB on one
    # line): a build that expands aliases fails here, before the nine levels could take gigabytes.
    (tmp_path / "small.yaml").write_text(bomb(5))
    refused(cli(["config", "--params", "small.yaml"], cwd=tmp_path), "small.yaml: line 2: aliases (&/*)")
    (tmp_path / "params.yaml").write_text(bomb(9))  # 10^9 values, ~400 bytes
    assert len(bomb(9)) < 500
    r, peak, seconds = measured(["train"], tmp_path)
    refused(r, "params.yaml: line 2: aliases (&/*) are not allowed in params files")
    assert peak < 5 * 2**20 and seconds < 5, (peak, seconds)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("train:\n  steps: &n 3\n  log_every: *n\n", 2),  # an anchor, even one used once, is refused
        ("model:\n  g_ch: 8\n  d_attn: &r [16]\n", 3),
        ("train:\n  steps: *undefined\n", 2),
    ],
)
def test_any_anchor_or_alias_in_a_file_names_its_line(tmp_path, text, line):
    (tmp_path / "p.yaml").write_text(text)
    refused(cli(["config", "--params", "p.yaml"], cwd=tmp_path), f"p.yaml: line {line}: aliases (&/*)")


def test_aliases_in_a_set_value_are_refused(tmp_path):
    value = bomb(5).split("steps: ", 1)[1].strip()
    r = cli(["config", "--set", f"train.steps={value}"], cwd=tmp_path)
    refused(r, "--set train.steps: aliases (&/*) are not allowed in params")
    # & and * inside a plain string are no anchors: still a string
    r = cli(["config", "--set", "registry.model_name=R&D*2"], cwd=tmp_path)
    assert r.returncode == 0 and "model_name: R&D*2" in r.stdout, r.stderr


def test_a_preset_file_with_aliases_is_refused_before_a_project_is_made(tmp_path):
    (tmp_path / "mine.yaml").write_text(bomb(5))
    r = cli(["init", "proj", "--preset", "mine.yaml"], cwd=tmp_path)
    refused(r, "mine.yaml: line 2: aliases (&/*)")
    assert not (tmp_path / "proj").exists()


def test_presets_and_the_params_files_sagan_writes_hold_no_aliases(tmp_path):
    """Every shipped preset, with overrides written into it the way DVC and the flow write them
    (ruamel round trip, params_writeback.write_overrides), still loads."""
    for preset in sorted(PRESETS_DIR.glob("*.yaml")):
        path = tmp_path / f"{preset.stem}.yaml"
        path.write_text(preset.read_text())
        assert write_overrides(path, ["model.g_attn=[8, 16]", "model.d_attn=[8, 16]", "train.steps=9"])
        params = load_params(path)
        assert (params.model.g_attn, params.model.d_attn, params.train.steps) == ([8, 16], [8, 16], 9)


# ---- size -----------------------------------------------------------------------------------------
def test_a_params_file_over_the_bound_is_refused_unread(tmp_path):
    head = b"train:\n  steps: 3\n"
    exact = head + b" " * (MAX_PARAMS_BYTES - len(head))  # the largest file accepted
    (tmp_path / "exact.yaml").write_bytes(exact)
    assert load_params(tmp_path / "exact.yaml").train.steps == 3
    (tmp_path / "big.yaml").write_bytes(head + b"#" * (3 * MAX_PARAMS_BYTES) + b"\n")
    r, peak, _ = measured(["config", "--params", "big.yaml"], tmp_path)
    refused(r, "--params big.yaml: too large for a params file", f"at most {MAX_PARAMS_BYTES:,} bytes")
    assert peak < MAX_PARAMS_BYTES, peak  # refused from its size, never read whole


# ---- sequences, strings, integers -----------------------------------------------------------------
def _fields(kind) -> list[str]:
    """Every `section.key` of Params whose type is `kind` (alone or with None)."""
    keys = []
    for section, info in Params.model_fields.items():
        for key, field in info.annotation.model_fields.items():
            types = set(typing.get_args(field.annotation)) - {type(None)} or {field.annotation}
            if any(t is kind or typing.get_origin(t) is kind for t in types):
                keys.append(f"{section}.{key}")
    return keys


def test_a_list_of_ten_thousand_attention_resolutions_in_a_file_names_the_bound(tmp_path):
    (tmp_path / "params.yaml").write_text(f"model:\n  g_attn: [{', '.join(['16'] * 10_000)}]\n")
    refused(cli(["config"], cwd=tmp_path), "model.g_attn: expected at most 8 items, got 10,000")


@pytest.mark.parametrize("key", _fields(list))
def test_every_list_key_has_a_bound(tmp_path, key):
    r = cli(["config", "--set", f"{key}=[{', '.join(['16'] * 10_000)}]"], cwd=tmp_path)
    refused(r, f"{key}: expected at most ")


@pytest.mark.parametrize("key", _fields(str))
def test_every_string_key_refuses_100000_characters_in_one_short_line(tmp_path, key):
    value = "https://user:SECRET@host/" + "x" * 100_000  # only the size is said: it may hold a password
    line = refused(cli(["config", "--set", f"{key}={value}"], cwd=tmp_path), f"{key}: ")
    assert "SECRET" not in line and "expected at most 4,096 characters, got 100,025" in line, line


@pytest.mark.parametrize("key", _fields(int))
def test_every_integer_key_has_an_upper_bound_within_64_bits(tmp_path, key):
    refused(cli(["config", "--set", f"{key}={2**64}"], cwd=tmp_path), f"{key}: expected a number <")


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        (f"train:\n  steps: {'1' * 5000}\n", ("line 2: cannot read '111", "(a string of 5,000 characters)")),
        ("train:\n  steps: 2020-13-01\n", ("line 2: cannot read '2020-13-01' (month must be in 1..12)",)),
        (f"train:\n  device: {'y' * 3000}\n", ("train.device: expected auto, cpu", "3,000 characters")),
        (f"train:\n  ? {'k' * 100_000}\n  : 1\n", ("train.'kkk", "100,000 characters)", "unknown key")),
        ('train:\n  "a\\nb": 1\n', ("train.'a\\nb': unknown key",)),
        (f"model:\n  g_attn: [{2**3000}]\n", ("model.g_attn: expected feature-map", "integer of 3,001 bits")),
        (
            f"train:\n  steps: [{', '.join(['lol'] * 20_000)}]\n",
            ("steps: expected an integer", "20,000 items"),
        ),
    ],
    ids=["5000-digits", "bad-date", "long-device", "long-key", "newline-key", "2**3000", "long-list"],
)
def test_a_huge_or_odd_value_is_one_short_line(tmp_path, text, fragments):
    (tmp_path / "p.yaml").write_text(text)
    refused(cli(["config", "--params", "p.yaml"], cwd=tmp_path), *fragments)


def test_a_huge_set_assignment_is_one_short_line(tmp_path):
    refused(cli(["config", "--set", "x" * 100_000], cwd=tmp_path), "expected key.path=value")
    refused(
        cli(["config", "--set", f"train.steps={'9' * 5000}"], cwd=tmp_path), "--set train.steps: cannot read"
    )
