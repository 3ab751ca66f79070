"""The typed selection config: validation messages, override precedence, hashing, CLI errors."""

from __future__ import annotations

import pytest
import yaml

from flows import cli
from flows.config import ConfigError, SelectionConfig, check_selector, load_config
from tasks.records import errors
from tasks.records.schema import DataSpec, Ladder, ProbeSpec

BASE = {
    "name": "cfg-test",
    "dataset": {"source": "wordnet", "val_size": 16, "test_size": 16, "max_examples": 2000},
    "candidates": ["tiny-llama", "/models/other"],
    "probe": {"epochs": 1, "batch_size": 8, "max_seq_len": 32},
    "ladder": {"first_size": 16, "budget": 64},
    "target_size": 1024,
}


def _write(tmp_path, data, name="config.yaml"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return str(path)


def _with(**changes):
    data = yaml.safe_load(yaml.safe_dump(BASE))  # deep copy
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split("__")
        for part in parents:
            node = node[part]
        node[last] = value
    return data


def test_valid_config_loads_with_defaults(tmp_path):
    cfg = load_config(_write(tmp_path, BASE))
    assert [c.name for c in cfg.candidates] == ["tiny-llama", "/models/other"]
    assert all(c.trust_remote_code is False for c in cfg.candidates)
    assert cfg.ladder.sizes() == [16, 32, 64]
    assert cfg.probe.method == "lora" and cfg.probe.lora_r == 8  # defaults kept
    assert cfg.probe.epochs == 1  # YAML over default
    assert cfg.selector == "Lens" and cfg.rank_on == "bits_per_byte"
    # the sections are the typed records the tasks take
    assert isinstance(cfg.dataset, DataSpec) and cfg.dataset.max_examples == 2000
    assert isinstance(cfg.probe, ProbeSpec) and isinstance(cfg.ladder, Ladder)
    assert cfg.trust() == {"tiny-llama": False, "/models/other": False}


def test_config_error_is_the_user_error_of_tasks_errors():
    assert ConfigError is errors.ConfigError  # re-exported by flows.config
    assert issubclass(ConfigError, errors.LensLLMUserError) and issubclass(ConfigError, ValueError)
    assert ConfigError("x").exit_code == 2


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({**BASE, "learning_rate": 0.1}, "learning_rate"),
        (_with(probe__lerning_rate=0.1), "probe.lerning_rate"),
        (_with(dataset__max_exmples=10), "dataset.max_exmples"),
        (_with(registry={"model_name": "m", "margn": 0.1}), "registry.margn"),
        (_with(spectral={"enable": False}), "spectral.enable"),
    ],
)
def test_unknown_key_is_named(tmp_path, data, key):
    with pytest.raises(ConfigError, match=rf"unknown key '{key}'"):
        load_config(_write(tmp_path, data))


def test_the_spectral_section(tmp_path):
    assert load_config(_write(tmp_path, BASE)).spectral.enabled  # on by default
    cfg = load_config(_write(tmp_path, _with(spectral={"enabled": False, "min_tail": 20})))
    assert (cfg.spectral.enabled, cfg.spectral.min_tail) == (False, 20)
    with pytest.raises(ConfigError, match=r"spectral.min_tail: Input should be greater than"):
        load_config(_write(tmp_path, _with(spectral={"min_tail": 1})))


def test_unknown_key_in_a_candidate_entry_is_named(tmp_path):
    data = _with(candidates=["tiny-llama", {"name": "x", "trust_remote": True}])
    with pytest.raises(ConfigError, match=r"unknown key 'candidates\.1\.trust_remote'"):
        load_config(_write(tmp_path, data))


def test_missing_candidates(tmp_path):
    data = {k: v for k, v in BASE.items() if k != "candidates"}
    with pytest.raises(ConfigError, match="missing required key 'candidates'"):
        load_config(_write(tmp_path, data))


def test_single_candidate_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="at least 2 models"):
        load_config(_write(tmp_path, _with(candidates=["tiny-llama"])))


def test_duplicate_candidates(tmp_path):
    data = _with(candidates=["tiny-llama", "b", "tiny-llama"])
    with pytest.raises(ConfigError, match=r"duplicate names \['tiny-llama'\]"):
        load_config(_write(tmp_path, data))


def test_budget_below_first_size(tmp_path):
    data = _with(ladder={"first_size": 64, "budget": 32})
    with pytest.raises(ConfigError, match=r"ladder.budget \(32\) is smaller than.*first_size"):
        load_config(_write(tmp_path, data))


@pytest.mark.parametrize("budget", [48, 96, 100])
def test_budget_not_first_size_times_power_of_two(tmp_path, budget):
    data = _with(ladder={"first_size": 16, "budget": budget}, target_size=4096)
    with pytest.raises(ConfigError, match=r"times a power of two"):
        load_config(_write(tmp_path, data))


@pytest.mark.parametrize(("first", "budget", "sizes"), [(16, 16, [16]), (8, 64, [8, 16, 32, 64])])
def test_ladder_sizes_double_up_to_budget(tmp_path, first, budget, sizes):
    data = _with(ladder={"first_size": first, "budget": budget}, selector="SubTuning")
    assert load_config(_write(tmp_path, data)).ladder.sizes() == sizes


@pytest.mark.parametrize("selector", ["Lens", "AtS", "VanillaFit", "RectifiedFit"])
def test_a_one_size_ladder_is_refused_for_selectors_that_extrapolate(tmp_path, selector):
    """Caught at load time, before any probe is spent (the fit would fail after them)."""
    data = _with(ladder={"first_size": 64, "budget": 64}, selector=selector)
    with pytest.raises(ConfigError, match=rf"selector {selector} needs at least 2 ladder sizes"):
        load_config(_write(tmp_path, data))
    assert load_config(_write(tmp_path, _with(selector=selector))).selector == selector


def test_target_below_budget(tmp_path):
    with pytest.raises(ConfigError, match=r"target_size \(32\) is smaller than ladder.budget"):
        load_config(_write(tmp_path, _with(target_size=32)))


def test_malformed_yaml(tmp_path):
    path = _write(tmp_path, "name: x\ncandidates: [a, b\nladder: {first_size: 16}\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(path)


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(_write(tmp_path, "- a\n- b\n"))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))


@pytest.mark.parametrize(
    ("dotted", "value", "where"),
    [
        ("probe__epochs", "many", "probe.epochs"),
        ("probe__learning_rate", -1.0, "probe.learning_rate"),
        ("ladder__budget", [64], "ladder.budget"),
        ("probe__method", "qlora", "probe.method"),
        ("probe__device", "tpu", "probe.device"),
        ("rank_on", "accuracy", "rank_on"),
        ("dataset__val_size", 0, "dataset.val_size"),
    ],
)
def test_wrong_types_and_values_name_the_field(tmp_path, dotted, value, where):
    with pytest.raises(ConfigError, match=rf"(?m)^  - {where}: "):
        load_config(_write(tmp_path, _with(**{dotted: value})))


def test_all_errors_are_reported_at_once(tmp_path):
    data = _with(probe__epochs="x", probe__bogus=1)
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, data))
    assert "probe.epochs" in str(info.value) and "'probe.bogus'" in str(info.value)


def test_override_precedence_cli_over_yaml_over_default(tmp_path):
    path = _write(tmp_path, _with(probe__epochs=3))
    assert load_config(path).probe.epochs == 3  # YAML over default (2)
    assert load_config(path).probe.batch_size == 8
    cfg = load_config(path, ["probe.epochs=5", "probe.lora_r=4", "tracking.experiment=e2"])
    assert cfg.probe.epochs == 5  # CLI over YAML
    assert cfg.probe.lora_r == 4  # CLI over default
    assert cfg.tracking.experiment == "e2"  # CLI creates a section absent from the YAML
    assert cfg.probe.max_seq_len == 32  # untouched YAML value kept
    # values are parsed as YAML scalars/lists
    cfg = load_config(path, ["probe.target_modules=[q_proj, k_proj]", "registry.enabled=false"])
    assert cfg.probe.target_modules == ("q_proj", "k_proj") and cfg.registry.enabled is False
    # the last override of a key wins
    assert load_config(path, ["probe.epochs=5", "probe.epochs=6"]).probe.epochs == 6


def test_override_is_validated_like_yaml(tmp_path):
    path = _write(tmp_path, BASE)
    with pytest.raises(ConfigError, match="unknown key 'probe.epoch'"):
        load_config(path, ["probe.epoch=3"])
    with pytest.raises(ConfigError, match="ladder.budget"):
        load_config(path, ["ladder.budget=100"])
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        load_config(path, ["probe.epochs"])
    with pytest.raises(ConfigError, match="'target_size' is not a section"):
        load_config(path, ["target_size.x=1"])


def test_resolved_yaml_round_trip(tmp_path):
    cfg = load_config(_write(tmp_path, BASE), ["probe.epochs=4"])
    text = cfg.resolved_yaml()
    again = load_config(_write(tmp_path, text, "resolved.yaml"))
    assert again == cfg
    assert again.config_hash() == cfg.config_hash()
    # every default is written out, so the resolved file documents the full run
    resolved = yaml.safe_load(text)
    assert resolved["probe"]["lora_alpha"] == 16 and resolved["probe"]["epochs"] == 4
    assert resolved["candidates"][0] == {"name": "tiny-llama", "trust_remote_code": False}
    assert SelectionConfig.model_validate(resolved) == cfg


def test_config_hash_stable_and_sensitive(tmp_path):
    path = _write(tmp_path, BASE)
    first = load_config(path).config_hash()
    assert first == load_config(path).config_hash()
    # the same config written with other key order and explicit defaults hashes the same
    reordered = dict(reversed(list(_with(probe__method="lora").items())))
    assert load_config(_write(tmp_path, reordered, "b.yaml")).config_hash() == first
    assert len(first) == 12 and int(first, 16) >= 0
    changed = {
        load_config(path, [item]).config_hash()
        for item in ("probe.epochs=2", "ladder.budget=32", "dataset.seed=1", "target_size=2048")
    }
    assert first not in changed and len(changed) == 4
    swapped = _with(candidates=["/models/other", "tiny-llama"])
    assert load_config(_write(tmp_path, swapped, "c.yaml")).config_hash() != first


def test_cli_bad_config_exits_2_before_prefect(tmp_path, capsys, monkeypatch):
    import flows.select

    started = []
    monkeypatch.setattr(flows.select, "flow_with_runner", lambda cfg: started.append(cfg))
    bad = _write(tmp_path, _with(probe__lerning_rate=0.1))
    assert cli.main(["select", "--config", bad]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lensllm: error: invalid config")
    assert "unknown key 'probe.lerning_rate'" in err
    assert not started  # the flow (and with it the Prefect API) was never started


def test_cli_set_error_exits_2(tmp_path, capsys):
    good = _write(tmp_path, BASE)
    assert cli.main(["select", "--config", good, "--set", "ladder.budget=48"]) == 2
    assert "power of two" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "close"),
    [
        ("Lense", "Lens"),
        ("RectifedFit", "RectifiedFit"),
        ("SubTunning", "SubTuning"),
        ("Atss", "AtS"),
        ("ZeroShoot", "ZeroShot"),
    ],
)
def test_check_selector_suggests_the_close_name(name, close):
    with pytest.raises(ConfigError) as info:
        check_selector(name, "--methods")
    message = str(info.value)
    assert message.startswith(f"--methods: unknown selector '{name}'.")  # names where
    assert f"Did you mean '{close}'?" in message
    assert "Known selectors: ZeroShot, SubTuning, ModelSize" in message


def test_check_selector_accepts_known_names_in_any_case():
    for name in ("Lens", "AtS", "ats", "lens", "subtuning"):
        check_selector(name, "selector")  # no error


def test_check_selector_without_a_close_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match="selector: unknown selector 'zzzz'") as info:
        check_selector("zzzz", "selector")
    assert "Did you mean" not in str(info.value)
    assert "Known selectors:" in str(info.value) and "Lens" in str(info.value)


def test_unknown_selector_in_the_config_suggests_the_close_name(tmp_path):
    close = r"selector: unknown selector 'Lense'\. Did you mean 'Lens'"
    with pytest.raises(ConfigError, match=close):
        load_config(_write(tmp_path, _with(selector="Lense")))
